"""The one trainer of the project: audio, text and fusion models all train, checkpoint, resume and predict here.

`train_run(cfg, manifest, out_dir)` reads the manifest, builds the model, trains with AdamW (separate encoder and
head learning rates, warm-up + schedule, accumulation, clipping, mixed precision, length-bucketed batches), selects
the epoch on the whole dev set, and writes the run directory of docs/architecture.md. It checkpoints every epoch
(model, optimizer, scheduler, RNG states, best metric, log), so pointing it at an unfinished run dir resumes and
ends with the same metrics as an uninterrupted run. Under torchrun it trains with DDP and rank 0 writes.
`Trainer` exposes SpeechBrain-style hooks (compute_forward, compute_objectives, on_stage_start, on_stage_end,
on_epoch_end) so a subclass can change one stage without copying the loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from fusion_ser.config import Config, config_to_dict, save_config
from fusion_ser.data.dataset import CachedInput, EmotionDataset, ScreenReport, collate, screen_audio
from fusion_ser.data.sampler import BucketBatchSampler
from fusion_ser.data.schema import NON_CLASS_LABELS
from fusion_ser.device import autocast, resolve_device, resolve_precision, seed_everything, to_device
from fusion_ser.errors import FusionSerError
from fusion_ser.models import ModelOutput, build_model, model_encoders, save_model, set_class_weights
from fusion_ser.rundir import RunDir, RunInfo, atomic_write_text, attr_pred_columns, manifest_provenance, prob_columns
from fusion_ser.training import distributed as D
from fusion_ser.training.averaging import WeightEMA
from fusion_ser.training.losses import class_weights

logger = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]
# Options that change how a run executes but not what it computes: they may differ when resuming.
RUNTIME_KEYS = {("train", "device"), ("train", "num_workers"), ("train", "cache_dir"), ("train", "log_every"),
                ("train", "report"), ("data", "manifest")}


class TrainError(FusionSerError):
    """A training request that cannot run as given (no rows for a split, run dir in the way, config mismatch)."""


@dataclasses.dataclass
class RunData:
    """The rows a run trains, selects and tests on, with their class list."""

    labels: list[str]
    train: pd.DataFrame
    dev: pd.DataFrame
    test: pd.DataFrame
    durations: dict[str, Optional[np.ndarray]]
    screen: ScreenReport


# --------------------------------------------------------------------------------------------------------- data


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
        from fusion_ser.data.folds import apply_fold

        df = apply_fold(df, cfg.data.fold)
    split = df["split"].astype(str)
    train, dev, test = df[split == "train"], df[split == "dev"], df[split == "test"]
    if cfg.task == "attributes":
        missing = [a for a in cfg.data.attributes if a not in df.columns]
        if missing:
            raise TrainError(f"{source}: no column(s) {missing} for the attributes task")
        train = train[_has_attributes(train, cfg.data.attributes)]
        dev_known = dev[_has_attributes(dev, cfg.data.attributes)]
        what = f"rows with any of {list(cfg.data.attributes)}"
        labels: list[str] = []
    else:
        labels = select_labels(cfg, train)
        is_class = train["label"].isin(labels)
        if cfg.loss.type == "soft_ce":
            soft_cols = [f"p_{c}" for c in labels if f"p_{c}" in df.columns]
            if not soft_cols:
                raise TrainError(f"{source}: loss.type=soft_ce needs soft-label columns p_<label> "
                                 f"(e.g. p_{labels[0] if labels else 'neutral'}); none found. Use loss.type=weighted_ce")
            if cfg.data.keep_no_agreement:
                mass = train[soft_cols].apply(pd.to_numeric, errors="coerce").fillna(0).sum(axis=1)
                is_class = is_class | ((train["label"] == "no_agreement") & (mass > 0))
        train = train[is_class]
        dev_known = dev[dev["label"].isin(labels)]
        what = f"rows labelled with one of {labels}" if labels else "labelled rows"
        if len(labels) < 2 and len(train):
            raise TrainError(f"{source}: the train split has {len(labels)} class(es) {labels}; a classifier needs 2 or "
                             "more (set data.labels or check the label column)")
    fold_note = f" (data.fold={cfg.data.fold})" if cfg.data.fold is not None else ""
    if len(train) == 0:
        raise TrainError(f"{source}: no train {what}{fold_note}; the manifest needs split=train rows for task '{cfg.task}'")
    if len(dev_known) == 0:
        raise TrainError(f"{source}: no dev {what}{fold_note}; the manifest needs split=dev rows to select the model "
                         "(or use --fold K with a fold column)")
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
            raise TrainError(message)
        logger.warning("%s (the fusion model predicts those rows from audio alone)", message)
    return n


def load_run_data(cfg: Config, manifest_path: str | Path) -> RunData:
    """Read the manifest and pick the rows of each split for cfg.task/modality, screening unreadable audio."""
    from fusion_ser.data.manifest import read_manifest

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
            raise TrainError(f"{manifest_path}: no readable audio left in the {'train' if len(frames['train']) == 0 else 'dev'} "
                             f"split ({screen.summary()})")
    return RunData(labels, frames["train"], frames["dev"], frames["test"], durations, screen)


# ------------------------------------------------------------------------------------------------ optimisation


def param_groups(model: nn.Module, cfg: Config) -> list[dict[str, Any]]:
    """AdamW groups: fine-tuned encoder parameters at optim.lr_encoder, the rest (pooling, head, fusion) at lr_head."""
    model = getattr(model, "module", model)
    # A frozen backbone's own small trainable parts (e.g. layer weights) learn at the head's rate.
    enc_names = [n for n, e in model_encoders(model).items() if not e.is_frozen]
    enc, head = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (enc if any(name == n or name.startswith(n + ".") for n in enc_names) else head).append(p)
    groups = []
    if enc:
        groups.append({"params": enc, "lr": cfg.optim.lr_encoder, "name": "encoder"})
    if head:
        groups.append({"params": head, "lr": cfg.optim.lr_head, "name": "head"})
    if not groups:
        raise TrainError("the model has no trainable parameters; check audio_encoder.finetune / text_encoder.finetune")
    return groups


def lr_lambda(schedule: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Multiplier of the base lr at an optimizer step: linear warm-up, then linear decay, cosine decay or constant."""

    def f(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return f


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train plus all buffers: what a checkpoint must hold (frozen weights are rebuilt)."""
    model = getattr(model, "module", model)
    names = {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in names}


def higher_is_better(metric: str) -> bool:
    """Selection direction: losses and errors go down, everything else (F1, UAR, CCC) goes up."""
    return not (metric.startswith("mse") or metric.endswith("loss"))


# --------------------------------------------------------------------------------------------------- prediction


def prediction_frame(df: pd.DataFrame, cfg: Config, labels: list[str], utt_ids: list[str],
                     outputs: np.ndarray) -> pd.DataFrame:
    """Run-dir prediction format from model outputs (probabilities (N, K) or attribute values (N, A)) in df order."""
    truth = df.set_index(df["utt_id"].astype(str))
    out = pd.DataFrame({"utt_id": utt_ids})
    if cfg.task == "attributes":
        attrs = list(cfg.data.attributes)
        for a in attrs:
            if a in truth.columns and pd.to_numeric(truth[a], errors="coerce").notna().any():
                out[a] = pd.to_numeric(truth.loc[utt_ids, a], errors="coerce").to_numpy()
        for j, col in enumerate(attr_pred_columns(attrs)):
            out[col] = outputs[:, j] if len(utt_ids) else []
        return out
    if "label" in truth.columns and (truth["label"].astype(str) != "").any():
        out["label"] = truth.loc[utt_ids, "label"].astype(str).to_numpy()
    out["pred"] = [labels[i] for i in outputs.argmax(axis=1)] if len(utt_ids) else []
    for j, col in enumerate(prob_columns(labels)):
        out[col] = outputs[:, j] if len(utt_ids) else []
    return out


@torch.no_grad()
def run_inference(model: nn.Module, loader: DataLoader, cfg: Config, device: torch.device,
                  dtype: torch.dtype) -> tuple[list[str], np.ndarray, float, int]:
    """Outputs (probabilities or attribute values) for every row the loader yields, the mean loss, and skipped count."""
    model = getattr(model, "module", model)
    was_training = model.training
    model.eval()
    utt_ids: list[str] = []
    outputs: list[np.ndarray] = []
    loss_sum, loss_n, skipped = 0.0, 0, 0
    for batch in loader:
        skipped += batch["skipped"]
        if not batch["size"]:
            continue
        batch = to_device(batch, device)
        with autocast(device, dtype):
            out: ModelOutput = model(batch)
        if cfg.task == "attributes":
            values = out.attributes.float()
        else:
            values = torch.softmax(out.logits.float(), dim=-1)
        outputs.append(values.cpu().numpy())
        utt_ids.extend(batch["utt_id"])
        if out.loss is not None:
            loss_sum += float(out.loss) * batch["size"]
            loss_n += batch["size"]
    model.train(was_training)
    width = len(cfg.data.attributes) if cfg.task == "attributes" else len(getattr(model, "labels", []))
    stacked = np.concatenate(outputs) if outputs else np.zeros((0, width), dtype=np.float32)
    return utt_ids, stacked, (loss_sum / loss_n if loss_n else float("nan")), skipped


def eval_loader(dataset: EmotionDataset, cfg: Config) -> DataLoader:
    """Batches sorted by length (least padding), in a fixed order."""
    sampler = BucketBatchSampler(dataset.lengths(), cfg.train.batch_size, shuffle=False)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.train.num_workers)


def predict_frame(model: nn.Module, df: pd.DataFrame, cfg: Config, device: Optional[torch.device] = None, *,
                  cached: Optional[list[CachedInput]] = None) -> pd.DataFrame:
    """Predict every row of a manifest-like frame (utt_id, path and/or text) in the run-dir prediction format.

    Rows whose audio cannot be read are logged and left out of the result.
    """
    base = getattr(model, "module", model)
    labels = list(getattr(base, "labels", []))
    if cfg.task == "categorical" and not labels:
        raise TrainError("the model has no `labels` attribute; models must keep their class order as `labels`")
    device = device or resolve_device(cfg.train.device)
    dtype = resolve_precision(device, cfg.train.precision)
    frame = df.reset_index(drop=True).copy()
    for col in ("label", "text"):
        if col not in frame.columns:
            frame[col] = ""
    frame["utt_id"] = frame["utt_id"].astype(str)
    if cfg.task == "attributes":
        for a in cfg.data.attributes:
            if a not in frame.columns:
                frame[a] = np.nan
    durations = None
    n_rows = len(frame)
    if cfg.modality in ("audio", "both"):
        frame, durations, _ = screen_audio(frame, cfg.data.min_seconds)
    dataset = EmotionDataset(frame, cfg, labels, training=False, durations=durations, cached=cached)
    base.to(device)
    utt_ids, outputs, _, skipped = run_inference(base, eval_loader(dataset, cfg), cfg, device, dtype)
    skipped += n_rows - len(frame)
    if skipped:
        logger.warning("%d of %d clips could not be read and have no prediction", skipped, n_rows)
    order = {u: i for i, u in enumerate(frame["utt_id"])}
    pred = prediction_frame(frame, cfg, labels, utt_ids, outputs)
    return pred.sort_values("utt_id", key=lambda s: s.map(order)).reset_index(drop=True)


# ------------------------------------------------------------------------------------------------------ trainer


class Trainer:
    """Fits one model: the epoch loop, dev selection, early stopping and per-epoch checkpoints.

    Hooks for subclasses: compute_forward, compute_objectives, on_stage_start, on_stage_end, on_epoch_end.
    """

    def __init__(self, cfg: Config, model: nn.Module, labels: list[str], *, device: torch.device,
                 dist: D.DistInfo, run: RunDir, info: RunInfo, progress: Optional[Progress] = None,
                 checkpoint_dir: Optional[Path] = None, log_path: Optional[Path] = None):
        self.cfg = cfg
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else run.checkpoint_dir
        self.log_path = Path(log_path) if log_path is not None else run.train_log_path
        self.labels = labels
        self.device = device
        self.dtype = resolve_precision(device, cfg.train.precision)
        self.dist = dist
        self.run = run
        self.info = info
        self.progress = progress
        self.module = model.to(device)
        self.model = D.wrap_model(self.module, dist, device)
        self.optimizer = torch.optim.AdamW(param_groups(self.module, cfg), weight_decay=cfg.optim.weight_decay)
        self.ema = WeightEMA(self.module, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype == torch.float16 else None
        self.scheduler: Optional[torch.optim.lr_scheduler.LambdaLR] = None
        self.metric = cfg.train.selection_metric
        if self.metric == "auto":
            self.metric = "macro_f1" if cfg.task == "categorical" else "ccc_mean"
        self.epoch = 0  # epochs completed
        self.best_score: Optional[float] = None
        self.best_epoch = 0
        self.bad_epochs = 0
        self.log: list[dict[str, Any]] = []

    # hooks -----------------------------------------------------------------------------------------------------

    def compute_forward(self, batch: dict[str, Any], stage: str) -> ModelOutput:
        """Run the model on a batch (stage: train | dev)."""
        with autocast(self.device, self.dtype):
            return self.model(batch)

    def compute_objectives(self, output: ModelOutput, batch: dict[str, Any], stage: str) -> torch.Tensor:
        """The loss to minimise; by default the model's own (its criterion holds the train-split class weights)."""
        if output.loss is None:
            raise TrainError("the model returned no loss for a batch with targets; its forward must set ModelOutput.loss")
        return output.loss

    def on_stage_start(self, stage: str, epoch: int) -> None:
        """Called before the train pass and before the dev evaluation of each epoch (epoch counts from 1)."""

    def on_stage_end(self, stage: str, epoch: int, stats: dict[str, Any]) -> None:
        """Called after each stage with its figures (train: loss, utt/s; dev: metrics)."""

    def on_epoch_end(self, epoch: int, row: dict[str, Any]) -> None:
        """Called after the epoch's checkpoint is written (a safe point to stop)."""

    # loop ------------------------------------------------------------------------------------------------------

    def _emit(self, event: dict[str, Any]) -> None:
        if self.progress is not None and self.dist.is_main:
            self.progress(event)

    def fit_frame_statistics(self, train_set: EmotionDataset) -> None:
        """Per-dimension mean/std of the encoder's frames over the train set (uncropped), for head.standardize_frames."""
        norm = getattr(self.module, "frame_norm", None)
        if norm is None or (self.checkpoint_dir / "last.pt").is_file():  # a resumed run restores its statistics
            return
        was_training = self.module.training
        self.module.eval()
        frames = EmotionDataset(train_set.df, self.cfg, self.labels, training=False, durations=train_set.durations,
                                cached=list(train_set.cached.values()))
        total = sq = None
        count = 0.0
        with torch.no_grad():
            for batch in eval_loader(frames, self.cfg):
                if not batch["size"]:
                    continue
                enc = self.module.encoder(to_device(batch, self.device))
                f = enc.features.double()
                m = enc.mask.to(f.device).double().unsqueeze(-1)
                s1, s2 = (f * m).sum(dim=(0, 1)), (f * f * m).sum(dim=(0, 1))
                total, sq = (s1, s2) if total is None else (total + s1, sq + s2)
                count += float(m.sum())
        mean = total / count
        std = (sq / count - mean * mean).clamp(min=0).sqrt()
        norm.set_statistics(mean.float(), std.float())
        self.module.train(was_training)
        logger.info("frame statistics from %d frames of %d train clips", int(count), len(frames))

    def fit(self, train_set: EmotionDataset, dev_set: Optional[EmotionDataset], epochs: Optional[int] = None) -> None:
        """Train for `epochs` (default cfg.train.epochs) or until early stopping, resuming from the checkpoint if any.

        Without a dev set (the refit on train+dev) nothing is evaluated and the last epoch is the selected one.
        """
        cfg = self.cfg
        epochs = cfg.train.epochs if epochs is None else int(epochs)
        self.epochs_target = epochs
        self.fit_frame_statistics(train_set)
        sampler = self._train_sampler(train_set)
        loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.train.num_workers)
        steps_per_epoch = math.ceil(len(sampler) / cfg.train.grad_accum)
        total = max(1, steps_per_epoch * epochs)
        warmup = int(round(cfg.optim.warmup_ratio * total))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg.optim.schedule, total, warmup))
        self._load_checkpoint()
        dev_loader = eval_loader(dev_set, cfg) if dev_set is not None else None
        while self.epoch < epochs and not self._stopped():
            epoch = self.epoch + 1
            sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            self.on_stage_start("train", epoch)
            train_stats = self._train_epoch(loader, epoch, len(sampler))
            self.on_stage_end("train", epoch, train_stats)
            if dev_set is not None:
                self.on_stage_start("dev", epoch)
                dev_stats = self._evaluate(dev_loader, dev_set)
                self.on_stage_end("dev", epoch, dev_stats)
                improved = self._select(dev_stats, epoch)
            else:
                dev_stats, improved, self.best_epoch = {}, True, epoch
            row = {"epoch": epoch, **{f"train_{k}": v for k, v in train_stats.items()},
                   **{f"dev_{k}": v for k, v in dev_stats.items()},
                   **{f"lr_{g.get('name', i)}": g["lr"] for i, g in enumerate(self.optimizer.param_groups)},
                   "best": improved}
            self.log.append(row)
            self.epoch = epoch
            self._save_checkpoint(improved)
            # the refit has no dev figures: its epochs are reported as a separate event kind
            self._emit({"event": "epoch_end" if dev_set is not None else "refit_epoch_end", "epoch": epoch,
                        "epochs": epochs, "metric": self.metric,
                        "train_loss": train_stats["loss"], "utt_per_s": train_stats["utt_per_s"],
                        "dev": dev_stats.get(self.metric), "best": improved, "best_epoch": self.best_epoch})
            self.on_epoch_end(epoch, row)

    def _stopped(self) -> bool:
        patience = self.cfg.train.early_stopping
        return patience > 0 and self.bad_epochs >= patience

    def _train_sampler(self, train_set: EmotionDataset) -> BucketBatchSampler:
        lengths = train_set.lengths()
        if not self.cfg.train.bucketing:
            lengths = np.zeros_like(lengths)  # equal lengths: the sampler's pools become plain random batches
        return BucketBatchSampler(lengths, self.cfg.train.batch_size, shuffle=True, seed=self.cfg.seed,
                                  num_replicas=self.dist.world_size, rank=self.dist.rank)

    def _train_epoch(self, loader: DataLoader, epoch: int, n_batches: int) -> dict[str, Any]:
        cfg = self.cfg
        accum = cfg.train.grad_accum
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, n_utts, skipped, idle = 0.0, 0, 0, 0
        start, cpu_start = time.perf_counter(), time.process_time()
        self._emit({"event": "epoch_start", "epoch": epoch, "epochs": getattr(self, "epochs_target", cfg.train.epochs),
                    "steps": n_batches})
        for i, batch in enumerate(loader):
            skipped += batch["skipped"]
            last_of_group = (i + 1) % accum == 0 or i + 1 == n_batches
            if self._all_ranks_have_data(batch["size"]):
                batch = to_device(batch, self.device)
                sync = last_of_group or not self.dist.enabled or not hasattr(self.model, "no_sync")
                ctx = self.model.no_sync() if not sync else contextlib.nullcontext()
                with ctx:
                    out = self.compute_forward(batch, "train")
                    loss = self.compute_objectives(out, batch, "train")
                    scaled = loss / accum
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                loss_sum += float(loss.detach()) * batch["size"]
                n_utts += batch["size"]
            elif batch["size"]:
                idle += batch["size"]
            if last_of_group:
                self._step()
            if self.progress is not None and (i + 1) % max(1, cfg.train.log_every) == 0:
                elapsed = time.perf_counter() - start
                self._emit({"event": "step", "epoch": epoch, "step": i + 1, "steps": n_batches,
                            "loss": loss_sum / max(1, n_utts), "utt_per_s": n_utts / max(elapsed, 1e-9)})
        loss_sum, n_utts, skipped, idle = D.all_reduce_sum([loss_sum, n_utts, skipped, idle], self.dist)
        elapsed = time.perf_counter() - start
        if skipped:
            logger.warning("epoch %d: %d clip(s) could not be read and were skipped", epoch, int(skipped))
        if idle:
            logger.warning("epoch %d: %d readable clip(s) sat out a step because another rank's whole batch was "
                           "unreadable (every rank must take part in each gradient all-reduce)", epoch, int(idle))
        return {"loss": loss_sum / max(1.0, n_utts), "utt_per_s": n_utts / max(elapsed, 1e-9),
                "seconds": elapsed, "cpu_seconds": time.process_time() - cpu_start, "skipped": int(skipped)}

    def _all_ranks_have_data(self, size: int) -> bool:
        """Whether every rank has clips in this batch. A rank whose batch failed to decode cannot skip alone: the
        others would wait for its gradients, so under DDP the whole step sits out."""
        if not self.dist.enabled:
            return size > 0
        return D.all_reduce_sum([1.0 if size else 0.0], self.dist)[0] >= self.dist.world_size

    def _step(self) -> None:
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.grad_clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.module)

    def averaged(self) -> contextlib.AbstractContextManager:
        """The weights to evaluate and keep: the EMA when optim.ema_decay > 0, else the raw ones."""
        return self.ema.applied(self.module) if self.ema is not None else contextlib.nullcontext()

    def _evaluate(self, loader: DataLoader, dataset: EmotionDataset) -> dict[str, Any]:
        """Metrics on the WHOLE dev set (rank 0 evaluates; the figures are broadcast to every rank)."""
        stats: dict[str, Any] = {}
        if self.dist.is_main:
            from fusion_ser.evaluation.metrics import compute_metrics

            with self.averaged():
                utt_ids, outputs, loss, _ = run_inference(self.module, loader, self.cfg, self.device, self.dtype)
            frame = prediction_frame(dataset.df, self.cfg, self.labels, utt_ids, outputs)
            metrics = compute_metrics(frame, self.info)
            stats = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            stats["loss"] = loss
        return D.broadcast_object(stats, self.dist)

    def _select(self, stats: dict[str, Any], epoch: int) -> bool:
        if self.metric not in stats:
            raise TrainError(f"train.selection_metric '{self.metric}' is not among the dev metrics "
                             f"{sorted(stats)}; pick one of them")
        score = stats[self.metric]
        better = self.best_score is None or (score > self.best_score if higher_is_better(self.metric) else score < self.best_score)
        if better:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
        else:
            self.bad_epochs += 1
        return better

    # checkpoints -----------------------------------------------------------------------------------------------

    def _save_checkpoint(self, improved: bool) -> None:
        ckpt = self.checkpoint_dir
        if self.dist.is_main:
            ckpt.mkdir(parents=True, exist_ok=True)
            if improved:
                with self.averaged():
                    _atomic_save(trainable_state(self.module), ckpt / "best.pt")
            state = {
                "epoch": self.epoch,
                "model": trainable_state(self.module),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "best_score": self.best_score,
                "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs,
                "log": self.log,
            }
            _atomic_save(state, ckpt / "last.pt")
            atomic_write_text(self.log_path, pd.DataFrame(self.log).to_csv(index=False))
        D.barrier(self.dist)
        _atomic_save(_rng_state(), ckpt / f"rng_rank{self.dist.rank}.pt")
        D.barrier(self.dist)

    def _load_checkpoint(self) -> None:
        path = self.checkpoint_dir / "last.pt"
        if not path.is_file():
            return
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.module.load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"], self.device)
        self.epoch = state["epoch"]
        self.best_score, self.best_epoch, self.bad_epochs = state["best_score"], state["best_epoch"], state["bad_epochs"]
        self.log = list(state["log"])
        rng = self.checkpoint_dir / f"rng_rank{self.dist.rank}.pt"
        if rng.is_file():
            _set_rng_state(torch.load(rng, map_location="cpu", weights_only=False))
        logger.info("resumed %s after epoch %d (best %s %.4f at epoch %d)", self.run.path, self.epoch,
                    self.metric, self.best_score if self.best_score is not None else float("nan"), self.best_epoch)

    def load_best(self) -> None:
        """Put the selected epoch's weights into the model."""
        best = self.checkpoint_dir / "best.pt"
        if best.is_file():
            self.module.load_state_dict(torch.load(best, map_location="cpu", weights_only=False), strict=False)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


