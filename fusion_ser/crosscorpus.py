"""`fusion-ser test`: score any finished run (trained, fused, ensembled) on another corpus's labelled rows, written
as a run directory of kind "evaluation" that `evaluate` and `compare` read like any other.

    result = evaluate_on_corpus("runs/audio", "emodb/manifest.csv", "runs/audio_on_emodb", label_map={"angry": "anger"})

The rows of one split of the manifest are predicted through `fusion_ser.load` (audio, transcription when a member
needs text); a run that standardises by domain (head.standardize) is predicted one speaker (or corpus) at a time,
with that group's unlabelled statistics. Classes: `shared` (the run's classes the corpus has), `unknown` (corpus
labels the run has no class for), `absent` (run classes the corpus lacks). By default the rows of unknown classes
are not scored and macro-F1 / UAR average over the shared classes; with unknown="error" those rows are scored as
errors and the average runs over every class of the corpus. Rows whose audio cannot be used are skipped and counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from fusion_ser.adapt import domain_mode
from fusion_ser.data.manifest import read_manifest
from fusion_ser.schema import NON_CLASS_LABELS, has_attributes, has_classes
from fusion_ser.errors import FusionSerError
from fusion_ser.predict import load
from fusion_ser.rundir import (RunDir, RunInfo, file_hash, prediction_frame, prepare_output, read_run_config,
                               write_run_config)
from fusion_ser.training.domain import domain_keys

log = logging.getLogger(__name__)

KIND = "evaluation"


class CrossCorpusError(FusionSerError):
    """A manifest or run that cannot be scored against each other (no rows, no shared class, bad label map)."""


@dataclass
class CrossCorpusResult:
    """What `evaluate_on_corpus` wrote and found."""

    run: RunDir
    split: str
    metrics: dict
    classes: dict
    n_rows: int
    skipped: dict[str, str] = field(default_factory=dict)  # utt_id -> why it has no prediction


def parse_label_map(items: list[str]) -> dict[str, str]:
    """["calm=neutral", "angry=anger"] -> {"calm": "neutral", "angry": "anger"}."""
    out = {}
    for item in items:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise CrossCorpusError(f"label map '{item}' must look like VALUE=LABEL, e.g. calm=neutral", options=("maps",))
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _rows(manifest: Path, split: str, label_map: dict[str, str]) -> pd.DataFrame:
    df = read_manifest(manifest, labels=None) if not label_map else read_manifest(manifest, validate=False)
    if label_map:
        df["label"] = df["label"].map(lambda x: label_map.get(x, x))
    if split != "all":
        available = sorted(set(df["split"].astype(str)))
        df = df[df["split"].astype(str) == split]
        if df.empty:
            raise CrossCorpusError(f"{manifest}: no rows of split '{split}' (splits: {available}); choose one, or "
                                   "'all' for every row", options=("split",))
    return df.reset_index(drop=True)


def class_report(info: RunInfo, labels: pd.Series) -> dict[str, list[str]]:
    """shared / unknown (corpus labels the run lacks) / absent (run classes the corpus lacks)."""
    present = sorted(set(labels.astype(str).str.strip()) - {""} - set(NON_CLASS_LABELS))
    return {"shared": [c for c in info.labels if c in present],
            "unknown": [c for c in present if c not in info.labels],
            "absent": [c for c in info.labels if c not in present]}


def _groups(df: pd.DataFrame, mode: Optional[str]) -> list[np.ndarray]:
    """Row positions predicted together: one group, or one per speaker / corpus for domain standardisation (rows
    without a speaker together)."""
    if mode is None:
        return [np.arange(len(df))]
    keys = np.asarray(domain_keys(df, mode), dtype=object)
    return [np.flatnonzero(keys == k) for k in dict.fromkeys(keys)]


def evaluate_on_corpus(run_dir: str | Path, manifest: str | Path, out_dir: str | Path, *, split: str = "test",
                       label_map: Optional[dict[str, str]] = None, unknown: str = "ignore", device: str = "auto",
                       batch_size: int = 8, force: bool = False, n_boot: int = 1000, seed: int = 0,
                       progress: Optional[Callable[[int], object]] = None) -> CrossCorpusResult:
    """Predict `split` of `manifest` with the run in `run_dir` and write the evaluation run `out_dir`."""
    if unknown not in ("ignore", "error"):
        raise CrossCorpusError(f"unknown must be 'ignore' or 'error', got {unknown!r}", options=("unknown",))
    source = RunDir(Path(run_dir).resolve())
    info = source.require_complete()
    manifest = Path(manifest).resolve()
    rows = _rows(manifest, split, label_map or {})
    out = prepare_output(out_dir, kind=KIND, force=force, inputs=[source.path])
    classes: dict[str, list[str]] = {}
    if has_classes(info.task):
        classes = class_report(info, rows["label"])
        if not classes["shared"] and info.task == "categorical":
            raise CrossCorpusError(f"{manifest}: none of its labels {classes['unknown']} is a class of run "
                                   f"'{source.path}' {info.labels}; map them with VALUE=LABEL", options=("maps",))
    predictor = load(source.path, device=device)
    mode = domain_mode(predictor)
    results: list[Optional[dict]] = [None] * len(rows)
    for group in _groups(rows, mode):
        paths = rows["path"].iloc[group].tolist()
        for pos, res in zip(group, predictor.predict(paths, batch_size=batch_size, on_error="skip", progress=progress)):
            results[pos] = res
    skipped = {str(rows["utt_id"].iloc[i]): r.get("error", "no result") for i, r in enumerate(results)
               if r is None or "error" in r}
    ok = [i for i, r in enumerate(results) if r is not None and "error" not in r]
    ids = rows["utt_id"].iloc[ok].astype(str).tolist()
    probs = values = None
    if has_classes(info.task):
        probs = np.array([[results[i]["probs"][c] for c in info.labels] for i in ok]).reshape(len(ok), len(info.labels))
    if has_attributes(info.task):
        values = np.array([[results[i]["attributes"][a] for a in info.attributes] for i in ok]).reshape(len(ok), -1)
    frame = prediction_frame(ids, info.task, info.labels if has_classes(info.task) else [],
                             info.attributes if has_attributes(info.task) else [], probs=probs, values=values, truth=rows)
    if not ok:
        raise CrossCorpusError(f"{manifest}: no row of split '{split}' could be predicted ({len(skipped)} skipped, "
                               f"e.g. {next(iter(skipped.values()), '')})")
    scoring = {}
    if has_classes(info.task):
        average = classes["shared"] + (classes["unknown"] if unknown == "error" else [])
        scoring = {"average": average, "unknown": unknown}
    record = {"source_run": str(source.path), "source_kind": info.kind, "manifest": str(manifest), "split": split,
              "label_map": dict(label_map or {}), "unknown": unknown, "domain_statistics": mode or "none"}
    values, _ = read_run_config(source.config_path)
    write_run_config(out.config_path, values, {"manifest": str(manifest), "manifest_sha256": file_hash(manifest),
                                               "kind": KIND, **record})
    extra = {**record, "classes": classes, "scoring": scoring, "n_rows": len(rows), "n_skipped_rows": len(skipped)}
    evaluation = RunInfo(kind=KIND, task=info.task, labels=list(info.labels), attributes=list(info.attributes),
                         modality=info.modality, members=[str(source.path)], complete=False, extra=extra)
    out.write_info(evaluation)
    out.write_predictions(split, frame)
    from fusion_ser.evaluation.report import evaluate_run

    metrics = evaluate_run(out.path, [split], n_boot=n_boot, seed=seed, allow_incomplete=True)[split]
    present = [a for a in info.attributes if a in frame.columns]
    metrics.update({"classes": classes, "n_rows": len(rows), "n_skipped_rows": len(skipped),
                    "skipped_rows": dict(list(skipped.items())[:20]), "scoring": scoring,
                    **({"attributes_scored": present} if has_attributes(info.task) else {})})
    all_metrics = out.read_metrics()
    all_metrics[split] = metrics
    out.write_metrics(all_metrics)
    out.mark_complete()
    log.info("%s on %s/%s: %d rows predicted, %d skipped", source.path.name, manifest.name, split, len(ok), len(skipped))
    return CrossCorpusResult(out, split, metrics, classes, len(rows), skipped)
