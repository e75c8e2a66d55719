"""Annotator-level soft labels: the `annotations` column (MSP-Podcast adapter, validation), targets from the votes,
SAIL's annotator dropout (exact per (seed, epoch, utt_id), unbiased over epochs), and the KL loss against numpy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fusion_ser.config import ConfigError, load_config
from fusion_ser.data.annotations import annotator_targets, vote_matrix
from fusion_ser.data.corpora import prepare_corpus
from fusion_ser.data.dataset import EmotionDataset
from fusion_ser.data.manifest import ManifestError, read_manifest, validate_manifest, write_manifest
from fusion_ser.data.selection import SelectionError, split_rows
from fusion_ser.models.losses import Criterion, kl_divergence
from tests.test_corpora import _msp

CLASSES = ["anger", "happiness", "neutral", "sadness"]
CELLS = ["anger;anger;neutral;happiness;other", "sadness", "", "other;other", "neutral;sadness;sadness"]


def _numpy_shares(cell: str) -> np.ndarray:
    votes = [v for v in cell.split(";") if v in CLASSES]
    out = np.array([votes.count(c) for c in CLASSES], dtype=float)
    return out / out.sum() if out.sum() else out


def test_targets_are_the_vote_shares_over_the_classes():
    targets = annotator_targets(vote_matrix(CELLS, CLASSES), [f"u{i}" for i in range(5)], len(CLASSES))
    np.testing.assert_allclose(targets, np.stack([_numpy_shares(c) for c in CELLS]), atol=1e-7)
    assert targets[0].tolist() == [0.5, 0.25, 0.25, 0.0]  # "other" dropped, the rest renormalised


def test_annotator_dropout_is_exact_per_epoch_and_unbiased():
    votes = vote_matrix(CELLS, CLASSES)
    utts = [f"u{i}" for i in range(5)]
    one = annotator_targets(votes, utts, 4, dropout=0.5, seed=3, epoch=7)
    again = annotator_targets(votes[::-1], utts[::-1], 4, dropout=0.5, seed=3, epoch=7)[::-1]
    np.testing.assert_array_equal(one, again)  # a function of (seed, epoch, utt_id), not of the row order
    epochs = [annotator_targets(votes, utts, 4, dropout=0.5, seed=s, epoch=e) for s in range(4) for e in range(500)]
    assert any(not np.array_equal(epochs[0], x) for x in epochs[1:5])  # epochs differ
    voted = [0, 1, 4]
    for x in epochs:  # at least one vote always stays: a row with votes keeps a distribution
        np.testing.assert_allclose(x[voted].sum(axis=1), 1.0, atol=1e-6)
    full = np.stack([_numpy_shares(c) for c in CELLS])
    np.testing.assert_allclose(np.mean(epochs, axis=0), full, atol=0.02)


def _frame() -> pd.DataFrame:
    return pd.DataFrame({"utt_id": [f"u{i}" for i in range(6)], "path": "", "split": "train",
                         "label": ["anger", "sadness", "happiness", "no_agreement", "neutral", "no_agreement"],
                         "text": "hello", "annotations": CELLS + ["anger;sadness"]})


def test_dataset_targets_follow_the_epoch_and_dev_gets_the_full_distribution():
    cfg = load_config(None, ["modality=text", "data.soft_labels=annotators", "loss.type=kl",
                             "data.annotator_dropout=0.5", f"data.labels={CLASSES}"])
    df = _frame()
    train = EmotionDataset(df, cfg, CLASSES, training=True)
    dev = EmotionDataset(df, cfg, CLASSES, training=False)
    votes, utts = vote_matrix(df["annotations"], CLASSES), df["utt_id"].tolist()
    for epoch in (1, 2):
        train.set_epoch(epoch)
        got = np.stack([train[i]["soft_label"] for i in range(6)])
        expected = annotator_targets(votes, utts, 4, dropout=0.5, seed=cfg.seed, epoch=epoch)
        expected[2] = np.eye(4)[1]  # a class row without votes trains on its label
        np.testing.assert_array_equal(got, expected)
    full = np.stack([dev[i]["soft_label"] for i in range(6)])
    np.testing.assert_allclose(full[[0, 1, 4]], np.stack([_numpy_shares(CELLS[i]) for i in (0, 1, 4)]), atol=1e-7)
    assert full[3].sum() == 0  # no vote among the classes: no target
    np.testing.assert_allclose(full[5], [0.5, 0, 0, 0.5])  # a no-agreement row trains on its distribution


def test_no_agreement_rows_with_votes_are_kept_when_asked_and_a_missing_column_is_an_error():
    df = pd.concat([_frame(), _frame().assign(split="dev", utt_id=lambda f: "d" + f["utt_id"])], ignore_index=True)
    cfg = load_config(None, ["modality=text", "data.soft_labels=annotators", "loss.type=soft_ce",
                             "data.keep_no_agreement=true", f"data.labels={CLASSES}"])
    _, train, _, _ = split_rows(df, cfg, "m.csv")
    assert train["utt_id"].tolist() == ["u0", "u1", "u2", "u4", "u5"]  # u3 votes only "other": no target
    with pytest.raises(SelectionError, match="needs an 'annotations' column"):
        split_rows(df.drop(columns="annotations"), cfg, "m.csv")
    with pytest.raises(ConfigError, match="set loss.type to soft_ce or kl"):
        load_config(None, ["data.soft_labels=annotators"])


def test_kl_loss_equals_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4)).astype(np.float32)
    q = rng.dirichlet(np.ones(4), size=5).astype(np.float32)
    q[1] = [0.5, 0.5, 0.0, 0.0]  # a zero share contributes nothing (0 log 0 = 0)
    q[2] *= 3.0  # renormalised
    q[4] = 0.0  # no target: ignored
    w = np.array([1.0, 2.0, 0.5, 1.5], dtype=np.float32)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    qn = q[:4] / q[:4].sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        rows = np.where(qn > 0, qn * (np.log(qn) - logp[:4]), 0.0).sum(axis=1)
    row_w = (qn * w).sum(axis=1)
    got = kl_divergence(torch.from_numpy(logits), torch.from_numpy(q))
    assert float(got) == pytest.approx(rows.mean(), rel=1e-5)
    weighted = kl_divergence(torch.from_numpy(logits), torch.from_numpy(q), torch.from_numpy(w))
    assert float(weighted) == pytest.approx((row_w * rows).sum() / row_w.sum(), rel=1e-5)
    crit = Criterion("categorical", "kl", 4)
    crit.set_class_weights(torch.from_numpy(w))
    batch = {"soft_label": torch.from_numpy(q), "label": torch.zeros(5, dtype=torch.long)}
    assert float(crit(torch.from_numpy(logits), batch)) == pytest.approx(float(weighted), rel=1e-6)


def test_msp_adapter_fills_annotations_from_labels_detailed(tmp_path):
    df = prepare_corpus("msp-podcast", _msp(tmp_path / "MSP"))
    d = df.set_index("utt_id")
    assert d.loc["MSP-PODCAST_0001_0008", "annotations"] == "anger;anger;disgust;other"
    assert d.loc["MSP-PODCAST_0003_0001", "annotations"] == "happiness;sadness"
    assert d.loc["MSP-PODCAST_0001_0019", "annotations"] == ""  # no detailed labels for it
    out = tmp_path / "manifest.csv"
    write_manifest(df, out)
    again = read_manifest(out).set_index("utt_id")
    assert again.loc["MSP-PODCAST_0001_0008", "annotations"] == "anger;anger;disgust;other"
    assert again.loc["MSP-PODCAST_0001_0019", "annotations"] == ""
    without = prepare_corpus("msp-podcast", _msp(tmp_path / "MSP2"), {"soft_labels": False})
    assert "annotations" not in without.columns


def test_validation_names_a_bad_annotations_cell():
    df = _frame()
    validate_manifest(df, "m.csv")
    df.loc[2, "annotations"] = "anger;Happy;;x1"
    with pytest.raises(ManifestError, match=r"line 4 \(utt_id 'u2'\): annotations 'anger;Happy;;x1'"):
        validate_manifest(df, "m.csv")