# --------------------------------------------------------------------------------------------------- entry points


def _config_diff(a: dict, b: dict, prefix: tuple = ()) -> list[str]:
    keys = set(a) | set(b)
    out = []
    for k in sorted(keys):
        path = prefix + (k,)
        if path in RUNTIME_KEYS:
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(_config_diff(va, vb, path))
        elif va != vb:
            out.append(f"{'.'.join(path)}: {vb!r} (run) vs {va!r} (now)")
    return out


def _prepare_run_dir(run: RunDir, cfg: Config) -> bool:
    """True when `run` holds an unfinished training of the same config to resume; raise when it is in the way."""
    if not run.path.exists() or not any(run.path.iterdir()):
        return False
    if not (run.path / "run.json").is_file():
        raise TrainError(f"output folder '{run.path}' exists and is not a run directory; choose another -o")
    if run.is_complete():
        raise TrainError(f"run '{run.path}' is already complete; choose another -o to train again")
    if not (run.checkpoint_dir / "last.pt").is_file():
        return False
    import yaml

    saved = yaml.safe_load(run.config_path.read_text()) or {}
    saved.pop("_run", None)
    diff = _config_diff(config_to_dict(cfg), saved)
    if diff:
        raise TrainError(f"run '{run.path}' was started with a different config, so it cannot be resumed: "
                         + "; ".join(diff[:5]) + ". Use the same config, or another -o")
    return True


