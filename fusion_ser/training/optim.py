"""The optimizer's parameter groups and the learning-rate schedule of the one trainer."""

from __future__ import annotations

import math
from typing import Any, Callable

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
