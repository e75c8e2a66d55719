"""The run directory contract: what train, fuse and ensemble write and what evaluate, compare, predict read.

    run/config.yaml               resolved config (+ `_run`: manifest path and hash)
    run/run.json                  kind, task, labels, attributes, members, complete flag (written last)
    run/model/                    weights (safetensors) and what rebuilds the model
    run/predictions/<split>.csv   utt_id, [label], pred, prob_<class>... | utt_id, [<attr>], <attr>_pred...
    run/metrics.json              {"dev": {...}, "test": {...}}
    run/train_log.csv             per-epoch losses and dev metrics
    run/checkpoints/              resumable training state (removed or kept by the trainer)

A run is finished only when run.json says complete; a crash leaves an incomplete run that `train` resumes.
This module owns the layout, the `_run` provenance block of config.yaml, the prediction frame (its columns),
and preparing an output folder for a new run (`prepare_output`: what may be replaced, and what is removed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import yaml

from fusion_ser.config import Config, ConfigError, config_with_overrides, read_yaml_mapping
from fusion_ser.schema import CORPUS_COLUMN, has_attributes, has_classes
from fusion_ser.errors import FusionSerError
from fusion_ser import files

log = logging.getLogger(__name__)

PROVENANCE_KEY = "_run"  # the block of a run's config.yaml that says which data (and members) made the run
PROB_PREFIX = "prob_"
PRED_SUFFIX = "_pred"
# Everything a run directory may hold: what overwriting a run (prepare_output) removes, and nothing else.
RUN_FILES = ("run.json", "config.yaml", "metrics.json", "report.md", "report.html", "train_log.csv",
             "refit_train_log.csv", "skipped_clips.json", "dropped_rows.json", "cv_metrics.json",
             "manifest.csv")  # manifest.csv: the combined rows of a multi-corpus run (data.manifests)
RUN_FOLDERS = ("model", "model_dev_selected", "predictions", "checkpoints")
RUN_PATTERNS = ("*.png",)
# model: trained; fusion / ensemble: combined member runs; evaluation: a run scored on another corpus (crosscorpus)
RUN_KINDS = ("model", "fusion", "ensemble", "evaluation")


class RunDirError(FusionSerError):
    """A run directory that is missing, unfinished or malformed."""


class OutputError(RunDirError):
    """An output folder that cannot receive a new run (an input run, a file, a folder of other things)."""


class RunExistsError(OutputError):
    """An output folder that already holds a run, which is replaced only when overwriting is allowed."""


@dataclass
class RunInfo:
    """What kind of run this is; enough for any reader to interpret the predictions."""

    kind: str  # one of RUN_KINDS
    task: str  # categorical | attributes | multitask
    labels: list[str] = field(default_factory=list)  # class order of prob_<class> columns
    attributes: list[str] = field(default_factory=list)
    modality: str = "audio"  # audio | text | both (a fusion of runs: the union of its members)
    members: list[str] = field(default_factory=list)  # member run dirs (fusion/ensemble), absolute paths
    complete: bool = False
    extra: dict = field(default_factory=dict)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file + rename so readers never see a half-written file (mode as `files.atomic_path`)."""
    files.atomic_write_text(path, text)