def feature_caches(model: nn.Module, cfg: Config) -> list[CachedInput]:
    """A FeatureCache for each frozen, cacheable encoder of the model when train.cache_features is on."""
    if not cfg.train.cache_features:
        return []
    from fusion_ser.training.cache import FeatureCache

    out = []
    for enc in model_encoders(model).values():
        if enc.is_frozen and enc.cache_id() is not None:
            cache = FeatureCache(cfg.train.cache_dir, sample_rate=cfg.data.sample_rate, min_seconds=cfg.data.min_seconds,
                                 max_seconds=cfg.data.max_eval_seconds)
            out.append(CachedInput(enc.modality, enc, cache))
    return out


def fill_caches(cached: list[CachedInput], data: RunData, dist: D.DistInfo,
                progress: Optional[Progress] = None, *, speeds: tuple[float, ...] = (),
                augmented: tuple[str, ...] = ("train",)) -> RunData:
    """Compute missing cache entries (rank 0 first, then the others find them) and drop rows that failed to encode.

    Audio rows of the `augmented` splits also get one entry per speed-perturbation factor other than 1.0.
    """
    failed: set[str] = set()
    extra_speeds = [float(f) for f in dict.fromkeys(speeds) if float(f) != 1.0]
    for c in cached:
        frames = [data.train, data.dev, data.test]
        items = [{"utt_id": str(r.utt_id), "path": r.path} if c.modality == "audio" else
                 {"utt_id": str(r.utt_id), "text": str(r.text)} for f in frames for r in f.itertuples()]
        if c.modality == "audio":
            items += [{"utt_id": str(r.utt_id), "path": r.path, "speed": f}
                      for f in extra_speeds for s in augmented for r in getattr(data, s).itertuples()]
        for turn in ([0, 1] if dist.enabled else [0]):
            if (turn == 0) == dist.is_main:
                if progress is not None and dist.is_main:
                    progress({"event": "cache_start", "modality": c.modality, "items": len(items)})
                tick = (lambda n: progress({"event": "cache_step", "n": n})) if progress and dist.is_main else None
                report = c.cache.ensure(c.encoder, items, progress=tick)
                failed.update(u for u, _ in report.failed)
                if dist.is_main:
                    logger.info("feature cache (%s): %d computed, %d reused, %d rebuilt, %d failed", c.modality,
                                report.computed, report.reused, report.rebuilt, len(report.failed))
            D.barrier(dist)
    if not failed:
        return data
    for u in failed:
        data.screen.dropped.setdefault(u, "could not be encoded for the feature cache")
    for s in ("train", "dev", "test"):
        f = getattr(data, s)
        mask = ~f["utt_id"].astype(str).isin(failed).to_numpy()
        setattr(data, s, f[mask].reset_index(drop=True))
        if data.durations[s] is not None:
            data.durations[s] = data.durations[s][mask]
    return data


