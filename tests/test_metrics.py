"""Every metric against scikit-learn or an independent numpy computation, on random prediction frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support, recall_score)

from fusion_ser.evaluation.metrics import MetricsError, ccc, compute_metrics, pearson, range_masks
from fusion_ser.evaluation.resampling import bootstrap_ci, score_data
from fusion_ser.rundir import RunInfo

LABELS = ["anger", "happiness", "neutral", "sadness", "surprise"]
ATTRS = ["arousal", "valence", "dominance"]


def categorical_frame(rng: np.random.Generator, n: int, p_correct: float = 0.5) -> pd.DataFrame:
    y = rng.choice(LABELS, n, p=[0.1, 0.2, 0.4, 0.2, 0.1])
    pred = np.where(rng.random(n) < p_correct, y, rng.choice(LABELS, n))
    probs = rng.dirichlet(np.ones(len(LABELS)), n)
    df = pd.DataFrame({"utt_id": [f"u{i:05d}" for i in range(n)], "label": y, "pred": pred})
    for j, c in enumerate(LABELS):
        df[f"prob_{c}"] = probs[:, j]
    return df


def direct_ccc(x: np.ndarray, y: np.ndarray) -> float:
    """CCC as 2 r sx sy / (sx^2 + sy^2 + (mx - my)^2), with Pearson r from numpy."""
    r = np.corrcoef(x, y)[0, 1]
    sx, sy = np.std(x), np.std(y)
    return 2 * r * sx * sy / (sx**2 + sy**2 + (np.mean(x) - np.mean(y)) ** 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_categorical_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    df = categorical_frame(rng, 300)
    unknown = rng.random(300) < 0.15
    df.loc[unknown, "label"] = rng.choice(["", "other", np.nan], unknown.sum())
    info = RunInfo(kind="model", task="categorical", labels=LABELS)
    m = compute_metrics(df, info)

    kept = df[~unknown]
    y, p = kept["label"].to_numpy(), kept["pred"].to_numpy()
    assert m["n"] == len(kept) and m["n_skipped"] == int(unknown.sum()) > 0
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    assert m["micro_f1"] == pytest.approx(f1_score(y, p, labels=LABELS, average="micro", zero_division=0))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, p, labels=LABELS, average="weighted", zero_division=0))
    assert m["uar"] == pytest.approx(balanced_accuracy_score(y, p))
    assert m["uar"] == pytest.approx(recall_score(y, p, labels=LABELS, average="macro", zero_division=0))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p))
    prec, rec, f1, support = precision_recall_fscore_support(y, p, labels=LABELS, zero_division=0)
    for j, c in enumerate(LABELS):
        assert m["per_class_precision"][c] == pytest.approx(prec[j])
        assert m["per_class_recall"][c] == pytest.approx(rec[j])
        assert m["per_class_f1"][c] == pytest.approx(f1[j])
        assert m["support"][c] == support[j]
    assert m["confusion_matrix"] == confusion_matrix(y, p, labels=LABELS).tolist()
    assert m["labels"] == LABELS


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_numpy_class_metrics_equal_sklearn_with_absent_classes_and_an_averaged_subset(seed):
    from fusion_ser.evaluation.metrics import categorical_metrics

    rng = np.random.default_rng(seed)
    k = 6
    y = rng.choice([0, 1, 2, 4], 80)  # classes 3 and 5 never true; 5 sometimes predicted
    p = np.where(rng.random(80) < 0.5, y, rng.choice([0, 1, 2, 5], 80))
    labels = [f"c{i}" for i in range(k)]
    m = categorical_metrics(y, p, labels)
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, p, labels=range(k), average="weighted", zero_division=0))
    assert m["uar"] == pytest.approx(recall_score(y, p, labels=np.unique(y), average="macro", zero_division=0))
    assert m["micro_f1"] == pytest.approx(f1_score(y, p, labels=range(k), average="micro", zero_division=0))
    subset = ["c0", "c2", "c3"]
    ms = categorical_metrics(y, p, labels, subset)
    assert ms["macro_f1"] == pytest.approx(f1_score(y, p, labels=[0, 2, 3], average="macro", zero_division=0))
    assert ms["uar"] == pytest.approx(recall_score(y, p, labels=[0, 2], average="macro", zero_division=0))
    assert ms["averaged_classes"] == subset


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_classes_absent_from_a_split_are_scored_like_the_challenge_scorer():
    """Macro-F1 averages classes seen in truth or predictions (sklearn's default), UAR classes seen in the truth."""
    df = pd.DataFrame({"utt_id": list("abcde"), "label": ["anger", "anger", "neutral", "neutral", "neutral"],
                       "pred": ["anger", "sadness", "neutral", "neutral", "anger"]})
    m = compute_metrics(df, RunInfo(kind="model", task="categorical", labels=LABELS))
    y, p = df["label"], df["pred"]
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)  # anger, neutral, sadness; never happiness/surprise
    assert m["uar"] == pytest.approx(balanced_accuracy_score(y, p)) and m["uar"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m["per_class_f1"]["surprise"] == 0.0 and m["support"]["surprise"] == 0
    ci = bootstrap_ci(score_data(df, RunInfo(kind="model", task="categorical", labels=LABELS)), n_boot=20)
    assert ci["macro_f1"]["value"] == pytest.approx(m["macro_f1"]) and ci["uar"]["value"] == pytest.approx(m["uar"])


def test_pred_column_missing_uses_argmax_of_probabilities():
    rng = np.random.default_rng(3)
    df = categorical_frame(rng, 50).drop(columns=["pred"])
    info = RunInfo(kind="model", task="categorical", labels=LABELS)
    argmax = np.asarray(LABELS)[df[[f"prob_{c}" for c in LABELS]].to_numpy().argmax(axis=1)]
    assert compute_metrics(df, info)["accuracy"] == pytest.approx(accuracy_score(df["label"], argmax))


def test_prediction_outside_classes_is_a_clear_error():
    df = pd.DataFrame({"utt_id": ["a", "b"], "label": ["anger", "neutral"], "pred": ["anger", "calm"]})
    with pytest.raises(MetricsError, match="calm"):
        compute_metrics(df, RunInfo(kind="model", task="categorical", labels=LABELS))


def test_unlabelled_split_scores_nothing_and_counts_rows():
    df = categorical_frame(np.random.default_rng(4), 20).drop(columns=["label"])
    m = compute_metrics(df, RunInfo(kind="model", task="categorical", labels=LABELS))
    assert m == {"n": 0, "n_skipped": 20, "unscored": {"no label": 20}}


def test_ccc_and_pearson_against_direct_formulas():
    rng = np.random.default_rng(5)
    x = rng.uniform(1, 7, 500)
    y = 0.6 * x + rng.normal(1.0, 1.0, 500)
    assert ccc(x, y) == pytest.approx(direct_ccc(x, y))
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert ccc(x, x) == pytest.approx(1.0)
    assert ccc(x, x + 1) < 1.0  # a constant bias costs concordance, not correlation
    assert pearson(x, x + 1) == pytest.approx(1.0)


def test_mse_by_range_by_hand():
    truth = np.array([1, 2, 3, 4, 5, 6, 7, 8], dtype=float)  # q25 = 2.75, q75 = 6.25
    pred = np.array([2, 2, 3, 5, 5, 6, 5, 5], dtype=float)
    masks = range_masks(truth)
    assert masks["low"].tolist() == [True, True] + [False] * 6
    assert masks["high"].tolist() == [False] * 6 + [True, True]
    df = pd.DataFrame({"utt_id": list("abcdefgh"), "arousal": truth, "arousal_pred": pred})
    m = compute_metrics(df, RunInfo(kind="model", task="attributes", attributes=["arousal"]))
    assert m["mse_arousal_low"] == pytest.approx((1 + 0) / 2)
    assert m["mse_arousal_mid"] == pytest.approx((0 + 1 + 0 + 0) / 4)
    assert m["mse_arousal_high"] == pytest.approx((4 + 9) / 2)
    assert m["mse_arousal"] == pytest.approx(np.mean((truth - pred) ** 2))
    assert (m["n_arousal_low"], m["n_arousal_mid"], m["n_arousal_high"]) == (2, 4, 2)


def test_range_masks_partition_tied_scales():
    truth = np.array([1, 2, 2, 2, 2, 2, 2, 3], dtype=float)
    q25, q75 = np.quantile(truth, [0.25, 0.75])
    assert q25 == q75 == 2  # naive "<= q25" and ">= q75" ranges would overlap here
    masks = range_masks(truth)
    assert masks["high"].tolist() == [False] * 7 + [True]
    together = masks["low"].astype(int) + masks["mid"].astype(int) + masks["high"].astype(int)
    assert (together == 1).all()


def test_attribute_metrics_on_random_frame_skip_unknown_truth():
    rng = np.random.default_rng(6)
    n = 400
    df = pd.DataFrame({"utt_id": [f"u{i}" for i in range(n)]})
    for a in ATTRS:
        df[a] = rng.uniform(1, 7, n)
        df[f"{a}_pred"] = df[a] * 0.5 + rng.normal(2, 0.8, n)
    df.loc[:29, "valence"] = np.nan
    df.loc[:9, ATTRS] = np.nan
    m = compute_metrics(df, RunInfo(kind="model", task="attributes", attributes=ATTRS))
    assert m["n"] == n - 10 and m["n_skipped"] == 10
    for a in ATTRS:
        ok = df[a].notna()
        t, p = df.loc[ok, a].to_numpy(), df.loc[ok, f"{a}_pred"].to_numpy()
        assert m[f"n_{a}"] == ok.sum()
        assert m[f"ccc_{a}"] == pytest.approx(direct_ccc(t, p))
        assert m[f"pearson_{a}"] == pytest.approx(np.corrcoef(t, p)[0, 1])
        assert m[f"mse_{a}"] == pytest.approx(np.mean((t - p) ** 2))
    assert m["ccc_mean"] == pytest.approx(np.mean([m[f"ccc_{a}"] for a in ATTRS]))


def test_attribute_run_without_prediction_column_is_an_error():
    df = pd.DataFrame({"utt_id": ["a"], "arousal": [3.0]})
    with pytest.raises(MetricsError, match="arousal_pred"):
        compute_metrics(df, RunInfo(kind="model", task="attributes", attributes=["arousal"]))


def test_resampling_weights_equal_metrics_on_repeated_rows():
    """The vectorised figures under integer weights equal sklearn / CCC on the rows repeated that often."""
    rng = np.random.default_rng(7)
    df = categorical_frame(rng, 120)
    info = RunInfo(kind="model", task="categorical", labels=LABELS)
    data = score_data(df, info)
    w = rng.integers(0, 4, size=(3, len(df))).astype(float)
    figs = data.figures(w)
    for b in range(3):
        rep = df.loc[df.index.repeat(w[b].astype(int))]
        assert figs["macro_f1"][b] == pytest.approx(f1_score(rep["label"], rep["pred"], average="macro", zero_division=0))
        assert figs["uar"][b] == pytest.approx(balanced_accuracy_score(rep["label"], rep["pred"]))
        assert figs["micro_f1"][b] == pytest.approx(accuracy_score(rep["label"], rep["pred"]))

    att = pd.DataFrame({"utt_id": [f"u{i}" for i in range(120)], "arousal": rng.uniform(1, 7, 120)})
    att["arousal_pred"] = att["arousal"] + rng.normal(0, 1, 120)
    ainfo = RunInfo(kind="model", task="attributes", attributes=["arousal"])
    figs = score_data(att, ainfo).figures(w)
    for b in range(3):
        rep = att.loc[att.index.repeat(w[b].astype(int))]
        assert figs["ccc_arousal"][b] == pytest.approx(direct_ccc(rep["arousal"].to_numpy(), rep["arousal_pred"].to_numpy()))
