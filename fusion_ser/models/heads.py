"""The Odyssey 2024 baseline head, the attribute head and the multitask head built on it; `build_head` picks the one
of cfg.task."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fusion_ser.config import Config
from fusion_ser.data.dataset import AUXILIARY_KEY
from fusion_ser.schema import has_classes
from fusion_ser.models.output import MIX_KEY


class BaselineHead(nn.Module):
    """The Odyssey 2024 baseline head: Dropout 0.5, Linear, LayerNorm, ReLU, Dropout, Linear."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 256, dropout: float = 0.5):
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(in_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AttributeHead(nn.Module):
    """Attribute regression: one baseline head for all attributes, or one per attribute (head.per_attribute).

    Outputs are on a [0, 1] scale; `scale_out` / `scale_in` map to and from the manifest's data.attribute_range.
    """

    def __init__(self, in_dim: int, attributes: list[str], hidden_dim: int, dropout: float, per_attribute: bool,
                 attribute_range: list[float]):
        super().__init__()
        self.per_attribute = per_attribute
        if per_attribute:
            self.heads = nn.ModuleList(BaselineHead(in_dim, 1, hidden_dim, dropout) for _ in attributes)
        else:
            self.heads = nn.ModuleList([BaselineHead(in_dim, len(attributes), hidden_dim, dropout)])
        self.low, self.high = float(attribute_range[0]), float(attribute_range[1])

    def scale_out(self, z: torch.Tensor) -> torch.Tensor:
        """Model scale [0, 1] -> manifest scale."""
        return self.low + z * (self.high - self.low)

    def scale_in(self, y: torch.Tensor) -> torch.Tensor:
        """Manifest scale -> model scale [0, 1]."""
        return (y - self.low) / (self.high - self.low)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attribute values on the manifest scale, (B, A)."""
        z = torch.cat([h(x) for h in self.heads], dim=-1)
        return self.scale_out(z)


class MultitaskHead(nn.Module):
    """MEDUSA's multi-task model: a categorical and an attribute head on the same pooled embedding."""

    def __init__(self, categorical: nn.Module, attributes: AttributeHead):
        super().__init__()
        self.categorical = categorical
        self.attributes = attributes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits (B, K), attribute values (B, A) on the manifest scale)."""
        return self.categorical(x), self.attributes(x)


class AuxiliaryHead(nn.Module):
    """SAIL's auxiliary classifier on a manifest column (e.g. gender) from the pooled embedding; training only."""

    def __init__(self, in_dim: int, classes: Sequence[str], hidden_dim: int, dropout: float, weight: float):
        super().__init__()
        self.classes = [str(c) for c in classes]
        self.weight = float(weight)
        self.net = BaselineHead(in_dim, len(self.classes), hidden_dim, dropout)

    def loss(self, pooled: torch.Tensor, values: Sequence[Any], mix: Optional[tuple[float, torch.Tensor]] = None
             ) -> torch.Tensor:
        """Cross-entropy of the column's values (unknown ones ignored); on a mixup batch, mixed with its lambda."""
        index = {c: i for i, c in enumerate(self.classes)}
        target = torch.tensor([index.get(str(v), -1) for v in values], device=pooled.device)
        logits = self.net(pooled).float()

        def ce(t: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits, t, ignore_index=-1) if bool((t >= 0).any()) else logits.sum() * 0.0

        if mix is None:
            return ce(target)
        lam, perm = mix
        return lam * ce(target) + (1.0 - lam) * ce(target[perm.to(target.device)])

    def add_loss(self, result: Any, pooled: torch.Tensor, batch: dict[str, Any]) -> Any:
        """result (a ModelOutput) with weight * the auxiliary loss added to its loss, in training mode only (dev
        losses stay those of the task)."""
        if not self.training or result.loss is None or AUXILIARY_KEY not in batch:
            return result
        aux = self.loss(pooled, batch[AUXILIARY_KEY], batch.get(MIX_KEY))
        result.loss = result.loss + self.weight * aux
        result.records["auxiliary_loss"] = aux.detach()
        return result


def build_auxiliary(cfg: Config, in_dim: int, classes: Optional[Sequence[str]]) -> Optional[AuxiliaryHead]:
    """The auxiliary head of cfg.multitask.auxiliary when its classes are given (training), else None."""
    if cfg.multitask.auxiliary is None or not classes:
        return None
    return AuxiliaryHead(in_dim, classes, cfg.head.hidden_dim, cfg.head.dropout, cfg.multitask.weight_auxiliary)


def build_head(cfg: Config, in_dim: int, labels: list[str]) -> nn.Module:
    """The head of cfg.task: class logits (B, K), attribute values (B, A) on the manifest scale, or both."""
    def attributes() -> AttributeHead:
        return AttributeHead(in_dim, list(cfg.data.attributes), cfg.head.hidden_dim, cfg.head.dropout,
                             cfg.head.per_attribute, list(cfg.data.attribute_range))

    if not has_classes(cfg.task):
        return attributes()
    categorical = BaselineHead(in_dim, len(labels), cfg.head.hidden_dim, cfg.head.dropout)
    return MultitaskHead(categorical, attributes()) if cfg.task == "multitask" else categorical