def train_run(cfg: Config, manifest_path: Optional[str | Path], out_dir: str | Path,
              progress: Optional[Progress] = None, *, trainer_cls: type[Trainer] = Trainer) -> RunDir:
    """Train one model into `out_dir` (resuming it when unfinished) and write the complete run directory."""
    manifest_path = manifest_path or cfg.data.manifest
    if not manifest_path:
        raise TrainError("no manifest given: pass --manifest M.csv or set data.manifest in the config")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, manifest=str(Path(manifest_path).resolve())))
    dist = D.init_distributed()
    run = RunDir(out_dir)
    resume = _prepare_run_dir(run, cfg) if dist.is_main else False
    resume = D.broadcast_object(resume, dist)
    seed_everything(cfg.seed)
    data = load_run_data(cfg, manifest_path)
    device = resolve_device(cfg.train.device)
    model = build_model(cfg, data.labels)
    if cfg.task == "categorical" and cfg.loss.type in ("weighted_ce", "focal", "soft_ce"):
        set_class_weights(model, class_weights(data.train["label"].astype(str).tolist(), data.labels))
    cached = feature_caches(model, cfg)
    if cached:
        data = fill_caches(cached, data, dist, progress, speeds=tuple(cfg.data.speed_perturb),
                           augmented=("train", "dev") if cfg.train.refit_on_dev else ("train",))
    info = RunInfo(kind="model", task=cfg.task, labels=data.labels,
                   attributes=list(cfg.data.attributes) if cfg.task == "attributes" else [],
                   modality=cfg.modality, complete=False,
                   extra={"n_train": len(data.train), "n_dev": len(data.dev), "n_test": len(data.test),
                          "skipped_clips": len(data.screen.dropped), "world_size": dist.world_size})
    if dist.is_main:
        if not resume:
            shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
            run.path.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run.config_path, extra=manifest_provenance(manifest_path))
        run.write_info(info)
        if data.screen.dropped:
            atomic_write_text(run.path / "skipped_clips.json", json.dumps(data.screen.dropped, indent=2))
    D.barrier(dist)
    if progress is not None and dist.is_main:
        progress({"event": "start", "resume": resume, "n_train": len(data.train), "n_dev": len(data.dev),
                  "n_test": len(data.test), "skipped": data.screen.summary()})
    train_set = EmotionDataset(data.train, cfg, data.labels, training=True, durations=data.durations["train"], cached=cached)
    dev_set = EmotionDataset(data.dev, cfg, data.labels, training=False, durations=data.durations["dev"], cached=cached)
    trainer = trainer_cls(cfg, model, data.labels, device=device, dist=dist, run=run, info=info, progress=progress)
    trainer.fit(train_set, dev_set)
    refit = None
    if cfg.train.refit_on_dev:
        refit = refit_on_dev(trainer, cfg, data, cached, progress, trainer_cls=trainer_cls)
    if dist.is_main:
        _finish(trainer, cfg, data, run, info, cached, refit)
    D.barrier(dist)
    return run


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


