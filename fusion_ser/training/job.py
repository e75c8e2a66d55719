"""A training job around the one trainer: `train_run` (rows, feature caches, the run directory, the trainer, the
refit on train+dev, the finished run) and `train_cv` (every fold of a speaker-independent k-fold).

`train_run(cfg, manifest, out_dir)` writes the run directory of docs/architecture.md; pointing it at an unfinished
run of the same config and data resumes it and ends with the same files as an uninterrupted run. Under torchrun
rank 0 writes and every rank trains.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
from torch import nn

from fusion_ser.config import Config, upgrade_legacy_keys
from fusion_ser.data.context import CONTEXT_COLUMN, effective_context
from fusion_ser.data.dataset import CachedInput, EmotionDataset
from fusion_ser.data.feature_cache import FeatureCache
from fusion_ser.data.frame_store import FrameMemory, PooledStore, memory_budget
from fusion_ser.data.folds import FoldError
from fusion_ser.data.manifest import read_manifest
from fusion_ser.schema import has_attributes
from fusion_ser.data.sources import (COMBINED_MANIFEST, combine_manifests, corpus_name, sources_changes,
                                     sources_provenance, write_combined)
from fusion_ser.data.selection import (NOT_ENCODED, UNREADABLE_AUDIO, RunData, auxiliary_classes, load_run_data,
                                       refit_rows)
from fusion_ser.device import resolve_device, seed_everything
from fusion_ser.evaluation.metrics import compute_metrics
from fusion_ser.models.factory import build_model, model_encoders
from fusion_ser.models.io import save_model
from fusion_ser.rundir import (RunDir, RunInfo, atomic_write_text, file_hash, manifest_provenance, output_columns,
                               read_run_config, resumable, write_run_config)
from fusion_ser.training import distributed as D
from fusion_ser.training.events import CacheProgress, CacheStarted, Callback, FoldStarted, RefitStarted, RunStarted
from fusion_ser.training.inference import non_finite_ids, predict_frame
from fusion_ser.training.plan import Plan, make_plan
from fusion_ser.training.trainer import Trainer, TrainError

logger = logging.getLogger(__name__)

# Options that change how a run executes but not what it computes: they may differ when resuming.
RUNTIME_KEYS = {("train", "device"), ("train", "num_workers"), ("train", "cache_dir"), ("train", "log_every"),
                ("train", "report"), ("data", "manifest"), ("train", "feature_memory"), ("train", "checkpoint_seconds")}


def _emit(progress: Optional[Callback], dist: D.DistInfo, event: Any) -> None:
    if progress is not None and dist.is_main:
        progress(event)


def _config_diff(a: dict, b: dict, prefix: tuple = ()) -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        path = prefix + (k,)
        if path in RUNTIME_KEYS:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(_config_diff(va, vb, path))
        elif va != vb:
            out.append(f"{'.'.join(path)}: {vb!r} (run) vs {va!r} (now)")
    return out


def _manifest_changes(run: RunDir, provenance: dict, manifest: str) -> list[str]:
    """How the manifest of a resume differs from the one the run started on (its path, or its content)."""
    saved_path = run.manifest()
    if saved_path and str(Path(saved_path)) != manifest:
        return [f"the manifest is '{manifest}' now but the run was started on '{saved_path}'"]
    saved_hash = provenance.get("manifest_sha256")
    now = file_hash(manifest) if saved_hash and Path(manifest).is_file() else saved_hash
    if now != saved_hash:
        return [f"the manifest '{manifest}' was edited since the run started (sha256 {now[:12]}... now, "
                f"{str(saved_hash)[:12]}... in {run.config_path.name})"]
    return []


def _resumable(run: RunDir, cfg: Config) -> bool:
    """True when `run` holds an unfinished training of the same config and data to resume; raise when it is in the
    way. An unfinished run without a checkpoint (stopped before its first epoch ended) is trained from scratch."""
    if not resumable(run.path, kind="model"):
        return False
    if not (run.checkpoint_dir / "last.pt").is_file():
        logger.warning("run '%s' is unfinished but has no checkpoint (%s): it stopped before its first epoch ended, "
                       "so it is trained again from scratch", run.path, run.checkpoint_dir / "last.pt")
        return False
    values, provenance = read_run_config(run.config_path)
    changed = _manifest_changes(run, provenance, str(cfg.data.manifest))
    if cfg.data.manifests:  # every corpus must be the one the run started on
        changed = sources_changes(provenance.get("manifests"), cfg.data.manifests) + changed
    if changed:
        raise TrainError(f"run '{run.path}' cannot be resumed on other data: {changed[0]}. Resume with the original "
                         "manifest, or train into a new output folder")
    saved = upgrade_legacy_keys(values, str(run.config_path))
    diff = _config_diff(dataclasses.asdict(cfg), saved)
    if diff:
        raise TrainError(f"run '{run.path}' was started with a different config, so it cannot be resumed: "
                         + "; ".join(diff[:5]) + ". Use the same config, or another output folder")
    return True


def feature_caches(model: nn.Module, cfg: Config) -> list[CachedInput]:
    """A FeatureCache for each frozen, cacheable encoder of the model when train.cache_features is on; frames read
    stay in memory within train.feature_memory, and a model that pools without parameters reads pooled vectors."""
    if not cfg.train.cache_features:
        return []
    out = []
    pooler = getattr(model, "frame_pooler", lambda: None)()
    memory = FrameMemory(memory_budget(cfg.train.feature_memory))
    for enc in model_encoders(model).values():
        if enc.is_frozen and enc.cache_id() is not None:
            cache = FeatureCache(cfg.train.cache_dir, sample_rate=cfg.data.sample_rate, min_seconds=cfg.data.min_seconds,
                                 max_seconds=cfg.data.max_eval_seconds)
            pooled = PooledStore(cache, enc, pooler) if pooler is not None and enc.modality == "audio" else None
            out.append(CachedInput(enc.modality, enc, cache, memory=memory, pooled=pooled))
    return out


def _contexts(frame: pd.DataFrame) -> list[str]:
    """Each row's conversation context (data/context.py; "" when the run uses none): part of a text cache key."""
    return frame[CONTEXT_COLUMN].astype(str).tolist() if CONTEXT_COLUMN in frame.columns else [""] * len(frame)


