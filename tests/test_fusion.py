"""Late fusion (`fuse`): complementary runs fuse above both, dev figures are honest out-of-fold CV, runs reload."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

from fusion_ser.cli.main import main
from fusion_ser.config import Config
from fusion_ser.fusion.late import balanced_subset, late_fuse, simplex_grid
from fusion_ser.fusion.members import FusionError
from fusion_ser.fusion.runs import load_combiner
from fusion_ser.rundir import OutputError, RunDir, RunExistsError, RunInfo, prepare_output

LABELS = ["anger", "happiness", "neutral", "sadness"]
ATTRS = ["arousal", "valence", "dominance"]


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    """Tiny regressions run faster on one BLAS thread than on two contended ones."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


# ---------------------------------------------------------------- helpers shared with test_ensemble.py


def cat_frame(ids: list[str], y: np.ndarray, probs: np.ndarray, labels: list[str] = LABELS) -> pd.DataFrame:
    """A categorical prediction frame in the run-dir format."""
    df = pd.DataFrame({"utt_id": ids, "label": np.asarray(labels, dtype=object)[y]})
    df["pred"] = np.asarray(labels, dtype=object)[probs.argmax(1)]
    for j, c in enumerate(labels):
        df[f"prob_{c}"] = probs[:, j]
    return df


def attr_frame(ids: list[str], truth: np.ndarray, pred: np.ndarray, attributes: list[str] = ATTRS) -> pd.DataFrame:
    df = pd.DataFrame({"utt_id": ids})
    for j, a in enumerate(attributes):
        df[a] = truth[:, j]
    for j, a in enumerate(attributes):
        df[f"{a}_pred"] = pred[:, j]
    return df


def write_run(path: Path, frames: dict[str, pd.DataFrame], task: str = "categorical", labels=LABELS, attributes=ATTRS,
              modality: str = "audio", manifest: Path | None = None) -> Path:
    """A finished model run dir holding only what fuse/ensemble read (run.json, config.yaml, predictions)."""
    rd = RunDir(path)
    path.mkdir(parents=True)
    cfg = dataclasses.asdict(Config(task=task, modality=modality))
    cfg["_run"] = {"manifest": str(manifest) if manifest else None}
    rd.config_path.write_text(yaml.safe_dump(cfg))
    for split, df in frames.items():
        rd.write_predictions(split, df)
    info = RunInfo(kind="model", task=task, labels=list(labels) if task == "categorical" else [],
                   attributes=list(attributes) if task == "attributes" else [], modality=modality, complete=True)
    rd.write_info(info)
    return path


def group_posteriors(rng: np.random.Generator, y: np.ndarray, groups: np.ndarray, strength: float = 3.0) -> np.ndarray:
    """Posteriors that know only which group (of a 2-group partition of the 4 classes) the true class is in."""
    logits = strength * (groups[None, :] == groups[y][:, None]) + rng.normal(0, 1.0, (len(y), len(groups)))
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def complementary_runs(tmp_path_factory):
    """Run A separates {0,1} vs {2,3}, run B separates {0,2} vs {1,3}; only together do they name the class."""
    root = tmp_path_factory.mktemp("late")
    rng = np.random.default_rng(0)
    frames_a, frames_b, probs = {}, {}, {}
    for split, n in [("dev", 240), ("test", 400)]:
        ids = [f"{split}_{i:04d}" for i in range(n)]
        y = rng.integers(0, 4, n)
        pa = group_posteriors(rng, y, np.array([0, 0, 1, 1]))
        pb = group_posteriors(rng, y, np.array([0, 1, 0, 1]))
        frames_a[split], frames_b[split] = cat_frame(ids, y, pa), cat_frame(ids, y, pb)
        probs[split] = (y, pa, pb)
    # run B lists its rows in another order: fusion aligns by utt_id
    frames_b = {s: f.sample(frac=1.0, random_state=1).reset_index(drop=True) for s, f in frames_b.items()}
    a = write_run(root / "audio", frames_a, modality="audio")
    b = write_run(root / "text", frames_b, modality="text")
    return root, a, b, probs


