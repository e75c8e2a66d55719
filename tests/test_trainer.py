"""The one trainer on tiny random WavLM / wav2vec2 / HuBERT models saved to temp dirs and a generated corpus.

Classes differ acoustically (sine pitch), so a trained model must beat chance by far; a run interrupted after an
epoch and resumed ends with exactly the metrics of an uninterrupted run; a saved run reloads and predicts the same;
the attributes task writes <attr>_pred columns on the manifest scale; bad input gives clear errors.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from fusion_ser.config import load_config
from fusion_ser.rundir import RunDir
from tests.tiny_models import save_tiny_bert

SR = 16000
CLASSES = {"anger": 250.0, "happiness": 800.0, "sadness": 2200.0}
AROUSAL = {"anger": 6.0, "happiness": 5.0, "sadness": 2.0}


PHRASES = {"anger": ["this makes me furious", "i am so angry now", "stop it, i hate this"],
           "happiness": ["what a wonderful day", "i am so happy", "this is great news"],
           "sadness": ["i feel so sad", "everything is lost", "i miss them so much"]}


def make_corpus(root: Path, n_speakers: int = 6, per_class: int = 4, seed: int = 0, folds: bool = False) -> Path:
    """Sine clips whose pitch gives the class (speaker 0-3 train, 4 dev, 5 test); arousal and text follow the class."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for spk in range(n_speakers):
        shift = 1.0 + 0.04 * (spk - n_speakers / 2)
        for label, f0 in CLASSES.items():
            for j in range(per_class):
                seconds = rng.uniform(0.4, 1.1)
                t = np.arange(int(seconds * SR)) / SR
                f = f0 * shift * (1 + 0.03 * rng.standard_normal())
                x = 0.4 * np.sin(2 * np.pi * f * t) + 0.03 * rng.standard_normal(len(t))
                name = f"spk{spk}_{label}_{j}.wav"
                sf.write(root / name, x.astype(np.float32), SR)
                split = "train" if spk < n_speakers - 2 else ("dev" if spk == n_speakers - 2 else "test")
                row = {"utt_id": name[:-4], "path": name, "split": split, "speaker": f"spk{spk}", "gender": "",
                       "label": label, "arousal": AROUSAL[label] + rng.normal(0, 0.3),
                       "valence": float(rng.uniform(1, 7)), "dominance": "",
                       "text": PHRASES[label][(j + spk) % 3]}
                if folds:
                    row["fold"] = spk % 3
                rows.append(row)
    path = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def save_tiny_ssl(kind: str, directory: Path) -> str:
    """A random 2-layer, hidden-32 SSL model of `kind` saved with save_pretrained (+ its feature extractor)."""
    from transformers import (HubertConfig, HubertModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model,
                              WavLMConfig, WavLMModel)

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  conv_dim=(32, 32, 32), conv_kernel=(10, 8, 8), conv_stride=(5, 8, 8), num_conv_pos_embeddings=16,
                  num_conv_pos_embedding_groups=4, mask_time_prob=0.0, layerdrop=0.0)
    torch.manual_seed(0)
    if kind == "wavlm":
        model = WavLMModel(WavLMConfig(**common, num_buckets=32, max_bucket_distance=64))
    elif kind == "wav2vec2":
        model = Wav2Vec2Model(Wav2Vec2Config(**common))
    else:
        model = HubertModel(HubertConfig(**common))
    model.save_pretrained(directory)
    norm_layer = getattr(model.config, "feat_extract_norm", "group") == "layer"
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, do_normalize=True,
                             return_attention_mask=norm_layer).save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return make_corpus(tmp_path_factory.mktemp("trainer_corpus"))


@pytest.fixture(scope="session")
def ssl_models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_ssl")
    return {k: save_tiny_ssl(k, root / k) for k in ("wavlm", "wav2vec2", "hubert")}


def tiny_cfg(model_dir: str, *extra: str, cache_dir: Path | None = None):
    """A fine-tuned tiny SSL encoder with a small head; lrs high enough to learn in a few epochs."""
    overrides = ["audio_encoder.type=hf", f"audio_encoder.name_or_path={model_dir}", "audio_encoder.finetune=full",
                 "pooling.type=attentive_stats", "pooling.attention_dim=16", "head.hidden_dim=32", "head.dropout=0.1",
                 "train.epochs=4", "train.batch_size=8", "optim.lr_encoder=0.001", "optim.lr_head=0.003",
                 "optim.warmup_ratio=0.1", "train.cache_features=false", "train.report=false"]
    if cache_dir is not None:
        overrides.append(f"train.cache_dir={cache_dir}")
    return load_config(None, overrides + list(extra))