def file_hash(path: str | Path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class RunDir:
    """Reads and writes one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    @property
    def train_log_path(self) -> Path:
        return self.path / "train_log.csv"

    def predictions_path(self, split: str) -> Path:
        return self.path / "predictions" / f"{split}.csv"

    def write_info(self, info: RunInfo) -> None:
        atomic_write_text(self.path / "run.json", json.dumps(asdict(info), indent=2))

    def read_info(self) -> RunInfo:
        p = self.path / "run.json"
        if not p.is_file():
            raise RunDirError(f"'{self.path}' is not a run directory (no run.json); point at a folder written by train, fuse or ensemble")
        damaged = (f"the run directory is damaged: restore {p.name}, or write the run again (train, fuse or ensemble "
                   "into a new output folder)")
        try:
            values = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunDirError(f"'{p}' is not valid JSON ({e}); {damaged}") from None
        try:
            info = RunInfo(**values) if isinstance(values, dict) else None
        except TypeError as e:  # unknown or missing fields
            raise RunDirError(f"'{p}' does not hold a run description ({e}); {damaged}") from None
        if info is None or not isinstance(info.kind, str) or not isinstance(info.complete, bool):
            raise RunDirError(f"'{p}' does not hold a run description (kind, task, complete...); {damaged}")
        return info

    def is_complete(self) -> bool:
        try:
            return self.read_info().complete
        except RunDirError:
            return False

    def require_complete(self) -> RunInfo:
        info = self.read_info()
        if not info.complete:
            raise RunDirError(f"run '{self.path}' is unfinished; run `fusion-ser train` on it again to resume")
        return info

    def mark_complete(self) -> None:
        info = self.read_info()
        info.complete = True
        self.write_info(info)

    def write_predictions(self, split: str, df: pd.DataFrame) -> Path:
        p = self.predictions_path(split)
        atomic_write_text(p, df.to_csv(index=False))
        return p

    def read_predictions(self, split: str) -> pd.DataFrame:
        p = self.predictions_path(split)
        if not p.is_file():
            available = sorted(q.stem for q in (self.path / "predictions").glob("*.csv"))
            raise RunDirError(f"run '{self.path}' has no predictions for split '{split}' (has: {available or 'none'})")
        return pd.read_csv(p, dtype={"utt_id": str}, keep_default_na=True)

    def splits(self) -> list[str]:
        return sorted(q.stem for q in (self.path / "predictions").glob("*.csv"))

    def write_metrics(self, metrics: dict) -> None:
        atomic_write_text(self.metrics_path, json.dumps(metrics, indent=2, default=float))

    def read_metrics(self) -> dict:
        if not self.metrics_path.is_file():
            return {}
        return json.loads(self.metrics_path.read_text())

    def provenance(self) -> dict:
        """The `_run` block of config.yaml (manifest, its hash; members and method of a combined run)."""
        return read_run_config(self.config_path)[1]

    def manifest(self) -> Optional[str]:
        """The manifest this run was made from: `_run.manifest`, else the config's data.manifest."""
        values, provenance = read_run_config(self.config_path)
        return provenance.get("manifest") or (values.get("data") or {}).get("manifest")


def prob_columns(labels: list[str]) -> list[str]:
    """Posterior columns of a prediction frame, in class order."""
    return [f"{PROB_PREFIX}{c}" for c in labels]


def attr_pred_columns(attributes: list[str]) -> list[str]:
    """Predicted-attribute columns of a prediction frame, in attribute order."""
    return [f"{a}{PRED_SUFFIX}" for a in attributes]


def _known(values: pd.Series) -> pd.Series:
    return values.notna() & (values.astype(str).str.strip() != "")


def output_columns(task: str, labels: Sequence[str], attributes: Sequence[str]) -> list[str]:
    """The columns of a run's per-row outputs, in the order models write them: prob_<class>... (categorical),
    <attr>_pred... (attributes), both (multitask, probabilities first)."""
    return ((prob_columns(labels) if has_classes(task) else [])
            + (attr_pred_columns(attributes) if has_attributes(task) else []))


def outputs_prediction_frame(utt_ids: list[str], task: str, labels: list[str], attributes: list[str],
                             outputs: np.ndarray, truth: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """prediction_frame of model outputs laid out as output_columns (a multitask row: K probabilities, A values)."""
    outputs = np.asarray(outputs)
    k = len(labels) if has_classes(task) else 0
    probs = outputs[:, :k] if has_classes(task) else None
    values = outputs[:, k:] if has_attributes(task) else None
    return prediction_frame(utt_ids, task, labels, attributes, probs=probs, values=values, truth=truth)


def prediction_frame(utt_ids: list[str], task: str, labels: list[str], attributes: list[str], *,
                     probs: Optional[np.ndarray] = None, pred: Optional[np.ndarray] = None,
                     values: Optional[np.ndarray] = None, truth: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """The run-dir prediction format: utt_id, [label], pred, prob_<class>... | utt_id, [<attr>...], <attr>_pred...
    | (multitask) both: utt_id, [label], pred, prob_<class>..., [<attr>...], <attr>_pred...

    `probs` (N, K) in `labels` order (pred: their argmax unless given) and/or `values` (N, A) in `attributes` order.
    `truth` (rows keyed by utt_id, any order) adds the label / attribute truth columns that hold any known value,
    and the `corpus` column of a multi-corpus manifest.
    """
    ids = [str(u) for u in utt_ids]
    out = pd.DataFrame({"utt_id": ids})
    known = truth.set_index(truth["utt_id"].astype(str)) if truth is not None else None
    if known is not None and CORPUS_COLUMN in known.columns and _known(known[CORPUS_COLUMN]).any():
        out[CORPUS_COLUMN] = known.loc[ids, CORPUS_COLUMN].to_numpy()  # metrics split by corpus
    if has_classes(task):
        if known is not None and "label" in known.columns and _known(known["label"]).any():
            out["label"] = known.loc[ids, "label"].to_numpy()
        probs = np.zeros((0, len(labels))) if probs is None else np.asarray(probs)
        index = probs.argmax(axis=1) if pred is None else np.asarray(pred, dtype=np.int64)
        out["pred"] = np.asarray(labels, dtype=object)[index] if len(ids) else []
        for j, col in enumerate(prob_columns(labels)):
            out[col] = probs[:, j] if len(ids) else []
    if not has_attributes(task):
        return out
    values = np.zeros((0, len(attributes))) if values is None else np.asarray(values)
    for a in attributes:
        if known is not None and a in known.columns:
            column = pd.to_numeric(known[a], errors="coerce")
            if column.notna().any():
                out[a] = column.loc[ids].to_numpy()
    for j, col in enumerate(attr_pred_columns(attributes)):
        out[col] = values[:, j] if len(ids) else []
    return out


def manifest_provenance(manifest: Optional[str | Path]) -> dict:
    """The `_run` block of a trained run's config.yaml: which data it was trained on (path and sha256)."""
    if manifest is None:
        return {}
    p = Path(manifest).resolve()
    return {"manifest": str(p), "manifest_sha256": file_hash(p) if p.is_file() else None}


def write_run_config(path: str | Path, values: dict, provenance: Optional[dict] = None) -> None:
    """Write a run's config.yaml: the resolved config `values` plus the provenance block (when given)."""
    data = {k: v for k, v in values.items() if k != PROVENANCE_KEY}
    if provenance:
        data[PROVENANCE_KEY] = provenance
    atomic_write_text(Path(path), yaml.safe_dump(data, sort_keys=False))


def read_run_config(path: str | Path) -> tuple[dict, dict]:
    """(config values without the provenance block, the provenance block) of a run's config.yaml; ({}, {}) if absent."""
    p = Path(path)
    if not p.is_file():
        return {}, {}
    try:
        data = read_yaml_mapping(p)
    except ConfigError as e:
        raise RunDirError(f"{e}; the run directory is damaged") from None
    provenance = data.pop(PROVENANCE_KEY, None) or {}
    return data, provenance


def load_run_config(path: str | Path, overrides: Optional[list[str]] = None) -> tuple[Config, dict]:
    """(the typed config, the provenance block) of a run's config.yaml, with dotted overrides applied."""
    values, provenance = read_run_config(path)
    if not values:
        raise RunDirError(f"'{path}' holds no config; the run directory is damaged or was not written by this tool")
    return config_with_overrides(values, overrides, str(path)), provenance


def _existing_kind(path: Path) -> str:
    """The kind of the run in `path` as its run.json says, or 'unreadable' when run.json cannot be read."""
    try:
        return RunDir(path).read_info().kind
    except (RunDirError, ValueError, TypeError):  # ValueError: invalid JSON; TypeError: unexpected fields
        return "unreadable"


def check_output(path: str | Path, *, kind: str, force: bool = False, inputs: Sequence[str | Path] = ()) -> Path:
    """Check, without changing anything, that `path` may receive a new run of `kind`; returns it resolved.

    Refused (OutputError): one of the `inputs` (the runs the new one is made from), an existing file, a
    non-empty folder that is not a run directory (no run.json). A non-empty run directory (of any kind, finished
    or not) is refused (RunExistsError) unless `force`, which allows replacing it.
    """
    out = Path(path).resolve()
    if any(out == Path(p).resolve() for p in inputs):
        raise OutputError(f"output '{out}' is one of the input runs; choose a new output folder")
    if out.exists() and not out.is_dir():
        raise OutputError(f"output '{out}' exists and is not a folder; choose another output path")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "run.json").is_file():
            raise OutputError(f"output folder '{out}' is not empty and is not a run directory (no run.json); choose a "
                              "new or empty output folder (overwriting only ever replaces a run)")
        if not force:
            raise RunExistsError(f"output folder '{out}' already holds a {_existing_kind(out)} run; choose a new "
                                 f"output folder for the {kind} run, or allow overwriting to replace it",
                                 options=("force",))
    return out


def resumable(path: str | Path, *, kind: str) -> bool:
    """Whether `path` holds an unfinished run of `kind` to continue (False: the folder is new or empty).

    Refused (OutputError): a file, a non-empty folder that is not a run directory, a run of another kind, a
    finished run (nothing to resume; choose a new output folder); RunDirError: a damaged run.json.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output '{out}' exists and is not a folder; choose another output path")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    if not (out / "run.json").is_file():
        raise OutputError(f"output folder '{out}' exists and is not a run directory; choose another output folder")
    info = RunDir(out).read_info()  # RunDirError naming run.json when it is damaged
    if info.kind != kind:
        raise OutputError(f"output folder '{out}' holds a {info.kind} run, not a {kind} run, so it cannot be resumed "
                          f"as one; choose another output folder")
    if info.complete:
        raise RunExistsError(f"run '{out}' is already complete; choose another output folder to train again")
    return True


def _remove_run_files(out: Path) -> list[str]:
    """Remove what a run directory may hold (RUN_FILES, RUN_FOLDERS, RUN_PATTERNS) from `out`; the names removed."""
    removed = []
    for name in RUN_FOLDERS:
        p = out / name
        if p.is_symlink():
            p.unlink()  # the link, never what it points at
        elif p.is_dir():
            shutil.rmtree(p)
        else:
            continue
        removed.append(name)
    files = [out / name for name in RUN_FILES] + [p for pattern in RUN_PATTERNS for p in sorted(out.glob(pattern))]
    for p in files:
        if p.is_file() or p.is_symlink():
            p.unlink()
            removed.append(p.name)
    return removed


def prepare_output(path: str | Path, *, kind: str, force: bool = False, inputs: Sequence[str | Path] = ()) -> RunDir:
    """Make `path` ready to receive a new run of `kind` and return its RunDir (the folder exists afterwards).

    Refuses what `check_output` refuses. With `force`, an earlier run in the folder is replaced: exactly what a
    run directory may hold (RUN_FILES, RUN_FOLDERS, RUN_PATTERNS) is removed, anything else the folder holds stays.
    """
    out = check_output(path, kind=kind, force=force, inputs=inputs)
    if (out / "run.json").is_file():
        previous = _existing_kind(out)
        removed = _remove_run_files(out)
        log.info("replacing the %s run in %s with a %s run (removed %s)", previous, out, kind, ", ".join(removed))
    out.mkdir(parents=True, exist_ok=True)
    return RunDir(out)
