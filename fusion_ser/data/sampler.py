"""Length-bucketed batching: batches of similar-length clips (little padding), DDP-aware, deterministic.

Each epoch: shuffle all indices, sort by length inside large pools, cut into batches, shuffle the batch order
(in groups of one batch per rank, so that ranks process similar lengths at the same step), then deal batches to
ranks. Every rank gets the same number of batches and disjoint indices.
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class BucketBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices; use as a DataLoader `batch_sampler`. Call `set_epoch` every epoch.

    `pool_batches` batches' worth of shuffled indices are sorted by length together: larger pools pad less,
    smaller pools randomise more. Without `shuffle` the whole dataset is sorted (longest first) for evaluation.
    """

    def __init__(
        self,
        lengths: Sequence[float],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        pool_batches: int = 50,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in 0..{num_replicas - 1}")
        self.lengths = np.asarray(lengths, dtype=float)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = drop_last
        self.pool_batches = max(1, int(pool_batches))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose (deterministic) order the next iteration yields."""
        self.epoch = int(epoch)

    def _order(self, rng: np.random.Generator) -> np.ndarray:
        n = len(self.lengths)
        if not self.shuffle:
            return np.argsort(-self.lengths, kind="stable")
        perm = rng.permutation(n)
        pool = self.batch_size * self.pool_batches
        chunks = []
        for start in range(0, n, pool):
            idx = perm[start : start + pool]
            chunks.append(idx[np.argsort(-self.lengths[idx], kind="stable")])
        return np.concatenate(chunks) if chunks else perm

    def _all_batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = self._order(rng)
        n, bs, reps = len(order), self.batch_size, self.num_replicas
        if self.drop_last:
            n_batches = (n // bs) // reps * reps
            batches = [order[i * bs : (i + 1) * bs] for i in range(n_batches)]
        else:
            if 0 < n < reps:
                order = np.resize(order, reps)  # fewer items than ranks: repeat so no rank is empty
                n = reps
            batches = [order[i : i + bs] for i in range(0, n, bs)]
            need = math.ceil(len(batches) / reps) * reps
            while len(batches) < need:  # split the largest batch until every rank gets the same count
                j = max(range(len(batches)), key=lambda b: len(batches[b]))
                if len(batches[j]) == 1:  # batch size 1 and too few items: repeat one so counts stay equal
                    batches.append(order[len(batches) % n : len(batches) % n + 1])
                    continue
                half = (len(batches[j]) + 1) // 2
                batches[j : j + 1] = [batches[j][:half], batches[j][half:]]
        if self.shuffle:  # shuffle groups of `reps` neighbouring batches: ranks step through similar lengths
            groups = [batches[i : i + reps] for i in range(0, len(batches), reps)]
            batches = [b for g in rng.permutation(len(groups)) for b in groups[g]]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._all_batches()[self.rank :: self.num_replicas]:
            yield [int(i) for i in batch]

    def __len__(self) -> int:
        n, bs, reps = len(self.lengths), self.batch_size, self.num_replicas
        if self.drop_last:
            return (n // bs) // reps
        if n == 0:
            return 0
        return math.ceil(math.ceil(max(n, reps) / bs) / reps)