def fill_caches(cached: list[CachedInput], data: RunData, dist: D.DistInfo,
                progress: Optional[Callback] = None, *, speeds: tuple[float, ...] = (),
                augmented: tuple[str, ...] = ("train",), device: Optional[torch.device] = None) -> RunData:
    """Compute missing cache entries and drop rows that failed to encode.

    Under torchrun each rank encodes its share (`distributed.shard`: items i with i % world == rank) on its own
    device into the one cache; after that every rank checks every entry (computing any still missing) and the rows
    that failed on any rank are dropped on all of them. Audio rows of the `augmented` splits also get one entry per
    speed-perturbation factor other than 1.0.
    """
    failed: set[str] = set()
    extra_speeds = [float(f) for f in dict.fromkeys(speeds) if float(f) != 1.0]
    for c in cached:
        frames = [data.train, data.dev, data.test]
        items = [{"utt_id": str(r.utt_id), "path": r.path} if c.modality == "audio" else
                 {"utt_id": str(r.utt_id), "text": str(r.text), "context": str(ctx)}
                 for f in frames for r, ctx in zip(f.itertuples(), _contexts(f))]
        if c.modality == "audio":
            items += [{"utt_id": str(r.utt_id), "path": r.path, "speed": f}
                      for f in extra_speeds for s in augmented for r in getattr(data, s).itertuples()]
        if device is not None:
            c.encoder.to(device)
        share = D.shard(items, dist)
        _emit(progress, dist, CacheStarted(modality=c.modality, items=len(share)))
        tick = (lambda n: progress(CacheProgress(n=n))) if progress and dist.is_main else None
        report = c.cache.ensure(c.encoder, share, progress=tick)
        reports = D.all_gather_object(report, dist)
        bad = {u for r in reports for u, _ in r.failed}
        if dist.enabled:  # the others' entries: present and complete here too (a shared disk may lag or lose one)
            check = c.cache.ensure(c.encoder, [it for it in items if it["utt_id"] not in bad])
            bad.update(u for r in D.all_gather_object(check, dist) for u, _ in r.failed)
        failed.update(bad)
        if dist.is_main:
            logger.info("feature cache (%s): %d computed, %d reused, %d rebuilt, %d failed%s", c.modality,
                        sum(r.computed for r in reports), sum(r.reused for r in reports),
                        sum(r.rebuilt for r in reports), len(bad),
                        f" (items per rank: {[r.computed + r.reused + r.rebuilt + len(r.failed) for r in reports]})"
                        if dist.enabled else "")
    if not failed:
        return data
    for u in failed:
        data.screen.dropped.setdefault(u, "could not be encoded for the feature cache")
    data.drop(failed, NOT_ENCODED)
    return data


