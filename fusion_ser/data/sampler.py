"""Length-bucketed batching: batches of similar-length clips (little padding), DDP-aware, deterministic.

Each epoch: shuffle all indices, sort by length inside large pools, cut into batches, shuffle the batch order
(in groups of one batch per rank, so that ranks process similar lengths at the same step), then deal batches to
ranks. Every rank gets the same number of batches and disjoint indices.
"""

from __future__ import annotations

import math
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np
from torch.utils.data import Sampler


def group_counts(n: int, names: Sequence[str], shares: Optional[Mapping[str, float]] = None) -> list[int]:
    """Items of an epoch of `n` for each group: n * share rounded by largest remainder (ties: the earlier group),
    summing to n; equal shares without `shares` (n // G each, the first n % G groups one more)."""
    weights = np.array([1.0 if shares is None else max(0.0, float(shares.get(g, 0.0))) for g in names])
    if weights.sum() <= 0:
        raise ValueError(f"no group among {list(names)} has a positive share")
    exact = n * weights / weights.sum()
    counts = np.floor(exact).astype(int)
    order = sorted(range(len(names)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in order[: n - int(counts.sum())]:
        counts[k] += 1
    return [int(c) for c in counts]


class BucketBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices; use as a DataLoader `batch_sampler`. Call `set_epoch` every epoch.

    `pool_batches` batches' worth of shuffled indices are sorted by length together: larger pools pad less,
    smaller pools randomise more. Without `shuffle` the whole dataset is sorted (longest first) for evaluation.
    With `groups` (e.g. each item's corpus) every group fills an equal share of each epoch (data.corpus_sampling
    balanced), drawn from (seed, epoch) like the rest, so resume and DDP stay exact; the epoch length is unchanged.
    `shares` (group -> fraction of the epoch, normalised over the groups present) replaces the equal shares
    (class sampling, training/sampling.py); the groups apply from epoch `groups_from` on, the epochs before it
    are plain permutations (data.sampler staged).
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
        groups: Optional[Sequence[str]] = None,
        shares: Optional[Mapping[str, float]] = None,
        groups_from: int = 0,
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
        self.groups = None if groups is None else np.asarray([str(g) for g in groups], dtype=object)
        if self.groups is not None and len(self.groups) != len(self.lengths):
            raise ValueError(f"{len(self.groups)} groups for {len(self.lengths)} items")
        self.shares = None if shares is None else {str(k): float(v) for k, v in shares.items()}
        self.groups_from = int(groups_from)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose (deterministic) order the next iteration yields."""
        self.epoch = int(epoch)

    def _epoch_items(self, rng: np.random.Generator) -> np.ndarray:
        """The epoch's items in random order: all of them once, or with `groups` a share of the epoch for each
        group (`group_counts`), a small group's items repeated."""
        n = len(self.lengths)
        if self.groups is None or self.epoch < self.groups_from:
            return rng.permutation(n)
        names = sorted(set(self.groups))
        parts = []
        for name, m in zip(names, group_counts(n, names, self.shares)):
            members = np.flatnonzero(self.groups == name)
            copies = -(-m // len(members))
            parts.append(np.concatenate([rng.permutation(members) for _ in range(copies)])[:m])
        return rng.permutation(np.concatenate(parts))

    def _order(self, rng: np.random.Generator) -> np.ndarray:
        n = len(self.lengths)
        if not self.shuffle:
            return np.argsort(-self.lengths, kind="stable")
        perm = self._epoch_items(rng)
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
