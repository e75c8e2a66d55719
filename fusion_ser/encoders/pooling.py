"""Pooling of frame features (B, T, D) with a validity mask (B, T) into one vector per utterance.

Attentive statistics pooling (attention-weighted mean and standard deviation, as in the Odyssey 2024 baseline),
mean pooling and mean+std pooling, all masked and vectorized over the batch.
"""

from __future__ import annotations

import torch
from torch import nn

from fusion_ser.config import PoolingConfig, check_choices

_EPS = 1e-5


def _float_mask(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, T) bool -> (B, T, 1) in the features' dtype."""
    return mask.to(like.dtype).unsqueeze(-1)


def _weighted_mean_std(features: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over T with weights (B, T, 1) that sum to one per utterance."""
    mean = (weights * features).sum(dim=1)
    second = (weights * features * features).sum(dim=1)
    var = (second - mean * mean).clamp(min=_EPS)
    return mean, var.sqrt()


class MeanPooling(nn.Module):
    """Masked average of the frames."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.output_dim = in_dim

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = _float_mask(mask, features)
        return (features * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class MeanStdPooling(nn.Module):
    """Masked mean and standard deviation of the frames, concatenated."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.output_dim = 2 * in_dim

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = _float_mask(mask, features)
        weights = m / m.sum(dim=1, keepdim=True).clamp(min=1.0)
        mean, std = _weighted_mean_std(features, weights)
        return torch.cat([mean, std], dim=-1)


class AttentiveStatsPooling(nn.Module):
    """Attention-weighted mean and std: w_t = softmax_t(v^T tanh(W x_t + b)) over the valid frames only."""

    def __init__(self, in_dim: int, attention_dim: int = 128):
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(in_dim, attention_dim), nn.Tanh(), nn.Linear(attention_dim, 1))
        self.output_dim = 2 * in_dim

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.attention(features).squeeze(-1)  # (B, T)
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=1) * mask.to(scores.dtype)
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=_EPS)
        mean, std = _weighted_mean_std(features, weights.unsqueeze(-1))
        return torch.cat([mean, std], dim=-1)


def build_pooling(cfg: PoolingConfig, in_dim: int) -> nn.Module:
    """The pooling module named by cfg.type; its `output_dim` tells the head its input size."""
    check_choices(cfg, "pooling.")
    if cfg.type == "attentive_stats":
        return AttentiveStatsPooling(in_dim, cfg.attention_dim)
    if cfg.type == "mean":
        return MeanPooling(in_dim)
    return MeanStdPooling(in_dim)
