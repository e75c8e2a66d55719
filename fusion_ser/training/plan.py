"""The plan of a training run, before it runs: `fusion-ser train --dry-run` prints it, and every real training
checks it first, so what would fail at hour three fails in the first minute.

The plan holds the rows per split and class (and what is dropped, and why), steps per epoch, trainable and total
parameters, device and precision, the size the feature cache will take on disk next to the free space there, and
the rows a text model would find without a transcript.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from fusion_ser.config import Config
from fusion_ser.data.dataset import CachedInput
from fusion_ser.data.sampler import BucketBatchSampler
from fusion_ser.schema import SAMPLE_RATE, has_classes
from fusion_ser.data.selection import RunData
from fusion_ser.device import resolve_device, resolve_precision
from fusion_ser.errors import FusionSerError

CACHE_BYTES_PER_VALUE = 2  # the feature cache stores float16
PROBE_SECONDS = (1.0, 2.0)  # two probe lengths give an encoder's frames per second and its frame shape


class PlanError(FusionSerError):
    """A run that would fail later (a declared class with no training row, a feature cache larger than the disk)."""


@dataclass
class CacheEstimate:
    """What one frozen encoder's cache needs: entries, values per frame (layers x dims), frames, bytes."""

    modality: str
    entries: int
    layers: int
    dims: int
    frames: int
    bytes: int


@dataclass
class Plan:
    """Everything a person should see before a long run starts."""

    rows: dict[str, int]
    classes: dict[str, dict[str, int]]  # split -> class -> rows (categorical)
    dropped: str
    steps_per_epoch: int
    epochs: int
    trainable_params: int
    total_params: int
    device: str
    precision: str
    cache: list[CacheEstimate] = field(default_factory=list)
    cache_dir: Optional[str] = None
    free_disk: Optional[int] = None
    missing_text: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def cache_bytes(self) -> int:
        return sum(c.bytes for c in self.cache)

    def raise_problems(self) -> None:
        """PlanError listing every problem that would make the run fail."""
        if self.problems:
            raise PlanError("the run would fail: " + "; ".join(self.problems))


def steps_per_epoch(n_rows: int, lengths: np.ndarray, cfg: Config, world_size: int = 1) -> int:
    """Optimizer steps of one epoch: the train sampler's batches per rank over the gradient accumulation."""
    sampler = BucketBatchSampler(lengths[:n_rows], cfg.train.batch_size, shuffle=True, seed=cfg.seed,
                                 num_replicas=world_size, rank=0)
    return math.ceil(len(sampler) / cfg.train.grad_accum)


def _probe_shape(cached: CachedInput) -> tuple[int, int, float]:
    """(layers, dims, frames per second) of an audio encoder's cache entries, from two silent probes."""
    shapes = [tuple(cached.encoder.encode_for_cache({"wav": np.zeros(int(s * SAMPLE_RATE), np.float32)}).shape)
              for s in PROBE_SECONDS]
    (*lead, t1, dims), (*_, t2, _) = shapes
    layers = int(np.prod(lead)) if lead else 1
    return layers, int(dims), (t2 - t1) / (PROBE_SECONDS[1] - PROBE_SECONDS[0])


def cache_estimate(cached: CachedInput, data: RunData, cfg: Config) -> CacheEstimate:
    """Bytes the cache of one frozen encoder will hold for the run's rows (speed-perturbed copies included)."""
    splits = [data.train, data.dev, data.test]
    if cached.modality == "text":
        texts = [str(t) for f in splits for t in f["text"]]
        tokenizer = getattr(cached.encoder, "tokenizer", None)
        frames = sum(min(len(tokenizer(t)["input_ids"]) if tokenizer else len(t.split()) + 2,
                         cfg.text_encoder.max_length) for t in texts)
        return CacheEstimate("text", len(texts), 1, cached.encoder.output_dim, frames,
                             frames * cached.encoder.output_dim * CACHE_BYTES_PER_VALUE)
    layers, dims, fps = _probe_shape(cached)
    cap = cfg.data.max_eval_seconds
    seconds = [np.minimum(d, cap) for d in (data.durations["train"], data.durations["dev"], data.durations["test"])
               if d is not None]
    total = float(sum(s.sum() for s in seconds))
    entries = sum(len(f) for f in splits)
    copies = [float(f) for f in dict.fromkeys(cfg.data.speed_perturb) if float(f) != 1.0]
    augmented = [data.durations["train"]] + ([data.durations["dev"]] if cfg.train.refit_on_dev else [])
    for factor in copies:
        for d in augmented:
            if d is not None:
                total += float(np.minimum(d / factor, cap).sum())
                entries += len(d)
    frames = int(round(total * fps))
    return CacheEstimate("audio", entries, layers, dims, frames, frames * layers * dims * CACHE_BYTES_PER_VALUE)


def _free_disk(path: Path) -> Optional[int]:
    for p in [path, *path.parents]:
        if p.exists():
            return shutil.disk_usage(p).free
    return None


def make_plan(cfg: Config, data: RunData, model: nn.Module, cached: list[CachedInput], world_size: int = 1) -> Plan:
    """The plan of training `model` on `data`; `problems` lists what would make the run fail."""
    device = resolve_device(cfg.train.device)
    dtype = resolve_precision(device, cfg.train.precision)
    if data.durations["train"] is not None:
        lengths = np.minimum(data.durations["train"], cfg.data.max_train_seconds)
    else:
        lengths = data.train["text"].astype(str).str.len().to_numpy(np.float64)
    if not cfg.train.bucketing:
        lengths = np.zeros_like(lengths)
    classes: dict[str, dict[str, int]] = {}
    problems: list[str] = []
    if has_classes(cfg.task):
        for split in ("train", "dev", "test"):
            counts = getattr(data, split)["label"].astype(str).value_counts()
            classes[split] = {c: int(counts.get(c, 0)) for c in data.labels}
        absent = [c for c, n in classes["train"].items() if n == 0]
        if absent:
            problems.append(f"class(es) {absent} of data.labels have no training row; drop them from data.labels or "
                            "add training data")
    missing_text = {}
    if cfg.modality in ("text", "both"):
        missing_text = {s: int((getattr(data, s)["text"].astype(str).str.strip() == "").sum())
                        for s in ("train", "dev", "test")}
    plan = Plan(rows={s: len(getattr(data, s)) for s in ("train", "dev", "test")}, classes=classes,
                dropped=data.dropped.summary(), steps_per_epoch=steps_per_epoch(len(lengths), lengths, cfg, world_size),
                epochs=cfg.train.epochs, trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
                total_params=sum(p.numel() for p in model.parameters()), device=str(device),
                precision=str(dtype).removeprefix("torch."), missing_text=missing_text, problems=problems)
    if cached:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # probing must not move the run's random state
            plan.cache = [cache_estimate(c, data, cfg) for c in cached]
        plan.cache_dir = str(cached[0].cache.root)
        plan.free_disk = _free_disk(Path(plan.cache_dir))
        if plan.free_disk is not None and plan.cache_bytes > plan.free_disk:
            problems.append(f"the feature cache needs about {plan.cache_bytes / 1e9:.1f} GB but {plan.cache_dir} has "
                            f"{plan.free_disk / 1e9:.1f} GB free; set train.cache_dir to a larger disk")
    return plan
