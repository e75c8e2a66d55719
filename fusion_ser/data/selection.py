"""Which rows a run trains, selects and tests on: the classes, the usable rows of each split, the screened audio.

`load_run_data(cfg, manifest)` reads the manifest, keeps the rows usable for cfg.task and cfg.modality, and screens
unreadable audio once (with the reasons); `refit_rows` adds the usable dev rows for a refit on train+dev.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from fusion_ser.config import Config
from fusion_ser.data.dataset import ScreenReport, screen_audio
from fusion_ser.data.folds import apply_fold
from fusion_ser.data.manifest import read_manifest
from fusion_ser.data.schema import NON_CLASS_LABELS, SOFT_PREFIX
from fusion_ser.errors import FusionSerError

logger = logging.getLogger(__name__)


class SelectionError(FusionSerError):
    """A manifest that has no usable rows for a split, task or modality of the config."""


@dataclasses.dataclass
class RunData:
    """The rows a run trains, selects and tests on, with their class list."""

    labels: list[str]
    train: pd.DataFrame
    dev: pd.DataFrame
    test: pd.DataFrame
    durations: dict[str, Optional[np.ndarray]]
    screen: ScreenReport


def select_labels(cfg: Config, train: pd.DataFrame) -> list[str]:
    """cfg.data.labels, or the class labels present in the train split (sorted), without other/no_agreement."""
    if cfg.task == "attributes":
        return []
    if cfg.data.labels:
        return list(cfg.data.labels)
    present = sorted(set(train["label"].astype(str)) - set(NON_CLASS_LABELS) - {""})
    return present


def _has_attributes(df: pd.DataFrame, attributes: list[str]) -> pd.Series:
    vals = df[attributes].apply(pd.to_numeric, errors="coerce")
    return vals.notna().any(axis=1)


def split_rows(df: pd.DataFrame, cfg: Config, source: str) -> tuple[list[str], pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Train/dev/test rows usable for cfg.task; raises naming what is missing when train or dev is empty."""
    if cfg.data.fold is not None:
        df = apply_fold(df, cfg.data.fold)
    split = df["split"].astype(str)
    train, dev, test = df[split == "train"], df[split == "dev"], df[split == "test"]
    if cfg.task == "attributes":
        missing = [a for a in cfg.data.attributes if a not in df.columns]
        if missing:
            raise SelectionError(f"{source}: no column(s) {missing} for the attributes task")
        train = train[_has_attributes(train, cfg.data.attributes)]
        dev_known = dev[_has_attributes(dev, cfg.data.attributes)]
        what = f"rows with any of {list(cfg.data.attributes)}"
        labels: list[str] = []
    else:
        labels = select_labels(cfg, train)
        is_class = train["label"].isin(labels)
        if cfg.loss.type == "soft_ce":
            soft_cols = [f"{SOFT_PREFIX}{c}" for c in labels if f"{SOFT_PREFIX}{c}" in df.columns]
            if not soft_cols:
                raise SelectionError(f"{source}: loss.type=soft_ce needs soft-label columns p_<label> "
                                 f"(e.g. p_{labels[0] if labels else 'neutral'}); none found. Use loss.type=weighted_ce")
            if cfg.data.keep_no_agreement:
                mass = train[soft_cols].apply(pd.to_numeric, errors="coerce").fillna(0).sum(axis=1)
                is_class = is_class | ((train["label"] == "no_agreement") & (mass > 0))
        train = train[is_class]
        dev_known = dev[dev["label"].isin(labels)]
        what = f"rows labelled with one of {labels}" if labels else "labelled rows"
        if len(labels) < 2 and len(train):
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


def load_run_data(cfg: Config, manifest_path: str | Path) -> RunData:
    """Read the manifest and pick the rows of each split for cfg.task/modality, screening unreadable audio."""
    df = read_manifest(manifest_path)
    labels, train, dev, test = split_rows(df, cfg, str(manifest_path))
    frames = {"train": train, "dev": dev, "test": test}
    if cfg.modality in ("text", "both"):
        check_text(frames, str(manifest_path), required=cfg.modality == "text")
    durations: dict[str, Optional[np.ndarray]] = {s: None for s in frames}
    screen = ScreenReport()
    if cfg.modality in ("audio", "both"):
        for s in frames:
            frames[s], durations[s], rep = screen_audio(frames[s], cfg.data.min_seconds)
            screen.dropped.update(rep.dropped)
        if len(frames["train"]) == 0 or len(frames["dev"]) == 0:
            raise SelectionError(f"{manifest_path}: no readable audio left in the {'train' if len(frames['train']) == 0 else 'dev'} "
                             f"split ({screen.summary()})")
    return RunData(labels, frames["train"], frames["dev"], frames["test"], durations, screen)


def refit_rows(cfg: Config, data: RunData) -> tuple[pd.DataFrame, Optional[np.ndarray]]:
    """Train plus the dev rows usable as training targets (labelled with a class, or with any attribute)."""
    dev = data.dev
    if cfg.task == "attributes":
        keep = _has_attributes(dev, cfg.data.attributes).to_numpy()
    else:
        keep = dev["label"].astype(str).isin(data.labels).to_numpy()
    frame = pd.concat([data.train, dev[keep]], ignore_index=True)
    durations = None
    if data.durations["train"] is not None and data.durations["dev"] is not None:
        durations = np.concatenate([data.durations["train"], data.durations["dev"][keep]])
    return frame, durations
