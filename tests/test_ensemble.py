"""Ensembles (`ensemble`): mean, majority vote with mean-posterior tie-break, stacking; checked by hand and numpy."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, StratifiedKFold

from fusion_ser.cli.main import main
from fusion_ser.fusion.combiners import MajorityVote
from fusion_ser.fusion.ensemble import ensemble_runs
from fusion_ser.fusion.members import FusionError
from fusion_ser.fusion.runs import load_combiner
from fusion_ser.rundir import RunDir
from tests.test_fusion import ATTRS, LABELS, attr_frame, cat_frame, one_blas_thread, write_run  # noqa: F401

COLS = [f"prob_{c}" for c in LABELS]


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    """Three noisy categorical runs of differing quality on the same dev/test utterances."""
    root = tmp_path_factory.mktemp("ens")
    rng = np.random.default_rng(7)
    data = {s: {"y": rng.integers(0, 4, n)} for s, n in [("dev", 200), ("test", 150)]}
    runs = []
    for r, strength in enumerate([1.0, 1.5, 2.0]):
        frames = {}
        for s, d in data.items():
            y = d["y"]
            logits = strength * np.eye(4)[y] + rng.normal(0, 1, (len(y), 4))
            p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            d.setdefault("p", []).append(p)
            frames[s] = cat_frame([f"{s}{i}" for i in range(len(y))], y, p)
        runs.append(write_run(root / f"run{r}", frames))
    return root, runs, data


def test_mean_of_posteriors_matches_numpy(three_runs):
    root, runs, data = three_runs
    res = ensemble_runs(runs, root / "mean", method="mean")
    for split in ["dev", "test"]:
        got = RunDir(res.path).read_predictions(split)
        expect = np.mean(data[split]["p"], axis=0)
        np.testing.assert_allclose(got[COLS].to_numpy(), expect, atol=1e-9)
        assert got["pred"].tolist() == [LABELS[i] for i in expect.argmax(1)]
    assert res.info.kind == "ensemble" and res.n_folds == 0


def _vote_by_hand(member_probs: list[np.ndarray]) -> list[int]:
    out = []
    for i in range(member_probs[0].shape[0]):
        votes = [int(np.argmax(p[i])) for p in member_probs]
        counts = {c: votes.count(c) for c in set(votes)}
        top = max(counts.values())
        tied = [c for c, n in counts.items() if n == top]
        mean = sum(p[i] for p in member_probs) / len(member_probs)
        out.append(max(tied, key=lambda c: mean[c]))
    return out


def test_majority_vote_breaks_ties_by_mean_posterior():
    # row 0: two votes for class 2 beat one vote for class 0 even though class 0 has the highest mean posterior
    # row 1: votes 0, 1, 3 tie; class 3 has the highest mean posterior among the tied classes
    # row 2: votes 1, 1, 1
    p1 = np.array([[0.98, 0.0, 0.02, 0.0], [0.40, 0.30, 0.10, 0.20], [0.1, 0.7, 0.1, 0.1]])
    p2 = np.array([[0.30, 0.0, 0.40, 0.30], [0.10, 0.40, 0.10, 0.40 - 1e-3], [0.1, 0.6, 0.2, 0.1]])
    p3 = np.array([[0.30, 0.0, 0.40, 0.30], [0.10, 0.10, 0.30, 0.50], [0.2, 0.5, 0.2, 0.1]])
    x = np.stack([p1, p2, p3])
    out = MajorityVote(LABELS, 3).apply(x)
    assert out.pred.tolist() == [2, 3, 1] == _vote_by_hand([p1, p2, p3])
    np.testing.assert_allclose(out.probs, x.mean(0))
    # the tie-break decides row 1: a confident class-0 vote in member 1 hands the tie to class 0
    p1b = p1.copy()
    p1b[1] = [0.95, 0.02, 0.02, 0.01]
    assert MajorityVote(LABELS, 3).apply(np.stack([p1b, p2, p3])).pred[1] == 0


def test_vote_run_matches_hand_vote(three_runs):
    root, runs, data = three_runs
    res = ensemble_runs(runs, root / "vote", method="vote")
    got = RunDir(res.path).read_predictions("test")
    assert got["pred"].tolist() == [LABELS[i] for i in _vote_by_hand(data["test"]["p"])]


def test_stacking_is_out_of_fold_on_dev(three_runs):
    root, runs, data = three_runs
    res = ensemble_runs(runs, root / "stack", method="stacking", folds=4, C=0.5, seed=3)
    y = data["dev"]["y"]
    x = np.hstack(data["dev"]["p"])
    oof = np.zeros((len(y), 4))
    for tr, te in StratifiedKFold(4, shuffle=True, random_state=3).split(x, y):
        oof[te] = LogisticRegression(C=0.5, max_iter=2000).fit(x[tr], y[tr]).predict_proba(x[te])
    np.testing.assert_allclose(RunDir(res.path).read_predictions("dev")[COLS].to_numpy(), oof, atol=1e-4)
    full = LogisticRegression(C=0.5, max_iter=2000).fit(x, y)
    expect = full.predict_proba(np.hstack(data["test"]["p"]))
    np.testing.assert_allclose(RunDir(res.path).read_predictions("test")[COLS].to_numpy(), expect, atol=1e-4)
    reloaded = load_combiner(res.path).combine([RunDir(r).read_predictions("test") for r in runs])
    np.testing.assert_allclose(reloaded[COLS].to_numpy(), expect, atol=1e-4)


@pytest.fixture(scope="module")
def attribute_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ens_attr")
    rng = np.random.default_rng(11)
    truth = {s: rng.uniform(1, 7, (n, 3)) for s, n in [("dev", 120), ("test", 80)]}
    preds = {s: [] for s in truth}
    runs = []
    for r in range(3):
        frames = {}
        for s, t in truth.items():
            p = 0.8 * t + 0.5 + rng.normal(0, 0.5 + r * 0.3, t.shape)
            preds[s].append(p)
            frames[s] = attr_frame([f"{s}{i}" for i in range(len(t))], t, p)
        runs.append(write_run(root / f"a{r}", frames, task="attributes"))
    return root, runs, truth, preds


def test_attribute_mean_matches_numpy(attribute_runs):
    root, runs, truth, preds = attribute_runs
    res = ensemble_runs(runs, root / "mean", method="mean")
    got = RunDir(res.path).read_predictions("test")
    np.testing.assert_allclose(got[[f"{a}_pred" for a in ATTRS]].to_numpy(), np.mean(preds["test"], axis=0), atol=1e-9)


def test_attribute_stacking_is_out_of_fold_ridge(attribute_runs):
    root, runs, truth, preds = attribute_runs
    res = ensemble_runs(runs, root / "stack", method="stacking", alpha=0.5, folds=3, seed=0)
    got = RunDir(res.path).read_predictions("dev")
    t = truth["dev"]
    for j, a in enumerate(ATTRS):
        x = np.stack([p[:, j] for p in preds["dev"]], 1)
        oof = np.zeros(len(t))
        for tr, te in KFold(3, shuffle=True, random_state=0).split(x):
            xm, ym = x[tr].mean(0), t[tr, j].mean()
            coef = np.linalg.solve((x[tr] - xm).T @ (x[tr] - xm) + 0.5 * np.eye(3), (x[tr] - xm).T @ (t[tr, j] - ym))
            oof[te] = (x[te] - xm) @ coef + ym
        np.testing.assert_allclose(got[f"{a}_pred"].to_numpy(), oof, atol=1e-8)


def test_vote_on_attributes_is_refused(attribute_runs, tmp_path):
    _, runs, _, _ = attribute_runs
    with pytest.raises(FusionError, match=r"method 'vote' does not apply to attributes runs"):
        ensemble_runs(runs, tmp_path / "x", method="vote")


def test_mixed_tasks_are_refused(three_runs, attribute_runs, tmp_path):
    with pytest.raises(FusionError, match="predict different tasks"):
        ensemble_runs([three_runs[1][0], attribute_runs[1][0]], tmp_path / "x")


def test_cli_ensemble_prints_summary(three_runs, tmp_path):
    _, runs, _ = three_runs
    res = CliRunner().invoke(main, ["ensemble", *map(str, runs), "-o", str(tmp_path / "e"), "--method", "vote"])
    assert res.exit_code == 0, res.output
    assert "method: vote" in res.output and "run0" in res.output and "e (vote)" in res.output
    assert "nothing was fitted on dev" in res.output
    missing = CliRunner().invoke(main, ["ensemble", str(runs[0]), str(tmp_path), "-o", str(tmp_path / "f")])
    assert missing.exit_code == 1 and "not a run directory" in missing.output and "Traceback" not in missing.output


def _sk_mlp(kind, x, y, seed, hidden=16, alpha=0.5):
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    cls = MLPClassifier if kind == "cat" else MLPRegressor
    return cls(hidden_layer_sizes=(hidden,), alpha=alpha, solver="lbfgs", max_iter=1000, random_state=seed).fit(x, y)


def test_mlp_is_out_of_fold_on_dev_and_reloads(three_runs):
    root, runs, data = three_runs
    res = ensemble_runs(runs, root / "mlp", method="mlp", folds=4, alpha=0.5, hidden=16, seed=3)
    y = data["dev"]["y"]
    x = np.hstack([np.log(np.clip(p, 1e-6, 1.0)) for p in data["dev"]["p"]])  # member log-posteriors side by side
    oof = np.zeros((len(y), 4))
    for tr, te in StratifiedKFold(4, shuffle=True, random_state=3).split(x, y):
        oof[te] = _sk_mlp("cat", x[tr], y[tr], 3).predict_proba(x[te])
    dev = RunDir(res.path).read_predictions("dev")
    np.testing.assert_allclose(dev[COLS].to_numpy(), oof, atol=1e-6)
    xt = np.hstack([np.log(np.clip(p, 1e-6, 1.0)) for p in data["test"]["p"]])
    expect = _sk_mlp("cat", x, y, 3).predict_proba(xt)
    np.testing.assert_allclose(RunDir(res.path).read_predictions("test")[COLS].to_numpy(), expect, atol=1e-6)
    reloaded = load_combiner(res.path).combine([RunDir(r).read_predictions("test") for r in runs])
    np.testing.assert_allclose(reloaded[COLS].to_numpy(), expect, atol=1e-6)
    assert res.n_folds == 4


def test_mlp_gives_absent_classes_no_mass():
    from fusion_ser.fusion.ensemble import fit_mlp

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120)  # classes 2 and 3 never occur in the fitted rows
    x = np.stack([np.eye(4)[y] * 2 + rng.normal(0, 1, (120, 4)) for _ in range(2)])
    p = np.exp(x) / np.exp(x).sum(2, keepdims=True)
    comb = fit_mlp(p, y, task="categorical", labels=LABELS, attributes=[], hidden=8, alpha=0.1, seed=0)
    out = comb.apply(p)
    assert out.probs[:, 2:].max() < 1e-9
    sk = _sk_mlp("cat", np.hstack([np.log(np.clip(q, 1e-6, 1)) for q in p]), y, 0, hidden=8, alpha=0.1)
    np.testing.assert_allclose(out.probs[:, :2], sk.predict_proba(np.hstack([np.log(np.clip(q, 1e-6, 1)) for q in p])),
                               atol=1e-6)


def test_attribute_mlp_is_out_of_fold(attribute_runs):
    root, runs, truth, preds = attribute_runs
    res = ensemble_runs(runs, root / "mlp", method="mlp", alpha=0.5, hidden=16, folds=3, seed=0)
    got = RunDir(res.path).read_predictions("dev")[[f"{a}_pred" for a in ATTRS]].to_numpy()
    x, t = np.hstack(preds["dev"]), truth["dev"]
    oof = np.zeros_like(t)
    for tr, te in KFold(3, shuffle=True, random_state=0).split(x):
        oof[te] = _sk_mlp("att", x[tr], t[tr], 0).predict(x[te])
    np.testing.assert_allclose(got, oof, atol=1e-6)
