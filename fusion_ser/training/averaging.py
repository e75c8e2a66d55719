"""Exponential moving average of the trainable weights (optim.ema_decay): evaluated, selected and saved in place
of the raw weights, so the model kept depends less on the exact step training stopped at."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn


class WeightEMA:
    """shadow <- decay * shadow + (1 - decay) * weights after every optimizer step; the first step copies."""

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.names = [n for n, p in module.named_parameters() if p.requires_grad]
        self.shadow: dict[str, torch.Tensor] = {}
        self.updates = 0

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        params = dict(module.named_parameters())
        if not self.shadow:
            self.shadow = {n: params[n].detach().float().clone() for n in self.names}
        else:
            for n in self.names:
                self.shadow[n].lerp_(params[n].detach().float(), 1.0 - self.decay)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self, module: nn.Module) -> Iterator[None]:
        """The averaged weights in `module` for the duration of the block; the raw ones are put back after."""
        if not self.shadow:
            yield
            return
        params = dict(module.named_parameters())
        raw = {n: params[n].detach().clone() for n in self.names}
        with torch.no_grad():
            for n in self.names:
                params[n].copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n in self.names:
                    params[n].copy_(raw[n])

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates,
                "shadow": {n: t.detach().cpu().clone() for n, t in self.shadow.items()}}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.updates = int(state["updates"])
        self.shadow = {n: t.to(device) for n, t in state["shadow"].items()}
