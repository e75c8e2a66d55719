"""Masked pooling equals the per-utterance numpy computation; padding never leaks into the pooled vector."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion_ser.config import ConfigError, PoolingConfig
from fusion_ser.encoders.pooling import build_pooling


def _random_batch(seed: int, b: int = 5, t: int = 17, d: int = 6) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, t + 1, size=b)
    lengths[0] = t
    x = rng.normal(size=(b, t, d)).astype(np.float32) * 3 + 1
    mask = np.arange(t)[None, :] < lengths[:, None]
    x[~mask] = rng.normal(size=(int((~mask).sum()), d)) * 1e3  # garbage in the padding must not matter
    return torch.from_numpy(x), torch.from_numpy(mask), lengths


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_attentive_stats_matches_per_utterance_numpy(seed: int) -> None:
    torch.manual_seed(seed)
    x, mask, lengths = _random_batch(seed)
    pool = build_pooling(PoolingConfig(type="attentive_stats", attention_dim=8), in_dim=x.shape[-1]).double()
    got = pool(x.double(), mask).detach().numpy()
    w1 = pool.attention[0].weight.detach().numpy()
    b1 = pool.attention[0].bias.detach().numpy()
    w2 = pool.attention[2].weight.detach().numpy()
    b2 = pool.attention[2].bias.detach().numpy()
    assert got.shape == (x.shape[0], 2 * x.shape[-1]) == (x.shape[0], pool.output_dim)
    for i, n in enumerate(lengths):
        xi = x[i, :n].double().numpy()
        scores = (np.tanh(xi @ w1.T + b1) @ w2.T + b2)[:, 0]
        alpha = np.exp(scores - scores.max())
        alpha /= alpha.sum()
        mean = (alpha[:, None] * xi).sum(0)
        std = np.sqrt(np.maximum((alpha[:, None] * xi**2).sum(0) - mean**2, 1e-5))
        np.testing.assert_allclose(got[i], np.concatenate([mean, std]), rtol=1e-6, atol=1e-6)


def test_mean_and_mean_std_match_numpy() -> None:
    x, mask, lengths = _random_batch(7)
    mean_pool = build_pooling(PoolingConfig(type="mean"), 6)
    ms_pool = build_pooling(PoolingConfig(type="mean_std"), 6)
    got_mean = mean_pool(x, mask).numpy()
    got_ms = ms_pool(x, mask).numpy()
    assert mean_pool.output_dim == 6 and ms_pool.output_dim == 12
    for i, n in enumerate(lengths):
        xi = x[i, :n].double().numpy()
        np.testing.assert_allclose(got_mean[i], xi.mean(0), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got_ms[i], np.concatenate([xi.mean(0), np.sqrt(np.maximum(xi.var(0), 1e-5))]),
                                   rtol=1e-3, atol=1e-3)


def test_attentive_pooling_is_padding_invariant_and_trains() -> None:
    torch.manual_seed(0)
    pool = build_pooling(PoolingConfig(type="attentive_stats", attention_dim=4), 3)
    clip = torch.randn(1, 5, 3)
    padded = torch.cat([clip, torch.full((1, 4, 3), 50.0)], dim=1)
    a = pool(clip, torch.ones(1, 5, dtype=torch.bool))
    b = pool(padded, torch.tensor([[True] * 5 + [False] * 4]))
    torch.testing.assert_close(a, b)
    b.sum().backward()
    assert pool.attention[0].weight.grad is not None and pool.attention[0].weight.grad.abs().sum() > 0


def test_unknown_pooling_type_names_the_option() -> None:
    with pytest.raises(ConfigError, match="pooling.type"):
        build_pooling(PoolingConfig(type="max"), 4)
