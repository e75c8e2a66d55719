"""Losses against independent computations: numpy CCC, the class-weight formula, focal(γ=0)=CE, soft CE(one-hot)=CE."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight

from fusion_ser.config import load_config
from fusion_ser.evaluation.metrics import ccc as numpy_ccc
from fusion_ser.models.losses import (
    build_criterion,
    ccc_loss,
    class_weights,
    focal_loss,
    soft_cross_entropy,
)


def _np_ccc(x: np.ndarray, y: np.ndarray) -> float:
    mx, my = x.mean(), y.mean()
    cov = ((x - mx) * (y - my)).mean()
    return 2 * cov / (x.var() + y.var() + (mx - my) ** 2)


def test_ccc_loss_is_sum_of_one_minus_numpy_ccc_per_attribute() -> None:
    rng = np.random.default_rng(0)
    target = rng.uniform(1, 7, size=(50, 3))
    pred = 0.6 * target + rng.normal(0, 0.8, size=target.shape) + 0.5
    expected = sum(1 - _np_ccc(pred[:, a], target[:, a]) for a in range(3))
    got = float(ccc_loss(torch.tensor(pred), torch.tensor(target)))
    assert got == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(sum(1 - numpy_ccc(target[:, a], pred[:, a]) for a in range(3)), rel=1e-9)


def test_ccc_loss_masks_nan_targets_per_attribute() -> None:
    rng = np.random.default_rng(1)
    target = rng.uniform(1, 7, size=(40, 2))
    pred = target + rng.normal(0, 1, size=target.shape)
    target_nan = target.copy()
    target_nan[:10, 1] = np.nan
    expected = (1 - _np_ccc(pred[:, 0], target[:, 0])) + (1 - _np_ccc(pred[10:, 1], target[10:, 1]))
    got = float(ccc_loss(torch.tensor(pred), torch.tensor(target_nan)))
    assert np.isfinite(got)
    assert got == pytest.approx(expected, rel=1e-5)


def test_ccc_loss_zero_for_perfect_prediction_and_has_gradient() -> None:
    y = torch.linspace(1, 7, 20)[:, None].repeat(1, 3)
    assert float(ccc_loss(y.clone(), y)) == pytest.approx(0.0, abs=1e-6)
    p = (y * 0.5).requires_grad_(True)
    loss = ccc_loss(p, y)
    loss.backward()
    assert float(loss.detach()) > 0.1 and p.grad is not None and float(p.grad.abs().sum()) > 0


def test_class_weights_match_formula_and_sklearn_balanced() -> None:
    labels = ["a"] * 10 + ["b"] * 30 + ["c"] * 5
    classes = ["a", "b", "c"]
    w = class_weights(labels, classes).numpy()
    n, k = len(labels), 3
    expected = np.array([n / (k * 10), n / (k * 30), n / (k * 5)])
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    np.testing.assert_allclose(w, compute_class_weight("balanced", classes=np.array(classes), y=np.array(labels)), rtol=1e-6)


def test_class_weights_ignore_non_class_labels_and_zero_for_absent_class() -> None:
    w = class_weights(["a", "a", "b", "no_agreement", "other"], ["a", "b", "c"]).numpy()
    # N counts class rows only (3); c never appears
    np.testing.assert_allclose(w, [3 / (3 * 2), 3 / (3 * 1), 0.0], rtol=1e-6)


def test_focal_with_gamma_zero_equals_cross_entropy_weighted_and_not() -> None:
    torch.manual_seed(0)
    logits = torch.randn(32, 5)
    target = torch.randint(0, 5, (32,))
    target[:4] = -1
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5])
    ce = F.cross_entropy(logits, target, ignore_index=-1)
    wce = F.cross_entropy(logits, target, weight=weight, ignore_index=-1)
    assert float(focal_loss(logits, target, gamma=0.0)) == pytest.approx(float(ce), rel=1e-5)
    assert float(focal_loss(logits, target, gamma=0.0, weight=weight)) == pytest.approx(float(wce), rel=1e-5)
    # gamma > 0 down-weights easy examples: strictly smaller than CE
    assert float(focal_loss(logits, target, gamma=2.0)) < float(ce)


def test_focal_matches_manual_formula() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.1, 0.2, 0.3]])
    target = torch.tensor([0, 2])
    p = torch.softmax(logits, -1).numpy()
    pt = np.array([p[0, 0], p[1, 2]])
    expected = np.mean(-((1 - pt) ** 2) * np.log(pt))
    assert float(focal_loss(logits, target, gamma=2.0)) == pytest.approx(expected, rel=1e-5)


def test_soft_ce_with_one_hot_equals_cross_entropy() -> None:
    torch.manual_seed(1)
    logits = torch.randn(16, 4)
    target = torch.randint(0, 4, (16,))
    onehot = F.one_hot(target, 4).float()
    weight = torch.tensor([0.5, 1.0, 2.0, 4.0])
    assert float(soft_cross_entropy(logits, onehot)) == pytest.approx(float(F.cross_entropy(logits, target)), rel=1e-5)
    assert float(soft_cross_entropy(logits, onehot, weight)) == pytest.approx(
        float(F.cross_entropy(logits, target, weight=weight)), rel=1e-5)


def test_soft_ce_uses_distribution_and_skips_rows_without_one() -> None:
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [5.0, 5.0, 5.0]])
    soft = torch.tensor([[2.0, 2.0, 0.0], [0.0, 1.0, 3.0], [0.0, 0.0, 0.0]])  # raw counts: renormalised; row 3 empty
    logp = F.log_softmax(logits, -1).numpy()
    q = soft.numpy()[:2] / soft.numpy()[:2].sum(1, keepdims=True)
    expected = float(np.mean(-(q * logp[:2]).sum(1)))
    assert float(soft_cross_entropy(logits, soft)) == pytest.approx(expected, rel=1e-6)


def test_criterion_follows_config() -> None:
    torch.manual_seed(2)
    logits = torch.randn(10, 3)
    label = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 0, -1])
    crit = build_criterion(load_config(None, ["loss.type=weighted_ce"]), 3)
    w = class_weights(["x"] * 6 + ["y"] * 2 + ["z"] * 2, ["x", "y", "z"])
    crit.set_class_weights(w)
    assert float(crit(logits, {"label": label})) == pytest.approx(
        float(F.cross_entropy(logits, label, weight=w, ignore_index=-1)), rel=1e-5)
    plain = build_criterion(load_config(None, ["loss.type=ce"]), 3)
    plain.set_class_weights(w)  # ignored by plain CE
    assert float(plain(logits, {"label": label})) == pytest.approx(
        float(F.cross_entropy(logits, label, ignore_index=-1)), rel=1e-5)
    attr = build_criterion(load_config(None, ["task=attributes"]), 0)
    y = torch.rand(10, 3) * 6 + 1
    assert float(attr(y, {"attributes": y})) == pytest.approx(0.0, abs=1e-5)
