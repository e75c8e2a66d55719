"""Attention fusion (`train --modality both`): learns a label that needs audio and text together; masks padding and
missing text; saves and reloads through models.save_model / load_model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from fusion_ser.config import load_config
from fusion_ser.models.attention import AttentionFusionModel
from fusion_ser.models.factory import build_model
from fusion_ser.models.io import load_model, save_model

SR = 16000
POSITIVE = ["great", "lovely", "wonderful", "happy"]
NEGATIVE = ["awful", "terrible", "sad", "horrible"]
FILLER = ["the", "day", "was", "really", "quite", "so"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A random BERT (hidden 32, 2 layers) with a word-level tokenizer over the corpus words, saved to a tmp dir."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = POSITIVE + NEGATIVE + FILLER
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3} | {w: i + 4 for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64))
    d = tmp_path_factory.mktemp("tiny_bert")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def xor_corpus(tmp_path_factory) -> str:
    """label = XOR(pitch high, word positive): each modality alone is independent of the label."""
    root = tmp_path_factory.mktemp("xor")
    rng = np.random.default_rng(0)
    rows = []
    for split, n in [("train", 192), ("dev", 48), ("test", 64)]:
        for i in range(n):
            high, positive = (i // 2) % 2, i % 2  # balanced over the four (pitch, word) cells
            f0 = (700.0 if high else 200.0) * rng.uniform(0.97, 1.03)
            t = np.arange(int(0.3 * SR)) / SR
            wav = 0.3 * np.sin(2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi)) * (t < 0.15)  # a burst, then silence
            path = root / f"{split}_{i:03d}.wav"
            sf.write(path, wav.astype(np.float32), SR)
            word = rng.choice(POSITIVE if positive else NEGATIVE)
            text = f"{rng.choice(FILLER)} {word}"
            rows.append({"utt_id": f"{split}_{i:03d}", "path": path.name, "split": split, "speaker": f"s{i % 4}",
                         "gender": "", "label": "happiness" if high ^ positive else "sadness",
                         "arousal": "", "valence": "", "dominance": "", "text": text})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return str(manifest)


def _cfg(modality: str, tiny_bert: str, cache_dir: str, epochs: int = 6):
    return load_config(None, [
        f"modality={modality}", "seed=0", "loss.type=ce",
        "audio_encoder.type=fbank", "audio_encoder.finetune=full", "audio_encoder.n_mels=40", "audio_encoder.hidden_dim=32",
        f"text_encoder.name_or_path={tiny_bert}", "text_encoder.finetune=frozen", "text_encoder.max_length=16",
        "pooling.type=mean", "head.hidden_dim=32", "head.dropout=0.0",
        "fusion.dim=32", "fusion.heads=2", "fusion.layers=1", "fusion.dropout=0.0",
        "optim.lr_head=0.003", "optim.lr_encoder=0.003", "optim.warmup_ratio=0.0", "optim.schedule=constant",
        f"train.epochs={epochs}", "train.batch_size=16", "train.device=cpu", f"train.cache_dir={cache_dir}",
    ])


@pytest.fixture(scope="module")
def trained(xor_corpus, tiny_bert, tmp_path_factory):
    from fusion_ser.training.job import train_run

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("xor_runs")
    cache = str(root / "cache")
    both = train_run(_cfg("both", tiny_bert, cache), xor_corpus, root / "both")
    audio = train_run(_cfg("audio", tiny_bert, cache), xor_corpus, root / "audio")
    return both, audio


def test_fusion_learns_what_neither_modality_can(trained):
    both, audio = trained
    fused_f1 = both.read_metrics()["test"]["macro_f1"]
    audio_f1 = audio.read_metrics()["test"]["macro_f1"]
    assert fused_f1 >= 0.85, fused_f1
    assert audio_f1 <= 0.7, audio_f1  # chance is 0.5: pitch alone says nothing about XOR(pitch, word)
    info = both.read_info()
    assert info.modality == "both" and info.complete
    assert not (both.path / "predictions" / "test.csv").read_text().count("nan")


def test_fused_run_reloads_and_reproduces_its_predictions(trained, xor_corpus):
    from fusion_ser.data.manifest import read_manifest
    from fusion_ser.training.inference import predict_frame

    both, _ = trained
    model, cfg, labels = load_model(both.model_dir)
    assert isinstance(model, AttentionFusionModel) and labels == ["happiness", "sadness"]
    df = read_manifest(xor_corpus)
    test = df[df["split"] == "test"].reset_index(drop=True)
    pred = predict_frame(model, test, cfg, torch.device("cpu"))
    saved = both.read_predictions("test").set_index("utt_id").loc[pred["utt_id"]]
    # training read text features from the feature cache; here the text encoder runs live (same numbers to ~1e-4)
    np.testing.assert_allclose(pred[["prob_happiness", "prob_sadness"]].to_numpy(),
                               saved[["prob_happiness", "prob_sadness"]].to_numpy(), atol=2e-3)
    assert pred["pred"].tolist() == saved["pred"].tolist()
    # a row without text still gets a prediction from the audio path
    no_text = test.head(6).assign(text="")
    out = predict_frame(model, no_text, cfg, torch.device("cpu"))
    assert len(out) == 6 and np.isfinite(out[["prob_happiness", "prob_sadness"]].to_numpy()).all()


@pytest.fixture()
def small_model(tiny_bert, tmp_path):
    torch.manual_seed(0)
    model = build_model(_cfg("both", tiny_bert, str(tmp_path / "c")), ["happiness", "sadness"])
    return model.eval()


def _batch(texts: list[str], seconds: list[float]) -> dict:
    rng = np.random.default_rng(1)
    n = int(max(seconds) * SR)
    wav = torch.zeros(len(texts), n)
    for i, s in enumerate(seconds):
        wav[i, : int(s * SR)] = torch.from_numpy(rng.standard_normal(int(s * SR)).astype(np.float32) * 0.1)
    return {"wav": wav, "wav_lengths": torch.tensor([int(s * SR) for s in seconds]), "text": texts,
            "utt_id": [str(i) for i in range(len(texts))]}


@torch.no_grad()
def test_a_row_without_text_ignores_whatever_text_features_it_has(small_model):
    """With cached text features, a row whose text is empty must not depend on those features (masked out)."""
    batch = _batch(["the day was great", ""], [0.3, 0.3])
    feats = torch.randn(2, 5, 32)
    mask = torch.ones(2, 5, dtype=torch.bool)
    a = small_model({**batch, "cached_text": feats, "cached_text_mask": mask}).logits
    feats2 = feats.clone()
    feats2[1] = torch.randn(5, 32) * 10
    b = small_model({**batch, "cached_text": feats2, "cached_text_mask": mask}).logits
    torch.testing.assert_close(a[1], b[1])
    assert not torch.allclose(a[0], small_model({**batch, "cached_text": feats2 * 0 + 1, "cached_text_mask": mask}).logits[0])
    # and the row with text does depend on its text
    c = small_model(_batch(["the day was awful", ""], [0.3, 0.3])).logits
    d = small_model(_batch(["the day was great", ""], [0.3, 0.3])).logits
    assert not torch.allclose(c[0], d[0])


@torch.no_grad()
def test_padding_of_either_modality_does_not_change_a_row(small_model):
    """A short clip and a short text give the same output alone as in a batch padded by longer neighbours."""
    alone = small_model(_batch(["sad"], [0.2])).logits
    padded = small_model(_batch(["sad", "the day was really quite so horrible"], [0.2, 0.6])).logits
    torch.testing.assert_close(alone[0], padded[0], atol=1e-5, rtol=1e-4)


def test_save_and_load_round_trip_without_training(small_model, tiny_bert, tmp_path):
    cfg = _cfg("both", tiny_bert, str(tmp_path / "c"))
    save_model(small_model, cfg, ["happiness", "sadness"], tmp_path / "model")
    model, cfg2, labels = load_model(tmp_path / "model")
    batch = _batch(["so happy", ""], [0.3, 0.25])
    with torch.no_grad():
        torch.testing.assert_close(model(batch).logits, small_model(batch).logits)
    assert cfg2.modality == "both" and isinstance(model, AttentionFusionModel)


def test_attribute_task_returns_values_on_the_manifest_scale(tiny_bert, tmp_path):
    cfg = _cfg("both", tiny_bert, str(tmp_path / "c"))
    cfg.task = "attributes"
    model = build_model(cfg, [])
    batch = _batch(["so happy", "sad"], [0.3, 0.2])
    batch["attributes"] = torch.tensor([[4.0, 5.0, 3.0], [float("nan"), 2.0, 1.0]])
    out = model(batch)
    assert out.attributes.shape == (2, 3) and out.logits is None
    assert out.loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.blocks[0].audio_to_text.in_proj_weight.grad is not None
