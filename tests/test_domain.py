"""head.standardize: speaker standardisation of frozen frames equals a numpy computation; a lone file falls back to
the training statistics; the option is refused where it cannot apply."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion_ser.config import ConfigError, load_config
from fusion_ser.data.dataset import EmotionDataset, collate
from fusion_ser.data.manifest import read_manifest
from fusion_ser.models.factory import build_model
from fusion_ser.training.domain import fit_domains
from fusion_ser.training.inference import predict_frame
from tests.test_trainer import make_corpus, save_tiny_ssl


def _cfg(tmp_path, mode: str):
    ssl = save_tiny_ssl("wav2vec2", tmp_path / "ssl")
    return load_config(None, ["audio_encoder.type=hf", f"audio_encoder.name_or_path={ssl}", "audio_encoder.finetune=frozen",
                              "audio_encoder.layers=last", "pooling.type=mean", "head.hidden_dim=8",
                              f"head.standardize={mode}", "train.batch_size=1", "train.cache_features=false"])


def test_speaker_statistics_and_pooled_vectors_match_numpy(tmp_path):
    torch.manual_seed(0)
    cfg = _cfg(tmp_path, "speaker")
    df = read_manifest(make_corpus(tmp_path / "c", n_speakers=3, per_class=2))
    labels = sorted(set(df["label"]))
    model = build_model(cfg, labels).eval()
    model.frame_norm.set_statistics(torch.full((32,), 0.5), torch.full((32,), 2.0))
    data = EmotionDataset(df, cfg, labels, training=False)
    used = fit_domains(model, data, cfg, torch.device("cpu"))
    assert used == {f"spk{i}": 6 for i in range(3)}
    frames = {}
    with torch.no_grad():
        for i in range(len(data)):
            item = data[i]
            batch = {"wav": torch.as_tensor(item["wav"])[None], "wav_lengths": torch.tensor([len(item["wav"])])}
            frames[item["utt_id"]] = model.encoder(batch).features[0].double().numpy()
    pooled = {}
    for spk, rows in df.groupby("speaker"):
        stacked = np.concatenate([frames[u] for u in rows["utt_id"]])
        mean, std = stacked.mean(axis=0), stacked.std(axis=0)
        for u in rows["utt_id"]:
            pooled[u] = ((frames[u] - mean) / std).mean(axis=0)
    with torch.no_grad():
        for i in range(len(data)):  # one clip per batch: the tiny SSL model's frames do not depend on padding
            batch = collate([data[i]])
            got = model(batch).records["embedding"].double().numpy()
            want = np.stack([pooled[u] for u in batch["utt_id"]])
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_lone_clip_uses_the_training_statistics(tmp_path):
    torch.manual_seed(0)
    cfg = _cfg(tmp_path, "speaker")
    df = read_manifest(make_corpus(tmp_path / "c", n_speakers=3, per_class=1))
    labels = sorted(set(df["label"]))
    model = build_model(cfg, labels).eval()
    lone = df.iloc[[0]].assign(speaker="alone")
    predict_frame(model, lone, cfg, torch.device("cpu"), stage="test")
    assert model.frame_norm.domain_of(lone["utt_id"].iloc[0]) is None  # one clip: training statistics


def test_standardize_is_refused_for_text_models_and_trained_encoders(tmp_path):
    cfg = load_config(None, ["modality=text", "head.standardize=corpus"])
    with pytest.raises(ConfigError, match="head.standardize"):
        build_model(cfg, ["a", "b"])
    cfg = load_config(None, ["audio_encoder.type=fbank", "head.standardize=speaker"])
    with pytest.raises(ConfigError, match="frozen encoder"):
        build_model(cfg, ["a", "b"])