def write_dropped(run: RunDir, info: RunInfo, data: RunData) -> None:
    """Record the manifest rows the run does not use: counts in run.json's extra (set here, written by the caller)
    and every split and reason with a few utt_ids in dropped_rows.json."""
    info.extra["dropped_rows"] = data.dropped.counts_dict()
    if data.cropped:
        info.extra["cropped_eval_clips"] = dict(data.cropped)
    if data.dropped.total:
        atomic_write_text(run.path / "dropped_rows.json", json.dumps(data.dropped.to_dict(), indent=2))


def _manifest_or_error(cfg: Config, manifest_path: Optional[str | Path]) -> str | Path:
    manifest_path = manifest_path or cfg.data.manifest
    if not manifest_path:
        raise TrainError("no manifest given: pass one or set data.manifest in the config")
    return manifest_path


def _sources(cfg: Config, manifest_path: Optional[str | Path]) -> tuple[Config, Optional[pd.DataFrame]]:
    """With data.manifests: the config with their paths resolved, and their combined rows (else: cfg, None)."""
    if not cfg.data.manifests:
        return cfg, None
    if manifest_path is not None or cfg.data.manifest:
        raise TrainError("give either one manifest (data.manifest or --manifest) or several corpora in data.manifests, "
                         "not both", options=("manifest",))
    sources = [dataclasses.replace(m, path=str(Path(m.path).resolve()), corpus=corpus_name(m)) for m in cfg.data.manifests]
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, manifests=sources))
    return cfg, combine_manifests(sources)


def _run_frame(cfg: Config, manifest_path: str | Path,
               combined: Optional[pd.DataFrame]) -> tuple[Config, pd.DataFrame]:
    """The run's rows (read once) and the config as the run records it (context_turns 0 without conversations)."""
    frame = combined if combined is not None else read_manifest(manifest_path)
    return effective_context(cfg, frame, str(manifest_path)), frame


def train_run(cfg: Config, manifest_path: Optional[str | Path], out_dir: str | Path,
              progress: Optional[Callback] = None, *, trainer_cls: type[Trainer] = Trainer) -> RunDir:
    """Train one model into `out_dir` (resuming it when unfinished) and write the complete run directory."""
    run = RunDir(out_dir)
    cfg, combined = _sources(cfg, manifest_path)
    if combined is not None:  # data.manifests: the combined rows become the run's own manifest
        manifest_path = run.path.resolve() / COMBINED_MANIFEST
    manifest_path = _manifest_or_error(cfg, manifest_path)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, manifest=str(Path(manifest_path).resolve())))
    cfg, frame = _run_frame(cfg, manifest_path, combined)  # before the resume check: the saved config has it
    dist = D.init_distributed()
    resume = D.broadcast_object(_resumable(run, cfg) if dist.is_main else False, dist)
    seed_everything(cfg.seed)
    data = load_run_data(cfg, manifest_path, frame=frame)
    device = resolve_device(cfg.train.device)
    model = build_model(cfg, data.labels, train_labels=data.train["label"].tolist(),
                        auxiliary_classes=auxiliary_classes(cfg, data.train))
    cached = feature_caches(model, cfg)
    make_plan(cfg, data, model, cached, dist.world_size).raise_problems()
    if cached:
        data = fill_caches(cached, data, dist, progress, speeds=tuple(cfg.data.speed_perturb), device=device,
                           augmented=("train", "dev") if cfg.train.refit_on_dev else ("train",))
    info = RunInfo(kind="model", task=cfg.task, labels=data.labels,
                   attributes=list(cfg.data.attributes) if has_attributes(cfg.task) else [],
                   modality=cfg.modality, complete=False,
                   extra={"n_train": len(data.train), "n_dev": len(data.dev), "n_test": len(data.test),
                          "skipped_clips": len(data.screen.dropped), "world_size": dist.world_size})
    if dist.is_main:
        if not resume:
            shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
            run.path.mkdir(parents=True, exist_ok=True)
            provenance = {}
            if combined is not None:
                write_combined(combined, manifest_path)
                provenance["manifests"] = sources_provenance(cfg.data.manifests)
            write_run_config(run.config_path, dataclasses.asdict(cfg), {**manifest_provenance(manifest_path), **provenance})
        write_dropped(run, info, data)
        run.write_info(info)
        if data.screen.dropped:
            atomic_write_text(run.path / "skipped_clips.json", json.dumps(data.screen.dropped, indent=2))
    D.barrier(dist)
    _emit(progress, dist, RunStarted(resume=resume, n_train=len(data.train), n_dev=len(data.dev),
                                     n_test=len(data.test), skipped=data.dropped.summary()))
    train_set = EmotionDataset(data.train, cfg, data.labels, training=True, durations=data.durations["train"], cached=cached)
    dev_set = EmotionDataset(data.dev, cfg, data.labels, training=False, durations=data.durations["dev"], cached=cached)
    trainer = trainer_cls(cfg, model, data.labels, device=device, dist=dist, info=info, progress=progress,
                          checkpoint_dir=run.checkpoint_dir, log_path=run.train_log_path)
    trainer.fit(train_set, dev_set)
    refit = refit_on_dev(trainer, cfg, data, cached, run, progress, trainer_cls=trainer_cls) if cfg.train.refit_on_dev else None
    if dist.is_main:
        finish(trainer, cfg, data, run, info, cached, refit)
    D.barrier(dist)
    return run