@pytest.fixture(scope="session")
def wavlm_run(corpus, ssl_models, tmp_path_factory) -> Path:
    from fusion_ser.training.job import train_run

    out = tmp_path_factory.mktemp("runs") / "wavlm"
    train_run(tiny_cfg(ssl_models["wavlm"], "train.report=true"), corpus, out)
    return out


def test_wavlm_learns_far_above_chance_and_writes_run_dir(wavlm_run: Path) -> None:
    run = RunDir(wavlm_run)
    info = run.require_complete()
    assert info.labels == sorted(CLASSES) and info.task == "categorical" and info.kind == "model"
    metrics = run.read_metrics()
    assert metrics["dev"]["macro_f1"] >= 0.75, metrics["dev"]  # chance is 1/3
    # metrics.json agrees with an independent sklearn computation on the written predictions
    from sklearn.metrics import f1_score

    dev = run.read_predictions("dev")
    assert list(dev.columns) == ["utt_id", "label", "pred", "prob_anger", "prob_happiness", "prob_sadness"]
    np.testing.assert_allclose(dev[[c for c in dev if c.startswith("prob_")]].sum(axis=1), 1.0, atol=1e-5)
    assert metrics["dev"]["macro_f1"] == pytest.approx(f1_score(dev["label"], dev["pred"], average="macro"))
    assert len(run.read_predictions("test")) == 12
    log = pd.read_csv(run.train_log_path)
    assert list(log["epoch"]) == [1, 2, 3, 4]
    assert log["dev_macro_f1"].max() == pytest.approx(metrics["dev"]["macro_f1"], abs=1e-9)
    assert int(log.loc[log["dev_macro_f1"].idxmax(), "epoch"]) == metrics["best_epoch"]
    assert not run.checkpoint_dir.exists()
    assert "macro" in (run.path / "report.md").read_text().lower()
    saved = (run.path / "config.yaml").read_text()
    assert "manifest_sha256" in saved


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_other_ssl_models_learn(kind, corpus, ssl_models, tmp_path) -> None:
    from fusion_ser.training.job import train_run

    run = train_run(tiny_cfg(ssl_models[kind], "train.epochs=3"), corpus, tmp_path / kind)
    assert run.read_metrics()["dev"]["macro_f1"] >= 0.6


def test_saved_run_reloads_and_predicts_identically(wavlm_run: Path, corpus: Path) -> None:
    from fusion_ser.data.manifest import read_manifest
    from fusion_ser.models.io import load_model
    from fusion_ser.training.inference import predict_frame

    model, cfg, labels = load_model(wavlm_run / "model")
    assert labels == sorted(CLASSES)
    df = read_manifest(corpus)
    test = df[df["split"] == "test"]
    fresh = predict_frame(model, test, cfg)
    written = RunDir(wavlm_run).read_predictions("test")
    assert list(fresh["utt_id"]) == list(test["utt_id"]) == list(written["utt_id"])
    assert list(fresh["pred"]) == list(written["pred"])
    probs = [c for c in written.columns if c.startswith("prob_")]
    np.testing.assert_allclose(fresh[probs].to_numpy(), written[probs].to_numpy(), atol=1e-6)


def test_resume_after_interruption_gives_identical_metrics(corpus, ssl_models, tmp_path) -> None:
    from fusion_ser.training.job import train_run
    from tests.interrupt import Interrupted, StopAfterTwo

    # train.checkpoint_seconds=0: a checkpoint after every epoch (the default's resume from an earlier checkpoint
    # than the stop: tests/test_frame_store.py)
    cfg = tiny_cfg(ssl_models["wavlm"], "head.dropout=0.3", "train.grad_accum=2", "optim.schedule=cosine",
                   "train.checkpoint_seconds=0")
    full = train_run(cfg, corpus, tmp_path / "full")
    with pytest.raises(Interrupted):
        train_run(cfg, corpus, tmp_path / "resumed", trainer_cls=StopAfterTwo)
    partial = RunDir(tmp_path / "resumed")
    assert not partial.is_complete() and (partial.checkpoint_dir / "last.pt").is_file()
    assert len(pd.read_csv(partial.train_log_path)) == 2
    resumed = train_run(cfg, corpus, tmp_path / "resumed")
    a, b = full.read_metrics(), resumed.read_metrics()
    assert a == b
    log_full, log_resumed = pd.read_csv(full.train_log_path), pd.read_csv(resumed.train_log_path)
    timing = [c for c in log_full.columns if c.endswith(("seconds", "utt_per_s"))]
    pd.testing.assert_frame_equal(log_full.drop(columns=timing), log_resumed.drop(columns=timing))
    pd.testing.assert_frame_equal(full.read_predictions("test"), resumed.read_predictions("test"))


