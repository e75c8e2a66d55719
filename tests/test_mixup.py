"""data.mixup: inputs (pooled embedding, waveforms) and targets (one-hot, soft, attributes) mix with the same lambda
and permutation, checked against numpy; p=0 changes nothing; draws are a function of (seed, epoch, step, rank)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fusion_ser.config import ConfigError, load_config
from fusion_ser.models.factory import build_model
from fusion_ser.training.mixup import MixDraw, Mixup, mix_batch

CLASSES = ["anger", "happiness", "neutral"]


def _cfg(*overrides: str):
    return load_config(None, ["audio_encoder.type=fbank", "pooling.type=mean", "head.hidden_dim=16", *overrides])


def _batch(rng: np.random.Generator, b: int = 6, dim: int = 256) -> dict:
    return {"size": b, "utt_id": [f"u{i}" for i in range(b)], "pooled_audio": torch.from_numpy(
        rng.normal(size=(b, dim)).astype(np.float32)), "label": torch.tensor([0, 1, 2, 2, 1, 0][:b])}


def test_draws_are_reproducible_and_mixed_at_rate_p():
    mix = Mixup(_cfg("data.mixup=0.3", "seed=5"))
    a, b = mix.draw(2, 7, 8), Mixup(_cfg("data.mixup=0.3", "seed=5")).draw(2, 7, 8)
    assert (a is None) == (b is None) and (a is None or (a.lam == b.lam and torch.equal(a.perm, b.perm)))
    draws = [mix.draw(1, s, 8) for s in range(2000)]
    rate = np.mean([d is not None for d in draws])
    assert abs(rate - 0.3) < 0.04
    lams = np.array([d.lam for d in draws if d is not None])
    assert abs(lams.mean() - 0.5) < 0.05 and lams.var() == pytest.approx(1 / (4 * (2 * 0.4 + 1)), abs=0.02)
    other_rank = Mixup(_cfg("data.mixup=0.3", "seed=5"), rank=1)
    assert [d is None for d in draws[:50]] != [other_rank.draw(1, s, 8) is None for s in range(50)]


def test_p_zero_leaves_every_batch_unchanged():
    mix = Mixup(_cfg())
    batch = _batch(np.random.default_rng(0))
    assert all(mix.apply(batch, e, s, 3) is batch for e in (1, 2) for s in range(50))


def test_pooled_mixup_mixes_embedding_and_targets_with_one_lambda():
    rng = np.random.default_rng(1)
    model = build_model(_cfg("loss.type=ce"), CLASSES).eval()
    batch = _batch(rng)
    draw = MixDraw(0.3, torch.tensor([2, 0, 1, 5, 3, 4]))
    mixed = mix_batch(batch, draw, "categorical", "pooled", 3)
    out = model(mixed)
    x, p = batch["pooled_audio"].numpy(), draw.perm.numpy()
    np.testing.assert_allclose(out.records["embedding"].numpy(), 0.3 * x + 0.7 * x[p], rtol=1e-6, atol=1e-6)
    onehot = np.eye(3)[batch["label"].numpy()]
    target = 0.3 * onehot + 0.7 * onehot[p]
    np.testing.assert_allclose(mixed["soft_label"].numpy(), target, atol=1e-7)
    logits = out.logits.detach().numpy().astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert float(out.loss.detach()) == pytest.approx(-(target * logp).sum(axis=1).mean(), rel=1e-5)
    assert torch.equal(batch["pooled_audio"], torch.from_numpy(x)) and "soft_label" not in batch  # a copy
    plain = model(batch)  # the same batch unmixed: the embedding itself and the one-hot loss
    np.testing.assert_allclose(plain.records["embedding"].numpy(), x)


def test_soft_targets_and_attributes_mix_the_same_way():
    rng = np.random.default_rng(2)
    batch = _batch(rng)
    soft = rng.dirichlet(np.ones(3), size=6).astype(np.float32) * 2.0  # rows renormalised before mixing
    batch["soft_label"] = torch.from_numpy(soft)
    draw = MixDraw(0.8, torch.tensor([1, 0, 3, 2, 5, 4]))
    q = soft / soft.sum(axis=1, keepdims=True)
    got = mix_batch(batch, draw, "categorical", "pooled", 3)["soft_label"].numpy()
    np.testing.assert_allclose(got, 0.8 * q + 0.2 * q[draw.perm.numpy()], rtol=1e-6)
    attrs = rng.uniform(1, 7, size=(6, 3)).astype(np.float32)
    attrs[0, 1] = np.nan
    batch["attributes"] = torch.from_numpy(attrs)
    mixed = mix_batch(batch, draw, "attributes", "pooled", 0)["attributes"].numpy()
    np.testing.assert_allclose(mixed, 0.8 * attrs + 0.2 * attrs[draw.perm.numpy()], rtol=1e-6)
    assert np.isnan(mixed[[0, 1], 1]).all()  # a missing value stays out of that attribute's CCC


def test_waveform_mixup_mixes_audio_and_refuses_cached_features():
    rng = np.random.default_rng(3)
    wav = rng.normal(size=(4, 1600)).astype(np.float32)
    lengths = torch.tensor([1600, 900, 1200, 400])
    for i, n in enumerate(lengths.tolist()):
        wav[i, n:] = 0.0
    batch = {"size": 4, "wav": torch.from_numpy(wav), "wav_lengths": lengths, "label": torch.tensor([0, 1, 2, 0])}
    draw = MixDraw(0.6, torch.tensor([3, 2, 1, 0]))
    mixed = mix_batch(batch, draw, "categorical", "waveform", 3)
    np.testing.assert_allclose(mixed["wav"].numpy(), 0.6 * wav + 0.4 * wav[[3, 2, 1, 0]], rtol=1e-6)
    assert mixed["wav_lengths"].tolist() == [1600, 1200, 1200, 1600] and "mix" not in mixed
    onehot = np.eye(3)[[0, 1, 2, 0]]
    np.testing.assert_allclose(mixed["soft_label"].numpy(), 0.6 * onehot + 0.4 * onehot[[3, 2, 1, 0]], atol=1e-7)
    cached = _batch(rng, 4)
    with pytest.raises(ConfigError, match="data.mixup_on=pooled"):
        mix_batch(cached, draw, "categorical", "waveform", 3)
    with pytest.raises(ConfigError, match="mixup_on=waveform mixes the audio"):
        load_config(None, ["modality=text", "data.mixup=0.3", "data.mixup_on=waveform"])


def test_weighted_and_focal_losses_take_their_soft_form_on_mixed_batches():
    rng = np.random.default_rng(4)
    logits = torch.from_numpy(rng.normal(size=(6, 3)).astype(np.float32))
    label = torch.tensor([0, 1, 2, 2, 1, 0])
    w = torch.tensor([1.0, 2.0, 0.5])
    for loss in ("weighted_ce", "focal"):
        model = build_model(_cfg(f"loss.type={loss}"), CLASSES)
        model.criterion.set_class_weights(w)
        onehot = {"label": label, "soft_label": torch.eye(3)[label], "mixed": True}
        # a "mixed" batch of one-hot rows (lambda 1) gives exactly the loss of the plain batch
        assert float(model.criterion(logits, onehot)) == pytest.approx(float(model.criterion(logits, {"label": label})),
                                                                      rel=1e-5)


def test_a_fine_tuned_encoder_trains_on_mixed_waveforms(tmp_path):
    """The trainer path of waveform mixup (every batch mixed): a fine-tuned tiny WavLM run completes with finite
    losses; the same config on cached frozen frames is refused before any weight changes."""
    from fusion_ser.training.job import train_run
    from tests.test_trainer import make_corpus, save_tiny_ssl, tiny_cfg

    torch.set_num_threads(1)
    corpus = make_corpus(tmp_path / "c", per_class=2)
    model_dir = save_tiny_ssl("wavlm", tmp_path / "wavlm")
    mix = ["data.mixup=1.0", "data.mixup_on=waveform", "train.epochs=1"]
    run = train_run(tiny_cfg(model_dir, *mix), corpus, tmp_path / "run")
    assert np.isfinite(pd.read_csv(run.train_log_path)["train_loss"]).all() and run.is_complete()
    with pytest.raises(ConfigError, match="cached encoder features"):
        train_run(tiny_cfg(model_dir, *mix, "audio_encoder.finetune=frozen", "train.cache_features=true",
                           f"train.cache_dir={tmp_path / 'cache'}"), corpus, tmp_path / "frozen")
