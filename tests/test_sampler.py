"""Length-bucketed batching: coverage, less padding than random batches, DDP ranks, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DataLoader

from fusion_ser.data.sampler import BucketBatchSampler


@pytest.fixture(scope="module")
def lengths():
    return np.random.default_rng(0).integers(8000, 160000, size=997)


def _padding(batches, lengths) -> int:
    return int(sum(len(b) * lengths[b].max() - lengths[b].sum() for b in map(np.asarray, batches)))


def test_every_index_once_per_epoch(lengths):
    s = BucketBatchSampler(lengths, 16, seed=3)
    for epoch in range(3):
        s.set_epoch(epoch)
        batches = list(s)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(lengths)))
        assert len(batches) == len(s) == int(np.ceil(len(lengths) / 16))
        assert max(len(b) for b in batches) <= 16


def test_bucketing_pads_much_less_than_random_batches(lengths):
    s = BucketBatchSampler(lengths, 16, seed=0)
    bucketed = _padding(list(s), lengths)
    perm = np.random.default_rng(0).permutation(len(lengths))
    random_batches = [perm[i : i + 16] for i in range(0, len(perm), 16)]
    assert bucketed < 0.25 * _padding(random_batches, lengths)


def test_batch_order_is_shuffled_not_sorted(lengths):
    s = BucketBatchSampler(lengths, 16, seed=0)
    maxima = [lengths[b].max() for b in s]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_deterministic_per_seed_and_epoch(lengths):
    a, b, c = (BucketBatchSampler(lengths, 8, seed=s) for s in (1, 1, 2))
    assert list(a) == list(b)
    assert list(a) != list(c)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first


@pytest.mark.parametrize("n,batch,replicas", [(997, 16, 2), (997, 16, 3), (10, 4, 4), (5, 1, 2), (100, 50, 3)])
def test_ddp_ranks_disjoint_equal_counts_and_complete(n, batch, replicas):
    lens = np.random.default_rng(n).integers(1, 1000, size=n)
    per_rank = []
    for rank in range(replicas):
        s = BucketBatchSampler(lens, batch, seed=5, num_replicas=replicas, rank=rank)
        s.set_epoch(2)
        batches = list(s)
        assert len(batches) == len(s)
        assert all(0 < len(b) <= batch for b in batches)
        per_rank.append([i for b in batches for i in b])
    assert len({len(s) for s in [BucketBatchSampler(lens, batch, num_replicas=replicas, rank=r)
                                  for r in range(replicas)]}) == 1
    assert set().union(*map(set, per_rank)) == set(range(n))
    total = sum(len(r) for r in per_rank)
    if n >= replicas * int(np.ceil(np.ceil(n / batch) / replicas)):
        assert total == n  # no index repeated: ranks are disjoint
        for i in range(replicas):
            for j in range(i + 1, replicas):
                assert not set(per_rank[i]) & set(per_rank[j])


def test_drop_last_keeps_full_batches_and_equal_counts(lengths):
    counts = []
    for rank in range(3):
        s = BucketBatchSampler(lengths, 16, num_replicas=3, rank=rank, drop_last=True)
        batches = list(s)
        assert all(len(b) == 16 for b in batches) and len(batches) == len(s)
        counts.append(len(batches))
    assert len(set(counts)) == 1 and counts[0] == (len(lengths) // 16) // 3


def test_unshuffled_is_sorted_longest_first(lengths):
    s = BucketBatchSampler(lengths, 32, shuffle=False)
    flat = [i for b in s for i in b]
    assert np.all(np.diff(lengths[flat]) <= 0)


def test_works_as_dataloader_batch_sampler():
    lens = np.arange(1, 21)
    loader = DataLoader(list(range(20)), batch_sampler=BucketBatchSampler(lens, 6, seed=0))
    seen = sorted(int(x) for batch in loader for x in batch)
    assert seen == list(range(20))


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        BucketBatchSampler([1, 2], 0)
    with pytest.raises(ValueError, match="rank"):
        BucketBatchSampler([1, 2], 1, num_replicas=2, rank=2)


def test_ranks_step_through_similar_lengths(lengths):
    ranks = [list(BucketBatchSampler(lengths, 8, seed=1, num_replicas=2, rank=r)) for r in range(2)]
    step_gap = np.mean([abs(lengths[a].max() - lengths[b].max()) for a, b in zip(*ranks)])
    maxima = np.array([lengths[b].max() for b in ranks[0] + ranks[1]])
    random_gap = np.mean(np.abs(maxima - np.random.default_rng(0).permutation(maxima)))
    assert step_gap < 0.2 * random_gap