def test_resume_refuses_a_different_config(corpus, ssl_models, tmp_path) -> None:
    from fusion_ser.training.job import train_run
    from fusion_ser.training.trainer import Trainer, TrainError

    class StopAtOne(Trainer):
        def on_epoch_end(self, epoch, row):
            raise KeyboardInterrupt

    cfg = tiny_cfg(ssl_models["wavlm"], "train.epochs=2")
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, corpus, tmp_path / "r", trainer_cls=StopAtOne)
    with pytest.raises(TrainError, match="optim.lr_head"):
        train_run(tiny_cfg(ssl_models["wavlm"], "train.epochs=2", "optim.lr_head=0.01"), corpus, tmp_path / "r")


def test_attributes_task_trains_and_writes_pred_columns(corpus, ssl_models, tmp_path) -> None:
    from fusion_ser.evaluation.metrics import ccc
    from fusion_ser.training.job import train_run

    cfg = tiny_cfg(ssl_models["wavlm"], "task=attributes", "data.attributes=[arousal, valence]",
                   "head.per_attribute=true", "train.epochs=4")
    run = train_run(cfg, corpus, tmp_path / "attr")
    info = run.require_complete()
    assert info.attributes == ["arousal", "valence"] and info.labels == []
    pred = run.read_predictions("dev")
    assert list(pred.columns) == ["utt_id", "arousal", "valence", "arousal_pred", "valence_pred"]
    metrics = run.read_metrics()["dev"]
    assert metrics["ccc_arousal"] == pytest.approx(ccc(pred["arousal"], pred["arousal_pred"]), abs=1e-6)
    # arousal is a function of the class (pitch): it is learnable; predictions live on the 1-7 manifest scale
    assert metrics["ccc_arousal"] > 0.5
    assert abs(pred["arousal_pred"].mean() - pred["arousal"].mean()) < 1.0 and pred["arousal_pred"].std() > 0.3


def test_frozen_encoder_trains_from_feature_cache(corpus, ssl_models, tmp_path) -> None:
    from fusion_ser.training.job import train_run

    cache = tmp_path / "cache"
    cfg = tiny_cfg(ssl_models["wavlm"], "audio_encoder.finetune=frozen", "train.cache_features=true",
                   "optim.lr_head=0.01", "train.epochs=4", cache_dir=cache)
    run = train_run(cfg, corpus, tmp_path / "frozen")
    assert len(list(cache.rglob("*.fsc"))) == 72
    assert run.read_metrics()["dev"]["macro_f1"] >= 0.6


def test_corrupt_clip_is_skipped_with_a_count(corpus, ssl_models, tmp_path) -> None:
    import shutil

    from fusion_ser.training.job import train_run

    root = tmp_path / "c"
    shutil.copytree(corpus.parent, root)
    df = pd.read_csv(root / "manifest.csv")
    bad = df.index[df["split"] == "train"][:2]
    (root / df.loc[bad[0], "path"]).write_bytes(b"not audio at all")
    (root / df.loc[bad[1], "path"]).unlink()
    run = train_run(tiny_cfg(ssl_models["wavlm"], "train.epochs=1"), root / "manifest.csv", tmp_path / "run")
    info = run.require_complete()
    assert info.extra["skipped_clips"] == 2 and info.extra["n_train"] == 46
    skipped = json.loads((run.path / "skipped_clips.json").read_text())
    assert set(skipped) == set(df.loc[bad, "utt_id"])
    assert "unreadable" in " ".join(skipped.values())


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A random BERT (hidden 32, 2 layers) with the packaged MiniLM tokenizer, saved with save_pretrained."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), max_positions=64)


def test_text_modality_trains_with_lora_and_reloads(corpus, tiny_bert, tmp_path) -> None:
    from fusion_ser.data.manifest import read_manifest
    from fusion_ser.models.io import load_model
    from fusion_ser.training.inference import predict_frame
    from fusion_ser.training.job import train_run

    cfg = load_config(None, ["modality=text", f"text_encoder.name_or_path={tiny_bert}", "text_encoder.finetune=lora",
                             "text_encoder.lora.r=4", "text_encoder.max_length=16", "head.hidden_dim=32",
                             "head.dropout=0.1", "train.epochs=6", "train.batch_size=8", "optim.lr_encoder=0.005",
                             "optim.lr_head=0.005", "train.cache_features=false", "train.report=false"])
    run = train_run(cfg, corpus, tmp_path / "text")
    assert run.read_info().modality == "text"
    assert run.read_metrics()["dev"]["macro_f1"] >= 0.6  # the phrases name the class
    model, cfg2, _ = load_model(run.model_dir)
    df = read_manifest(corpus)
    fresh = predict_frame(model, df[df["split"] == "dev"], cfg2)
    written = run.read_predictions("dev")
    probs = [c for c in written.columns if c.startswith("prob_")]
    np.testing.assert_allclose(fresh[probs].to_numpy(), written[probs].to_numpy(), atol=1e-6)


