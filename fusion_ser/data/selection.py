"""Which rows a run trains, selects and tests on: the classes, the usable rows of each split, the screened audio.

`load_run_data(cfg, manifest)` reads the manifest, keeps the rows usable for cfg.task and cfg.modality, and screens
unreadable audio once (with the reasons); `refit_rows` adds the usable dev rows for a refit on train+dev.
No row leaves in silence: every row not used is counted by split and reason in `RunData.dropped` (logged as one
line, written to the run directory by the job), and eval clips longer than data.max_eval_seconds are counted.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from fusion_ser.config import Config
from fusion_ser.data.dataset import ScreenReport, screen_audio
from fusion_ser.data.folds import apply_fold
from fusion_ser.data.context import with_context
from fusion_ser.data.manifest import read_manifest
from fusion_ser.data.annotations import vote_matrix
from fusion_ser.schema import ANNOTATIONS_COLUMN, NON_CLASS_LABELS, SOFT_PREFIX, has_attributes, has_classes
from fusion_ser.errors import FusionSerError

logger = logging.getLogger(__name__)


class SelectionError(FusionSerError):
    """A manifest that has no usable rows for a split, task or modality of the config."""


# Why a manifest row is not used by a run (DroppedRows reasons).
EMPTY_LABEL = "empty label"
UNKNOWN_LABEL = "label not among the classes"
NON_CLASS = "other/no_agreement"
NO_ATTRIBUTES = "no attributes"
UNREADABLE_AUDIO = "unreadable audio"
NOT_ENCODED = "could not be encoded"
EXAMPLES = 5


@dataclasses.dataclass
class DroppedRows:
    """Manifest rows a run does not use: counts by split and reason, with a few utt_ids of each."""

    counts: dict[str, dict[str, int]] = dataclasses.field(default_factory=lambda: defaultdict(dict))
    examples: dict[str, dict[str, list[str]]] = dataclasses.field(default_factory=lambda: defaultdict(dict))

    def add(self, split: str, reason: str, utt_ids: list[str]) -> None:
        if not utt_ids:
            return
        self.counts[split][reason] = self.counts[split].get(reason, 0) + len(utt_ids)
        kept = self.examples[split].setdefault(reason, [])
        kept.extend(str(u) for u in utt_ids[: max(0, EXAMPLES - len(kept))])

    @property
    def total(self) -> int:
        return sum(n for by_reason in self.counts.values() for n in by_reason.values())

    def summary(self) -> str:
        """One line: 'N manifest row(s) not used: train: 3 empty label, 1 unreadable audio; test: ...'."""
        if not self.total:
            return "every manifest row used"
        parts = [f"{split}: " + ", ".join(f"{n} {reason}" for reason, n in by_reason.items())
                 for split, by_reason in self.counts.items() if by_reason]
        return f"{self.total} manifest row(s) not used: " + "; ".join(parts)

    def to_dict(self) -> dict:
        """{"total": N, "by_split": {split: {reason: {"count": n, "examples": [utt_id, ...]}}}} (dropped_rows.json)."""
        return {"total": self.total,
                "by_split": {split: {reason: {"count": n, "examples": self.examples[split].get(reason, [])}
                                     for reason, n in by_reason.items()}
                             for split, by_reason in self.counts.items() if by_reason}}

    def counts_dict(self) -> dict[str, dict[str, int]]:
        """{split: {reason: count}} (run.json extra)."""
        return {split: dict(by_reason) for split, by_reason in self.counts.items() if by_reason}


@dataclasses.dataclass
class RunData:
    """The rows a run trains, selects and tests on, with their class list, and what was left out and why."""

    labels: list[str]
    train: pd.DataFrame
    dev: pd.DataFrame
    test: pd.DataFrame
    durations: dict[str, Optional[np.ndarray]]
    screen: ScreenReport
    dropped: DroppedRows = dataclasses.field(default_factory=DroppedRows)
    cropped: dict[str, int] = dataclasses.field(default_factory=dict)  # dev/test clips > data.max_eval_seconds

    def drop(self, utt_ids: set[str], reason: str) -> None:
        """Remove rows (by utt_id) from every split, counting them under `reason`."""
        for s in ("train", "dev", "test"):
            f = getattr(self, s)
            hit = f["utt_id"].astype(str).isin(utt_ids).to_numpy()
            if not hit.any():
                continue
            self.dropped.add(s, reason, f.loc[hit, "utt_id"].astype(str).tolist())
            setattr(self, s, f[~hit].reset_index(drop=True))
            if self.durations[s] is not None:
                self.durations[s] = self.durations[s][~hit]


def select_labels(cfg: Config, train: pd.DataFrame) -> list[str]:
    """cfg.data.labels, or the class labels present in the train split (sorted), without other/no_agreement."""
    if not has_classes(cfg.task):
        return []
    if cfg.data.labels:
        return list(cfg.data.labels)
    present = sorted(set(train["label"].astype(str)) - set(NON_CLASS_LABELS) - {""})
    return present


def auxiliary_classes(cfg: Config, train: pd.DataFrame) -> Optional[list[str]]:
    """The classes of multitask.auxiliary's head: the column's values on the train rows (sorted); None when off."""
    column = cfg.multitask.auxiliary
    if column is None:
        return None
    values = train[column].astype(object).where(train[column].notna(), "").astype(str).str.strip()
    return sorted(set(values) - {"", "nan"})


def _has_attributes(df: pd.DataFrame, attributes: list[str]) -> pd.Series:
    vals = df[attributes].apply(pd.to_numeric, errors="coerce")
    return vals.notna().any(axis=1)


def _label_reasons(rows: pd.DataFrame, labels: list[str], dropped: DroppedRows, split: str) -> None:
    """Count rows left out of class training by why: no label, other/no_agreement, or a label not among `labels`."""
    label = rows["label"].fillna("").astype(str).str.strip()
    utt = rows["utt_id"].astype(str)
    non_class = label.isin(NON_CLASS_LABELS) & ~label.isin(labels)
    dropped.add(split, EMPTY_LABEL, utt[label == ""].tolist())
    dropped.add(split, NON_CLASS, utt[non_class].tolist())
    dropped.add(split, UNKNOWN_LABEL, utt[(label != "") & ~non_class].tolist())


def choose_text(df: pd.DataFrame, cfg: Config, source: str) -> pd.DataFrame:
    """`df` with each row's `text` taken from the column data.text_columns names for its split (human transcripts to
    train, ASR for dev/test...)."""
    columns = dataclasses.asdict(cfg.data.text_columns)
    if all(c == "text" for c in columns.values()):
        return df
    missing = sorted({c for c in columns.values() if c not in df.columns})
    if missing:
        raise SelectionError(f"{source}: data.text_columns names column(s) {missing} that the manifest does not have "
                             f"(it has {[c for c in df.columns if 'text' in c]}); write ASR transcripts beside the "
                             f"human ones with `fusion-ser transcribe {source} --column {missing[0]} -o <out.csv>`")
    out = df.copy()
    split = out["split"].astype(str)
    for s, col in columns.items():
        if col != "text":
            rows = split == s
            out.loc[rows, "text"] = out.loc[rows, col].fillna("").astype(str)
    logger.info("%s: text per split from %s", source, ", ".join(f"{s}: {c}" for s, c in columns.items()))
    return out


def _class_rows(cfg: Config, df: pd.DataFrame, train: pd.DataFrame, source: str) -> tuple[list[str], pd.Series]:
    """The run's classes and which train rows are class targets (a class label, or a no-agreement row with a
    distribution when data.keep_no_agreement and soft targets ask for it)."""
    labels = select_labels(cfg, train)
    is_class = train["label"].isin(labels)
    if cfg.data.soft_labels == "annotators":  # targets from the votes (data/annotations.py)
        if ANNOTATIONS_COLUMN not in df.columns:
            raise SelectionError(f"{source}: data.soft_labels=annotators needs an '{ANNOTATIONS_COLUMN}' column "
                                 "(one vote per annotator, e.g. 'anger;anger;neutral'; the MSP-Podcast adapter "
                                 "fills it from labels_detailed); none found. Set data.soft_labels=none")
        if cfg.data.keep_no_agreement:
            voted = pd.Series([len(v) > 0 for v in vote_matrix(train[ANNOTATIONS_COLUMN].tolist(), labels)],
                              index=train.index)
            is_class = is_class | ((train["label"] == "no_agreement") & voted)
    elif cfg.loss.type in ("soft_ce", "kl"):
        soft_cols = [f"{SOFT_PREFIX}{c}" for c in labels if f"{SOFT_PREFIX}{c}" in df.columns]
        if not soft_cols:
            raise SelectionError(f"{source}: loss.type={cfg.loss.type} needs soft-label columns p_<label> "
                                 f"(e.g. p_{labels[0] if labels else 'neutral'}) or data.soft_labels=annotators; "
                                 "none found. Use loss.type=weighted_ce")
        if cfg.data.keep_no_agreement:
            mass = train[soft_cols].apply(pd.to_numeric, errors="coerce").fillna(0).sum(axis=1)
            is_class = is_class | ((train["label"] == "no_agreement") & (mass > 0))
    return labels, is_class


def split_rows(df: pd.DataFrame, cfg: Config, source: str, dropped: Optional[DroppedRows] = None,
               ) -> tuple[list[str], pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train/dev/test rows usable for cfg.task; raises naming what is missing when train or dev is empty.

    Train rows without a target (no class label, no attribute) are left out and counted in `dropped`."""
    dropped = dropped if dropped is not None else DroppedRows()
    if cfg.data.fold is not None:
        df = apply_fold(df, cfg.data.fold)
    if cfg.modality in ("text", "both"):
        df = choose_text(df, cfg, source)  # before the context, so earlier turns come from the same transcripts
    if cfg.modality in ("text", "both") and cfg.text_encoder.context_turns > 0:
        df = with_context(df, cfg.text_encoder.context_turns)  # from every row with text, before any is left out
    split = df["split"].astype(str)
    train, dev, test = df[split == "train"], df[split == "dev"], df[split == "test"]
    column = cfg.multitask.auxiliary
    if column is not None and column not in df.columns:
        raise SelectionError(f"{source}: multitask.auxiliary names the column '{column}', which the manifest lacks; "
                             "name one of its columns (e.g. gender) or set it to null", options=("multitask.auxiliary",))
    if column is not None and len(auxiliary_classes(cfg, train)) < 2:
        raise SelectionError(f"{source}: the auxiliary column '{column}' has {auxiliary_classes(cfg, train)} on the "
                             "train rows; an auxiliary classifier needs 2 or more values (multitask.auxiliary)",
                             options=("multitask.auxiliary",))
    labels: list[str] = []
    keep_train = pd.Series(False, index=train.index)
    keep_dev = pd.Series(False, index=dev.index)
    whats = []
    if has_classes(cfg.task):
        labels, is_class = _class_rows(cfg, df, train, source)
        keep_train |= is_class
        keep_dev |= dev["label"].isin(labels)
        whats.append(f"rows labelled with one of {labels}" if labels else "labelled rows")
    if has_attributes(cfg.task):
        missing = [a for a in cfg.data.attributes if a not in df.columns]
        if missing:
            raise SelectionError(f"{source}: no column(s) {missing} for the {cfg.task} task")
        keep_train |= _has_attributes(train, cfg.data.attributes)
        keep_dev |= _has_attributes(dev, cfg.data.attributes)
        whats.append(f"rows with any of {list(cfg.data.attributes)}")
    if has_classes(cfg.task):
        _label_reasons(train[~keep_train], labels, dropped, "train")
    else:
        dropped.add("train", NO_ATTRIBUTES, train.loc[~keep_train, "utt_id"].astype(str).tolist())
    train = train[keep_train]
    dev_known = dev[keep_dev]
    what = " or ".join(whats)
    if has_classes(cfg.task) and len(labels) < 2 and len(train):
        raise SelectionError(f"{source}: the train split has {len(labels)} class(es) {labels}; a classifier needs 2 or "
                             "more (set data.labels or check the label column)")
    fold_note = f" (data.fold={cfg.data.fold})" if cfg.data.fold is not None else ""
    if len(train) == 0:
        raise SelectionError(f"{source}: no train {what}{fold_note}; the manifest needs split=train rows for task '{cfg.task}'")
    if len(dev_known) == 0:
        raise SelectionError(f"{source}: no dev {what}{fold_note}; the manifest needs split=dev rows to select the model "
                         "(or train on fold K of a fold column)", options=("fold",))
    return labels, train.reset_index(drop=True), dev.reset_index(drop=True), test.reset_index(drop=True)