def refit_on_dev(selected: Trainer, cfg: Config, data: RunData, cached: list[CachedInput],
                 progress: Optional[Progress] = None, *, trainer_cls: type[Trainer] = Trainer) -> Trainer:
    """Second phase of train.refit_on_dev: a fresh model from the same seed trained on train+dev for the epochs
    the dev set selected, with its own checkpoints (run/checkpoints/refit), so a crash resumes the refit itself."""
    epochs = max(1, selected.best_epoch)
    frame, durations = refit_rows(cfg, data)
    seed_everything(cfg.seed)
    model = build_model(cfg, data.labels)
    if cfg.task == "categorical" and cfg.loss.type in ("weighted_ce", "focal", "soft_ce"):
        set_class_weights(model, class_weights(frame["label"].astype(str).tolist(), data.labels))
    run = selected.run
    trainer = trainer_cls(cfg, model, data.labels, device=selected.device, dist=selected.dist, run=run,
                          info=selected.info, progress=progress, checkpoint_dir=run.checkpoint_dir / "refit",
                          log_path=run.path / "refit_train_log.csv")
    if progress is not None and selected.dist.is_main:
        progress({"event": "refit", "epochs": epochs, "n_train": len(frame)})
    logger.info("refit on train+dev: %d rows for %d epoch(s) (the dev-selected epoch)", len(frame), epochs)
    trainer.fit(EmotionDataset(frame, cfg, data.labels, training=True, durations=durations, cached=cached), None,
                epochs=epochs)
    trainer.refit_rows = len(frame)
    return trainer