def test_errors_name_what_is_missing(corpus, ssl_models, tmp_path) -> None:
    from fusion_ser.data.selection import SelectionError
    from fusion_ser.training.job import train_run

    df = pd.read_csv(corpus)
    no_dev = tmp_path / "no_dev.csv"
    df[df["split"] != "dev"].assign(path=lambda d: [str(corpus.parent / p) for p in d["path"]]).to_csv(no_dev, index=False)
    with pytest.raises(SelectionError, match="no dev rows labelled"):
        train_run(tiny_cfg(ssl_models["wavlm"]), no_dev, tmp_path / "a")
    no_text = tmp_path / "no_text.csv"
    df.assign(path=lambda d: [str(corpus.parent / p) for p in d["path"]],
              text=lambda d: np.where(d.index % 9 == 0, "", d["text"])).to_csv(no_text, index=False)
    with pytest.raises(SelectionError, match=r"8 row\(s\) have no text \(train: 6, dev: 1, test: 1.*fusion-ser transcribe"):
        train_run(tiny_cfg(ssl_models["wavlm"], "modality=text"), no_text, tmp_path / "b")
    from fusion_ser.cli.main import main

    result = CliRunner().invoke(main, ["train", "-c", str(tmp_path / "missing.yaml"), "--manifest", str(corpus),
                                       "-o", str(tmp_path / "c")])
    assert result.exit_code == 1 and "Error:" in result.output and "missing.yaml" in result.output
    assert "Traceback" not in result.output


def test_cli_cv_trains_every_fold_and_averages(ssl_models, tmp_path) -> None:
    from fusion_ser.cli.main import main

    manifest = make_corpus(tmp_path / "folds", n_speakers=6, per_class=2, folds=True)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("seed: 3\naudio_encoder: {type: hf, finetune: frozen, name_or_path: %s}\n"
                   "head: {hidden_dim: 16}\ntrain: {epochs: 1, batch_size: 8, report: false, cache_dir: %s}\n"
                   % (ssl_models["wavlm"], tmp_path / "cache"))
    result = CliRunner().invoke(main, ["train", "-c", str(cfg), "--manifest", str(manifest), "-o", str(tmp_path / "cv"),
                                       "--cv"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "cv" / "cv_metrics.json").read_text())
    assert summary["folds"] == 3
    f1s = [m["test"]["macro_f1"] for m in summary["per_fold"]]
    assert summary["test"]["macro_f1"]["mean"] == pytest.approx(np.mean(f1s))
    assert summary["test"]["macro_f1"]["std"] == pytest.approx(np.std(f1s))
    for k in range(3):
        pred = RunDir(tmp_path / "cv" / f"fold_{k}").read_predictions("test")
        assert set(pred["utt_id"].str.split("_").str[0]) == {f"spk{s}" for s in range(6) if s % 3 == k}
    assert "3-fold cross-validation" in result.output


def test_standardize_frames_uses_train_set_statistics(corpus, ssl_models, tmp_path) -> None:
    from fusion_ser.data.manifest import read_manifest
    from fusion_ser.models.io import load_model
    from fusion_ser.data.feature_cache import FeatureCache
    from fusion_ser.training.inference import predict_frame
    from fusion_ser.training.job import feature_caches, train_run

    cache_dir = tmp_path / "cache"
    cfg = tiny_cfg(ssl_models["wavlm"], "audio_encoder.finetune=frozen", "audio_encoder.layers=last",
                   "train.cache_features=true", "head.standardize_frames=true", "head.standardize_pooled=true",
                   "train.epochs=1", cache_dir=cache_dir)
    run = train_run(cfg, corpus, tmp_path / "std")
    model, _, _ = load_model(run.model_dir)
    # the pooled-vector standardiser's running statistics are saved with the model and used at prediction time
    assert float(model.pooled_norm.running_var.sub(1).abs().max()) > 1e-3
    fresh = predict_frame(model, read_manifest(corpus).query("split == 'dev'"), cfg, cached=feature_caches(model, cfg))
    probs = [c for c in fresh.columns if c.startswith("prob_")]
    np.testing.assert_allclose(fresh[probs].to_numpy(), run.read_predictions("dev")[probs].to_numpy(), atol=1e-6)
    df = read_manifest(corpus)
    cache = FeatureCache(cache_dir, max_seconds=cfg.data.max_eval_seconds)
    frames = np.concatenate([cache.get(model.encoder, {"utt_id": r.utt_id, "path": r.path}).float().numpy()
                             for r in df[df["split"] == "train"].itertuples()])
    np.testing.assert_allclose(model.frame_norm.mean.numpy(), frames.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.frame_norm.std.numpy(), frames.std(axis=0), rtol=1e-3, atol=1e-5)
    from fusion_ser.config import ConfigError

    with pytest.raises(ConfigError, match="head.standardize_frames / head.standardize need a frozen encoder"):
        train_run(tiny_cfg(ssl_models["wavlm"], "head.standardize_frames=true"), corpus, tmp_path / "bad")


