"""Hugging Face self-supervised speech models (WavLM, wav2vec2, HuBERT, data2vec-audio, w2v-BERT 2.0) as encoders.

Loaded by name or local path through `AutoModel.from_pretrained`; a Whisper checkpoint contributes its encoder
(log-mel input padded to Whisper's 30 s window, so a clip is read in its first 30 s). The CNN feature encoder can stay
frozen, the transformer is frozen, fully fine-tuned, trained in its top N layers only, or adapted with LoRA (by
default rank 16 on the feed-forward layers of the upper half, as SAIL did; `encoders/lora.py`); the output is, as `audio_encoder.layers`
says, the last layer, a learned softmax-weighted sum of all hidden states, or all of them side by side. Frame masks
come from the model's own length formula, and the attention mask is passed only where Hugging Face says the model
wants it (layer-norm feature encoders; group-norm models were trained on zero-padded input without one). When the
backbone is frozen the encoder is cacheable: the cache holds the stack of hidden states (L+1, T, D) unless
layers=last, so the trainable weights still apply.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from fusion_ser.config import AudioEncoderConfig, ConfigError
from fusion_ser.schema import SAMPLE_RATE
from fusion_ser.encoders.base import (AudioEncoder, AudioEncoderError, EncoderOutput, cached_output, combine_layers,
                                      split_batch_audio)
from fusion_ser.encoders.lora import add_lora, save_adapter

# feed-forward projections of each family, the default LoRA targets: wav2vec2 / WavLM / HuBERT / data2vec-audio /
# w2v-BERT name them intermediate_dense / output_dense, Whisper fc1 / fc2
LORA_FEED_FORWARD = {"whisper": ["fc1", "fc2"]}
LORA_FEED_FORWARD_DEFAULT = ["intermediate_dense", "output_dense"]

log = logging.getLogger(__name__)


def _load_feature_extractor(name_or_path: str) -> Any:
    """The model's feature extractor when it ships one (preprocessor_config.json), else None."""
    from transformers import AutoFeatureExtractor

    try:
        return AutoFeatureExtractor.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        log.info("no feature extractor for %s (%s); using raw-waveform defaults", name_or_path, e)
        return None


def _weights_identity(name_or_path: str) -> str:
    """A short fingerprint of local weight files (name, size, mtime) so the cache tells re-saved models apart."""
    p = Path(name_or_path)
    if not p.is_dir():
        return "hub"
    files = sorted(q for q in p.iterdir() if q.suffix in (".safetensors", ".bin", ".json"))
    material = "|".join(f"{q.name}:{q.stat().st_size}:{q.stat().st_mtime_ns}" for q in files)
    return hashlib.sha256(material.encode()).hexdigest()[:16]