@pytest.fixture(scope="module")
def fused(complementary_runs):
    root, a, b, _ = complementary_runs
    return late_fuse([a, b], root / "fused", form="full", folds=5, seed=0)


def _macro(y, p):
    return f1_score(y, p, average="macro", labels=list(range(4)), zero_division=0)


# ---------------------------------------------------------------- categorical late fusion


def test_complementary_runs_fuse_above_both(complementary_runs, fused):
    _, _, _, probs = complementary_runs
    y, pa, pb = probs["test"]
    f1_a, f1_b = _macro(y, pa.argmax(1)), _macro(y, pb.argmax(1))
    assert max(f1_a, f1_b) < 0.6  # each run alone can only find the group
    test = RunDir(fused.path).read_predictions("test")
    assert fused.metrics["test"]["macro_f1"] == pytest.approx(_macro(y, pd.Series(test["pred"]).map(LABELS.index)))
    assert fused.metrics["test"]["macro_f1"] > max(f1_a, f1_b) + 0.25
    assert fused.metrics["dev"]["macro_f1"] > max(fused.member_metrics["audio"]["dev"]["macro_f1"],
                                                  fused.member_metrics["text"]["dev"]["macro_f1"]) + 0.25
    info = RunDir(fused.path).read_info()
    assert info.kind == "fusion" and info.complete and info.modality == "both"
    assert info.members == [str(complementary_runs[1]), str(complementary_runs[2])]
    assert json.loads(RunDir(fused.path).metrics_path.read_text())["test"]["macro_f1"] == fused.metrics["test"]["macro_f1"]


def test_dev_figures_equal_hand_written_cross_validation(complementary_runs, fused):
    _, _, _, probs = complementary_runs
    y, pa, pb = probs["dev"]
    x = np.hstack([np.log(np.clip(pa, 1e-6, 1)), np.log(np.clip(pb, 1e-6, 1))])
    oof = np.zeros((len(y), 4))
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=0).split(x, y):
        assert not set(tr) & set(te)
        oof[te] = LogisticRegression(C=1.0, max_iter=2000).fit(x[tr], y[tr]).predict_proba(x[te])
    dev = RunDir(fused.path).read_predictions("dev")
    np.testing.assert_allclose(dev[[f"prob_{c}" for c in LABELS]].to_numpy(), oof, atol=1e-4)
    assert fused.metrics["dev"]["macro_f1"] == pytest.approx(_macro(y, oof.argmax(1)))
    # test: the model fitted on all of dev
    full = LogisticRegression(C=1.0, max_iter=2000).fit(x, y)
    yt, ta, tb = probs["test"]
    expect = full.predict_proba(np.hstack([np.log(np.clip(ta, 1e-6, 1)), np.log(np.clip(tb, 1e-6, 1))]))
    test = RunDir(fused.path).read_predictions("test")
    np.testing.assert_allclose(test[[f"prob_{c}" for c in LABELS]].to_numpy(), expect, atol=1e-4)


