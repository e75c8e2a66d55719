"""The optimizer's parameter groups and the learning-rate schedule of the one trainer."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from fusion_ser.config import Config
from fusion_ser.errors import FusionSerError
from fusion_ser.models.factory import model_encoders


class OptimError(FusionSerError):
    """A model and config that leave the optimizer nothing to train."""


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
        raise OptimError("the model has no trainable parameters; check audio_encoder.finetune / text_encoder.finetune")
    return groups


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.AdamW:
    """AdamW over `param_groups`, fused (one pass over each tensor per step instead of about ten) where torch has the
    kernel: floating-point parameters on CPU or CUDA. On a small head over pooled vectors the unfused step cost more
    than the forward and backward passes together."""
    groups = param_groups(model, cfg)
    params = [p for g in groups for p in g["params"]]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, weight_decay=cfg.optim.weight_decay, fused=fused)


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