def test_soft_labels_keep_no_agreement_rows_only_when_asked(corpus, ssl_models, tmp_path) -> None:
    from fusion_ser.training.job import train_run

    df = pd.read_csv(corpus)
    df["path"] = [str(corpus.parent / p) for p in df["path"]]
    for c in CLASSES:
        df[f"p_{c}"] = np.where(df["label"] == c, 0.8, 0.1)
    df.loc[df.index[df["split"] == "train"][:4], "label"] = "no_agreement"
    soft = tmp_path / "soft.csv"
    df.to_csv(soft, index=False)
    base = ["loss.type=soft_ce", "train.epochs=1", "audio_encoder.finetune=frozen"]
    kept = train_run(tiny_cfg(ssl_models["wavlm"], *base, "data.keep_no_agreement=true"), soft, tmp_path / "kept")
    dropped = train_run(tiny_cfg(ssl_models["wavlm"], *base), soft, tmp_path / "dropped")
    assert kept.read_info().extra["n_train"] == 48 and dropped.read_info().extra["n_train"] == 44
    assert kept.read_info().labels == sorted(CLASSES)  # no_agreement is never a class
    assert np.isfinite(pd.read_csv(kept.train_log_path)["train_loss"]).all()


def test_speed_perturbed_cache_copies_for_train_only_and_reused(corpus, ssl_models, tmp_path, monkeypatch) -> None:
    from fusion_ser.data.feature_cache import FeatureCache
    from fusion_ser.training.job import train_run

    requests: list[tuple[str, float]] = []
    computed: list[str] = []
    real_get, real_compute = FeatureCache.get, FeatureCache._compute

    def spy_get(self, encoder, item):
        requests.append((str(item["utt_id"]), float(item.get("speed", 1.0))))
        return real_get(self, encoder, item)

    def spy_compute(self, encoder, item, path):
        computed.append(str(item["utt_id"]))
        return real_compute(self, encoder, item, path)

    monkeypatch.setattr(FeatureCache, "get", spy_get)
    monkeypatch.setattr(FeatureCache, "_compute", spy_compute)
    cache = tmp_path / "cache"
    cfg = tiny_cfg(ssl_models["wavlm"], "audio_encoder.finetune=frozen", "train.cache_features=true",
                   "data.speed_perturb=[0.9, 1.0, 1.1]", "train.epochs=3",
                   "train.feature_memory=0", cache_dir=cache)  # every read goes to the cache, none to memory
    run = train_run(cfg, corpus, tmp_path / "sp")
    df = pd.read_csv(corpus)
    train_ids = set(df.loc[df["split"] == "train", "utt_id"])
    assert len(computed) == 72 + 2 * 48 and len(list(cache.rglob("*.fsc"))) == 168  # plain + two copies of train
    augmented = {(u, s) for u, s in requests if s != 1.0}
    assert {s for _, s in augmented} == {0.9, 1.1}
    assert {u for u, _ in augmented} <= train_ids  # dev and test are never augmented
    evaluated = [u for u, s in requests if u not in train_ids]
    assert evaluated and all(s == 1.0 for u, s in requests if u not in train_ids)
    # one factor per clip and epoch: 48 train reads per epoch, and the factors differ between epochs
    per_epoch = [requests[i * 60: i * 60 + 48] for i in range(3)]  # each epoch: 48 train reads then 12 dev reads
    assert all({u for u, _ in e} == train_ids for e in per_epoch)
    assert dict(per_epoch[0]) != dict(per_epoch[1])
    computed.clear()
    again = train_run(cfg, corpus, tmp_path / "sp2")  # another run on the same cache encodes nothing
    assert computed == []
    assert again.read_metrics() == run.read_metrics()


