"""data.sampler: class frequencies counted over an epoch (random, balanced, staged), the staged class weights
against numpy, resume exactness (fresh sampler, mid-epoch continuation, a real run interrupted and resumed) and DDP
shards that split each epoch without overlap."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from fusion_ser.config import load_config
from fusion_ser.data.sampler import group_counts
from fusion_ser.models.factory import build_model
from fusion_ser.training.sampling import SamplingPlan, sampling_groups
from tests.test_trainer import CLASSES, make_corpus

CLASS_NAMES = ["anger", "happiness", "neutral", "sadness"]
LABELS = ["anger"] * 50 + ["happiness"] * 27 + ["neutral"] * 13 + ["sadness"] * 5 + ["no_agreement"] * 10
N = len(LABELS)  # 105


def _cfg(*overrides: str):
    return load_config(None, ["audio_encoder.type=fbank", "pooling.type=mean", *overrides])


def _epoch(sampler, epoch: int) -> list[int]:
    sampler.set_epoch(epoch)
    return [i for batch in sampler for i in batch]


def _sampler(plan: SamplingPlan, ranks: int = 1, rank: int = 0, batch: int = 8):
    lengths = np.random.default_rng(0).uniform(1, 5, N)
    return plan.sampler(lengths, batch, seed=7, world_size=ranks, rank=rank)


def test_random_sampler_is_todays_epoch_each_row_once():
    items = _epoch(_sampler(SamplingPlan(_cfg(), LABELS, CLASS_NAMES)), 1)
    assert sorted(items) == list(range(N))


def test_balanced_epoch_draws_classes_equally_and_keeps_no_agreement_share():
    plan = SamplingPlan(_cfg("data.sampler=balanced"), LABELS, CLASS_NAMES)
    for epoch in (1, 2):
        counts = Counter(LABELS[i] for i in _epoch(_sampler(plan), epoch))
        assert sum(counts.values()) == N
        assert counts["no_agreement"] == 10  # its natural share, 10 of 105
        per_class = [counts[c] for c in CLASS_NAMES]
        assert max(per_class) - min(per_class) <= 1 and sum(per_class) == 95  # 95 / 4: 24, 24, 24, 23
    model = build_model(_cfg("data.sampler=balanced"), CLASS_NAMES, train_labels=LABELS)
    assert model.criterion.weighted  # weighted_ce by default ...
    plan.start_epoch(1, model)
    assert not model.criterion.weighted  # ... but the balanced sampler trains unweighted


def test_staged_weights_then_balanced_subsets_with_the_quota():
    cfg = _cfg("data.sampler=staged", "data.staged_epochs=2", "data.no_agreement_quota=0.2", "loss.type=ce")
    plan = SamplingPlan(cfg, LABELS, CLASS_NAMES)
    sampler = _sampler(plan)
    model = build_model(cfg, CLASS_NAMES, train_labels=LABELS)
    n_c = np.array([50, 27, 13, 5], dtype=float)
    expected = np.sqrt(n_c.sum() / (len(n_c) * n_c))  # (N / (K n_c))^0.5 over the class rows
    for epoch in (1, 2):  # random epochs, class-weighted loss (even for loss.type=ce)
        assert sorted(_epoch(sampler, epoch)) == list(range(N))
        plan.start_epoch(epoch, model)
        assert model.criterion.weighted
        np.testing.assert_allclose(model.criterion.class_weights.numpy(), expected, rtol=1e-6)
    logits, target = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 3, 0])
    expected_loss = torch.nn.functional.cross_entropy(logits, target, weight=torch.tensor(expected, dtype=torch.float32))
    assert float(model.criterion(logits, {"label": target})) == pytest.approx(float(expected_loss), rel=1e-6)
    for epoch in (3, 4):  # balanced subsets holding the quota, unweighted loss
        items = _epoch(sampler, epoch)
        counts = Counter(LABELS[i] for i in items)
        assert len(items) == N and counts["no_agreement"] == round(0.2 * N)  # 21 of 105
        per_class = [counts[c] for c in CLASS_NAMES]
        assert max(per_class) - min(per_class) <= 1 and sum(per_class) == N - 21
        assert Counter(items).most_common(1)[0][1] > 1  # the small classes are over-sampled
        plan.start_epoch(epoch, model)
        assert not model.criterion.weighted


def test_group_counts_round_by_largest_remainder():
    assert group_counts(10, ["a", "b", "c"]) == [4, 3, 3]  # equal shares: as the corpus sampler always did
    assert group_counts(105, ["x", "y"], {"x": 0.2, "y": 0.8}) == [21, 84]
    assert group_counts(7, ["a", "b"], {"a": 1.0, "b": 2.0}) == [2, 5]
    groups, shares = sampling_groups(["a", "b", "b", "x"], ["a", "b"], 0.5, corpora=["c1", "c1", "c2", "c2"])
    assert groups == ["c1|a", "c1|b", "c2|b", "c2|no_agreement"]
    assert shares == {"c1|a": 0.25, "c1|b": 0.25, "c2|b": 0.25, "c2|no_agreement": 0.25}


@pytest.mark.parametrize("mode", ["balanced", "staged"])
def test_resume_and_ddp_shards_are_exact(mode):
    cfg = _cfg(f"data.sampler={mode}", "data.staged_epochs=1")
    plan = SamplingPlan(cfg, LABELS, CLASS_NAMES)
    running = _sampler(plan)
    uninterrupted = {}
    for e in (1, 2, 3):
        running.set_epoch(e)
        uninterrupted[e] = [list(b) for b in running]
    fresh = _sampler(SamplingPlan(cfg, LABELS, CLASS_NAMES))
    fresh.set_epoch(3)
    assert [list(b) for b in fresh] == uninterrupted[3] and uninterrupted[2] != uninterrupted[3]
    fresh.set_epoch(2)  # a resume in the middle of epoch 2 continues with the batches it had left
    assert [list(b) for b in fresh][5:] == uninterrupted[2][5:]
    for e in (1, 3):
        shards = [_sampler(plan, ranks=2, rank=r) for r in (0, 1)]
        batches = []
        for s in shards:
            s.set_epoch(e)
            batches.append([list(b) for b in s])
        assert len(batches[0]) == len(batches[1]) == len(shards[0])
        # together the two ranks hold exactly the single-rank epoch: no position twice, none missing
        assert Counter(i for b in batches[0] + batches[1] for i in b) == Counter(i for b in uninterrupted[e] for i in b)


def test_a_staged_run_with_mixup_resumes_exactly(tmp_path):
    """A real run (frozen tiny WavLM, cached frames) with staged sampling, no-agreement rows trained on their
    annotator votes with dropout, and pooled mixup: interrupted after epoch 2 and resumed, it ends as an
    uninterrupted one (train log, dev metrics, test predictions)."""
    from fusion_ser.rundir import RunDir
    from fusion_ser.training.job import train_run
    from tests.test_trainer import save_tiny_ssl, tiny_cfg

    torch.set_num_threads(1)
    corpus = make_corpus(tmp_path / "c", per_class=2)
    df = pd.read_csv(corpus)
    df["path"] = [str(corpus.parent / p) for p in df["path"]]
    names = sorted(CLASSES)
    df["annotations"] = [";".join([y, y, names[(k + 1) % 3], "other"]) for k, y in enumerate(df["label"])]
    df.loc[df.index[df["split"] == "train"][:5], "label"] = "no_agreement"
    manifest = tmp_path / "m.csv"
    df.to_csv(manifest, index=False)
    model_dir = save_tiny_ssl("wavlm", tmp_path / "wavlm")

    from tests.interrupt import Interrupted, StopAfterTwo

    cfg = tiny_cfg(model_dir, "audio_encoder.finetune=frozen", "train.cache_features=true",
                   f"train.cache_dir={tmp_path / 'cache'}", "train.epochs=3", "data.sampler=staged",
                   "data.staged_epochs=2", "data.keep_no_agreement=true", "data.soft_labels=annotators",
                   "data.annotator_dropout=0.3", "loss.type=kl", "data.mixup=0.5", "head.dropout=0.2")
    full = train_run(cfg, manifest, tmp_path / "full")
    with pytest.raises(Interrupted):
        train_run(cfg, manifest, tmp_path / "resumed", trainer_cls=StopAfterTwo)
    resumed = train_run(cfg, manifest, tmp_path / "resumed")
    assert full.read_info().extra["n_train"] == 24  # the 5 no-agreement rows train on their votes
    assert full.read_metrics() == resumed.read_metrics()
    log_full, log_resumed = pd.read_csv(full.train_log_path), pd.read_csv(resumed.train_log_path)
    timing = [c for c in log_full.columns if c.endswith(("seconds", "utt_per_s"))]
    pd.testing.assert_frame_equal(log_full.drop(columns=timing), log_resumed.drop(columns=timing))
    pd.testing.assert_frame_equal(full.read_predictions("test"), resumed.read_predictions("test"))
    assert RunDir(tmp_path / "resumed").is_complete()


def test_class_weight_power_is_numpy_and_equals_a_staged_run_that_never_balances(tmp_path):
    from fusion_ser.models.losses import class_weights
    from fusion_ser.training.job import train_run

    labels = ["a"] * 6 + ["b"] * 3 + ["c"]
    counts = np.array([6, 3, 1])
    np.testing.assert_allclose(class_weights(labels, ["a", "b", "c"], power=0.5).numpy(),
                               np.sqrt(10 / (3 * counts)), rtol=1e-6)
    corpus = make_corpus(tmp_path / "c", n_speakers=4, per_class=3)
    base = ["audio_encoder.type=fbank", "audio_encoder.finetune=full", "audio_encoder.hidden_dim=16",
            "audio_encoder.n_mels=20", "pooling.type=mean", "head.hidden_dim=16", "train.epochs=2",
            "train.batch_size=4", "train.cache_features=false", "train.report=false"]
    power = train_run(load_config(None, base + ["loss.class_weight_power=0.5"]), corpus, tmp_path / "power")
    staged = train_run(load_config(None, base + ["data.sampler=staged", "data.staged_epochs=5"]), corpus,
                       tmp_path / "staged")
    a, b = power.read_predictions("test"), staged.read_predictions("test")
    cols = [c for c in a.columns if c.startswith("prob_")]
    np.testing.assert_array_equal(a[cols].to_numpy(), b[cols].to_numpy())
