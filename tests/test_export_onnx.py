"""ONNX export: one graph per trained run whose onnxruntime outputs equal the PyTorch model's on clips of different
lengths padded into one batch (fbank, a tiny HF SSL model, Whisper through its PyTorch copy, a tiny text model),
and clear errors for what has no single graph (fused runs, CTranslate2-only quantised Whisper)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from click.testing import CliRunner

from fusion_ser.cli.main import main
from fusion_ser.config import load_config
from fusion_ser.export import ExportError, export_onnx, output_paths, pad_waveforms
from fusion_ser.models.io import load_model
from fusion_ser.rundir import RunDir
from tests.tiny_models import save_tiny_bert

SR = 16000
TOL = 1e-4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """24 hibari clips, 3 speakers (train / dev / test), the script as text."""
    from fusion_ser.demo.corpus import generate_corpus

    torch.set_num_threads(2)
    return generate_corpus(tmp_path_factory.mktemp("onnx_corpus"), n_speakers=3, per_emotion=2, seed=0)


@pytest.fixture(scope="module")
def tiny_wavlm(tmp_path_factory) -> str:
    """A random WavLM (layer-norm feature encoder, attention mask) saved with save_pretrained."""
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_wavlm")
    WavLMModel(WavLMConfig(feat_extract_norm="layer", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, conv_dim=(16, 16), conv_stride=(20, 16), conv_kernel=(20, 16),
                           num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)).save_pretrained(d)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


def train(corpus: Path, out: Path, overrides: list[str]) -> Path:
    from fusion_ser.training.job import train_run

    cfg = load_config(None, ["train.epochs=1", "train.batch_size=8", "train.cache_features=false", "head.hidden_dim=32",
                             "pooling.type=attentive_stats", *overrides])
    return train_run(cfg, corpus, out).path


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx_runs")
    fbank = ["modality=audio", "audio_encoder.type=fbank", "audio_encoder.finetune=full", "audio_encoder.hidden_dim=32",
             "audio_encoder.n_mels=40"]
    return {"fbank": train(corpus, root / "fbank", fbank),
            "fbank2": train(corpus, root / "fbank2", fbank + ["seed=1"])}


def clips(corpus: Path, extra_seconds: tuple[float, ...] = ()) -> list[np.ndarray]:
    """Test clips of the corpus (different lengths) plus synthetic ones of the given durations."""
    from fusion_ser.data.audio import load_audio
    from fusion_ser.data.manifest import read_manifest

    df = read_manifest(corpus)
    out = [load_audio(p) for p in df[df["split"] == "test"]["path"].tolist()[:4]]
    rng = np.random.default_rng(3)
    for s in extra_seconds:
        t = np.arange(int(s * SR)) / SR
        out.append((0.2 * np.sin(2 * np.pi * 170 * t) + 0.05 * rng.normal(size=t.size)).astype(np.float32))
    return out


def model_outputs(run: Path, inputs: list) -> np.ndarray:
    """The run's PyTorch model on each input alone (no padding): probabilities or attribute values."""
    model, cfg, _ = load_model(RunDir(run).model_dir)
    rows = []
    with torch.no_grad():
        for x in inputs:
            batch = ({"text": [x]} if cfg.modality == "text"
                     else {"wav": torch.from_numpy(x)[None], "wav_lengths": torch.tensor([len(x)])})
            out = model(batch)
            rows.append((out.attributes if cfg.task == "attributes" else torch.softmax(out.logits, -1))[0].numpy())
    return np.stack(rows)