def check_text(frames: dict[str, pd.DataFrame], source: str, required: bool) -> int:
    """Count rows without text; a text model needs text on every row (error), a fusion model only warns.

    Either way the message gives the count per split and the hint to run `fusion-ser transcribe` first.
    """
    empty = {s: f[f["text"].astype(str).str.strip() == ""] for s, f in frames.items()}
    n = sum(len(e) for e in empty.values())
    if n:
        per_split = ", ".join(f"{s}: {len(e)}" for s, e in empty.items() if len(e))
        first = next(e for e in empty.values() if len(e))["utt_id"].head(3).tolist()
        message = (f"{source}: {n} row(s) have no text ({per_split}; e.g. {first}); run "
                   f"`fusion-ser transcribe {source} -o <out.csv>` first and train on its output")
        if required:
            raise SelectionError(message)
        logger.warning("%s (the fusion model predicts those rows from audio alone)", message)
    return n


def load_run_data(cfg: Config, manifest_path: str | Path, frame: Optional[pd.DataFrame] = None) -> RunData:
    """Read the manifest (or take `frame`, e.g. the combined rows of data.manifests, named `manifest_path` in
    messages) and pick the rows of each split for cfg.task/modality, screening unreadable audio."""
    df = read_manifest(manifest_path) if frame is None else frame
    dropped = DroppedRows()
    labels, train, dev, test = split_rows(df, cfg, str(manifest_path), dropped)
    frames = {"train": train, "dev": dev, "test": test}
    if cfg.modality in ("text", "both"):
        check_text(frames, str(manifest_path), required=cfg.modality == "text")
    durations: dict[str, Optional[np.ndarray]] = {s: None for s in frames}
    screen = ScreenReport()
    if cfg.modality in ("audio", "both"):
        for s in frames:
            frames[s], durations[s], rep = screen_audio(frames[s], cfg.data.min_seconds)
            screen.dropped.update(rep.dropped)
            dropped.add(s, UNREADABLE_AUDIO, list(rep.dropped))
        if len(frames["train"]) == 0 or len(frames["dev"]) == 0:
            raise SelectionError(f"{manifest_path}: no readable audio left in the {'train' if len(frames['train']) == 0 else 'dev'} "
                             f"split ({screen.summary()})")
    if dropped.total:
        logger.warning("%s: %s", manifest_path, dropped.summary())
    cropped = {s: int((durations[s] > cfg.data.max_eval_seconds).sum())
               for s in ("dev", "test") if durations[s] is not None}
    cropped = {s: n for s, n in cropped.items() if n}
    if cropped:
        logger.warning("%s: %s clip(s) are longer than data.max_eval_seconds=%g and are evaluated on their first %g s "
                       "only; raise data.max_eval_seconds to score them whole", manifest_path,
                       ", ".join(f"{n} {s}" for s, n in cropped.items()), cfg.data.max_eval_seconds,
                       cfg.data.max_eval_seconds)
    return RunData(labels, frames["train"], frames["dev"], frames["test"], durations, screen, dropped, cropped)


def refit_rows(cfg: Config, data: RunData) -> tuple[pd.DataFrame, Optional[np.ndarray]]:
    """Train plus the dev rows usable as training targets (labelled with a class, or with any attribute)."""
    dev = data.dev
    keep = np.zeros(len(dev), dtype=bool)
    if has_classes(cfg.task):
        keep |= dev["label"].astype(str).isin(data.labels).to_numpy()
    if has_attributes(cfg.task):
        keep |= _has_attributes(dev, cfg.data.attributes).to_numpy()
    if not keep.all():
        reason = {"attributes": "no attribute", "categorical": "no class label"}.get(cfg.task, "neither")
        logger.info("refit on train+dev: %d of %d dev rows have no target (%s) and are not trained on",
                    int((~keep).sum()), len(dev), reason)
    frame = pd.concat([data.train, dev[keep]], ignore_index=True)
    durations = None
    if data.durations["train"] is not None and data.durations["dev"] is not None:
        durations = np.concatenate([data.durations["train"], data.durations["dev"][keep]])
    return frame, durations
