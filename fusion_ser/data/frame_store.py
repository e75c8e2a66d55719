"""Fast reads of the feature cache, so an epoch over a frozen encoder costs what its head costs.

`FrameMemory` holds each clip's cached frames in RAM once read, within a byte budget (train.feature_memory: a
fraction of the machine's memory, shared by the local ranks of a torchrun job); past the budget, reads go to disk.
`PooledStore` serves the pooled vector of a parameter-free pooling (`Pooler`: the model's own map from frames to the
head's input) of every clip and speed-perturbed copy, computed once from the frames, kept in memory and on disk beside
them (root/<encoder>/pooled-<sha256(pooler id)[:16]>/<key[:2]>/<key>.npy, written atomically; a damaged file is
recomputed), so later epochs, folds and runs read a vector instead of the frames. Within a run an item is looked up by
its path and speed (no stat or hash per read); vectors read once are shared by the runs of one process (train_cv's
folds), under the cache's full key (file identity included). Both only read: FeatureCache.ensure
fills the frames as before, and nothing here changes what a batch holds beyond replacing frames by their pooled vector.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from fusion_ser.data.feature_cache import FeatureCache
from fusion_ser.encoders.base import Encoder
from fusion_ser.files import atomic_write_bytes

log = logging.getLogger(__name__)

_PROCESS_VECTORS: dict[tuple[str, str], tuple[torch.Tensor, int]] = {}  # (pooled dir, cache key) -> vector, T


def read_key(item: dict[str, Any]) -> tuple:
    """An item's identity within one run (its path or text, speed and options), without touching the file."""
    return tuple(sorted((k, str(v)) for k, v in item.items() if k != "utt_id"))


@dataclass
class Pooler:
    """A parameter-free map from one clip's cached frames (..., T, D) to its pooled vector (P,), and an id that
    changes whenever the map does (encoder options, pooling type)."""

    id: str
    fn: Callable[[torch.Tensor], torch.Tensor]


def memory_budget(fraction: float) -> int:
    """Bytes that `fraction` of this machine's RAM is, divided among the local ranks of a torchrun job."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return int(fraction * total / local)


class FrameMemory:
    """Cached frames held in memory after their first read, while their total stays within `budget` bytes."""

    def __init__(self, budget: int):
        self.budget = int(budget)
        self.used = 0
        self._frames: dict[str, torch.Tensor] = {}
        self._warned = False

    def __len__(self) -> int:
        return len(self._frames)

    def get(self, cache: FeatureCache, encoder: Encoder, item: dict[str, Any]) -> torch.Tensor:
        """The frames of `item` from memory, else from the cache (kept in memory when they fit the budget)."""
        key = read_key(item)
        frames = self._frames.get(key)
        if frames is not None:
            return frames
        frames = cache.get(encoder, item)
        size = frames.numel() * frames.element_size()
        if self.used + size <= self.budget:
            self._frames[key] = frames
            self.used += size
        elif not self._warned:
            self._warned = True
            log.info("cached frames exceed the memory budget (%.1f GB, train.feature_memory); the rest is read from "
                     "disk every batch", self.budget / 1e9)
        return frames


class PooledStore:
    """Pooled vectors (and frame counts) of a frozen encoder's cached clips under one `Pooler`."""

    def __init__(self, cache: FeatureCache, encoder: Encoder, pooler: Pooler):
        self.cache = cache
        self.encoder = encoder
        self.pooler = pooler
        self._dir: Optional[Path] = None
        self._vectors: dict[tuple, tuple[torch.Tensor, int]] = {}

    @property
    def directory(self) -> Path:
        if self._dir is None:
            tag = hashlib.sha256(self.pooler.id.encode()).hexdigest()[:16]
            self._dir = self.cache.encoder_dir(self.encoder) / f"pooled-{tag}"
        return self._dir

    def pool(self, frames: torch.Tensor) -> torch.Tensor:
        """The pooled float32 vector (P,) of one clip's frames (..., T, D)."""
        with torch.no_grad():
            return self.pooler.fn(frames).detach().to("cpu", torch.float32)

    def get(self, item: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """(pooled vector of the whole cached clip, its number of frames T) of `item`, computed once."""
        quick = read_key(item)
        hit = self._vectors.get(quick)
        if hit is not None:
            return hit
        key = self.cache.item_key(item)
        shared = (str(self.directory), key)
        path = self.directory / key[:2] / f"{key}.npy"
        hit = _PROCESS_VECTORS.get(shared) or self._read(path)
        if hit is None:
            frames = self.cache.get(self.encoder, item)
            hit = (self.pool(frames), int(frames.shape[-2]))
            buf = io.BytesIO()
            np.save(buf, np.concatenate([[float(hit[1])], hit[0].numpy()]).astype(np.float32), allow_pickle=False)
            atomic_write_bytes(path, buf.getvalue())
        self._vectors[quick] = _PROCESS_VECTORS[shared] = hit
        return hit

    @staticmethod
    def _read(path: Path) -> Optional[tuple[torch.Tensor, int]]:
        if not path.is_file():
            return None
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            log.warning("pooled vector %s is unreadable (%s); recomputing it", path, e)
            return None
        if data.ndim != 1 or data.size < 2 or not np.isfinite(data).all():
            log.warning("pooled vector %s is damaged; recomputing it", path)
            return None
        return torch.from_numpy(data[1:].copy()), int(data[0])