def test_speed_perturbation_on_the_fly_for_a_fine_tuned_encoder(corpus, ssl_models, tmp_path, monkeypatch) -> None:
    import fusion_ser.data.dataset as dataset_module
    from fusion_ser.data.augment import speed_perturb
    from fusion_ser.training.job import train_run

    calls: list[tuple[int, int, float]] = []

    def spy(wav, factor, sample_rate=16000):
        out = speed_perturb(wav, factor, sample_rate)
        calls.append((len(wav), len(out), factor))
        return out

    monkeypatch.setattr(dataset_module, "speed_perturb", spy)
    run = train_run(tiny_cfg(ssl_models["wavlm"], "data.speed_perturb=[0.9, 1.1]", "train.epochs=2"), corpus,
                    tmp_path / "fly")
    assert run.is_complete()
    assert len(calls) == 2 * 48  # every train clip once per epoch; dev and test predictions never perturbed
    assert {f for _, _, f in calls} == {0.9, 1.1}
    assert all(abs(m - n / f) <= 2 for n, m, f in calls)


class FitSpy:
    """Records the number of training rows and epochs of every `fit` of a Trainer subclass."""

    @staticmethod
    def make(record: list, stop_at: Optional[tuple[str, int]] = None):
        from fusion_ser.training.trainer import Trainer

        class Spy(Trainer):
            def fit(self, train_set, dev_set, epochs=None):
                record.append((len(train_set), dev_set is not None, epochs))
                return super().fit(train_set, dev_set, epochs)

            def on_epoch_end(self, epoch, row):
                phase = "refit" if self.checkpoint_dir.name == "refit" else "main"
                if stop_at == (phase, epoch):
                    raise KeyboardInterrupt

        return Spy


def test_refit_on_dev_predicts_test_with_a_train_plus_dev_model(corpus, ssl_models, tmp_path) -> None:
    from fusion_ser.data.manifest import read_manifest
    from fusion_ser.models.io import load_model
    from fusion_ser.training.inference import predict_frame
    from fusion_ser.training.job import feature_caches, train_run

    common = ["audio_encoder.finetune=frozen", "train.cache_features=true", "optim.lr_head=0.01", "train.epochs=4"]
    plain = train_run(tiny_cfg(ssl_models["wavlm"], *common, cache_dir=tmp_path / "cache"), corpus, tmp_path / "a")
    fits: list = []
    cfg = tiny_cfg(ssl_models["wavlm"], *common, "train.refit_on_dev=true", cache_dir=tmp_path / "cache")
    refit = train_run(cfg, corpus, tmp_path / "b", trainer_cls=FitSpy.make(fits))
    metrics = refit.read_metrics()
    best = metrics["best_epoch"]
    assert fits == [(48, True, None), (60, False, best)]  # the refit trains on 48 train + 12 dev rows
    assert metrics["test_model"] == "refit_on_dev" and metrics["refit_epochs"] == best
    assert refit.read_info().extra["n_refit_train"] == 60 and refit.read_info().extra["test_model"] == "refit_on_dev"
    assert len(pd.read_csv(refit.path / "refit_train_log.csv")) == best
    # dev predictions and metrics are the dev-selected model's, identical to a run without the refit
    pd.testing.assert_frame_equal(plain.read_predictions("dev"), refit.read_predictions("dev"))
    assert metrics["dev"] == plain.read_metrics()["dev"] and metrics["best_epoch"] == plain.read_metrics()["best_epoch"]
    probs = [c for c in plain.read_predictions("test").columns if c.startswith("prob_")]
    assert not np.allclose(plain.read_predictions("test")[probs], refit.read_predictions("test")[probs])
    # model/ is the refit model (it reproduces test.csv); model_dev_selected/ reproduces dev.csv
    df = read_manifest(corpus)
    for directory, split in ((refit.model_dir, "test"), (refit.path / "model_dev_selected", "dev")):
        model, cfg2, _ = load_model(directory)
        fresh = predict_frame(model, df[df["split"] == split], cfg2, cached=feature_caches(model, cfg2))
        np.testing.assert_allclose(fresh[probs].to_numpy(), refit.read_predictions(split)[probs].to_numpy(), atol=1e-6)


def test_resume_is_exact_with_speed_perturbation_and_refit(corpus, ssl_models, tmp_path) -> None:
    from fusion_ser.training.job import train_run

    cfg = tiny_cfg(ssl_models["wavlm"], "head.dropout=0.3", "data.speed_perturb=[0.9, 1.0, 1.1]",
                   "train.refit_on_dev=true", "train.epochs=3", "data.max_train_seconds=0.6", "optim.ema_decay=0.9",
                   "train.selection_metric=loss")  # dev loss falls every epoch here: the refit runs 3 epochs
    full = train_run(cfg, corpus, tmp_path / "full")
    fits: list = []
    with pytest.raises(KeyboardInterrupt):  # during the dev-selected phase
        train_run(cfg, corpus, tmp_path / "r", trainer_cls=FitSpy.make(fits, ("main", 2)))
    with pytest.raises(KeyboardInterrupt):  # during the refit phase
        train_run(cfg, corpus, tmp_path / "r", trainer_cls=FitSpy.make(fits, ("refit", 1)))
    resumed = train_run(cfg, corpus, tmp_path / "r")
    assert fits[-1][:2] == (60, False)  # the second attempt did reach the refit
    a, b = full.read_metrics(), resumed.read_metrics()
    assert a["refit_epochs"] == 3  # so the refit was interrupted mid-way and resumed
    assert a == b
    pd.testing.assert_frame_equal(full.read_predictions("test"), resumed.read_predictions("test"))
    pd.testing.assert_frame_equal(full.read_predictions("dev"), resumed.read_predictions("dev"))
    log_full, log_resumed = (pd.read_csv(r.path / "refit_train_log.csv") for r in (full, resumed))
    timing = [c for c in log_full.columns if c.endswith(("seconds", "utt_per_s"))]
    pd.testing.assert_frame_equal(log_full.drop(columns=timing), log_resumed.drop(columns=timing))


