"""The Odyssey 2024 baseline head and the attribute head built on it; `build_head` picks the one of cfg.task."""

from __future__ import annotations

import torch
from torch import nn

from fusion_ser.config import Config


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


def build_head(cfg: Config, in_dim: int, labels: list[str]) -> nn.Module:
    """The head of cfg.task: class logits (B, K) or attribute values (B, A) on the manifest scale."""
    if cfg.task == "attributes":
        return AttributeHead(in_dim, list(cfg.data.attributes), cfg.head.hidden_dim, cfg.head.dropout,
                             cfg.head.per_attribute, list(cfg.data.attribute_range))
    return BaselineHead(in_dim, len(labels), cfg.head.hidden_dim, cfg.head.dropout)
