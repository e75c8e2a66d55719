"""Text encoders: pooling against numpy, MiniLM against sentence-transformers, LoRA on MiniLM and a tiny Llama."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion_ser.config import LoraConfig, TextEncoderConfig
from fusion_ser.encoders.text import TextEncoderError, build_text_encoder, load_encoder, pool_tokens

CORPUS = ["i am so happy today", "this is terrible and sad", "leave me alone now", "what a wonderful surprise",
          "i hate this so much", "the meeting is at noon", "we won the game", "nobody came to my party"]


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """A random LlamaConfig (hidden 32, 2 layers) saved with a WordLevel tokenizer built offline; no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    torch.set_num_threads(1)
    words = sorted({w for s in CORPUS for w in s.split()})
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {w: i + 3 for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny_llama")
    LlamaModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def _np_pool(f: np.ndarray, m: np.ndarray, mode: str) -> np.ndarray:
    out = []
    for feats, mask in zip(f, m):
        idx = np.flatnonzero(mask)
        out.append({"mean": feats[idx].mean(0), "cls": feats[idx[0]], "last": feats[idx[-1]]}[mode])
    return np.stack(out)


@pytest.mark.parametrize("mode", ["cls", "mean", "last"])
def test_pool_tokens_matches_numpy_for_left_and_right_padding(mode):
    rng = np.random.default_rng(0)
    f = rng.normal(size=(4, 6, 5)).astype(np.float32)
    m = np.array([[1, 1, 1, 0, 0, 0],   # right padded
                  [0, 0, 1, 1, 1, 1],   # left padded
                  [1, 1, 1, 1, 1, 1],
                  [0, 0, 0, 1, 0, 0]], dtype=bool)  # one placeholder token
    got = pool_tokens(torch.from_numpy(f), torch.from_numpy(m), mode).numpy()
    np.testing.assert_allclose(got, _np_pool(f, m, mode), rtol=1e-6, atol=1e-6)


def test_frozen_minilm_mean_pooling_equals_an_unpadded_numpy_reference():
    """Our batched, padded mean pooling equals numpy's mean over each sentence's tokens run alone through the model."""
    from transformers import AutoModel, AutoTokenizer

    enc = build_text_encoder(TextEncoderConfig(finetune="frozen"))
    assert enc.pooling_mode == "mean" and not enc.is_decoder and enc.output_dim == 384
    assert enc.is_frozen and enc.cache_id() is not None
    texts = ["hello there", "I am so angry at you right now!", "ok"]
    with torch.no_grad():
        ours = enc.pool(enc({"text": texts})).numpy()
    tok, ref_model = AutoTokenizer.from_pretrained(enc.source), AutoModel.from_pretrained(enc.source).eval()
    with torch.no_grad():
        ref = np.stack([ref_model(**tok(t, return_tensors="pt")).last_hidden_state[0].numpy().mean(0) for t in texts])
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    # the cached form of one text is its valid tokens, equal to the batched forward's
    with torch.no_grad():
        out = enc({"text": texts})
    np.testing.assert_allclose(enc.encode_for_cache({"text": texts[1]}).numpy(), out.features[1][out.mask[1]].numpy(),
                               atol=1e-5)


def test_empty_text_keeps_one_placeholder_token_and_does_not_disturb_other_rows(tiny_llama):
    for enc in (build_text_encoder(TextEncoderConfig(finetune="frozen")),
                build_text_encoder(TextEncoderConfig(name_or_path=tiny_llama, finetune="frozen"))):
        with torch.no_grad():
            out = enc({"text": ["", "we won the game", "  "]})
            alone = enc({"text": ["we won the game"]})
        assert out.mask[0].sum() == 1 and out.mask[2].sum() == 1
        assert out.mask[1].sum() == alone.mask[0].sum() > 1
        np.testing.assert_allclose(enc.pool(out)[1].numpy(), enc.pool(alone)[0].numpy(), atol=1e-5)
        assert torch.isfinite(enc.pool(out)).all()


def _train_steps(enc, steps: int = 8) -> torch.nn.Linear:
    """A few optimizer steps of encoder + linear probe on the toy corpus (labels: first word length parity)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(enc.output_dim, 2)
    params = [p for p in enc.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=5e-3)
    y = torch.tensor([len(s.split()[0]) % 2 for s in CORPUS])
    enc.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(head(enc.pool(enc({"text": CORPUS}))), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc.eval()
    return head


@pytest.mark.parametrize("which", ["minilm", "llama"])
def test_lora_trains_only_adapter_weights_and_reloads_identically(which, tiny_llama, tmp_path):
    name = None if which == "minilm" else tiny_llama
    cfg = TextEncoderConfig(name_or_path=name, finetune="lora", lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    enc = build_text_encoder(cfg)
    expected_targets = {"query", "value"} if which == "minilm" else {"q_proj", "v_proj"}
    assert set(enc.backbone.peft_config["default"].target_modules) == expected_targets
    assert enc.pooling_mode == ("mean" if which == "minilm" else "last")
    assert enc.cache_id() is None  # LoRA trains: never cached

    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    layers = 6 if which == "minilm" else 2
    assert len(trainable) == layers * 2 * 2  # (A, B) per target module per layer
    assert all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in enc.named_parameters()}
    with torch.no_grad():
        base_out = enc.pool(enc({"text": CORPUS}))

    _train_steps(enc)
    changed = {n for n, p in enc.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable  # frozen base weights did not move
    with torch.no_grad():
        tuned = enc.pool(enc({"text": CORPUS}))
    assert not torch.allclose(tuned, base_out)

    enc.save_pretrained(tmp_path / "enc")
    assert (tmp_path / "enc" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "enc" / "tokenizer" / "tokenizer_config.json").is_file()
    back = load_encoder(tmp_path / "enc").eval()
    with torch.no_grad():
        reloaded = back.pool(back({"text": CORPUS}))
    torch.testing.assert_close(reloaded, tuned, rtol=1e-5, atol=1e-6)
    assert {n for n, p in back.named_parameters() if p.requires_grad} == trainable


def test_tiny_llama_pad_token_and_padding_side(tiny_llama):
    enc = build_text_encoder(TextEncoderConfig(name_or_path=tiny_llama, finetune="frozen"))
    assert enc.is_decoder and enc.tokenizer.pad_token == "</s>"
    texts = ["we won the game", "ok", "i hate this so much"]
    with torch.no_grad():
        enc.tokenizer.padding_side = "right"
        right = enc.pool(enc({"text": texts}))
        enc.tokenizer.padding_side = "left"
        left = enc.pool(enc({"text": texts}))
        single = torch.cat([enc.pool(enc({"text": [t]})) for t in texts])
    torch.testing.assert_close(right, single, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(left, single, rtol=1e-4, atol=1e-5)


def test_full_finetune_with_gradient_checkpointing_saves_weights_and_reloads(tiny_llama, tmp_path):
    cfg = TextEncoderConfig(name_or_path=tiny_llama, finetune="full", gradient_checkpointing=True, pooling="mean")
    enc = build_text_encoder(cfg)
    assert all(p.requires_grad for p in enc.parameters())
    assert getattr(enc.backbone, "is_activation_checkpointing", None) or enc.backbone.is_gradient_checkpointing
    _train_steps(enc, steps=3)
    enc.save_pretrained(tmp_path / "enc")
    back = load_encoder(tmp_path / "enc").eval()
    assert back.pooling_mode == "mean"
    with torch.no_grad():
        torch.testing.assert_close(back.pool(back({"text": CORPUS})), enc.pool(enc({"text": CORPUS})))


def test_lora_with_gradient_checkpointing_gets_gradients(tiny_llama):
    cfg = TextEncoderConfig(name_or_path=tiny_llama, gradient_checkpointing=True, lora=LoraConfig(r=2, dropout=0.0))
    enc = build_text_encoder(cfg)
    enc.train()
    enc.pool(enc({"text": CORPUS})).pow(2).sum().backward()
    grads = [p.grad for p in enc.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_bad_model_and_targets_are_clear_errors(tmp_path, tiny_llama):
    with pytest.raises(TextEncoderError, match="cannot load the text model .*nowhere"):
        build_text_encoder(TextEncoderConfig(name_or_path=str(tmp_path / "nowhere")))
    with pytest.raises(TextEncoderError, match="target_modules"):
        build_text_encoder(TextEncoderConfig(name_or_path=tiny_llama, lora=LoraConfig(target_modules=["no_such"])))
    with pytest.raises(TextEncoderError, match="no saved text encoder"):
        load_encoder(tmp_path)
    with pytest.raises(TextEncoderError, match="pooling"):
        pool_tokens(torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool), "max")


def _text_manifest(path) -> str:
    """24 rows: happy vs sad sentences (label follows the words), 16 train / 4 dev / 4 test, no audio."""
    happy = ["i am so happy today", "what a wonderful surprise", "we won the game", "i am so happy now"]
    sad = ["this is terrible and sad", "nobody came to my party", "i hate this so much", "leave me alone now"]
    rows = []
    for i in range(24):
        label, text = ("happiness", happy[i // 2 % 4]) if i % 2 == 0 else ("sadness", sad[i // 2 % 4])
        split = "train" if i < 16 else "dev" if i < 20 else "test"
        rows.append({"utt_id": f"t{i:02d}", "path": "", "split": split, "speaker": f"s{i % 5}", "gender": "",
                     "label": label, "arousal": "", "valence": "", "dominance": "", "text": text})
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def test_text_lora_run_trains_only_adapters_and_head_and_reloads_to_identical_predictions(tiny_llama, tmp_path):
    from safetensors.torch import load_file

    from fusion_ser.config import config_from_dict
    from fusion_ser.data.manifest import read_manifest
    from fusion_ser.models.io import load_model
    from fusion_ser.rundir import RunDir
    from fusion_ser.training.inference import predict_frame
    from fusion_ser.training.job import train_run

    manifest = _text_manifest(tmp_path / "m.csv")
    cfg = config_from_dict({"modality": "text", "text_encoder": {"name_or_path": tiny_llama, "lora": {"r": 4}},
                            "head": {"hidden_dim": 16}, "optim": {"lr_encoder": 1e-2, "lr_head": 1e-2},
                            "train": {"epochs": 2, "batch_size": 8, "device": "cpu"}})
    run = RunDir(train_run(cfg, manifest, tmp_path / "run").path)
    assert run.require_complete().modality == "text"
    enc_dir = run.model_dir / "encoders" / "encoder"
    assert (enc_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert not any("backbone" in k for k in load_file(str(run.model_dir / "weights.safetensors")))

    model, cfg2, labels = load_model(run.model_dir)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or not n.startswith("encoder.") for n in trainable)
    adapters = load_file(str(enc_dir / "adapter" / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in adapters.items())  # B starts at 0: trained
    test = read_manifest(manifest).query("split == 'test'")
    again = predict_frame(model, test, cfg2, torch.device("cpu")).set_index("utt_id")
    saved = run.read_predictions("test").set_index("utt_id").loc[again.index]
    prob = [f"prob_{c}" for c in labels]
    np.testing.assert_allclose(again[prob].to_numpy(), saved[prob].to_numpy(), rtol=1e-5, atol=1e-6)
    assert list(again["pred"]) == list(saved["pred"])


def test_frozen_text_run_uses_the_feature_cache_and_matches_uncached_prediction(tmp_path):
    from fusion_ser.config import config_from_dict
    from fusion_ser.data.manifest import read_manifest
    from fusion_ser.models.io import load_model
    from fusion_ser.rundir import RunDir
    from fusion_ser.training.inference import predict_frame
    from fusion_ser.training.job import train_run

    manifest = _text_manifest(tmp_path / "m.csv")
    cfg = config_from_dict({"modality": "text", "text_encoder": {"finetune": "frozen"}, "head": {"hidden_dim": 16},
                            "train": {"epochs": 1, "batch_size": 8, "device": "cpu",
                                      "cache_dir": str(tmp_path / "cache")}})
    run = RunDir(train_run(cfg, manifest, tmp_path / "run").path)
    entries = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.name != "cache_id.txt"]
    assert len(entries) == 8  # one entry per distinct text (4 happy + 4 sad sentences)
    model, cfg2, labels = load_model(run.model_dir)
    test = read_manifest(manifest).query("split == 'test'")
    direct = predict_frame(model, test, cfg2, torch.device("cpu")).set_index("utt_id")
    saved = run.read_predictions("test").set_index("utt_id").loc[direct.index]
    prob = [f"prob_{c}" for c in labels]
    np.testing.assert_allclose(direct[prob].to_numpy(), saved[prob].to_numpy(), atol=2e-3)  # float16 cache


def test_bf16_base_keeps_fp32_adapters_and_outputs(tiny_llama):
    enc = build_text_encoder(TextEncoderConfig(name_or_path=tiny_llama, base_dtype="bf16", lora=LoraConfig(r=2)))
    dtypes = {n: p.dtype for n, p in enc.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n)
    assert any(d == torch.bfloat16 for n, d in dtypes.items() if "lora_" not in n)
    out = enc({"text": CORPUS[:3]})
    assert out.features.dtype == torch.float32 and torch.isfinite(enc.pool(out)).all()
    with pytest.raises(TextEncoderError, match="base_dtype"):
        build_text_encoder(TextEncoderConfig(name_or_path=tiny_llama, base_dtype="int4"))


@pytest.mark.parametrize("name", ["minilm", "roberta", "llama"])
def test_text_configs_load_and_the_offline_one_builds(name):
    from pathlib import Path

    from fusion_ser.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / f"text_{name}_lora.yaml")
    assert cfg.modality == "text" and cfg.text_encoder.finetune == "lora"
    if name == "minilm":
        assert cfg.text_encoder.name_or_path is None
        enc = build_text_encoder(cfg.text_encoder)
        targets = set(enc.backbone.peft_config["default"].target_modules)
        assert enc.pooling_mode == "mean" and targets == {"query", "key", "value", "dense"}
    if name == "llama":
        assert cfg.text_encoder.pooling == "last" and cfg.text_encoder.gradient_checkpointing


def test_frozen_backbone_stays_deterministic_in_train_mode():
    enc = build_text_encoder(TextEncoderConfig(finetune="frozen"))
    enc.train()
    assert enc.training and not enc.backbone.training
    with torch.no_grad():
        a, b = enc.pool(enc({"text": CORPUS})), enc.pool(enc({"text": CORPUS}))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
