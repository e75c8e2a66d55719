"""Domain statistics for head.standardize (speaker | corpus): the per-dimension mean and standard deviation of the
frozen encoder's frames over each domain's rows, computed from audio alone (no labels), installed into the model's
`DomainStandardizer` (models/domain.py) before a stage runs.

Training, dev and test each use the statistics of their own rows (a split grouped by speaker, or by the `corpus`
column; a manifest without one is one corpus). `predict` has no speakers: the files predicted together are one
domain (`accumulate_arrays` + `DomainStandardizer.set_current`), and fewer than MIN_DOMAIN_CLIPS of them fall back
to the training statistics.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Optional, Sequence

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from fusion_ser.config import Config
from fusion_ser.data.dataset import EmotionDataset, collate
from fusion_ser.data.sampler import BucketBatchSampler
from fusion_ser.schema import CORPUS_COLUMN
from fusion_ser.device import to_device
from fusion_ser.models.domain import MIN_DOMAIN_CLIPS, DomainStandardizer

logger = logging.getLogger(__name__)

ONE_CORPUS = "*"  # the domain of rows without a corpus name (a single-corpus manifest)


def standardizer(model: nn.Module) -> Optional[DomainStandardizer]:
    """The model's domain standardiser, or None when it does not standardise by domain."""
    norm = getattr(getattr(model, "module", model), "frame_norm", None)
    return norm if isinstance(norm, DomainStandardizer) else None


def domain_keys(df: pd.DataFrame, mode: str) -> list[str]:
    """The domain of each row: its speaker ("" when unknown: training statistics), or its corpus (rows without a
    corpus name are one corpus together)."""
    column = "speaker" if mode == "speaker" else CORPUS_COLUMN
    values = (df[column].fillna("").astype(str).str.strip() if column in df.columns
              else pd.Series([""] * len(df), index=df.index))
    if mode == "corpus":
        values = values.where(values != "", ONE_CORPUS)
    return values.tolist()


class FrameMoments:
    """Per-domain sums of frames (count, sum, sum of squares per dimension) and clip counts."""

    def __init__(self) -> None:
        self.sums: dict[str, list] = {}
        self.clips: dict[str, list[str]] = defaultdict(list)

    @torch.no_grad()
    def add(self, model: nn.Module, batch: dict[str, Any], keys: Sequence[str]) -> None:
        """Encode one batch with the model's encoder and add each row's frames to its domain."""
        enc = getattr(model, "module", model).encoder(batch)
        f = enc.features.double()
        m = enc.mask.to(f.device).double().unsqueeze(-1)
        s1, s2, n = (f * m).sum(dim=1).cpu(), (f * f * m).sum(dim=1).cpu(), m.sum(dim=(1, 2)).cpu()
        for b, (uid, key) in enumerate(zip(batch["utt_id"], keys)):
            if not key:
                continue
            acc = self.sums.setdefault(key, [0.0, 0.0, 0.0])
            acc[0], acc[1], acc[2] = acc[0] + float(n[b]), acc[1] + s1[b], acc[2] + s2[b]
            self.clips[key].append(str(uid))

    def statistics(self, key: str) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """(mean, std) of a domain with at least MIN_DOMAIN_CLIPS clips, else None."""
        if len(self.clips.get(key, ())) < MIN_DOMAIN_CLIPS or key not in self.sums:
            return None
        count, s1, s2 = self.sums[key]
        mean = s1 / count
        return mean.float(), (s2 / count - mean * mean).clamp(min=0).sqrt().float()


def _loader(dataset: EmotionDataset, cfg: Config) -> DataLoader:
    sampler = BucketBatchSampler(dataset.lengths(), cfg.train.batch_size, shuffle=False)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=0)


def eval_copy(dataset: EmotionDataset, cfg: Config, labels: list[str]) -> EmotionDataset:
    """The same rows without training-time crops or speed perturbation (domain statistics see clips whole)."""
    if not dataset.training:
        return dataset
    return EmotionDataset(dataset.df, cfg, labels, training=False, durations=dataset.durations,
                          cached=list(dataset.cached.values()))


@torch.no_grad()
def fit_domains(model: nn.Module, dataset: EmotionDataset, cfg: Config, device: torch.device) -> dict[str, int]:
    """Install the statistics of every domain of the dataset's rows into the model's standardiser; returns the
    clips per domain that got statistics (domains under MIN_DOMAIN_CLIPS clips keep the training statistics)."""
    norm = standardizer(model)
    if norm is None or len(dataset) == 0:
        return {}
    key_of = dict(zip(dataset.df["utt_id"].astype(str), domain_keys(dataset.df, norm.mode)))
    moments = FrameMoments()
    base = getattr(model, "module", model)
    was_training = base.training
    base.eval()
    for batch in _loader(dataset, cfg):
        if batch["size"]:
            moments.add(base, to_device(batch, device), [key_of[str(u)] for u in batch["utt_id"]])
    base.train(was_training)
    used = {}
    for key, clips in moments.clips.items():
        stats = moments.statistics(key)
        if stats is not None:
            norm.add_domain(*stats, utt_ids=clips)
            used[key] = len(clips)
    small = len(moments.clips) - len(used)
    logger.info("domain statistics (%s): %d domain(s), %d clips%s", norm.mode, len(used), sum(used.values()),
                f"; {small} domain(s) under {MIN_DOMAIN_CLIPS} clips use the training statistics" if small else "")
    return used


def accumulate_arrays(model: nn.Module, dataset: EmotionDataset, cfg: Config, device: torch.device,
                      moments: FrameMoments, key: str = "predict") -> None:
    """Add the frames of in-memory inputs (an array dataset) to one domain `key`."""
    base = getattr(model, "module", model)
    for batch in _loader(dataset, cfg):
        if batch["size"]:
            moments.add(base, to_device(batch, device), [key] * batch["size"])