def test_dev_figures_are_not_fitted_on_scored_rows(tmp_path):
    """Members carrying no signal + a weakly regularised LR: in-sample dev F1 is high, honest dev F1 stays near chance."""
    rng = np.random.default_rng(3)
    n, m = 60, 6
    ids = [f"u{i}" for i in range(n)]
    y = np.repeat(np.arange(4), n // 4)
    noise = [rng.dirichlet(np.ones(4), n) for _ in range(m)]
    runs = [write_run(tmp_path / f"r{i}", {"dev": cat_frame(ids, y, p)}) for i, p in enumerate(noise)]
    res = late_fuse(runs, tmp_path / "fused", form="full", C=1e4, folds=5)
    x = np.hstack([np.log(np.clip(p, 1e-6, 1)) for p in noise])
    in_sample = _macro(y, LogisticRegression(C=1e4, max_iter=2000).fit(x, y).predict(x))
    assert in_sample > 0.6
    assert res.metrics["dev"]["macro_f1"] < 0.45
    assert res.n_folds == 5


def test_prior_correction_divides_by_dev_priors(tmp_path):
    rng = np.random.default_rng(5)
    frames = {}
    counts = [120, 40, 20, 20]
    y_dev = np.repeat(np.arange(4), counts)
    y_test = rng.integers(0, 4, 100)
    runs = []
    for r in range(2):
        fr = {}
        for split, y in [("dev", y_dev), ("test", y_test)]:
            ids = [f"{split}{i}" for i in range(len(y))]
            fr[split] = cat_frame(ids, y, group_posteriors(rng, y, np.array([0, 1, 2, 3]), strength=1.0))
        frames[r] = fr
        runs.append(write_run(tmp_path / f"r{r}", fr))
    plain = late_fuse(runs, tmp_path / "plain")
    divided = late_fuse(runs, tmp_path / "divided", prior="divide")
    cols = [f"prob_{c}" for c in LABELS]
    p0 = RunDir(plain.path).read_predictions("test")[cols].to_numpy()
    p1 = RunDir(divided.path).read_predictions("test")[cols].to_numpy()
    prior = np.asarray(counts) / sum(counts)
    expect = p0 / prior
    expect /= expect.sum(1, keepdims=True)
    np.testing.assert_allclose(p1, expect, atol=1e-6)
    # the correction moves predictions away from the majority class of dev
    assert (p1.argmax(1) == 0).sum() < (p0.argmax(1) == 0).sum()
    weighted = late_fuse(runs, tmp_path / "weighted", prior="weight")
    pw = RunDir(weighted.path).read_predictions("test")[cols].to_numpy()
    assert (pw.argmax(1) == 0).sum() < (p0.argmax(1) == 0).sum()


def test_balanced_subset_cuts_every_class_to_the_rarest():
    y = np.array([0] * 30 + [1] * 7 + [2] * 12 + [-1] * 5)
    idx = balanced_subset(y[y >= 0], seed=0)
    assert np.bincount(y[idx]).tolist() == [7, 7, 7]
    assert len(set(idx)) == len(idx)
    np.testing.assert_array_equal(idx, balanced_subset(y[y >= 0], seed=0))


def test_mean_method_averages_posteriors(complementary_runs, tmp_path):
    _, a, b, probs = complementary_runs
    res = late_fuse([a, b], tmp_path / "mean", method="mean")
    y, pa, pb = probs["test"]
    got = RunDir(res.path).read_predictions("test")
    np.testing.assert_allclose(got[[f"prob_{c}" for c in LABELS]].to_numpy(), (pa + pb) / 2, atol=1e-9)
    assert res.n_folds == 0


# ---------------------------------------------------------------- reload and nesting


def test_fused_run_reloads_and_reproduces_test_predictions(complementary_runs, fused):
    _, a, b, _ = complementary_runs
    combiner = load_combiner(fused.path)
    members = [RunDir(p).read_predictions("test") for p in RunDir(fused.path).read_info().members]
    again = combiner.combine(members)
    saved = RunDir(fused.path).read_predictions("test")
    assert again["utt_id"].tolist() == saved["utt_id"].tolist()
    assert again["pred"].tolist() == saved["pred"].tolist()
    cols = [f"prob_{c}" for c in LABELS]
    np.testing.assert_allclose(again[cols].to_numpy(), saved[cols].to_numpy(), atol=1e-9)
    spec = json.loads((RunDir(fused.path).model_dir / "combiner.json").read_text())
    assert spec["method"] == "logistic" and np.asarray(spec["params"]["coef"]).shape == (4, 8)


def test_ensemble_of_a_fusion_nests(complementary_runs, fused, tmp_path):
    from fusion_ser.fusion.ensemble import ensemble_runs

    _, a, _, _ = complementary_runs
    ens = ensemble_runs([fused.path, a], tmp_path / "ens", method="mean")
    cols = [f"prob_{c}" for c in LABELS]
    f = RunDir(fused.path).read_predictions("test").set_index("utt_id")[cols]
    m = RunDir(a).read_predictions("test").set_index("utt_id")[cols]
    got = RunDir(ens.path).read_predictions("test").set_index("utt_id")[cols]
    np.testing.assert_allclose(got.to_numpy(), ((f + m.loc[f.index]) / 2).loc[got.index].to_numpy(), atol=1e-9)
    again = load_combiner(ens.path).combine([RunDir(p).read_predictions("test") for p in RunDir(ens.path).read_info().members])
    np.testing.assert_allclose(again[cols].to_numpy(), RunDir(ens.path).read_predictions("test")[cols].to_numpy(), atol=1e-9)


# ---------------------------------------------------------------- attributes


def _ccc(x, y):
    mx, my = x.mean(), y.mean()
    return 2 * np.mean((x - mx) * (y - my)) / (x.var() + y.var() + (mx - my) ** 2)


@pytest.fixture(scope="module")
def attribute_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("attr")
    rng = np.random.default_rng(1)
    data = {}
    fa, fb = {}, {}
    for split, n in [("dev", 200), ("test", 300)]:
        ids = [f"{split}{i}" for i in range(n)]
        truth = rng.uniform(1, 7, (n, 3))
        noise_a = np.array([0.6, 1.5, 1.0])  # run A is better on arousal, run B on valence
        noise_b = np.array([1.5, 0.6, 1.0])
        pa = truth + rng.normal(0, 1, (n, 3)) * noise_a
        pb = truth + rng.normal(0, 1, (n, 3)) * noise_b
        fa[split], fb[split] = attr_frame(ids, truth, pa), attr_frame(ids, truth, pb)
        data[split] = (truth, pa, pb)
    a = write_run(root / "a", fa, task="attributes")
    b = write_run(root / "b", fb, task="attributes", modality="text")
    return root, a, b, data


def test_attribute_interpolation_weights_match_grid_search(attribute_runs):
    root, a, b, data = attribute_runs
    res = late_fuse([a, b], root / "interp", grid_step=0.05)
    truth, pa, pb = data["dev"]
    weights = np.asarray(load_combiner(res.path).params()["weights"])
    for j in range(3):
        best = max((w / 20 for w in range(21)), key=lambda w: _ccc(truth[:, j], w * pa[:, j] + (1 - w) * pb[:, j]))
        np.testing.assert_allclose(weights[j], [best, 1 - best], atol=1e-9)
    assert weights[0, 0] > 0.5 and weights[1, 0] < 0.5  # A weighs more on arousal, B on valence
    tt, ta, tb = data["test"]
    got = RunDir(res.path).read_predictions("test")
    for j, attr in enumerate(ATTRS):
        expect = weights[j, 0] * ta[:, j] + weights[j, 1] * tb[:, j]
        np.testing.assert_allclose(got[f"{attr}_pred"].to_numpy(), expect, atol=1e-9)
        fused_ccc = res.metrics["test"][f"ccc_{attr}"]
        assert fused_ccc == pytest.approx(_ccc(tt[:, j], expect))
        assert fused_ccc >= max(_ccc(tt[:, j], ta[:, j]), _ccc(tt[:, j], tb[:, j])) - 0.01
    assert res.n_folds == 5


def test_attribute_ridge_matches_closed_form(attribute_runs):
    root, a, b, data = attribute_runs
    res = late_fuse([a, b], root / "ridge", method="ridge", alpha=2.0)
    truth, pa, pb = data["dev"]
    params = load_combiner(res.path).params()
    for j in range(3):
        x = np.stack([pa[:, j], pb[:, j]], 1)
        xc, yc = x - x.mean(0), truth[:, j] - truth[:, j].mean()
        coef = np.linalg.solve(xc.T @ xc + 2.0 * np.eye(2), xc.T @ yc)
        np.testing.assert_allclose(params["coef"][j], coef, atol=1e-8)
        np.testing.assert_allclose(params["intercept"][j], truth[:, j].mean() - x.mean(0) @ coef, atol=1e-8)


def test_simplex_grid_covers_the_simplex():
    g = simplex_grid(3, 0.25)
    assert len(g) == 15  # C(4 + 2, 2)
    np.testing.assert_allclose(g.sum(1), 1.0)
    assert (g >= 0).all() and len({tuple(r) for r in g}) == 15


# ---------------------------------------------------------------- errors and CLI


def test_members_on_different_utterances_are_refused(complementary_runs, tmp_path):
    _, a, _, probs = complementary_runs
    y, pa, _ = probs["dev"]
    ids = [f"dev_{i:04d}" for i in range(len(y))]
    short = write_run(tmp_path / "short", {"dev": cat_frame(ids[:-3], y[:-3], pa[:-3])})
    with pytest.raises(FusionError, match=r"audio has 240, short has 237 \(3 only in audio, 0 only in short\)"):
        late_fuse([a, short], tmp_path / "out")


def test_members_with_different_labels_are_refused(complementary_runs, tmp_path):
    _, a, _, probs = complementary_runs
    y, pa, _ = probs["dev"]
    labels = ["anger", "fear", "neutral", "sadness"]
    other = write_run(tmp_path / "other", {"dev": cat_frame([f"dev_{i:04d}" for i in range(len(y))], y, pa, labels)}, labels=labels)
    with pytest.raises(FusionError, match="predict different classes"):
        late_fuse([a, other], tmp_path / "out")


def test_cli_fuse_summary_and_errors(complementary_runs, tmp_path):
    _, a, b, _ = complementary_runs
    runner = CliRunner()
    res = runner.invoke(main, ["fuse", str(a), str(b), "-o", str(tmp_path / "cli"), "--folds", "4"])
    assert res.exit_code == 0, res.output
    assert "out-of-fold (4-fold CV inside dev)" in res.output
    assert "dev:macro_f1" in res.output and "test:macro_f1" in res.output
    assert "audio" in res.output and "text" in res.output and "cli (lr)" in res.output
    again = runner.invoke(main, ["fuse", str(a), str(b), "-o", str(tmp_path / "cli")])
    assert again.exit_code == 1 and "Error:" in again.output and "--force" in again.output
    assert "Traceback" not in again.output
    forced = runner.invoke(main, ["fuse", str(a), str(b), "-o", str(tmp_path / "cli"), "--method", "mean", "--force"])
    assert forced.exit_code == 0, forced.output
    assert json.loads((tmp_path / "cli" / "model" / "combiner.json").read_text())["method"] == "mean"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    refused = runner.invoke(main, ["fuse", str(a), str(b), "-o", str(tmp_path / "notes"), "--force"])
    assert refused.exit_code == 1 and "not a run directory" in refused.output
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    bad = runner.invoke(main, ["fuse", str(a), str(b), "-o", str(tmp_path / "x"), "--method", "ridge"])
    assert bad.exit_code == 1 and "does not apply to categorical runs" in bad.output
    lone = runner.invoke(main, ["fuse", str(a), "-o", str(tmp_path / "y")])
    assert lone.exit_code == 1 and "at least two member runs" in lone.output


def test_force_replaces_exactly_the_run_files_and_keeps_the_users_own(complementary_runs, tmp_path):
    """Overwriting removes what any run (trained, fused) may leave, including a refit's extras, and nothing else."""
    _, a, b, _ = complementary_runs
    out = late_fuse([a, b], tmp_path / "out", method="mean")
    for folder in ("model_dev_selected", "checkpoints"):
        (out.path / folder).mkdir()
        (out.path / folder / "weights.safetensors").write_text("old")
    for name in ("refit_train_log.csv", "skipped_clips.json", "train_log.csv", "cv_metrics.json", "old_curves.png"):
        (out.path / name).write_text("old")
    (out.path / "notes.txt").write_text("mine")
    (out.path / "mine").mkdir()
    (out.path / "mine" / "data.csv").write_text("mine")
    with pytest.raises(RunExistsError, match="already holds a fusion run") as refused:
        late_fuse([a, b], out.path, method="lr")
    assert "--" not in str(refused.value)  # library messages name no CLI option
    assert (out.path / "refit_train_log.csv").is_file()  # a refusal changes nothing
    again = late_fuse([a, b], out.path, method="lr", force=True)
    assert RunDir(again.path).read_info().complete and RunDir(again.path).read_info().extra["method"] == "lr"
    for gone in ("model_dev_selected", "checkpoints", "refit_train_log.csv", "skipped_clips.json", "train_log.csv",
                 "cv_metrics.json", "old_curves.png"):
        assert not (out.path / gone).exists(), gone
    assert (out.path / "notes.txt").read_text() == "mine" and (out.path / "mine" / "data.csv").read_text() == "mine"
    assert json.loads((out.path / "model" / "combiner.json").read_text())["method"] == "logistic"


def test_prepare_output_refusals_are_in_library_terms(complementary_runs, tmp_path):
    _, a, _, _ = complementary_runs
    (tmp_path / "file").write_text("x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    cases = [(a, "is one of the input runs"), (tmp_path / "file", "is not a folder"),
             (tmp_path / "other", "not a run directory")]
    for path, message in cases:
        for force in (False, True):
            with pytest.raises(OutputError, match=message) as refused:
                prepare_output(path, kind="fusion", force=force, inputs=[a])
            assert not isinstance(refused.value, RunExistsError) and "--" not in str(refused.value)
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"
    with pytest.raises(RunExistsError, match="allow overwriting"):
        prepare_output(a, kind="ensemble")
    fresh = prepare_output(tmp_path / "new" / "run", kind="fusion", inputs=[a])
    assert fresh.path == (tmp_path / "new" / "run").resolve() and fresh.path.is_dir()


def test_dev_folds_group_speakers_from_the_recorded_manifest(tmp_path):
    """With the manifest recorded in the members' config.yaml, no speaker is split across dev folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    rng = np.random.default_rng(9)
    n = 160
    ids = [f"u{i:03d}" for i in range(n)]
    speakers = np.array([f"spk{i % 10}" for i in range(n)])
    y = rng.integers(0, 4, n)
    pd.DataFrame({"utt_id": ids, "path": [f"{u}.wav" for u in ids], "split": "dev", "speaker": speakers, "gender": "",
                  "label": np.asarray(LABELS, dtype=object)[y], "arousal": "", "valence": "", "dominance": "",
                  "text": ""}).to_csv(tmp_path / "manifest.csv", index=False)
    probs = [group_posteriors(rng, y, np.array(g)) for g in ([0, 0, 1, 1], [0, 1, 0, 1])]
    runs = [write_run(tmp_path / f"r{i}", {"dev": cat_frame(ids, y, p)}, manifest=tmp_path / "manifest.csv")
            for i, p in enumerate(probs)]
    res = late_fuse(runs, tmp_path / "fused", form="full", folds=5, seed=2)
    assert res.grouped_by_speaker and RunDir(res.path).read_info().extra["cv_grouped_by_speaker"]
    x = np.hstack([np.log(np.clip(p, 1e-6, 1)) for p in probs])
    oof = np.zeros((n, 4))
    for tr, te in StratifiedGroupKFold(5, shuffle=True, random_state=2).split(x, y, speakers):
        assert not set(speakers[tr]) & set(speakers[te])
        oof[te] = LogisticRegression(C=1.0, max_iter=2000).fit(x[tr], y[tr]).predict_proba(x[te])
    got = RunDir(res.path).read_predictions("dev")[[f"prob_{c}" for c in LABELS]].to_numpy()
    np.testing.assert_allclose(got, oof, atol=1e-4)


def test_logistic_combiner_matches_sklearn_for_two_classes_and_absent_classes():
    from fusion_ser.fusion.late import fit_logistic

    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 80)
    x = np.stack([group_posteriors(rng, y, np.array([0, 1, 2, 3]), strength=1.5) for _ in range(2)])
    feats = np.hstack([np.log(np.clip(p, 1e-6, 1)) for p in x])
    # only classes 0 and 1 occur: sklearn fits a binary model; the combiner must give the same posteriors
    expect = LogisticRegression(C=1.0, max_iter=2000).fit(feats, y).predict_proba(feats)
    got = fit_logistic(x, y, LABELS).apply(x).probs
    np.testing.assert_allclose(got[:, :2], expect, atol=1e-5)
    assert got[:, 2:].max() < 1e-9  # classes never seen in the fitted rows get no mass
    y3 = np.where(np.arange(80) % 4 == 0, 3, y)  # three classes present, class 2 absent
    expect3 = LogisticRegression(C=1.0, max_iter=2000).fit(feats, y3).predict_proba(feats)
    got3 = fit_logistic(x, y3, LABELS).apply(x).probs
    np.testing.assert_allclose(got3[:, [0, 1, 3]], expect3, atol=1e-5)
    with pytest.raises(FusionError, match="at least two"):
        fit_logistic(x, np.zeros(80, dtype=int), LABELS)



def test_member_weights_minimise_cross_entropy():
    from fusion_ser.fusion.late import fit_member_weights

    rng = np.random.default_rng(12)
    y = rng.integers(0, 4, 300)
    x = np.stack([group_posteriors(rng, y, np.array([0, 1, 2, 3]), strength=s) for s in (2.0, 0.7)])
    w = fit_member_weights(x, y)
    logs = np.log(np.clip(x, 1e-6, 1))

    def ce(w1, w2):
        z = w1 * logs[0] + w2 * logs[1]
        z = z - z.max(1, keepdims=True)
        return -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1))).mean()

    grid = np.linspace(-1, 3, 81)
    best = min((ce(a, b), a, b) for a in grid for b in grid)
    assert ce(*w) <= best[0] + 1e-9
    np.testing.assert_allclose(w, best[1:], atol=0.05)
    assert w[0] > w[1]  # the sharper member gets the larger weight


def test_small_dev_uses_member_weights_and_an_uninformative_member_does_not_hurt(tmp_path):
    """RAVDESS-like: text posteriors know only which of two sentences was said; dev is small."""
    from fusion_ser.fusion.late import resolve_form

    assert resolve_form("auto", 360, 8, 2) == "weights" and resolve_form("auto", 30000, 8, 2) == "full"
    rng = np.random.default_rng(13)
    frames_a, frames_t, data = {}, {}, {}
    for split, n in [("dev", 120), ("test", 400)]:
        ids = [f"{split}{i}" for i in range(n)]
        y = rng.integers(0, 4, n)
        pa = group_posteriors(rng, y, np.array([0, 1, 2, 3]), strength=1.2)
        sentence = rng.integers(0, 2, n)
        pt = np.where(sentence[:, None] == 0, [0.3, 0.3, 0.2, 0.2], [0.2, 0.25, 0.25, 0.3])
        frames_a[split], frames_t[split] = cat_frame(ids, y, pa), cat_frame(ids, y, pt)
        data[split] = (y, pa)
    a = write_run(tmp_path / "audio", frames_a)
    t = write_run(tmp_path / "text", frames_t, modality="text")
    res = late_fuse([a, t], tmp_path / "fused")
    assert res.info.extra["options"]["form"] == "weights"
    params = load_combiner(res.path).params()
    coef = np.asarray(params["coef"])
    assert np.allclose(params["intercept"], 0) and np.count_nonzero(coef) == 8  # a diagonal weight per member
    y, pa = data["test"]
    assert res.metrics["test"]["macro_f1"] >= _macro(y, pa.argmax(1)) - 0.01


def test_dev_folds_too_few_rows_per_class_is_a_clear_error():
    from fusion_ser.fusion.runs import dev_folds

    y = np.repeat(np.arange(4), 2)  # 8 dev rows, 2 per class: 3 stratified folds cannot be cut
    with pytest.raises(FusionError, match=r"cannot cut dev into 3 cross-validation folds.*Use fewer folds"):
        dev_folds("categorical", y, None, 3, seed=0)
