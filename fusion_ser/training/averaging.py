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
        self._params: tuple[int, list[torch.Tensor]] = (0, [])  # (id of the module, its trained parameters)

    def _tensors(self, module: nn.Module) -> list[torch.Tensor]:
        """The module's trained parameters in `names` order, looked up once per module (not on every step: walking
        a model that holds a frozen encoder costs more than the update itself)."""
        if self._params[0] != id(module):
            params = dict(module.named_parameters())
            self._params = (id(module), [params[n] for n in self.names])
        return self._params[1]

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        params = self._tensors(module)
        if not self.shadow:
            self.shadow = {n: p.detach().float().clone() for n, p in zip(self.names, params)}
        elif all(p.dtype == torch.float32 for p in params):  # one fused lerp over every tensor
            torch._foreach_lerp_([self.shadow[n] for n in self.names], [p.detach() for p in params], 1.0 - self.decay)
        else:
            for n, p in zip(self.names, params):
                self.shadow[n].lerp_(p.detach().float(), 1.0 - self.decay)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self, module: nn.Module) -> Iterator[None]:
        """The averaged weights in `module` for the duration of the block; the raw ones are put back after."""
        if not self.shadow:
            yield
            return
        params = dict(zip(self.names, self._tensors(module)))
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
