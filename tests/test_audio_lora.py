"""LoRA on audio encoders (audio_encoder.finetune: lora): HF SSL models, Whisper through transformers, and the
packaged Whisper tiny.en through its PyTorch copy. Only adapters train; they save, reload and export with peft."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fusion_ser.config import AudioEncoderConfig, ConfigError, LoraConfig, load_config
from fusion_ser.encoders.audio import build_audio_encoder, load_encoder
from fusion_ser.encoders.lora import LoraError, layer_index, select_targets
from tests.test_predict import _test_rows, corpus  # noqa: F401

TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16),
            conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    """A 4-layer random WavLM and a 4-layer random Whisper (with its feature extractor), saved with save_pretrained."""
    from transformers import (Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel, WhisperConfig,
                              WhisperFeatureExtractor, WhisperModel)

    root = tmp_path_factory.mktemp("tiny_lora")
    torch.manual_seed(0)
    WavLMModel(WavLMConfig(feat_extract_norm="layer", **TINY)).save_pretrained(root / "wavlm")
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(root / "wavlm")
    whisper = WhisperConfig(d_model=32, encoder_layers=4, decoder_layers=1, encoder_attention_heads=2,
                            decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=100,
                            pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
                            max_target_positions=16)
    WhisperModel(whisper).save_pretrained(root / "whisper")
    WhisperFeatureExtractor().save_pretrained(root / "whisper")
    return {"wavlm": str(root / "wavlm"), "whisper": str(root / "whisper")}


def tones(lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    wav = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        t = np.arange(n) / 16000
        wav[i, :n] = torch.from_numpy((0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.05 * rng.standard_normal(n))
                                      .astype(np.float32))
    return {"wav": wav, "wav_lengths": torch.tensor(lengths)}


def trainable(enc) -> set[str]:
    return {n for n, p in enc.named_parameters() if p.requires_grad}


def _one_step_changes_only_adapters(enc, batch) -> None:
    before = {n: p.detach().clone() for n, p in enc.named_parameters()}
    opt = torch.optim.SGD([p for p in enc.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # lora_B starts at zero: the second step moves lora_A too
        out = enc.train()(batch)
        loss = out.features[out.mask].pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = {n for n, p in enc.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all("lora_" in n or n == "layer_weights" for n in changed), changed
    assert any("lora_A" in n for n in changed) and any("lora_B" in n for n in changed)


@pytest.mark.parametrize("name,ffn", [("wavlm", ("intermediate_dense", "output_dense")), ("whisper", ("fc1", "fc2"))])
def test_hf_lora_adapts_the_upper_half_feed_forward_and_reloads(tiny, name, ffn, tmp_path: Path) -> None:
    import peft
    from transformers import AutoModel

    enc = build_audio_encoder(AudioEncoderConfig(type="hf", name_or_path=tiny[name], finetune="lora"))
    assert not enc.is_frozen and enc.cache_id() is None
    adapted = {n.split(".lora_")[0] for n in trainable(enc) if "lora_" in n}
    assert {layer_index(n) for n in adapted} == {2, 3}  # the upper half of 4 layers
    assert {n.rsplit(".", 1)[-1] for n in adapted} == set(ffn)
    batch = tones([16000, 9000])
    _one_step_changes_only_adapters(enc, batch)
    enc.eval()
    enc.save_pretrained(tmp_path / "enc")
    back = load_encoder(tmp_path / "enc").eval()
    with torch.no_grad():
        torch.testing.assert_close(back(batch).features, enc(batch).features)
        # the peft adapter folder alone, on a fresh base model, gives the same last hidden state
        base = AutoModel.from_pretrained(tiny[name])
        base = base.get_encoder() if name == "whisper" else base
        inputs, _ = enc._inputs(batch["wav"], batch["wav_lengths"])
        ours = enc.backbone(**inputs).last_hidden_state
        theirs = peft.PeftModel.from_pretrained(base, str(tmp_path / "enc" / "adapter")).eval()(**inputs)
        torch.testing.assert_close(theirs.last_hidden_state, ours)


def test_hf_whisper_encoder_frames_follow_the_clip_lengths(tiny) -> None:
    enc = build_audio_encoder(AudioEncoderConfig(type="hf", name_or_path=tiny["whisper"], layers="last")).eval()
    batch = tones([16000, 8000])
    with torch.no_grad():
        out = enc(batch)
    assert out.mask.sum(1).tolist() == [50, 25]  # 100 mel frames/s, halved by the strided convolution
    assert out.features.shape == (2, 50, 32)  # the 30 s window's padding frames are dropped
    with torch.no_grad():
        alone = enc({"wav": batch["wav"][1:, :8000], "wav_lengths": torch.tensor([8000])})  # the second clip alone: the same frames (Whisper always sees 30 s)
    torch.testing.assert_close(alone.features[0, :25], out.features[1, :25], atol=1e-5, rtol=1e-4)


def test_packaged_whisper_lora_trains_adapters_only_and_reloads(tmp_path: Path) -> None:
    import peft

    from fusion_ser.encoders.whisper_torch import WhisperEncoderTorch

    torch.manual_seed(0)
    enc = build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", finetune="lora", layers="weighted"))
    assert not enc.is_frozen and enc.cache_id() is None
    adapted = {n.split(".lora_")[0] for n in trainable(enc) if "lora_" in n}
    assert {layer_index(n) for n in adapted} == {2, 3} and {n.rsplit(".", 1)[-1] for n in adapted} == {"ffn_in", "ffn_out"}
    batch = tones([12000, 7000])
    _one_step_changes_only_adapters(enc, batch)
    enc.eval()
    enc.save_pretrained(tmp_path / "enc")
    back = load_encoder(tmp_path / "enc").eval()
    frozen = build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", layers="weighted")).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(batch).features, enc(batch).features)
        assert not torch.allclose(frozen(batch).features, enc(batch).features, atol=1e-4)
        mel = torch.from_numpy(enc.log_mel(batch["wav"][0, :12000].numpy()))[None]
        exported = peft.PeftModel.from_pretrained(WhisperEncoderTorch.from_ct2(enc.model_path),
                                                  str(tmp_path / "enc" / "adapter"))
        torch.testing.assert_close(exported(mel)[-1], enc.torch_encoder(mel)[-1])


def test_packaged_whisper_lora_run_predicts_what_it_saved(corpus, tmp_path: Path) -> None:
    import fusion_ser
    from fusion_ser.rundir import RunDir, prob_columns
    from fusion_ser.training.job import train_run

    cfg = load_config(None, ["train.epochs=1", "train.batch_size=8", "head.hidden_dim=32", "pooling.type=mean",
                             "audio_encoder.finetune=lora", "audio_encoder.lora.r=4", "audio_encoder.layers=last",
                             "optim.lr_encoder=1e-3"])
    run = train_run(cfg, corpus, tmp_path / "run").path
    model_dir = RunDir(run).model_dir
    assert (model_dir / "encoders" / "encoder" / "adapter" / "adapter_config.json").is_file()
    test = _test_rows(corpus)
    saved = RunDir(run).read_predictions("test").set_index("utt_id").loc[test["utt_id"]]
    labels = RunDir(run).read_info().labels
    results = fusion_ser.load(run).predict(test["path"].tolist(), batch_size=4)
    got = np.array([[r["probs"][c] for c in labels] for r in results])
    np.testing.assert_allclose(got, saved[prob_columns(labels)].to_numpy(), atol=1e-5)


def test_text_lora_upper_half_and_option_errors(tmp_path: Path) -> None:
    from fusion_ser.config import TextEncoderConfig
    from fusion_ser.encoders.text import build_text_encoder
    from tests.tiny_models import save_tiny_bert

    path = save_tiny_bert(tmp_path / "bert", layers=4)
    enc = build_text_encoder(TextEncoderConfig(name_or_path=path, lora=LoraConfig(r=2, layers="upper_half")))
    adapted = {n.split(".lora_")[0] for n in trainable(enc) if "lora_" in n}
    assert adapted and {layer_index(n) for n in adapted} == {2, 3}
    with pytest.raises(ConfigError, match="fbank"):
        build_audio_encoder(AudioEncoderConfig(type="fbank", finetune="lora"))
    with pytest.raises(LoraError, match="match no Linear"):
        select_targets(torch.nn.Sequential(torch.nn.Linear(2, 2)), ["q_proj"], "all", "audio_encoder.lora")
    with pytest.raises(LoraError, match="upper_half"):
        select_targets(torch.nn.Sequential(torch.nn.Linear(2, 2)), ["0"], "upper_half", "audio_encoder.lora")