def test_fusion_model_trains_with_rows_without_text(corpus, tiny_bert, tmp_path, caplog) -> None:
    import logging

    from fusion_ser.training.job import train_run

    df = pd.read_csv(corpus)
    df["path"] = [str(corpus.parent / p) for p in df["path"]]
    df["text"] = np.where(df.index % 5 == 0, "", df["text"])
    manifest = tmp_path / "partly_transcribed.csv"
    df.to_csv(manifest, index=False)
    cfg = load_config(None, ["modality=both", f"text_encoder.name_or_path={tiny_bert}", "text_encoder.finetune=frozen",
                             "text_encoder.max_length=16", "audio_encoder.type=fbank", "audio_encoder.finetune=full",
                             "audio_encoder.n_mels=40", "audio_encoder.hidden_dim=32", "pooling.type=mean",
                             "head.hidden_dim=32", "fusion.dim=32", "fusion.heads=2", "train.epochs=1",
                             "train.batch_size=8", "train.report=false", f"train.cache_dir={tmp_path / 'cache'}"])
    with caplog.at_level(logging.WARNING):
        run = train_run(cfg, manifest, tmp_path / "both")
    assert "have no text" in caplog.text and "audio alone" in caplog.text
    extra = run.read_info().extra
    assert (extra["n_train"], extra["n_dev"], extra["n_test"], extra["skipped_clips"]) == (48, 12, 12, 0)
    no_text = set(df.loc[df["text"] == "", "utt_id"])
    predicted = set(run.read_predictions("test")["utt_id"]) | set(run.read_predictions("dev")["utt_id"])
    assert no_text & set(df.loc[df["split"] != "train", "utt_id"]) <= predicted
    with pytest.raises(Exception, match="have no text"):  # a text-only model still refuses them
        train_run(dataclasses.replace(cfg, modality="text"), manifest, tmp_path / "text")


