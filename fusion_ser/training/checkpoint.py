"""Training checkpoints: what a resumable state holds (trainable weights, RNG states) and how it is written.

Files are written to a temporary name and renamed, so a crash never leaves a half-written checkpoint under its
final name. Frozen weights are not stored: the model builder recreates them. Everything stored is tensors and plain
values (numbers, strings, lists, tuples, dicts; the numpy RNG key as a tensor), so every checkpoint loads with
`torch.load(weights_only=True)`: a file that would need code to unpickle is refused, never run.
"""

from __future__ import annotations

import logging
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fusion_ser.errors import FusionSerError
from fusion_ser.files import atomic_path

logger = logging.getLogger(__name__)


class CheckpointError(FusionSerError):
    """A checkpoint file that cannot be loaded (truncated, empty, not a checkpoint, or holding more than data)."""


def rng_state() -> dict[str, Any]:
    """The Python, numpy, torch (and CUDA) random states of this process, as tensors and plain values."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the random states saved by `rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train plus all buffers: what a checkpoint must hold (frozen weights are rebuilt)."""
    model = getattr(model, "module", model)
    names = {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in names}


def save(obj: Any, path: Path) -> None:
    """torch.save through a temporary file and a rename (files.atomic_path: a full disk is a DiskFullError and the
    previous checkpoint stays intact)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def unusable(path: Path, reason: str) -> CheckpointError:
    """The error for a checkpoint file that cannot be used: which file, why, and what to do."""
    return CheckpointError(f"checkpoint '{path}' cannot be used: {reason}. Delete the run's checkpoints folder "
                           f"'{path.parent}' to train the run again from scratch, or restore the file")


def load(path: Path, required: tuple[str, ...] = ()) -> Any:
    """A checkpoint written by `save`, on the CPU, loaded as data only (weights_only: no code runs).

    With `required`, the file must hold a dict with those keys. Raises CheckpointError naming the file otherwise.
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        logger.debug("weights-only load of %s failed: %s", path, e)
        raise unusable(path, "it holds objects other than tensors and plain values, which are never loaded "
                             "(unpickling them could run code)") from None
    except Exception as e:  # noqa: BLE001 - empty (EOFError), truncated (RuntimeError), not a torch file (KeyError)...
        detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise unusable(path, f"it is empty, truncated or not a checkpoint ({detail})") from None
    if required and (not isinstance(obj, dict) or any(k not in obj for k in required)):
        missing = [k for k in required if not isinstance(obj, dict) or k not in obj]
        raise unusable(path, f"it is not a checkpoint of this trainer (missing: {', '.join(missing)})")
    return obj


def restore_rng(path: Path) -> None:
    """Restore the random states stored in `path` by `save(rng_state(), path)`; CheckpointError when unusable."""
    state = load(path, required=("python", "numpy", "torch"))
    try:
        set_rng_state(state)
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as e:
        raise unusable(path, f"its random states are malformed ({type(e).__name__}: {e})") from None
