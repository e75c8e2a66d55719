"""Combined runs: fitting a combiner with cross-validation inside dev, and writing / reloading the run that holds it.

A fused or ensembled run has the layout of a trained run (run.json, config.yaml, predictions/, metrics.json,
report.md) plus `model/combiner.json`; its run.json lists the member runs the combiner is applied to.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from fusion_ser.fusion.combiners import (COMBINER_FILE, CombinedOutput, Combiner, MultitaskCombiner, combiner_from_spec,
                                        output_frame)
from fusion_ser.fusion.members import (
    FusionError,
    Member,
    align_frames,
    member_array,
    open_members,
    speakers_of,
    truth_arrays,
)
from fusion_ser.rundir import RunDir, RunInfo, check_output, file_hash, prepare_output, write_run_config

log = logging.getLogger(__name__)

Fitter = Callable[[np.ndarray, np.ndarray], Combiner]


@dataclass
class CombinedRun:
    """What fuse/ensemble produced: the run, how dev was scored, and each member's figures on the same rows."""

    path: Path
    info: RunInfo
    method: str
    metrics: dict  # split -> metrics of the combined run (dev: out-of-fold when fitted)
    member_metrics: dict  # member name -> split -> metrics
    n_folds: int = 0  # 0: nothing fitted on dev, dev figures are direct
    grouped_by_speaker: bool = False
    splits: list[str] = field(default_factory=list)


def load_combiner(run_dir: Union[str, Path]) -> Combiner:
    """The fitted combiner of a fused or ensembled run (members: `RunInfo.members` of its run.json)."""
    rd = RunDir(run_dir)
    info = rd.read_info()
    if info.kind not in ("fusion", "ensemble"):
        raise FusionError(f"run '{rd.path}' is a '{info.kind}' run, not a fusion or ensemble; it has no combiner")
    path = rd.model_dir / COMBINER_FILE
    if not path.is_file():
        raise FusionError(f"run '{rd.path}' has no {COMBINER_FILE} in model/; re-run fuse/ensemble to rebuild it")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FusionError(f"'{path}' is not valid JSON ({e}); re-run fuse/ensemble to rebuild it") from None
    combiner = combiner_from_spec(spec)
    if len(info.members) != combiner.n_members:
        raise FusionError(f"run '{rd.path}': run.json lists {len(info.members)} members "
                          f"but {COMBINER_FILE} expects {combiner.n_members}")
    return combiner


def dev_folds(
    task: str, y: np.ndarray, groups: Optional[np.ndarray], n_folds: int, seed: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], bool]:
    """Folds over the dev rows with known truth: stratified (categorical), grouped by speaker when speakers are known.

    Returns (train, held-out) row-index pairs into the full dev frame, and whether they are speaker-grouped.
    """
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    known = np.flatnonzero(y >= 0) if task == "categorical" else np.flatnonzero(np.isfinite(y).any(axis=1))
    if n_folds < 2:
        raise FusionError(f"the number of folds must be at least 2 (got {n_folds}): dev figures come from "
                          "cross-validation inside dev")
    if len(known) < 2 * n_folds:
        raise FusionError(f"dev has {len(known)} rows with known truth, too few for {n_folds}-fold cross-validation; "
                          "use fewer folds")
    yk = y[known] if task == "categorical" else None
    g = groups[known] if groups is not None else None
    grouped = g is not None and len(set(g)) >= n_folds
    if g is not None and not grouped:
        log.warning("dev has %d speakers, fewer than %d folds; folds are not grouped by speaker", len(set(g)), n_folds)
    if task == "categorical":
        splitter = (StratifiedGroupKFold if grouped else StratifiedKFold)(n_folds, shuffle=True, random_state=seed)
    else:
        splitter = (GroupKFold if grouped else KFold)(n_folds, shuffle=True, random_state=seed)
    try:
        split = list(splitter.split(np.zeros((len(known), 1)), yk, g if grouped else None))
    except ValueError as e:
        counts = dict(zip(*np.unique(yk, return_counts=True))) if yk is not None else {}
        raise FusionError(f"cannot cut dev into {n_folds} cross-validation folds ({e}); dev rows per class index: "
                          f"{counts}. Use fewer folds, or a method that fits nothing on dev (mean)") from None
    return [(known[tr], known[te]) for tr, te in split], grouped


def cross_fit(fit: Fitter, x: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]],
              full: Combiner) -> CombinedOutput:
    """Out-of-fold predictions: each held-out part by a combiner fitted on the rest; rows outside all folds
    (unknown truth, never fitted on) by the combiner fitted on all of dev."""
    out = full.apply(x)
    for tr, te in folds:
        part = fit(x[:, tr], y[tr]).apply(x[:, te])
        if out.probs is not None:
            out.probs[te] = part.probs
            out.pred[te] = part.pred
        else:
            out.values[te] = part.values
    return out


def _union_modality(members: list[Member]) -> str:
    mods = {m.info.modality for m in members}
    if "both" in mods or {"audio", "text"} <= mods:
        return "both"
    return mods.pop() if len(mods) == 1 else "both"


def _write_config(rd: RunDir, members: list[Member], kind: str, method: str, options: dict, modality: str) -> None:
    """config.yaml of the combined run: the first member's config values, and a provenance block naming the
    manifest (of the first member that records one), the method and the members."""
    config = dict(members[0].config)
    if config:
        config["modality"] = modality
    manifest = next((m.manifest for m in members if m.manifest), None)
    provenance = {
        "manifest": manifest,
        "manifest_sha256": file_hash(manifest) if manifest and Path(manifest).is_file() else None,
        "kind": kind,
        "method": method,
        "members": [str(m.path) for m in members],
        "options": options,
    }
    write_run_config(rd.config_path, config, provenance)