def dry_run(cfg: Config, manifest_path: Optional[str | Path]) -> Plan:
    """The plan of `train_run(cfg, manifest)` without training or writing anything (see training/plan.py)."""
    cfg, combined = _sources(cfg, manifest_path)
    manifest_path = "data.manifests" if combined is not None else _manifest_or_error(cfg, manifest_path)
    cfg, frame = _run_frame(cfg, manifest_path, combined)
    data = load_run_data(cfg, manifest_path, frame=frame)
    model = build_model(cfg, data.labels, train_labels=data.train["label"].tolist(),
                        auxiliary_classes=auxiliary_classes(cfg, data.train))
    return make_plan(cfg, data, model, feature_caches(model, cfg), D.init_distributed().world_size)


@dataclasses.dataclass
class Refit:
    """The second phase of train.refit_on_dev: its trainer and the number of rows it trained on."""

    trainer: Trainer
    n_rows: int


def refit_on_dev(selected: Trainer, cfg: Config, data: RunData, cached: list[CachedInput], run: RunDir,
                 progress: Optional[Callback] = None, *, trainer_cls: type[Trainer] = Trainer) -> Refit:
    """A fresh model from the same seed trained on train+dev for the epochs the dev set selected, with its own
    checkpoints (run/checkpoints/refit), so a crash resumes the refit itself."""
    epochs = max(1, selected.best_epoch)
    frame, durations = refit_rows(cfg, data)
    seed_everything(cfg.seed)
    model = build_model(cfg, data.labels, train_labels=frame["label"].tolist(),
                        auxiliary_classes=auxiliary_classes(cfg, data.train))
    trainer = trainer_cls(cfg, model, data.labels, device=selected.device, dist=selected.dist, info=selected.info,
                          progress=progress, checkpoint_dir=run.checkpoint_dir / "refit",
                          log_path=run.path / "refit_train_log.csv")
    _emit(progress, selected.dist, RefitStarted(epochs=epochs, n_train=len(frame)))
    logger.info("refit on train+dev: %d rows for %d epoch(s) (the dev-selected epoch)", len(frame), epochs)
    trainer.fit(EmotionDataset(frame, cfg, data.labels, training=True, durations=durations, cached=cached), None,
                epochs=epochs)
    return Refit(trainer, len(frame))


