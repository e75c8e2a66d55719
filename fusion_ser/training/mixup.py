"""Mixup of training batches (data.mixup, data.mixup_alpha, data.mixup_on); MEDUSA (Interspeech 2025) used p = 0.3.

With probability data.mixup a training batch is mixed with a permutation of itself under one
lambda ~ Beta(alpha, alpha): row i becomes lambda * row i + (1 - lambda) * row perm[i], inputs and targets alike.
- Inputs, `pooled` (manifold mixup): the pooled embedding right before the head (the models apply the draw the
  batch carries under `models.output.MIX_KEY`), so it works for every encoder, cached frames and pooled vectors
  included. `waveform`: the raw waveforms (zero-padded, each pair's length the longer one), for a trained encoder
  reading audio; a run whose batches hold cached encoder features instead is refused with what to do, since
  mixing frames is not mixing audio (use `pooled` there).
- Targets: categorical rows as distributions (the one-hot label, or the row's soft label renormalised) mixed into
  soft targets, trained with the configured loss's soft form (CE: soft CE, weighted CE: class-weighted soft CE,
  focal: soft focal, soft_ce / kl as they are). Attributes are mixed the same way and trained with 1-CCC on the
  mixed values (a row whose partner lacks an attribute drops out of that attribute's CCC).
The draw is a function of (seed, epoch, step, rank) alone, so a resumed epoch mixes exactly as before; dev, test
and predict never mix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from fusion_ser.config import Config, ConfigError
from fusion_ser.schema import has_attributes, has_classes
from fusion_ser.models.output import MIX_KEY, mix_rows


@dataclass
class MixDraw:
    """One batch's mixup: the weight of each row itself and the row it is mixed with."""

    lam: float
    perm: torch.Tensor  # (B,) long

    def pair(self) -> tuple[float, torch.Tensor]:
        return self.lam, self.perm


class Mixup:
    """data.mixup for one trainer (its rank's batches)."""

    def __init__(self, cfg: Config, rank: int = 0):
        self.p = float(cfg.data.mixup)
        self.alpha = float(cfg.data.mixup_alpha)
        self.on = cfg.data.mixup_on
        self.task = cfg.task
        self.seed = int(cfg.seed)
        self.rank = int(rank)

    def draw(self, epoch: int, step: int, size: int) -> Optional[MixDraw]:
        """The mixup of batch `step` (from 0) of `epoch`, or None when this batch is not mixed."""
        if self.p <= 0 or size < 2:
            return None
        rng = np.random.default_rng([self.seed, int(epoch), int(step), self.rank, 3])
        if rng.random() >= self.p:
            return None
        lam = float(rng.beta(self.alpha, self.alpha))
        return MixDraw(lam, torch.from_numpy(rng.permutation(size)).long())

    def apply(self, batch: dict[str, Any], epoch: int, step: int, num_classes: int) -> dict[str, Any]:
        """The batch mixed as this step's draw says (the batch itself when not mixed)."""
        draw = self.draw(epoch, step, int(batch["size"]))
        if draw is None:
            return batch
        return mix_batch(batch, draw, self.task, self.on, num_classes)


def batch_targets(batch: dict[str, Any], num_classes: int) -> torch.Tensor:
    """(B, K) categorical targets as distributions: soft labels renormalised, else the one-hot label (-1: zeros)."""
    soft = batch.get("soft_label")
    if soft is not None:
        soft = soft.float()
        mass = soft.sum(dim=-1, keepdim=True)
        return torch.where(mass > 0, soft / mass.clamp(min=1e-12), torch.zeros_like(soft))
    label = batch["label"]
    out = torch.zeros(len(label), num_classes, device=label.device)
    ok = label >= 0
    out[ok] = torch.nn.functional.one_hot(label[ok], num_classes).float()
    return out


def mix_batch(batch: dict[str, Any], draw: MixDraw, task: str, on: str, num_classes: int) -> dict[str, Any]:
    """A copy of `batch` with its inputs (pooled: a draw for the model; waveform: the audio) and targets mixed."""
    out = dict(batch)
    pair = draw.pair()
    if on == "waveform":
        if "wav" not in batch:
            raise ConfigError("data.mixup_on=waveform mixes raw audio, but this run's batches hold cached encoder "
                              "features (a frozen encoder with train.cache_features); set data.mixup_on=pooled, or "
                              "fine-tune the encoder (audio_encoder.finetune) so it reads waveforms")
        out["wav"] = mix_rows(batch["wav"], pair)
        lengths = batch["wav_lengths"]
        out["wav_lengths"] = torch.maximum(lengths, lengths[draw.perm.to(lengths.device)])
    else:
        out[MIX_KEY] = pair
    if has_attributes(task):  # rows without a value (NaN) stay out of the mixed CCC
        out["attributes"] = mix_rows(batch["attributes"].float(), pair)
    if has_classes(task):
        out["soft_label"] = mix_rows(batch_targets(batch, num_classes), pair)
        out["mixed"] = True
    return out
