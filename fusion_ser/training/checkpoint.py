"""Training checkpoints: what a resumable state holds (trainable weights, RNG states) and how it is written.

Files are written to a temporary name and renamed, so a crash never leaves a half-written checkpoint under its
final name. Frozen weights are not stored: the model builder recreates them.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def rng_state() -> dict[str, Any]:
    """The Python, numpy, torch (and CUDA) random states of this process."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the random states saved by `rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train plus all buffers: what a checkpoint must hold (frozen weights are rebuilt)."""
    model = getattr(model, "module", model)
    names = {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in names}


def save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def load(path: Path) -> Any:
    """A checkpoint written by `save`, on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=False)
