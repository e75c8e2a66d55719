"""Audio encoders: tiny random HF SSL models loaded by path, the CTranslate2 Whisper encoder, and log-mel + TDNN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fusion_ser.config import AudioEncoderConfig, ConfigError
from fusion_ser.encoders.audio import build_audio_encoder, load_encoder
from fusion_ser.encoders.base import AudioEncoderError
from fusion_ser.encoders.fbank import HOP_LENGTH, WIN_LENGTH, mel_filters, mel_to_hz, hz_to_mel

SR = 16000
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16),
            conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Tiny random WavLM / wav2vec2 (group norm) / HuBERT / w2v-BERT saved with save_pretrained."""
    from transformers import (HubertConfig, HubertModel, SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig,
                              Wav2Vec2BertModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model,
                              WavLMConfig, WavLMModel)

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny_ssl")
    out = {}
    specs = {
        "wavlm": (WavLMModel(WavLMConfig(feat_extract_norm="layer", **TINY)), True),
        "wav2vec2": (Wav2Vec2Model(Wav2Vec2Config(feat_extract_norm="group", **TINY)), False),
        "hubert": (HubertModel(HubertConfig(feat_extract_norm="layer", **TINY)), None),
    }
    for name, (model, fe_mask) in specs.items():
        model.save_pretrained(root / name)
        if fe_mask is not None:
            Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=fe_mask).save_pretrained(root / name)
        out[name] = str(root / name)
    bert = Wav2Vec2BertModel(Wav2Vec2BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                intermediate_size=64, output_hidden_size=32))
    bert.save_pretrained(root / "w2vbert")
    SeamlessM4TFeatureExtractor().save_pretrained(root / "w2vbert")
    out["w2vbert"] = str(root / "w2vbert")
    return out


