"""The run directory contract: what train, fuse and ensemble write and what evaluate, compare, predict read.

    run/config.yaml               resolved config (+ `_run`: manifest path and hash)
    run/run.json                  kind, task, labels, attributes, members, complete flag (written last)
    run/model/                    weights (safetensors) and what rebuilds the model
    run/predictions/<split>.csv   utt_id, [label], pred, prob_<class>... | utt_id, [<attr>], <attr>_pred...
    run/metrics.json              {"dev": {...}, "test": {...}}
    run/train_log.csv             per-epoch losses and dev metrics
    run/checkpoints/              resumable training state (removed or kept by the trainer)

A run is finished only when run.json says complete; a crash leaves an incomplete run that `train` resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from fusion_ser.errors import FusionSerError


class RunDirError(FusionSerError):
    """A run directory that is missing, unfinished or malformed."""


@dataclass
class RunInfo:
    """What kind of run this is; enough for any reader to interpret the predictions."""

    kind: str  # model | fusion | ensemble
    task: str  # categorical | attributes
    labels: list[str] = field(default_factory=list)  # class order of prob_<class> columns
    attributes: list[str] = field(default_factory=list)
    modality: str = "audio"  # audio | text | both (a fusion of runs: the union of its members)
    members: list[str] = field(default_factory=list)  # member run dirs (fusion/ensemble), absolute paths
    complete: bool = False
    extra: dict = field(default_factory=dict)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file + rename so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the mode an ordinary write would
    os.replace(tmp, path)


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
        return RunInfo(**json.loads(p.read_text()))

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


def prob_columns(labels: list[str]) -> list[str]:
    return [f"prob_{c}" for c in labels]


def attr_pred_columns(attributes: list[str]) -> list[str]:
    return [f"{a}_pred" for a in attributes]


def manifest_provenance(manifest: Optional[str | Path]) -> dict:
    """The `_run` block of config.yaml: which data a run was trained on."""
    if manifest is None:
        return {}
    p = Path(manifest).resolve()
    return {"manifest": str(p), "manifest_sha256": file_hash(p) if p.is_file() else None}