def _finish(trainer: Trainer, cfg: Config, data: RunData, run: RunDir, info: RunInfo,
            cached: list[CachedInput], refit: Optional[Trainer] = None) -> None:
    """Write model/, predictions, metrics.json and run.json (complete, last); drop the checkpoints.

    With a refit model, dev predictions stay those of the dev-selected model (saved to model_dev_selected/),
    test predictions and model/ are the refit model's.
    """
    from fusion_ser.evaluation.metrics import compute_metrics

    trainer.load_best()
    model = trainer.module
    if refit is not None:
        refit.load_best()
        save_model(model, cfg, data.labels, run.path / "model_dev_selected")
    save_model(refit.module if refit is not None else model, cfg, data.labels, run.model_dir)
    metrics: dict[str, Any] = {}
    for split in ("dev", "test"):
        frame = getattr(data, split)
        if len(frame) == 0:
            continue
        member = refit.module if refit is not None and split == "test" else model
        pred = predict_frame(member, frame, cfg, trainer.device, cached=cached)
        run.write_predictions(split, pred)
        metrics[split] = compute_metrics(pred, info)
    metrics["best_epoch"] = trainer.best_epoch
    metrics["selection_metric"] = trainer.metric
    if refit is not None:
        refit_info = {"test_model": "refit_on_dev", "refit_epochs": refit.epoch,
                      "n_refit_train": getattr(refit, "refit_rows", None), "dev_model": "model_dev_selected"}
        metrics.update(refit_info)
        info.extra.update(refit_info)
    run.write_metrics(metrics)
    atomic_write_text(run.train_log_path, pd.DataFrame(trainer.log).to_csv(index=False))
    if cfg.train.report:
        from fusion_ser.evaluation.report import evaluate_run

        evaluate_run(run.path, allow_incomplete=True, seed=cfg.seed)
    shutil.rmtree(run.checkpoint_dir, ignore_errors=True)
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
             progress: Optional[Progress] = None, *, trainer_cls: type[Trainer] = Trainer) -> dict[str, Any]:
    """Speaker-independent k-fold: train every fold into out/fold_k (finished folds are kept) and average.

    Writes out/cv_metrics.json with the per-fold metrics and their mean and std, and returns it.
    """
    from fusion_ser.data.manifest import read_manifest
    from fusion_ser.data.folds import FoldError

    manifest_path = manifest_path or cfg.data.manifest
    if not manifest_path:
        raise TrainError("no manifest given: pass --manifest M.csv or set data.manifest in the config")
    dist = D.init_distributed()
    df = read_manifest(manifest_path)
    if "fold" not in df.columns or df["fold"].isna().all():
        raise FoldError(f"{manifest_path}: no 'fold' column; --cv needs speaker-independent folds "
                        "(prepare the manifest with --folds K)")
    n_folds = int(df["fold"].max()) + 1
    out = Path(out_dir)
    per_fold = []
    for k in range(n_folds):
        fold_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, fold=k))
        run = RunDir(out / f"fold_{k}")
        if progress is not None and dist.is_main:
            progress({"event": "fold", "fold": k, "folds": n_folds})
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