def tone_batch(lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    wav = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        t = np.arange(n) / SR
        x = 0.4 * np.sin(2 * np.pi * (180 + 70 * i) * t) + 0.05 * rng.normal(size=n)
        wav[i, :n] = torch.from_numpy(x.astype(np.float32))
    return {"wav": wav, "wav_lengths": torch.tensor(lengths)}


def conv_frames(n: int) -> int:
    """Output length of the tiny CNN front end, from its kernels and strides (independent of HF's helper)."""
    for k, s in zip(TINY["conv_kernel"], TINY["conv_stride"]):
        n = (n - k) // s + 1
    return n


def hf(path: str, **kw) -> torch.nn.Module:
    return build_audio_encoder(AudioEncoderConfig(type="hf", name_or_path=path, **kw))


@pytest.mark.parametrize("name", ["wavlm", "hubert", "wav2vec2"])
def test_hf_shapes_and_masks_match_lengths(tiny_models: dict, name: str) -> None:
    enc = hf(tiny_models[name]).eval()
    lengths = [12000, 7000, 3001]
    out = enc(tone_batch(lengths))
    assert out.features.shape == (3, conv_frames(12000), 32) and enc.output_dim == 32
    assert out.mask.sum(dim=1).tolist() == [conv_frames(n) for n in lengths]
    assert torch.isfinite(out.features).all()
    # attention_mask only for layer-norm feature encoders (HF: group-norm models take zero-padded input without one)
    assert enc.wants_attention_mask == (name != "wav2vec2")


@pytest.mark.parametrize("name", ["wavlm", "hubert", "w2vbert"])
def test_hf_padding_does_not_change_a_clip(tiny_models: dict, name: str) -> None:
    enc = hf(tiny_models[name]).eval()
    batch = tone_batch([16000, 6400])
    padded = enc(batch)
    single = enc({"wav": batch["wav"][1:2, :6400], "wav_lengths": torch.tensor([6400])})
    n = int(single.mask.sum())
    assert n == int(padded.mask[1].sum()) and single.features.shape[1] == n
    torch.testing.assert_close(padded.features[1, :n], single.features[0], atol=1e-4, rtol=1e-4)


def test_hf_normalises_the_waveform_when_the_extractor_says_so(tiny_models: dict) -> None:
    enc = hf(tiny_models["wavlm"]).eval()
    batch = tone_batch([8000])
    a = enc(batch).features
    b = enc({"wav": batch["wav"] * 7.0 + 0.1, "wav_lengths": batch["wav_lengths"]}).features
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_layer_weighting_is_softmax_weighted_sum_of_hidden_states(tiny_models: dict) -> None:
    enc = hf(tiny_models["hubert"], layers="weighted").eval()
    with torch.no_grad():
        enc.layer_weights.copy_(torch.tensor([0.3, -1.0, 2.0]))
    batch = tone_batch([9000])
    wav = batch["wav"]
    norm = (wav - wav.mean()) / torch.sqrt(wav.var(unbiased=False) + 1e-7)
    with torch.no_grad():
        hidden = enc.backbone(norm, attention_mask=torch.ones_like(wav, dtype=torch.long),
                              output_hidden_states=True).hidden_states
    w = np.exp([0.3, -1.0, 2.0]) / np.exp([0.3, -1.0, 2.0]).sum()
    expected = sum(float(wi) * h for wi, h in zip(w, hidden))
    torch.testing.assert_close(enc(batch).features, expected, atol=1e-5, rtol=1e-5)
    last = hf(tiny_models["hubert"], layers="last").eval()
    assert last.layer_weights is None
    torch.testing.assert_close(last(batch).features, hidden[-1], atol=1e-5, rtol=1e-5)
    concat = hf(tiny_models["hubert"], layers="concat").eval()
    assert concat.layer_weights is None and concat.output_dim == 3 * last.output_dim
    torch.testing.assert_close(concat(batch).features, torch.cat(hidden, dim=-1), atol=1e-5, rtol=1e-5)


def test_cached_hidden_state_stack_reproduces_the_forward(tiny_models: dict) -> None:
    enc = hf(tiny_models["wavlm"], layers="weighted")
    enc.train()  # a frozen backbone must still run without dropout
    assert enc.cache_id() is not None
    with torch.no_grad():
        enc.layer_weights.copy_(torch.tensor([1.0, 0.0, -1.0]))
    batch = tone_batch([8000, 5000])
    stacks = [enc.encode_for_cache({"wav": batch["wav"][i, :n].numpy()}) for i, n in enumerate([8000, 5000])]
    assert stacks[0].shape == (3, conv_frames(8000), 32)
    t = stacks[0].shape[1]
    cached = torch.zeros(2, 3, t, 32)
    mask = torch.zeros(2, t, dtype=torch.bool)
    for i, s in enumerate(stacks):
        cached[i, :, : s.shape[1]] = s
        mask[i, : s.shape[1]] = True
    from_cache = enc({"cached_audio": cached.half(), "cached_audio_mask": mask})
    direct = enc(batch)
    assert torch.equal(from_cache.mask, direct.mask)
    torch.testing.assert_close(from_cache.features[direct.mask], direct.features[direct.mask], atol=2e-2, rtol=2e-2)
    (from_cache.features[mask].sum()).backward()
    assert enc.layer_weights.grad is not None


def trainable(enc) -> set[str]:
    return {n for n, p in enc.named_parameters() if p.requires_grad}


def test_finetune_modes_leave_the_right_parameters_trainable(tiny_models: dict) -> None:
    frozen = hf(tiny_models["wavlm"], finetune="frozen")
    assert trainable(frozen) == {"layer_weights"} and frozen.is_frozen and frozen.cache_id() is not None

    full = hf(tiny_models["wavlm"], finetune="full", layers="last")
    names = trainable(full)
    assert not any(n.startswith("backbone.feature_extractor.") for n in names)
    assert {n for n, _ in full.named_parameters() if not n.startswith("backbone.feature_extractor.")} == names
    assert not full.is_frozen and full.cache_id() is None

    full_cnn = hf(tiny_models["wavlm"], finetune="full", freeze_feature_encoder=False, layers="last")
    assert trainable(full_cnn) == {n for n, _ in full_cnn.named_parameters()}

    top = hf(tiny_models["wavlm"], finetune="top_n", trainable_layers=1, layers="last")
    names = trainable(top)
    assert names and all(n.startswith("backbone.encoder.layers.1.") for n in names)
    assert top.cache_id() is None

    with pytest.raises(ConfigError, match="trainable_layers"):
        hf(tiny_models["wavlm"], finetune="top_n", trainable_layers=5)


def test_gradient_checkpointing_trains(tiny_models: dict) -> None:
    enc = hf(tiny_models["wavlm"], finetune="full", gradient_checkpointing=True).train()
    assert getattr(enc.backbone, "is_activation_checkpointing", None) or enc.backbone.is_gradient_checkpointing
    out = enc(tone_batch([6000, 4000]))
    out.features[out.mask].pow(2).mean().backward()
    assert enc.backbone.encoder.layers[0].attention.k_proj.weight.grad is not None


def test_save_and_load_round_trip_keeps_trained_weights(tiny_models: dict, tmp_path: Path) -> None:
    enc = hf(tiny_models["hubert"], finetune="top_n", trainable_layers=1).eval()
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    enc.save_pretrained(tmp_path / "enc")
    saved = load_file(str(tmp_path / "enc" / "audio_encoder.safetensors"))
    assert set(saved) == trainable(enc)
    back = load_encoder(tmp_path / "enc").eval()
    batch = tone_batch([7000, 5000])
    torch.testing.assert_close(back(batch).features, enc(batch).features)
    fresh = hf(tiny_models["hubert"], finetune="top_n", trainable_layers=1).eval()
    assert not torch.allclose(fresh(batch).features, enc(batch).features)


def test_load_encoder_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(AudioEncoderError, match="audio_encoder.json"):
        load_encoder(tmp_path)
    with pytest.raises(AudioEncoderError, match="name_or_path"):
        hf(str(tmp_path / "no_such_model"))
    with pytest.raises(AudioEncoderError, match="model.bin"):
        build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", name_or_path=str(tmp_path)))


@pytest.fixture(scope="session")
def whisper():
    return build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", layers="last"))


@pytest.fixture(scope="session")
def whisper_layers():
    return build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", layers="weighted"))


def test_ct2_whisper_frames_are_half_the_mel_frames(whisper) -> None:
    assert whisper.output_dim == 384 and whisper.is_frozen
    wav = tone_batch([48000])["wav"][0].numpy()
    mel = whisper.log_mel(wav)
    frames = whisper.encode_waveform(wav)
    assert mel.shape[0] == 80 and abs(mel.shape[1] - 300) <= 2
    assert frames.shape == ((mel.shape[1] + 1) // 2, 384)
    assert np.isfinite(frames).all() and frames.std() > 0
    np.testing.assert_array_equal(frames, whisper.encode_waveform(wav))


def test_ct2_whisper_chunks_clips_longer_than_30_seconds(whisper) -> None:
    rng = np.random.default_rng(1)
    wav = (0.1 * rng.normal(size=35 * SR)).astype(np.float32)
    frames = whisper.encode_waveform(wav)
    mel_frames = whisper.log_mel(wav).shape[1]
    assert frames.shape == (1500 + (mel_frames - 3000 + 1) // 2, 384)
    np.testing.assert_allclose(frames[:1500], whisper.encode_mel(whisper.log_mel(wav)[:, :3000]), atol=1e-5)


def test_ct2_whisper_batch_equals_single_clips_and_cache_id(whisper) -> None:
    batch = tone_batch([32000, 12000])
    out = whisper(batch)
    assert out.features.shape[0] == 2 and out.features.shape[2] == 384
    for i, n in enumerate([32000, 12000]):
        single = whisper.encode_for_cache({"wav": batch["wav"][i, :n]}).numpy()
        assert int(out.mask[i].sum()) == single.shape[0]
        np.testing.assert_array_equal(out.features[i, : single.shape[0]].numpy(), single)
    cid = whisper.cache_id()
    assert "default" in cid and whisper.model_path in cid
    other = build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", compute_type="int8", layers="last"))
    assert other.cache_id() != cid
    with pytest.raises(ConfigError, match="frozen or adapted with LoRA"):
        build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", finetune="full"))


def test_whisper_layers_last_hidden_state_equals_ctranslate2(whisper, whisper_layers) -> None:
    """The PyTorch copy of the encoder read from the same model.bin reproduces CTranslate2's output, and exposes
    the hidden state of every layer (tiny.en: 4 layers + the input embedding)."""
    wav = tone_batch([40000])["wav"][0].numpy() + 0.05 * np.random.default_rng(0).normal(size=40000).astype(np.float32)
    hidden = whisper_layers.hidden_states(wav)
    reference = whisper.encode_waveform(wav)
    assert hidden.shape == (5, *reference.shape) and whisper_layers.layer_weights.shape == (5,)
    np.testing.assert_allclose(hidden[-1].numpy(), reference, atol=2e-3, rtol=0)
    assert not torch.allclose(hidden[2], hidden[-1])  # the middle layers are different views
    assert whisper_layers.is_frozen and whisper_layers.cache_id() != whisper.cache_id()


def test_whisper_layers_weighting_is_softmax_sum_and_chunks_past_30_seconds(whisper_layers) -> None:
    rng = np.random.default_rng(2)
    long = (0.1 * rng.normal(size=33 * SR)).astype(np.float32)
    stack = whisper_layers.hidden_states(long)
    mel_frames = whisper_layers.log_mel(long).shape[1]
    assert stack.shape == (5, 1500 + (mel_frames - 3000 + 1) // 2, 384)
    with torch.no_grad():
        whisper_layers.layer_weights.copy_(torch.tensor([0.0, 1.0, 2.0, -1.0, 0.5]))
    batch = tone_batch([16000, 9000])
    out = whisper_layers(batch)
    w = np.exp([0.0, 1.0, 2.0, -1.0, 0.5])
    w /= w.sum()
    for i, n in enumerate([16000, 9000]):
        single = whisper_layers.hidden_states(batch["wav"][i, :n].numpy()).numpy()
        expected = np.tensordot(w, single, axes=1)
        assert int(out.mask[i].sum()) == single.shape[1]
        np.testing.assert_allclose(out.features[i, : single.shape[1]].detach().numpy(), expected, atol=1e-5)
    out.features.sum().backward()
    assert whisper_layers.layer_weights.grad is not None  # the weighting trains; Whisper does not
    whisper_layers.layer_weights.grad = None


def test_whisper_layers_concat_puts_every_layer_side_by_side(whisper_layers) -> None:
    concat = build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", layers="concat"))
    assert concat.layer_weights is None and concat.output_dim == 5 * 384 and concat.is_frozen
    assert not any(p.requires_grad for p in concat.parameters())
    assert concat.cache_id() == whisper_layers.cache_id()  # the same cached stack serves both combinations
    batch = tone_batch([16000, 9000])
    out = concat(batch)
    for i, n in enumerate([16000, 9000]):
        stack = whisper_layers.hidden_states(batch["wav"][i, :n].numpy()).numpy()  # (5, T, 384)
        expected = np.concatenate(list(stack), axis=-1)  # frame t: layer 0 dims, then layer 1 dims, ...
        np.testing.assert_allclose(out.features[i, : stack.shape[1]].numpy(), expected, atol=1e-6)
    with pytest.raises(ConfigError, match=r"audio_encoder\.layers: 'sum' is not one of"):
        from fusion_ser.config import load_config

        load_config(None, ["audio_encoder.layers=sum"])


def test_whisper_weights_reader_refuses_what_it_cannot_read(tmp_path) -> None:
    from fusion_ser.encoders.whisper_torch import WhisperEncoderTorch, WhisperWeightsError

    (tmp_path / "model.bin").write_bytes(b"\x06\x00\x00")
    with pytest.raises(WhisperWeightsError, match="truncated or not a CTranslate2 model.bin"):
        WhisperEncoderTorch.from_ct2(tmp_path)


def test_mel_filters_peak_where_the_mel_scale_says() -> None:
    filters = mel_filters(80)
    assert filters.shape == (257, 80) and filters.max() <= 1.0 + 1e-6
    centres = mel_to_hz(np.linspace(hz_to_mel(20.0), hz_to_mel(7600.0), 82))[1:-1]
    fft_freqs = np.linspace(0, SR / 2, 257)
    for m in [5, 40, 79]:
        assert abs(fft_freqs[filters[:, m].argmax()] - centres[m]) <= SR / 512


def test_fbank_log_mel_matches_numpy_and_encoder_is_padding_invariant(tmp_path: Path) -> None:
    torch.manual_seed(0)
    enc = build_audio_encoder(AudioEncoderConfig(type="fbank", hidden_dim=16, finetune="full"))
    batch = tone_batch([8000, 4000])
    feats, mask = enc.fbank(batch["wav"], batch["wav_lengths"])
    n_frames = [(n - WIN_LENGTH) // HOP_LENGTH + 1 for n in [8000, 4000]]
    assert mask.sum(dim=1).tolist() == n_frames
    x = batch["wav"][1, :4000].double().numpy()
    frames = np.stack([x[i * HOP_LENGTH: i * HOP_LENGTH + WIN_LENGTH] for i in range(n_frames[1])])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WIN_LENGTH) / WIN_LENGTH)
    power = np.abs(np.fft.rfft(frames * window, n=512)) ** 2
    logmel = np.log(power @ mel_filters(80).astype(np.float64) + 1e-6)
    logmel -= logmel.mean(axis=0)
    np.testing.assert_allclose(feats[1, : n_frames[1]].numpy(), logmel, atol=2e-3)
    out = enc(batch)
    single = enc({"wav": batch["wav"][1:2, :4000], "wav_lengths": torch.tensor([4000])})
    assert out.features.shape == (2, n_frames[0], 16)
    torch.testing.assert_close(out.features[1, : n_frames[1]], single.features[0], atol=1e-5, rtol=1e-5)
    assert not out.features[1, n_frames[1]:].any()
    out.features.sum().backward()
    assert all(p.grad is not None for p in enc.parameters()) and enc.cache_id() is None
    enc.save_pretrained(tmp_path / "fb")
    torch.testing.assert_close(load_encoder(tmp_path / "fb")(batch).features, enc(batch).features)


def test_layer_weighting_survives_layerdrop_in_training(tmp_path) -> None:
    """wavlm-large ships layerdrop 0.1; skipped layers would drop hidden states from the weighted sum."""
    from transformers import WavLMConfig, WavLMModel

    torch.manual_seed(0)
    WavLMModel(WavLMConfig(feat_extract_norm="layer", layerdrop=0.99, **TINY)).save_pretrained(tmp_path)
    enc = hf(str(tmp_path), finetune="full", layers="weighted").train()
    out = enc(tone_batch([8000, 5000]))
    assert out.features.shape == (2, conv_frames(8000), 32)
    assert enc.backbone.config.layerdrop == 0.0


def test_whisper_layers_int8_frames_close_to_float32_cached_apart_and_round_trip(whisper_layers, tmp_path) -> None:
    """audio_encoder.quantize=int8: the PyTorch copy's Linear layers run dynamic int8 matmuls; every layer's frames
    stay within 20 % (relative Frobenius error) of float32's, under a cache id of their own, and the option survives
    the config loader and save_pretrained / load_encoder."""
    from fusion_ser.config import load_config

    int8 = build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", layers="concat", quantize="int8"))
    assert int8.cache_id() != whisper_layers.cache_id() and int8.output_dim == 5 * 384
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in int8.torch_encoder.modules())
    rng = np.random.default_rng(3)
    wav = tone_batch([48000])["wav"][0].numpy() + 0.05 * rng.normal(size=48000).astype(np.float32)
    ref, got = whisper_layers.hidden_states(wav).numpy(), int8.hidden_states(wav).numpy()
    assert got.shape == ref.shape and got.dtype == np.float32
    rel = np.linalg.norm((got - ref).reshape(5, -1), axis=1) / np.linalg.norm(ref.reshape(5, -1), axis=1)
    assert rel[0] < 1e-6 and 0 < rel[1:].min() and rel.max() < 0.2, rel  # layer 0 (conv front end) is float32
    cos = (got * ref).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(ref, axis=-1))
    assert cos.mean() > 0.97, cos.mean(axis=1)
    assert load_config(None, ["audio_encoder.quantize=int8"]).audio_encoder.quantize == "int8"
    with pytest.raises(ConfigError, match=r"audio_encoder\.quantize: 'int4' is not one of"):
        load_config(None, ["audio_encoder.quantize=int4"])
    again = load_encoder(int8.save_pretrained(tmp_path / "enc"))
    assert again.config.quantize == "int8" and again.cache_id() == int8.cache_id()
    np.testing.assert_array_equal(again.hidden_states(wav).numpy(), got)
    from fusion_ser.models.factory import build_model
    from fusion_ser.training.checkpoint import trainable_state

    model = build_model(load_config(None, ["audio_encoder.layers=concat", "audio_encoder.quantize=int8",
                                           "pooling.type=mean_std"]), ["a", "b"])
    assert model.encoder.output_dim == 5 * 384  # loads the int8 copy
    model.load_state_dict(trainable_state(model), strict=False)  # what resume and the selected weights do
    with pytest.raises(AudioEncoderError, match=r"audio_encoder\.quantize: int8 applies to the frozen PyTorch copy"):
        build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", layers="last", quantize="int8"))
    with pytest.raises(ConfigError, match=r"audio_encoder\.quantize: int8 applies to the ct2_whisper"):
        build_audio_encoder(AudioEncoderConfig(type="fbank", finetune="full", quantize="int8"))


def test_whisper_layers_on_onnxruntime_equal_pytorch_and_reuse_the_exported_graph(monkeypatch, tmp_path, caplog) -> None:
    """audio_encoder.runtime: the frozen all-layers copy on ONNX Runtime gives PyTorch's hidden states (two 30 s
    chunks) under the same cache id; its exported graph is kept in the cache and read back by the next encoder
    (no second export), a truncated graph file is exported again, and the encoder still deep-copies."""
    import copy
    import logging

    from fusion_ser.encoders import whisper_ort

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    rng = np.random.default_rng(5)
    wav = 0.1 * rng.standard_normal(SR * 35).astype(np.float32)
    ort = build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", layers="concat", runtime="onnxruntime"))
    ref = build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", layers="concat", runtime="torch"))
    got, want = ort.hidden_states(wav), ref.hidden_states(wav)
    assert isinstance(ort.onnx_encoder(), whisper_ort.OrtWhisperEncoder) and ref.onnx_encoder() is None
    assert got.shape == want.shape == (5, 1751, 384) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-3)
    assert ort.cache_id() == ref.cache_id()
    graphs = list((tmp_path / "fusion-ser" / "onnx").glob("*.onnx"))
    assert len(graphs) == 1 and graphs[0].stat().st_size > 1_000_000

    def no_export(encoder):
        raise AssertionError("exported again although the graph is cached")

    monkeypatch.setattr(whisper_ort, "export_stacked", no_export)
    again = build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", layers="weighted"))  # runtime auto
    torch.testing.assert_close(again.hidden_states(wav), got, rtol=0, atol=0)
    clone = copy.deepcopy(again)
    assert clone.__dict__.get("_ort") is None
    torch.testing.assert_close(clone.hidden_states(wav), got, rtol=0, atol=0)

    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    graphs[0].write_bytes(graphs[0].read_bytes()[:1000])
    with caplog.at_level(logging.WARNING, logger="fusion_ser.encoders.whisper_ort"):
        fresh = build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", layers="concat", runtime="onnxruntime"))
        torch.testing.assert_close(fresh.hidden_states(wav), got, rtol=0, atol=0)
    assert "did not load" in caplog.text and graphs[0].stat().st_size > 1_000_000


