"""Training objectives: (weighted) cross-entropy, focal loss, soft-label cross-entropy or KL, 1-CCC for attributes,
and their weighted sum for a multitask model.

Every model of the project computes its loss through `Criterion`, built from the config by `build_criterion`, so
audio, text and fusion models share one definition of each objective.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fusion_ser.config import Config
from fusion_ser.schema import has_attributes, has_classes

logger = logging.getLogger(__name__)

SOFT_LOSSES = ("soft_ce", "kl")  # losses against soft targets (batch "soft_label")
WEIGHTED_LOSSES = ("weighted_ce", "focal", "soft_ce", "kl")  # losses that read the train split's class weights


def class_weights(labels: Sequence[str], classes: Sequence[str], power: float = 1.0) -> torch.Tensor:
    """w_c = (N / (K * n_c)) ** power over the train labels (power 1: the Odyssey baseline's balancing, 0.5: MEDUSA's
    square root); 0 for a class never seen."""
    values = [str(x) for x in labels if str(x) in set(classes)]
    n = len(values)
    k = len(classes)
    counts = np.array([sum(1 for v in values if v == c) for c in classes], dtype=np.float64)
    weights = np.zeros(k, dtype=np.float64)
    seen = counts > 0
    weights[seen] = (n / (k * counts[seen])) ** float(power)
    missing = [c for c, s in zip(classes, seen) if not s]
    if missing:
        logger.warning("classes with no training example get weight 0: %s", ", ".join(missing))
    return torch.tensor(weights, dtype=torch.float32)


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, weight: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Focal loss (Lin et al.) averaged like weighted cross-entropy; gamma=0 gives exactly cross-entropy. -1 targets are ignored."""
    valid = target >= 0
    if not bool(valid.any()):
        return logits.sum() * 0.0
    logits, target = logits[valid].float(), target[valid]
    logp = F.log_softmax(logits, dim=-1).gather(1, target[:, None]).squeeze(1)
    modulation = (1.0 - logp.exp()).clamp(min=0.0) ** gamma
    w = weight.to(logits.device)[target] if weight is not None else torch.ones_like(logp)
    return -(w * modulation * logp).sum() / w.sum().clamp(min=1e-12)