def _write_report(rd: RunDir, seed: int) -> dict:
    """metrics.json (with bootstrap intervals) and report.md by the evaluation package, as for a trained run."""
    from fusion_ser.evaluation.report import evaluate_run

    return evaluate_run(rd.path, seed=seed, allow_incomplete=True)


def build_combined_run(
    member_paths: list[Union[str, Path]],
    out_dir: Union[str, Path],
    *,
    kind: str,
    method: str,
    fitter: Optional[Fitter] = None,
    fixed: Optional[Combiner] = None,
    parts: Optional[dict[str, tuple[Optional[Fitter], Optional[Combiner]]]] = None,
    n_folds: int = 5,
    seed: int = 0,
    options: Optional[dict] = None,
    force: bool = False,
) -> CombinedRun:
    """Combine member runs into a new run dir (kind fusion/ensemble) with the same layout as a trained run.

    `fitter(x, y)` learns a combiner from dev; its dev figures are out-of-fold (k-fold inside dev, by speaker when
    known) and every other split is predicted by the combiner fitted on all of dev. `fixed` is a combiner that
    learns nothing (mean, vote), applied as is. Multitask members take `parts`: a (fitter, fixed) pair for the
    categorical and for the attributes head, fitted each on its own targets into one MultitaskCombiner. The output folder is checked before anything is fitted and
    cleared of an earlier run (with `force`) only once the combined predictions are ready.
    """
    from fusion_ser.evaluation.metrics import compute_metrics

    members = open_members(member_paths)
    inputs = [m.path for m in members]
    check_output(out_dir, kind=kind, force=force, inputs=inputs)
    names = [m.name for m in members]
    first = members[0].info
    task, labels, attributes = first.task, list(first.labels), list(first.attributes)
    rds = [RunDir(m.path) for m in members]
    common = set.intersection(*(set(rd.splits()) for rd in rds))
    if "dev" not in common:
        lacking = [m.name for m, rd in zip(members, rds) if "dev" not in rd.splits()]
        raise FusionError(f"runs {lacking} have no dev predictions (predictions/dev.csv); every member needs them")
    splits = ["dev"] + sorted(common - {"dev"})

    frames = {s: align_frames([rd.read_predictions(s) for rd in rds], names, s) for s in splits}
    dev_ids = frames["dev"][0]["utt_id"].tolist()
    speakers: dict[str, Optional[np.ndarray]] = {}  # read once, only when something is fitted

    def fit_part(part: str, part_fitter: Optional[Fitter], part_fixed: Optional[Combiner]):
        x_dev = member_array(frames["dev"], part, labels, attributes)
        y_dev = truth_arrays(frames["dev"][0], part, labels, attributes)
        if part_fitter is not None:
            if "dev" not in speakers:
                speakers["dev"] = speakers_of(members, dev_ids)
            folds, grouped = dev_folds(part, y_dev, speakers["dev"], n_folds, seed)
            combiner = part_fitter(x_dev, y_dev)
            return combiner, cross_fit(part_fitter, x_dev, y_dev, folds, combiner), len(folds), grouped
        if part_fixed is None:
            raise FusionError(f"method '{method}' has neither a fitter nor a fixed combiner")
        return part_fixed, part_fixed.apply(x_dev), 0, False

    if task == "multitask":
        if parts is None or set(parts) != {"categorical", "attributes"}:
            raise FusionError(f"method '{method}': multitask members need a combiner for each head")
        c, c_out, c_folds, c_grouped = fit_part("categorical", *parts["categorical"])
        a, a_out, a_folds, a_grouped = fit_part("attributes", *parts["attributes"])
        combiner = MultitaskCombiner(c, a)
        dev_out = CombinedOutput(probs=c_out.probs, pred=c_out.pred, values=a_out.values)
        used_folds, grouped = max(c_folds, a_folds), c_grouped or a_grouped
    else:
        combiner, dev_out, used_folds, grouped = fit_part(task, fitter, fixed)

    outputs = {"dev": output_frame(frames["dev"][0], task, labels, attributes, dev_out)}
    for s in splits[1:]:
        outputs[s] = combiner.combine(frames[s], names)

    rd = prepare_output(out_dir, kind=kind, force=force, inputs=inputs)
    modality = _union_modality(members)
    info = RunInfo(
        kind=kind,
        task=task,
        labels=labels,
        attributes=attributes,
        modality=modality,
        members=[str(m.path) for m in members],
        complete=False,
        extra={"method": method, "cv_folds": used_folds, "cv_grouped_by_speaker": grouped, "options": options or {}},
    )
    rd.write_info(info)
    _write_config(rd, members, kind, method, options or {}, modality)
    combiner.save(rd.model_dir)
    metrics, member_metrics = {}, {name: {} for name in names}
    for s, df in outputs.items():
        rd.write_predictions(s, df)
        m = compute_metrics(df, info)
        if m.get("n", 0) > 0:
            metrics[s] = m
            for mem, f in zip(members, frames[s]):
                member_metrics[mem.name][s] = compute_metrics(f, mem.info)
    rd.write_metrics(metrics)
    report = _write_report(rd, seed)
    metrics = {s: report.get(s, m) for s, m in metrics.items()}
    rd.mark_complete()
    info.complete = True
    log.info("wrote %s run %s (%s of %d members)", kind, rd.path, method, len(members))
    return CombinedRun(rd.path, info, method, metrics, member_metrics, used_folds, grouped, splits)