def test_cli_says_when_test_comes_from_the_refit_model(corpus, ssl_models, tmp_path) -> None:
    from fusion_ser.cli.main import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("seed: 0\naudio_encoder: {type: hf, finetune: frozen, name_or_path: %s}\n"
                   "head: {hidden_dim: 16}\ntrain: {epochs: 2, batch_size: 8, report: false, refit_on_dev: true, "
                   "cache_dir: %s}\n" % (ssl_models["wavlm"], tmp_path / "cache"))
    result = CliRunner().invoke(main, ["train", "-c", str(cfg), "--manifest", str(corpus), "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    best = RunDir(tmp_path / "r").read_metrics()["best_epoch"]
    assert result.output.count("refit epoch") == best
    assert f"test predictions come from a model refit on train+dev for {best} epochs" in result.output


def test_weight_ema_matches_numpy_and_restores_raw_weights() -> None:
    from fusion_ser.training.averaging import WeightEMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    model[1].weight.requires_grad_(False)
    ema = WeightEMA(model, 0.8)
    history = []
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        history.append({n: p.detach().numpy().copy() for n, p in model.named_parameters()})
    expected = dict(history[0])
    for step in history[1:]:
        expected = {n: 0.8 * expected[n] + 0.2 * step[n] for n in expected}
    assert sorted(ema.shadow) == ["0.bias", "0.weight", "1.bias"]  # frozen weights are not averaged
    for n, value in ema.shadow.items():
        np.testing.assert_allclose(value.numpy(), expected[n], rtol=1e-5, atol=1e-6)
    raw = {n: p.detach().clone() for n, p in model.named_parameters()}
    with ema.applied(model):
        np.testing.assert_allclose(model[0].weight.detach().numpy(), expected["0.weight"], rtol=1e-5, atol=1e-6)
        assert torch.equal(model[1].weight, raw["1.weight"])
    assert all(torch.equal(p, raw[n]) for n, p in model.named_parameters())


def test_optimizer_is_fused_adamw_matching_numpy() -> None:
    """build_optimizer: AdamW with torch's fused kernel on CPU parameters; its steps are AdamW's (numpy)."""
    from fusion_ser.training.optim import build_optimizer

    torch.manual_seed(0)
    cfg = load_config(None, ["optim.lr_head=0.01", "optim.weight_decay=0.1"])
    model = torch.nn.Linear(4, 3)
    opt = build_optimizer(model, cfg)
    assert opt.defaults["fused"] is True and opt.param_groups[0]["lr"] == 0.01
    w, m, v = model.weight.detach().double().numpy().copy(), 0.0, 0.0
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, 6):
        x = torch.randn(5, 4)
        model(x).pow(2).sum().backward()
        g = model.weight.grad.double().numpy()
        opt.step()
        opt.zero_grad()
        w = w * (1 - 0.01 * 0.1)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w = w - 0.01 * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    np.testing.assert_allclose(model.weight.detach().numpy(), w, rtol=1e-5, atol=1e-6)


def test_ema_weights_are_the_ones_selected_and_saved(corpus, ssl_models, tmp_path) -> None:
    """model/ holds the EMA (computed here in numpy from the raw weights after every step) at the best epoch."""
    from fusion_ser.models.io import load_model
    from fusion_ser.training.job import train_run
    from fusion_ser.training.trainer import Trainer

    steps: list[dict[str, np.ndarray]] = []
    ends: dict[int, int] = {}

    class Recorder(Trainer):
        def _step(self):
            super()._step()
            steps.append({n: p.detach().cpu().numpy().copy() for n, p in self.module.named_parameters()
                          if p.requires_grad})

        def on_epoch_end(self, epoch, row):
            ends[epoch] = len(steps)

    cfg = tiny_cfg(ssl_models["wavlm"], "audio_encoder.finetune=frozen", "train.cache_features=true",
                   "optim.lr_head=0.01", "train.epochs=4", "optim.ema_decay=0.7", cache_dir=tmp_path / "cache")
    run = train_run(cfg, corpus, tmp_path / "run", trainer_cls=Recorder)
    best = run.read_metrics()["best_epoch"]
    ema = dict(steps[0])
    for step in steps[1:ends[best]]:
        ema = {n: 0.7 * ema[n] + 0.3 * step[n] for n in ema}
    saved = dict(load_model(run.model_dir)[0].named_parameters())
    assert ema, "the head has trainable weights"
    for n, value in ema.items():
        np.testing.assert_allclose(saved[n].detach().numpy(), value, rtol=1e-4, atol=1e-6)
    raw = steps[ends[best] - 1]
    assert any(not np.allclose(raw[n], ema[n]) for n in ema)  # the raw weights were not what got saved


def test_ema_decay_out_of_range_is_a_config_error() -> None:
    from fusion_ser.config import ConfigError

    with pytest.raises(ConfigError, match="optim.ema_decay"):
        load_config(None, ["optim.ema_decay=1.0"])


@pytest.mark.parametrize("combine", ["weighted", "concat"])
def test_whisper_all_layers_trains_from_cache_and_predicts_on_raw_audio(corpus, tmp_path, combine) -> None:
    """The offline encoder on every layer: trained on cached (L+1, T, D) stacks, reloaded, and run on the wav files
    without the cache gives the written test predictions (float16 cache vs float32 frames: close, same labels)."""
    import fusion_ser
    from fusion_ser.training.job import train_run

    cfg = load_config(None, ["audio_encoder.type=ct2_whisper",
                             f"audio_encoder.layers={combine}", "pooling.type=mean_std",
                             "head.standardize_pooled=true", "head.hidden_dim=32", "train.epochs=6",
                             "train.batch_size=8", "optim.lr_head=0.003", "optim.warmup_ratio=0.0",
                             "optim.ema_decay=0.9", "train.report=false", f"train.cache_dir={tmp_path / 'cache'}"])
    run = train_run(cfg, corpus, tmp_path / "run")
    metrics = run.read_metrics()
    assert metrics["dev"]["macro_f1"] >= 0.8  # pitch classes: far above chance (1/3)
    written = run.read_predictions("test")
    paths = [str(corpus.parent / p) for p in pd.read_csv(corpus).set_index("utt_id").loc[written["utt_id"], "path"]]
    results = fusion_ser.load(run.path).predict(paths)
    probs = [c for c in written.columns if c.startswith("prob_")]
    fresh = np.array([[r["probs"][c.removeprefix("prob_")] for c in probs] for r in results])
    np.testing.assert_allclose(fresh, written[probs].to_numpy(), atol=2e-2)
    assert [r["label"] for r in results] == list(written["pred"])
