"""The one trainer of the project: the epoch loop that fits audio, text and fusion models alike.

`Trainer.fit` trains with AdamW (separate encoder and head learning rates, warm-up + schedule, accumulation,
clipping, mixed precision, length-bucketed batches), evaluates the whole dev set each epoch, selects the best
epoch, stops early, and checkpoints (weights, optimizer, scheduler, RNG states, log; after the first and the last
epoch, in between every train.checkpoint_seconds) so a resumed fit ends where an uninterrupted one would. Under
torchrun it trains with DDP.
Hooks for subclasses, SpeechBrain-style: compute_forward and compute_objectives (inherited from `Runner`, so they
run in every stage: train, dev, test, predict), on_stage_start, on_stage_end, on_epoch_end.
What a job does around the loop (rows, caches, the run directory, refit, CV) lives in training/job.py.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from fusion_ser.config import Config
from fusion_ser.data.dataset import EmotionDataset, collate
from fusion_ser.data.sampler import BucketBatchSampler
from fusion_ser.device import resolve_precision, to_device
from fusion_ser.errors import FusionSerError
from fusion_ser.evaluation.metrics import compute_metrics, higher_is_better, primary_metric
from fusion_ser.rundir import RunInfo, atomic_write_text, output_columns
from fusion_ser.training import checkpoint as ckpt
from fusion_ser.training import distributed as D
from fusion_ser.training.averaging import WeightEMA
from fusion_ser.training.domain import eval_copy, fit_domains
from fusion_ser.training.events import Callback, EpochEnded, EpochStarted, Event, StepDone
from fusion_ser.training.inference import Runner, eval_loader, non_finite_ids, outputs_frame, run_inference
from fusion_ser.training.mixup import Mixup
from fusion_ser.training.optim import build_optimizer, lr_lambda
from fusion_ser.training.sampling import SamplingPlan, train_corpora

logger = logging.getLogger(__name__)

CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "scheduler", "best_score", "best_epoch", "bad_epochs", "log")


class TrainError(FusionSerError):
    """A training request that cannot run as given (no rows for a split, run dir in the way, config mismatch)."""


class Trainer(Runner):
    """Fits one model: the epoch loop, dev selection, early stopping and per-epoch checkpoints.

    `info` describes the predictions (task, labels) for the dev metrics; checkpoints go to `checkpoint_dir` and
    the per-epoch log to `log_path`.
    """

    def __init__(self, cfg: Config, model: nn.Module, labels: list[str], *, device: torch.device,
                 dist: D.DistInfo, info: RunInfo, checkpoint_dir: Path, log_path: Path,
                 progress: Optional[Callback] = None):
        super().__init__(model.to(device), device, resolve_precision(device, cfg.train.precision))
        self.cfg = cfg
        self.labels = labels
        self.dist = dist
        self.info = info
        self.checkpoint_dir = Path(checkpoint_dir)
        self.log_path = Path(log_path)
        self.progress = progress
        self.model = D.wrap_model(self.module, dist, device)
        self.optimizer = build_optimizer(self.module, cfg)
        self.ema = WeightEMA(self.module, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
        self.scaler = torch.amp.GradScaler(device.type) if self.dtype == torch.float16 else None
        self.mixup = Mixup(cfg, dist.rank)  # data.mixup: training batches only
        self.sampling: Optional[SamplingPlan] = None  # data.sampler, set by fit for its train rows
        self.scheduler: Optional[torch.optim.lr_scheduler.LambdaLR] = None
        self.metric = cfg.train.selection_metric
        if self.metric == "auto":
            self.metric = primary_metric(cfg.task)
        self.epochs = cfg.train.epochs  # the target of the current fit
        self.epoch = 0  # epochs completed
        self.best_score: Optional[float] = None
        self.best_epoch = 0
        self.bad_epochs = 0
        self.log: list[dict[str, Any]] = []
        self._best_state: Optional[dict[str, torch.Tensor]] = None  # selected weights not yet in best.pt
        self._saved = (0, 0.0)  # (epoch, time.perf_counter()) of the last checkpoint written or resumed from

    # hooks -----------------------------------------------------------------------------------------------------

    def on_stage_start(self, stage: str, epoch: int) -> None:
        """Called before the train pass and before the dev evaluation of each epoch (epoch counts from 1)."""

    def on_stage_end(self, stage: str, epoch: int, stats: dict[str, Any]) -> None:
        """Called after each stage with its figures (train: loss, utt/s; dev: metrics)."""

    def on_epoch_end(self, epoch: int, row: dict[str, Any]) -> None:
        """Called after each epoch, once its checkpoint is written when one is due (train.checkpoint_seconds): a
        fit stopped here resumes from its last checkpoint and ends as an uninterrupted one would."""

    # loop ------------------------------------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        if self.progress is not None and self.dist.is_main:
            self.progress(event)

    def fit_statistics(self, train_set: EmotionDataset) -> None:
        """Train-set statistics the model asks for (e.g. head.standardize_frames), over the uncropped train clips.

        A resumed fit restores them from its checkpoint instead.
        """
        if not getattr(self.module, "wants_statistics", False) or (self.checkpoint_dir / "last.pt").is_file():
            return
        frames = EmotionDataset(train_set.df, self.cfg, self.labels, training=False, durations=train_set.durations,
                                cached=list(train_set.cached.values()))
        batches = (to_device(b, self.device) for b in eval_loader(frames, self.cfg) if b["size"])
        self.module.fit_statistics(batches)

    def fit(self, train_set: EmotionDataset, dev_set: Optional[EmotionDataset], epochs: Optional[int] = None) -> None:
        """Train for `epochs` (default cfg.train.epochs) or until early stopping, resuming from the checkpoint if any.

        Without a dev set (the refit on train+dev) nothing is evaluated and the last epoch is the selected one.
        """
        cfg = self.cfg
        self.epochs = cfg.train.epochs if epochs is None else int(epochs)
        self.fit_statistics(train_set)
        for rows in (train_set, dev_set):  # head.standardize: each split's own speaker/corpus statistics
            if rows is not None:
                fit_domains(self.module, eval_copy(rows, cfg, self.labels), cfg, self.device)
        sampler = self._train_sampler(train_set)
        loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.train.num_workers)
        steps_per_epoch = math.ceil(len(sampler) / cfg.train.grad_accum)
        total = max(1, steps_per_epoch * self.epochs)
        warmup = int(round(cfg.optim.warmup_ratio * total))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg.optim.schedule, total, warmup))
        self._load_checkpoint()
        self._saved = (self.epoch, time.perf_counter())
        dev_loader = eval_loader(dev_set, cfg) if dev_set is not None else None
        while self.epoch < self.epochs and not self._stopped():
            epoch = self.epoch + 1
            sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            self.sampling.start_epoch(epoch, self.module)  # data.sampler: this epoch's class weights
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
            if improved and self.dist.is_main:  # the selected weights (the EMA's when on), in the next checkpoint
                with self.averaged():
                    self._best_state = ckpt.trainable_state(self.module)
            if self._checkpoint_due():
                self._save_checkpoint()
            self._emit(EpochEnded(epoch=epoch, epochs=self.epochs, metric=self.metric, train_loss=train_stats["loss"],
                                  utt_per_s=train_stats["utt_per_s"],
                                  dev=dev_stats.get(self.metric) if dev_set is not None else None,
                                  best=improved, best_epoch=self.best_epoch))
            self.on_epoch_end(epoch, row)

    def _stopped(self) -> bool:
        patience = self.cfg.train.early_stopping
        return patience > 0 and self.bad_epochs >= patience

    def _train_sampler(self, train_set: EmotionDataset) -> BucketBatchSampler:
        lengths = train_set.lengths()
        if not self.cfg.train.bucketing:
            lengths = np.zeros_like(lengths)  # equal lengths: the sampler's pools become plain random batches
        # data.sampler (classes) and data.corpus_sampling (corpora): training/sampling.py
        self.sampling = SamplingPlan(self.cfg, train_set.df["label"].astype(str).tolist(), self.labels,
                                     train_corpora(self.cfg, train_set.df))
        return self.sampling.sampler(lengths, self.cfg.train.batch_size, self.cfg.seed, self.dist.world_size,
                                     self.dist.rank)

    def _train_epoch(self, loader: DataLoader, epoch: int, n_batches: int) -> dict[str, Any]:
        cfg = self.cfg
        accum = cfg.train.grad_accum
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, n_utts, skipped, idle = 0.0, 0, 0, 0
        start, cpu_start = time.perf_counter(), time.process_time()
        self._emit(EpochStarted(epoch=epoch, epochs=self.epochs, steps=n_batches))
        for i, batch in enumerate(loader):
            skipped += batch["skipped"]
            last_of_group = (i + 1) % accum == 0 or i + 1 == n_batches
            if self._all_ranks_have_data(batch["size"]):
                batch = self.mixup.apply(to_device(batch, self.device), epoch, i, len(self.labels))
                sync = last_of_group or not self.dist.enabled or not hasattr(self.model, "no_sync")
                with (self.model.no_sync() if not sync else contextlib.nullcontext()):
                    out = self.compute_forward(batch, "train")
                    loss = self.compute_objectives(out, batch, "train")
                    value = float(loss.detach())
                    self._check_loss(value, epoch, i + 1, n_batches, batch)
                    scaled = loss / accum
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                loss_sum += value * batch["size"]
                n_utts += batch["size"]
            elif batch["size"]:
                idle += batch["size"]
            if last_of_group:
                self._step()
            if self.progress is not None and (i + 1) % max(1, cfg.train.log_every) == 0:
                elapsed = time.perf_counter() - start
                self._emit(StepDone(epoch=epoch, step=i + 1, steps=n_batches, loss=loss_sum / max(1, n_utts),
                                    utt_per_s=n_utts / max(elapsed, 1e-9)))
        loss_sum, n_utts, skipped, idle = D.all_reduce_sum([loss_sum, n_utts, skipped, idle], self.dist)
        elapsed = time.perf_counter() - start
        if skipped:
            logger.warning("epoch %d: %d clip(s) could not be read and were skipped", epoch, int(skipped))
        if idle:
            logger.warning("epoch %d: %d readable clip(s) sat out a step because another rank's whole batch was "
                           "unreadable (every rank must take part in each gradient all-reduce)", epoch, int(idle))
        return {"loss": loss_sum / max(1.0, n_utts), "utt_per_s": n_utts / max(elapsed, 1e-9),
                "seconds": elapsed, "cpu_seconds": time.process_time() - cpu_start, "skipped": int(skipped)}

    def _check_loss(self, value: float, epoch: int, step: int, n_batches: int, batch: dict[str, Any]) -> None:
        """Stop before a non-finite loss reaches the weights (every rank stops together under DDP)."""
        here = math.isfinite(value)
        finite = D.all_reduce_sum([0.0 if here else 1.0], self.dist)[0] == 0 if self.dist.enabled else here
        if finite:
            return
        ids = ", ".join(map(str, list(batch["utt_id"])[:3])) + "..." if not here else "of another rank"
        raise TrainError(f"the training loss is not finite ({value}) at epoch {epoch}, step {step} (batch {step} of "
                         f"{n_batches}; utterances {ids}); the run is left unfinished. Check "
                         "the learning rates (optim.lr_head, optim.lr_encoder: too high?), optim.grad_clip, and the "
                         "data of that batch (audio, attribute values)")

    def _all_ranks_have_data(self, size: int) -> bool:
        """Whether every rank has clips in this batch. A rank whose batch failed to decode cannot skip alone: the
        others would wait for its gradients, so under DDP the whole step sits out."""
        if not self.dist.enabled:
            return size > 0
        return D.all_reduce_sum([1.0 if size else 0.0], self.dist)[0] >= self.dist.world_size

    def _step(self) -> None:
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.optim.grad_clip > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
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
            width = len(output_columns(self.cfg.task, self.labels, list(self.cfg.data.attributes)))
            with self.averaged():
                utt_ids, outputs, loss, _ = run_inference(self, loader, "dev", self.cfg.task, width)
            bad = non_finite_ids(utt_ids, outputs)
            if bad:
                stats = {"_error": f"epoch {self.epoch + 1}: the model's dev outputs are not finite for {len(bad)} of "
                                  f"{len(utt_ids)} rows (e.g. '{bad[0]}'); training diverged and the run is left "
                                  "unfinished. Check the learning rates (optim.lr_head, optim.lr_encoder) and the data "
                                  "of those rows"}
            else:
                metrics = compute_metrics(outputs_frame(dataset, self.cfg, self.labels, utt_ids, outputs), self.info)
                stats = {k: float(v) for k, v in metrics.items()
                         if isinstance(v, (int, float)) and not isinstance(v, bool)}
                stats["loss"] = loss
        stats = D.broadcast_object(stats, self.dist)
        if "_error" in stats:  # raised on every rank, so none waits for the others
            raise TrainError(stats["_error"])
        return stats

    def _select(self, stats: dict[str, Any], epoch: int) -> bool:
        if self.metric not in stats:
            raise TrainError(f"train.selection_metric '{self.metric}' is not among the dev metrics "
                             f"{sorted(stats)}; pick one of them")
        score = stats[self.metric]
        better = self.best_score is None or (score > self.best_score if higher_is_better(self.metric)
                                             else score < self.best_score)
        if better:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
        else:
            self.bad_epochs += 1
        return better

    # checkpoints -----------------------------------------------------------------------------------------------

    def _checkpoint_due(self) -> bool:
        """After the first epoch of a fit from scratch, after its last one (early stopping included), and otherwise
        once train.checkpoint_seconds have passed since the last checkpoint; rank 0's clock decides for all ranks."""
        every = self.cfg.train.checkpoint_seconds
        due = (every <= 0 or self._saved[0] == 0 or self.epoch >= self.epochs or self._stopped()
               or time.perf_counter() - self._saved[1] >= every)
        return bool(D.broadcast_object(due, self.dist)) if self.dist.enabled else due

    def _save_checkpoint(self) -> None:
        folder = self.checkpoint_dir
        if self.dist.is_main:
            folder.mkdir(parents=True, exist_ok=True)
            if self._best_state is not None:
                ckpt.save(self._best_state, folder / "best.pt")
                self._best_state = None
            state = {
                "epoch": self.epoch,
                "model": ckpt.trainable_state(self.module),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "best_score": self.best_score,
                "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs,
                "log": self.log,
            }
            ckpt.save(state, folder / "last.pt")
            atomic_write_text(self.log_path, pd.DataFrame(self.log).to_csv(index=False))
        D.barrier(self.dist)
        ckpt.save(ckpt.rng_state(), folder / f"rng_rank{self.dist.rank}.pt")
        D.barrier(self.dist)
        self._saved = (self.epoch, time.perf_counter())

    def _load_checkpoint(self) -> None:
        path = self.checkpoint_dir / "last.pt"
        if not path.is_file():
            return
        state = ckpt.load(path, required=CHECKPOINT_KEYS)
        try:
            self.module.load_state_dict(state["model"], strict=False)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            if self.ema is not None and state.get("ema"):
                self.ema.load_state_dict(state["ema"], self.device)
        except (RuntimeError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise ckpt.unusable(path, f"its state does not fit this model ({type(e).__name__}: {e})") from None
        self.epoch = state["epoch"]
        self.best_score, self.best_epoch, self.bad_epochs = state["best_score"], state["best_epoch"], state["bad_epochs"]
        self.log = list(state["log"])
        rng = self.checkpoint_dir / f"rng_rank{self.dist.rank}.pt"
        if rng.is_file():
            ckpt.restore_rng(rng)
        logger.info("resumed %s after epoch %d (best %s %.4f at epoch %d)", self.checkpoint_dir, self.epoch,
                    self.metric, self.best_score if self.best_score is not None else float("nan"), self.best_epoch)

    def load_best(self) -> None:
        """Put the selected epoch's weights into the model."""
        best = self.checkpoint_dir / "best.pt"
        if best.is_file():
            state = ckpt.load(best)
            try:
                self.module.load_state_dict(state, strict=False)
            except (RuntimeError, TypeError, AttributeError) as e:
                raise ckpt.unusable(best, f"its weights do not fit this model ({type(e).__name__}: {e})") from None