def run_audio_graph(path: Path, waves: list[np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wav, lengths = pad_waveforms(waves)
    return session.run(None, {"wav": wav, "wav_lengths": lengths})


def check_audio_export(run: Path, out: Path, waves: list[np.ndarray]) -> dict:
    result = export_onnx(run, out)
    assert result.onnx_path.is_file() and result.meta_path == result.onnx_path.with_name(result.onnx_path.name + ".json")
    meta = json.loads(result.meta_path.read_text())
    assert meta["sample_rate"] == SR and [i["name"] for i in meta["inputs"]] == ["wav", "wav_lengths"]
    assert result.max_abs_diff is not None and result.max_abs_diff < TOL
    assert len({len(w) for w in waves}) == len(waves)  # every clip a different length: padding in play
    reference = model_outputs(run, waves)
    values, embedding = run_audio_graph(result.onnx_path, waves)
    assert values.shape == reference.shape and embedding.shape[0] == len(waves)
    np.testing.assert_allclose(values, reference, atol=TOL, rtol=0)
    one, _ = run_audio_graph(result.onnx_path, waves[-1:])  # another batch size, no padding
    np.testing.assert_allclose(one[0], reference[-1], atol=TOL, rtol=0)
    return meta


def test_fbank_run_exports_one_graph_that_matches_the_model(runs, corpus, tmp_path):
    meta = check_audio_export(runs["fbank"], tmp_path / "fbank.onnx", clips(corpus, (3.3,)))
    info = RunDir(runs["fbank"]).read_info()
    assert meta["labels"] == info.labels and meta["task"] == "categorical" and meta["encoder"]["type"] == "fbank"
    assert meta["outputs"][0]["name"] == "probabilities" and meta["outputs"][0]["columns"] == info.labels
    assert meta["manifest_sha256"] == RunDir(runs["fbank"]).provenance()["manifest_sha256"]
    values, _ = run_audio_graph(tmp_path / "fbank.onnx", clips(corpus))
    np.testing.assert_allclose(values.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ExportError, match="exists") as e:
        export_onnx(runs["fbank"], tmp_path / "fbank.onnx")
    assert e.value.options == ("force",)


def test_hf_attribute_run_exports_with_weighted_layers(corpus, tiny_wavlm, tmp_path):
    run = train(corpus, tmp_path / "hf", ["modality=audio", "task=attributes", "audio_encoder.type=hf",
                                          f"audio_encoder.name_or_path={tiny_wavlm}", "audio_encoder.layers=weighted"])
    meta = check_audio_export(run, tmp_path / "out", clips(corpus, (2.9,)))
    assert output_paths(tmp_path / "out") == (tmp_path / "out" / "model.onnx", tmp_path / "out" / "model.onnx.json")
    assert meta["attributes"] == ["arousal", "valence", "dominance"] and meta["outputs"][0]["name"] == "attributes"
    assert meta["encoder"] == {"type": "hf", "name_or_path": tiny_wavlm, "layers": "weighted"}


@pytest.mark.slow
def test_whisper_run_exports_through_its_pytorch_copy_even_past_30_seconds(corpus, tmp_path):
    run = train(corpus, tmp_path / "whisper", ["modality=audio", "audio_encoder.type=ct2_whisper",
                                               "audio_encoder.layers=weighted", "pooling.type=mean"])
    check_audio_export(run, tmp_path / "whisper.onnx", clips(corpus, (31.5,)))  # one clip in two 30 s chunks


@pytest.mark.slow
def test_whisper_last_layer_run_exports_when_the_copy_reproduces_ctranslate2(corpus, tmp_path):
    common = ["modality=audio", "audio_encoder.type=ct2_whisper", "audio_encoder.layers=last", "pooling.type=mean"]
    run = train(corpus, tmp_path / "last", common)
    result = export_onnx(run, tmp_path / "last.onnx")
    assert result.max_abs_diff < 1e-3  # the run's own model runs CTranslate2; the graph its PyTorch copy
    quantised = train(corpus, tmp_path / "int8", common + ["audio_encoder.compute_type=int8"])
    with pytest.raises(ExportError, match="CTranslate2 only.*compute_type int8.*does not reproduce"):
        export_onnx(quantised, tmp_path / "int8.onnx")
    assert not (tmp_path / "int8.onnx").exists()
    windowed = train(corpus, tmp_path / "window", common + ["audio_encoder.window_seconds=10"])
    with pytest.raises(ExportError, match=r"10 s window \(audio_encoder\.window_seconds\).*window_seconds=0"):
        export_onnx(windowed, tmp_path / "window.onnx")
    assert not (tmp_path / "window.onnx").exists()


def test_text_run_exports_with_the_tokenizer_outside_the_graph(corpus, tiny_bert, tmp_path):
    from transformers import AutoTokenizer

    run = train(corpus, tmp_path / "text", ["modality=text", f"text_encoder.name_or_path={tiny_bert}",
                                            "text_encoder.lora.r=4", "text_encoder.max_length=32",
                                            "text_encoder.context_turns=2"])  # no conversations here: recorded as 0
    result = export_onnx(run, tmp_path / "text.onnx")
    meta = result.meta
    assert [i["name"] for i in meta["inputs"]] == ["input_ids", "attention_mask"]
    texts = ["i cannot believe you did that to me again", "fine", "what a lovely surprise this is", ""]
    model, _, _ = load_model(RunDir(run).model_dir)
    enc = model.encoder.tokenize(texts)
    tok = AutoTokenizer.from_pretrained(str(tmp_path / meta["tokenizer"]["path"]))
    assert tok(texts[:3], padding=True, return_tensors="pt")["input_ids"].tolist() == enc["input_ids"][:3].tolist()
    session = ort.InferenceSession(str(result.onnx_path), providers=["CPUExecutionProvider"])
    values, _ = session.run(None, {"input_ids": enc["input_ids"].numpy(), "attention_mask": enc["attention_mask"].numpy()})
    np.testing.assert_allclose(values, model_outputs(run, texts), atol=TOL, rtol=0)

    saved = yaml.safe_load(RunDir(run).config_path.read_text())
    assert saved["text_encoder"]["context_turns"] == 0


def test_context_run_exports_pairs_with_segment_ids(corpus, tiny_bert, tmp_path):
    """A model that reads conversation context: the graph takes (context, text) pairs built as the JSON says."""
    import shutil

    from transformers import AutoTokenizer

    run = train(corpus, tmp_path / "text", ["modality=text", f"text_encoder.name_or_path={tiny_bert}",
                                            "text_encoder.lora.r=4", "text_encoder.max_length=24"])
    ctx = tmp_path / "text_context"  # the same weights, read as a model with two turns of context
    shutil.copytree(run, ctx)
    cfg_path = ctx / "model" / "config.yaml"
    values = yaml.safe_load(cfg_path.read_text())
    values["text_encoder"]["context_turns"] = 2
    cfg_path.write_text(yaml.safe_dump(values))
    meta = export_onnx(ctx, tmp_path / "ctx.onnx").meta
    assert [i["name"] for i in meta["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    spec = meta["tokenizer"]["context"]
    assert spec["turns"] == 2 and spec["separator"] == " | "
    texts = ["what a lovely surprise this is", "fine", "no"]
    contexts = ["Ann: you are late | Bob: the train " + "was very very late again " * 4, "Ann: hello", ""]
    tok = AutoTokenizer.from_pretrained(str(tmp_path / meta["tokenizer"]["path"]))
    tok.truncation_side = "left"
    rows = [dict(tok(c, t, truncation="only_first", max_length=meta["tokenizer"]["max_length"])) if c
            else dict(tok(t, truncation=True, max_length=meta["tokenizer"]["max_length"])) for t, c in zip(texts, contexts)]
    assert len(rows[0]["input_ids"]) == 24 and tok.decode(rows[0]["input_ids"]).endswith("what a lovely surprise this is [SEP]")
    enc = tok.pad(rows, padding=True, return_tensors="np")
    session = ort.InferenceSession(str(tmp_path / "ctx.onnx"), providers=["CPUExecutionProvider"])
    values, _ = session.run(None, {i["name"]: enc[i["name"]].astype(np.int64) for i in meta["inputs"]})
    model, _, _ = load_model(RunDir(ctx).model_dir)
    with torch.no_grad():
        expected = np.stack([torch.softmax(model({"text": [t], "context": [c]}).logits, -1)[0].numpy()
                             for t, c in zip(texts, contexts)])
        plain = np.stack([torch.softmax(model({"text": [t]}).logits, -1)[0].numpy() for t in texts])
    np.testing.assert_allclose(values, expected, atol=TOL, rtol=0)
    assert np.abs(expected[:2] - plain[:2]).max() > 1e-4  # the context reaches the model


def test_fused_runs_are_refused_with_what_to_do(runs, tmp_path):
    from fusion_ser.fusion.late import late_fuse

    fused = late_fuse([runs["fbank"], runs["fbank2"]], tmp_path / "late", method="mean").path
    with pytest.raises(ExportError, match="fusion run.*members: fbank, fbank2.*export each member model run"):
        export_onnx(fused, tmp_path / "late.onnx")
    assert not (tmp_path / "late.onnx").exists()
    res = CliRunner().invoke(main, ["export-onnx", str(fused), "-o", str(tmp_path / "x.onnx")])
    assert res.exit_code == 1 and "Error: run" in res.output and "Traceback" not in res.output


def test_cli_exports_into_a_folder_and_names_the_force_flag(runs, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["export-onnx", str(runs["fbank"]), "-o", str(tmp_path / "exported")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "exported" / "model.onnx").is_file() and (tmp_path / "exported" / "model.onnx.json").is_file()
    assert "inputs:  wav float32 (batch, samples), wav_lengths int64 (batch)" in res.output
    assert "checked with onnxruntime" in res.output
    res = runner.invoke(main, ["export-onnx", str(runs["fbank"]), "-o", str(tmp_path / "exported")])
    assert res.exit_code == 1 and "(option --force)" in res.output