def test_whisper_runtime_option_errors_and_auto_falls_back_to_pytorch(monkeypatch, tmp_path, caplog) -> None:
    """runtime=onnxruntime outside the frozen float32 all-layers copy, or without onnxruntime, is an error naming the
    option; runtime=auto without onnxruntime logs why and runs PyTorch."""
    import logging
    import sys

    from fusion_ser.config import load_config

    with pytest.raises(AudioEncoderError, match=r"audio_encoder\.runtime: onnxruntime runs the frozen float32 copy"):
        build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", layers="last", runtime="onnxruntime"))
    with pytest.raises(AudioEncoderError, match=r"quantize=int8; set runtime=auto"):
        build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", layers="concat", quantize="int8", runtime="onnxruntime"))
    with pytest.raises(ConfigError, match=r"audio_encoder\.runtime: onnxruntime runs the ct2_whisper"):
        build_audio_encoder(AudioEncoderConfig(type="fbank", finetune="full", runtime="onnxruntime"))
    with pytest.raises(ConfigError, match=r"audio_encoder\.runtime: 'tensorrt' is not one of"):
        load_config(None, ["audio_encoder.runtime=tensorrt"])

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    strict = build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", layers="concat", runtime="onnxruntime"))
    wav = tone_batch([16000])["wav"][0].numpy()
    with pytest.raises(AudioEncoderError, match=r"onnxruntime is not installed.*install fusion-ser\[onnx\] or set runtime=auto"):
        strict.hidden_states(wav)
    auto = build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", layers="concat"))
    with caplog.at_level(logging.WARNING, logger="fusion_ser.encoders.ct2_whisper"):
        hidden = auto.hidden_states(wav)
    assert "runs on PyTorch" in caplog.text and auto.onnx_encoder() is None
    torch.testing.assert_close(hidden, build_audio_encoder(AudioEncoderConfig(
        type="ct2_whisper", layers="concat", runtime="torch")).hidden_states(wav), rtol=0, atol=0)