class HFAudioEncoder(AudioEncoder):
    """A Hugging Face SSL speech model: (B, S) waveforms -> (B, T, D) frames (last layer or weighted layer sum)."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        from transformers import AutoModel

        if not cfg.name_or_path:
            raise ConfigError("audio_encoder.name_or_path: the hf encoder needs a model name or local path, "
                              "e.g. microsoft/wavlm-large")
        self.config = cfg
        try:
            self.backbone = AutoModel.from_pretrained(cfg.name_or_path)
        except pickle.UnpicklingError as e:  # transformers loads .bin weights as data only: refused, never run
            raise AudioEncoderError(f"audio_encoder.name_or_path: '{cfg.name_or_path}' holds pickle weights that do not "
                                    "load as plain tensors (they could run code), so they are refused; weights must be "
                                    "safetensors: re-save the model with save_pretrained") from e
        except (OSError, ValueError) as e:
            raise AudioEncoderError(f"audio_encoder.name_or_path: cannot load '{cfg.name_or_path}' ({e}); "
                                    "give a local folder written by save_pretrained or a reachable hub name") from e
        mcfg = self.backbone.config
        self.whisper = getattr(mcfg, "model_type", "") == "whisper"
        if self.whisper and hasattr(self.backbone, "get_encoder"):
            self.backbone = self.backbone.get_encoder()  # the audio encoder alone: the decoder plays no part
        if (getattr(mcfg, "is_encoder_decoder", False) and not self.whisper) or not hasattr(
                self.backbone, "_get_feat_extract_output_lengths"):
            raise AudioEncoderError(f"audio_encoder.name_or_path: '{cfg.name_or_path}' ({type(self.backbone).__name__}) "
                                    "is not a self-supervised speech encoder (WavLM, wav2vec2, HuBERT, data2vec-audio, "
                                    "w2v-BERT); for Whisper use audio_encoder.type=ct2_whisper")
        self.input_name = getattr(self.backbone, "main_input_name", "input_values")
        self.extractor = _load_feature_extractor(cfg.name_or_path)
        if self.input_name != "input_values" and self.extractor is None:
            raise AudioEncoderError(f"'{cfg.name_or_path}' takes {self.input_name} but has no feature extractor "
                                    "(preprocessor_config.json); save one beside the model")
        if self.extractor is not None and hasattr(self.extractor, "return_attention_mask"):
            self.wants_attention_mask = bool(self.extractor.return_attention_mask)
        else:
            self.wants_attention_mask = getattr(mcfg, "feat_extract_norm", "layer") == "layer"
        self.do_normalize = bool(getattr(self.extractor, "do_normalize", True))
        self.num_layers = int(mcfg.num_hidden_layers)
        self._dim = int(mcfg.hidden_size)
        self.stack_layers = cfg.layers != "last"
        weighted = cfg.layers == "weighted"
        self.layer_weights = nn.Parameter(torch.zeros(self.num_layers + 1)) if weighted else None
        if self.stack_layers and getattr(mcfg, "layerdrop", 0.0):
            # LayerDrop skips layers in training, which drops their hidden states and breaks the weighted sum / concat.
            log.info("layers=%s: turning off LayerDrop (%.2f) of %s", cfg.layers, mcfg.layerdrop, cfg.name_or_path)
            mcfg.layerdrop = 0.0
        if cfg.gradient_checkpointing and cfg.finetune != "frozen":
            enable = getattr(self.backbone, "activation_checkpointing_enable", None)
            # non-reentrant: the frozen input carries no gradient, and LoRA's weights inside must still get theirs
            kwargs = {"gradient_checkpointing_kwargs": {"use_reentrant": False}} if cfg.finetune == "lora" else {}
            (enable or self.backbone.gradient_checkpointing_enable)(**kwargs)
        self._set_trainable(cfg)

    def _set_trainable(self, cfg: AudioEncoderConfig) -> None:
        """Freeze or unfreeze backbone parameters according to finetune / trainable_layers / freeze_feature_encoder."""
        if cfg.finetune == "lora":
            targets = LORA_FEED_FORWARD.get(self.backbone.config.model_type, LORA_FEED_FORWARD_DEFAULT)
            self.backbone = add_lora(self.backbone, cfg.lora, targets, "audio_encoder.lora")
            return
        self.backbone.requires_grad_(cfg.finetune == "full")
        if cfg.finetune == "top_n":
            layers = getattr(getattr(self.backbone, "encoder", None), "layers", None)
            if layers is None:
                raise ConfigError(f"audio_encoder.finetune: top_n needs a model with encoder.layers; "
                                  f"{type(self.backbone).__name__} has none, use full or frozen")
            if not 1 <= cfg.trainable_layers <= len(layers):
                raise ConfigError(f"audio_encoder.trainable_layers: {cfg.trainable_layers} must be between 1 and "
                                  f"{len(layers)} (the model's layer count) with finetune=top_n")
            for layer in layers[len(layers) - cfg.trainable_layers:]:
                layer.requires_grad_(True)
            if getattr(self.backbone.config, "do_stable_layer_norm", False) and hasattr(self.backbone.encoder, "layer_norm"):
                self.backbone.encoder.layer_norm.requires_grad_(True)
        if cfg.finetune != "frozen" and cfg.freeze_feature_encoder and hasattr(self.backbone, "freeze_feature_encoder"):
            self.backbone.freeze_feature_encoder()

    @property
    def output_dim(self) -> int:
        if self.config.layers == "concat":
            return self._dim * (self.num_layers + 1)
        return self._dim

    @property
    def is_frozen(self) -> bool:
        """True when the backbone does not train (the layer weights may: they apply to cached hidden states)."""
        return not any(p.requires_grad for p in self.backbone.parameters())

    def train(self, mode: bool = True) -> "HFAudioEncoder":
        """A frozen backbone stays in eval mode (no dropout), so its outputs match what the cache holds."""
        super().train(mode)
        if self.is_frozen:
            self.backbone.eval()
        return self

    def save_pretrained(self, directory: str | Path) -> Path:
        """The encoder as every audio encoder saves it, plus (finetune=lora) the peft adapter in `adapter/`."""
        out = super().save_pretrained(directory)
        if self.config.finetune == "lora":
            save_adapter(self.backbone, out / "adapter")
        return out

    def cache_id(self) -> Optional[str]:
        if not self.is_frozen:
            return None
        cfg = self.config
        return (f"hf|{cfg.name_or_path}|{_weights_identity(cfg.name_or_path)}|stack={self.stack_layers}"
                f"|norm={self.do_normalize}|mask={self.wants_attention_mask}")

    def _normalize(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Zero mean, unit variance per utterance over its real samples; padding stays zero."""
        mask = (torch.arange(wav.shape[1], device=wav.device)[None, :] < lengths[:, None]).to(wav.dtype)
        n = mask.sum(dim=1, keepdim=True).clamp(min=1.0)
        mean = (wav * mask).sum(dim=1, keepdim=True) / n
        var = (((wav - mean) * mask) ** 2).sum(dim=1, keepdim=True) / n
        return (wav - mean) / torch.sqrt(var + 1e-7) * mask

    def _inputs(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Model inputs and the input lengths in the model's input units (samples or feature frames)."""
        if self.input_name == "input_values":
            values = self._normalize(wav, lengths) if self.do_normalize else wav
            inputs = {"input_values": values}
            if self.wants_attention_mask:
                inputs["attention_mask"] = (torch.arange(wav.shape[1], device=wav.device)[None, :]
                                            < lengths[:, None]).long()
            return inputs, lengths
        clips = split_batch_audio({"wav": wav, "wav_lengths": lengths})
        # Whisper's encoder takes exactly its 30 s window of log-mel frames; the others the batch's longest clip
        padding = "max_length" if self.whisper else True
        feats = self.extractor(clips, sampling_rate=SAMPLE_RATE, padding=padding, return_attention_mask=True,
                               return_tensors="pt")
        mask = feats["attention_mask"].to(wav.device)
        inputs = {self.input_name: feats[self.input_name].to(wav.device, wav.dtype), "attention_mask": mask}
        return inputs, mask.sum(dim=1)

    def _hidden(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L+1, T, D) stack of hidden states unless layers=last, else (B, T, D); and the (B, T) frame mask."""
        inputs, in_lengths = self._inputs(wav, lengths)
        out = self.backbone(**inputs, output_hidden_states=self.stack_layers)
        if self.stack_layers:
            features = torch.stack(out.hidden_states, dim=1)
        else:
            features = out.last_hidden_state
        frames = features.shape[-2]
        out_lengths = self.backbone._get_feat_extract_output_lengths(in_lengths).clamp(max=frames)
        if self.whisper:  # the frames of the 30 s window past the longest clip are padding: drop them
            frames = int(out_lengths.max())
            features = features[..., :frames, :]
        mask = torch.arange(frames, device=features.device)[None, :] < out_lengths[:, None].to(features.device)
        return features, mask

    def _combine(self, features: torch.Tensor) -> torch.Tensor:
        """(B, L+1, T, D) stack -> (B, T, D') frames as audio_encoder.layers says; (B, T, D) passes through."""
        return combine_layers(features, self.layer_weights, self.config.layers)

    def encode_for_cache(self, sample: dict[str, Any]) -> torch.Tensor:
        wav = torch.as_tensor(np.asarray(sample["wav"], dtype=np.float32))[None]
        device = next(self.backbone.parameters()).device
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            with torch.no_grad():
                features, _ = self._hidden(wav.to(device), torch.tensor([wav.shape[1]], device=device))
        finally:
            self.backbone.train(was_training)
        return features[0].cpu()

    def forward(self, batch: dict[str, Any]) -> EncoderOutput:
        cached = cached_output(batch)
        if cached is not None:
            features, mask = cached
            return EncoderOutput(self._combine(features), mask)
        wav = batch["wav"]
        lengths = batch.get("wav_lengths")
        if lengths is None:
            lengths = torch.full((wav.shape[0],), wav.shape[1], dtype=torch.long, device=wav.device)
        if self.is_frozen:
            with torch.no_grad():
                features, mask = self._hidden(wav, lengths.to(wav.device))
        else:
            features, mask = self._hidden(wav, lengths.to(wav.device))
        return EncoderOutput(self._combine(features), mask)