def soft_cross_entropy(
    logits: torch.Tensor, soft_target: torch.Tensor, weight: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Cross-entropy against annotator distributions (rows renormalised); rows with no distribution are ignored.

    With class weights a row's weight is the target-weighted mean of the class weights, so a one-hot row is weighted
    exactly as in weighted cross-entropy.
    """
    return soft_target_loss(logits, soft_target, weight, "ce")


def kl_divergence(logits: torch.Tensor, soft_target: torch.Tensor,
                  weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """KL(q || softmax(logits)) = sum_c q_c (log q_c - log p_c) against annotator distributions q, rows renormalised
    and weighted as in soft_cross_entropy (the same gradient; 0 at a perfect fit, where soft CE is q's entropy)."""
    return soft_target_loss(logits, soft_target, weight, "kl")


def soft_target_loss(logits: torch.Tensor, soft_target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                     kind: str = "ce", gamma: float = 2.0) -> torch.Tensor:
    """The row-weighted mean of a loss against soft targets: kind ce (-sum q log p), kl (sum q log(q / p)) or focal
    (-sum q (1 - p)^gamma log p, focal loss on one-hot rows; mixup's mixed targets); rows without mass are ignored."""
    soft_target = soft_target.float()
    mass = soft_target.sum(dim=-1)
    valid = torch.isfinite(mass) & (mass > 0)
    if not bool(valid.any()):
        return logits.sum() * 0.0
    q = soft_target[valid] / mass[valid, None]
    logp = F.log_softmax(logits[valid].float(), dim=-1)
    if kind == "focal":
        logp = (1.0 - logp.exp()).clamp(min=0.0) ** gamma * logp
    row_loss = -(q * logp).sum(dim=-1)
    if kind == "kl":
        row_loss = row_loss + torch.special.xlogy(q, q).sum(dim=-1)
    w = (q * weight.to(q.device)[None, :]).sum(dim=-1) if weight is not None else torch.ones_like(row_loss)
    return (w * row_loss).sum() / w.sum().clamp(min=1e-12)


def ccc_torch(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lin's concordance correlation coefficient of two 1-d tensors (population moments), differentiable."""
    pred, target = pred.float(), target.float()
    mp, mt = pred.mean(), target.mean()
    vp = ((pred - mp) ** 2).mean()
    vt = ((target - mt) ** 2).mean()
    cov = ((pred - mp) * (target - mt)).mean()
    return 2.0 * cov / (vp + vt + (mp - mt) ** 2).clamp(min=1e-8)


def ccc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over attributes (columns) of 1 - CCC; rows with a NaN target are left out of that attribute's CCC."""
    total = pred.new_zeros((), dtype=torch.float32)
    for a in range(pred.shape[1]):
        ok = torch.isfinite(target[:, a])
        if int(ok.sum()) < 2:
            continue
        total = total + (1.0 - ccc_torch(pred[ok, a], target[ok, a]))
    return total


class Criterion(nn.Module):
    """The loss of a model output against the batch targets, as the config asks; class weights live in a buffer."""

    def __init__(self, task: str, loss_type: str, num_classes: int, focal_gamma: float = 2.0, label_smoothing: float = 0.0,
                 task_weights: tuple[float, float] = (1.0, 1.0)):
        super().__init__()
        self.task = task
        self.weight_categorical, self.weight_attributes = (float(w) for w in task_weights)  # multitask only
        self.loss_type = loss_type
        self.focal_gamma = focal_gamma
        self.label_smoothing = label_smoothing
        self.register_buffer("class_weights", torch.ones(max(num_classes, 1)))
        self.weighted = loss_type in WEIGHTED_LOSSES  # whether class_weights enter the loss

    def set_class_weights(self, weights: torch.Tensor) -> None:
        """Install w_c computed from the train split (used by weighted_ce, focal, soft_ce and kl)."""
        self.class_weights.copy_(weights.to(self.class_weights))

    def use_class_weights(self, weights: Optional[torch.Tensor]) -> None:
        """Weight the loss by `weights` whatever loss.type is, or (None) not at all: data.sampler's stages."""
        self.weighted = weights is not None
        if weights is not None:
            self.set_class_weights(weights)

    def _soft(self, batch: dict[str, Any]) -> Optional[torch.Tensor]:
        """The batch's soft targets when this loss reads them (soft_ce, kl, or any loss on a mixup batch)."""
        soft = batch.get("soft_label")
        return soft if soft is not None and (self.loss_type in SOFT_LOSSES or batch.get("mixed")) else None

    def has_targets(self, batch: dict[str, Any]) -> bool:
        """True when the batch carries targets this criterion can use (for a multitask model: either kind)."""
        return ((has_attributes(self.task) and self._has_attribute_targets(batch))
                or (has_classes(self.task) and self._has_class_targets(batch)))

    @staticmethod
    def _has_attribute_targets(batch: dict[str, Any]) -> bool:
        t = batch.get("attributes")
        return t is not None and bool(torch.isfinite(t).any())

    def _has_class_targets(self, batch: dict[str, Any]) -> bool:
        if self._soft(batch) is not None:
            return bool((batch["soft_label"].sum(-1) > 0).any())
        t = batch.get("label")
        return t is not None and bool((t >= 0).any())

    def forward(self, output: Any, batch: dict[str, Any]) -> torch.Tensor:
        """Loss of logits (categorical), attribute values (attributes) or both (multitask: the tuple (logits,
        values), weight_categorical * class loss + weight_attributes * sum of 1 - CCC) against the batch's targets.

        CCC is invariant to one affine map applied to both sides, so attributes may be compared on the manifest scale.
        """
        if self.task == "attributes":
            return self.attribute_loss(output, batch)
        if self.task == "categorical":
            return self.class_loss(output, batch)
        logits, values = output
        return (self.weight_categorical * self.class_loss(logits, batch)
                + self.weight_attributes * self.attribute_loss(values, batch))

    @staticmethod
    def attribute_loss(values: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Sum over attributes of 1 - CCC on the rows with a value; 0 without attribute targets."""
        target = batch.get("attributes")
        if target is None:
            return values.sum() * 0.0
        return ccc_loss(values, target.to(values.device)) + values.sum() * 0.0

    def class_loss(self, output: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """The configured class loss (loss.type) of logits; rows without a class target are ignored."""
        weight = self.class_weights if self.weighted else None
        soft = self._soft(batch)
        if soft is not None:  # soft_ce / kl, or mixed one-hot/soft targets of a mixup batch
            kind = self.loss_type if self.loss_type in ("kl", "focal") else "ce"
            if kind == "ce" and self.label_smoothing > 0 and self.loss_type not in SOFT_LOSSES:
                soft = (1 - self.label_smoothing) * soft + self.label_smoothing / soft.shape[-1]
            return soft_target_loss(output, soft, weight, kind, self.focal_gamma)
        target = batch["label"]
        if self.loss_type == "focal":
            return focal_loss(output, target, self.focal_gamma, weight)
        if not bool((target >= 0).any()):
            return output.sum() * 0.0
        return F.cross_entropy(
            output.float(), target, weight=weight, ignore_index=-1, label_smoothing=self.label_smoothing
        )


def build_criterion(cfg: Config, num_classes: int) -> Criterion:
    """The criterion of cfg.task / cfg.loss (attributes always use 1-CCC summed over attributes; multitask weighs
    the two by cfg.multitask)."""
    return Criterion(cfg.task, cfg.loss.type, num_classes, cfg.loss.focal_gamma, cfg.loss.label_smoothing,
                     (cfg.multitask.weight_categorical, cfg.multitask.weight_attributes))