def finish(trainer: Trainer, cfg: Config, data: RunData, run: RunDir, info: RunInfo,
           cached: list[CachedInput], refit: Optional[Refit] = None) -> None:
    """Write model/, predictions, metrics.json and run.json (complete, last); drop the checkpoints.

    With a refit model, dev predictions stay those of the dev-selected model (saved to model_dev_selected/),
    test predictions and model/ are the refit model's.
    """
    trainer.load_best()
    if refit is not None:
        refit.trainer.load_best()
    preds: dict[str, pd.DataFrame] = {}
    for split in ("dev", "test"):
        frame = getattr(data, split)
        if len(frame) == 0:
            continue
        runner = refit.trainer if refit is not None and split == "test" else trainer
        preds[split] = predict_frame(runner, frame, cfg, cached=cached, stage=split)
        unpredicted = set(frame["utt_id"].astype(str)) - set(preds[split]["utt_id"].astype(str))
        data.dropped.add(split, UNREADABLE_AUDIO, sorted(unpredicted))  # failed to decode: no prediction
        columns = output_columns(info.task, info.labels, info.attributes)
        bad = non_finite_ids(preds[split]["utt_id"].tolist(), preds[split][columns].to_numpy())
        if bad:
            raise TrainError(f"the trained model's {split} outputs are not finite for {len(bad)} of "
                             f"{len(preds[split])} rows (e.g. '{bad[0]}'), so no predictions were written and run "
                             f"'{run.path}' stays unfinished. Check the learning rates (optim.lr_head, "
                             "optim.lr_encoder) and the data of those rows, then train again")
    if refit is not None:
        save_model(trainer.module, cfg, data.labels, run.path / "model_dev_selected")
    save_model(refit.trainer.module if refit is not None else trainer.module, cfg, data.labels, run.model_dir)
    metrics: dict[str, Any] = {}
    for split, pred in preds.items():
        run.write_predictions(split, pred)
        metrics[split] = compute_metrics(pred, info)
    metrics["best_epoch"] = trainer.best_epoch
    metrics["selection_metric"] = trainer.metric
    if refit is not None:
        refit_info = {"test_model": "refit_on_dev", "refit_epochs": refit.trainer.epoch,
                      "n_refit_train": refit.n_rows, "dev_model": "model_dev_selected"}
        metrics.update(refit_info)
        info.extra.update(refit_info)
    run.write_metrics(metrics)
    atomic_write_text(run.train_log_path, pd.DataFrame(trainer.log).to_csv(index=False))
    if cfg.train.report:
        from fusion_ser.evaluation.report import evaluate_run

        evaluate_run(run.path, allow_incomplete=True, seed=cfg.seed)
    shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
    write_dropped(run, info, data)
    info.extra.update({"best_epoch": trainer.best_epoch, "epochs_run": trainer.epoch})
    info.complete = True
    run.write_info(info)


def _scalar_summary(values: list[dict]) -> dict[str, dict[str, float]]:
    keys = sorted({k for v in values for k, x in v.items() if isinstance(x, (int, float)) and not isinstance(x, bool)})
    out = {}
    for k in keys:
        xs = [float(v[k]) for v in values if k in v]
        if len(xs) == len(values):
            out[k] = {"mean": float(np.mean(xs)), "std": float(np.std(xs))}
    return out


def train_cv(cfg: Config, manifest_path: Optional[str | Path], out_dir: str | Path,
             progress: Optional[Callback] = None, *, trainer_cls: type[Trainer] = Trainer) -> dict[str, Any]:
    """Speaker-independent k-fold: train every fold into out/fold_k (finished folds are kept) and average.

    Writes out/cv_metrics.json with the per-fold metrics and their mean and std, and returns it.
    """
    manifest_path = _manifest_or_error(cfg, manifest_path)
    dist = D.init_distributed()
    df = read_manifest(manifest_path)
    if "fold" not in df.columns or df["fold"].isna().all():
        raise FoldError(f"{manifest_path}: no 'fold' column; cross-validation needs speaker-independent folds "
                        "(prepare the manifest with folds)")
    n_folds = int(df["fold"].max()) + 1
    out = Path(out_dir)
    per_fold = []
    for k in range(n_folds):
        fold_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, fold=k))
        run = RunDir(out / f"fold_{k}")
        _emit(progress, dist, FoldStarted(fold=k, folds=n_folds))
        if not run.is_complete():
            train_run(fold_cfg, manifest_path, run.path, progress, trainer_cls=trainer_cls)
        per_fold.append(run.read_metrics())
    summary: dict[str, Any] = {"folds": n_folds, "per_fold": per_fold}
    for split in ("dev", "test"):
        vals = [m[split] for m in per_fold if split in m]
        if len(vals) == n_folds:
            summary[split] = _scalar_summary(vals)
    if dist.is_main:
        atomic_write_text(out / "cv_metrics.json", json.dumps(summary, indent=2, default=float))
    return summary
