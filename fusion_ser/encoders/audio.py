"""Audio encoder factory and persistence: build from `AudioEncoderConfig`, save and reload from a directory.

`build_audio_encoder(cfg)` returns one of the three audio encoders (Hugging Face SSL model, CTranslate2 Whisper
encoder, log-mel + small network). `save_pretrained(encoder, directory)` records the type, base model and options
in `audio_encoder.json` and the trainable weights in `audio_encoder.safetensors`; `load_encoder(directory)`
rebuilds the encoder from those files alone (frozen base weights are re-read from name_or_path).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fusion_ser.config import AudioEncoderConfig, ConfigError
from fusion_ser.encoders.base import Encoder, EncoderOutput
from fusion_ser.errors import FusionSerError

log = logging.getLogger(__name__)

CONFIG_FILE = "audio_encoder.json"
WEIGHTS_FILE = "audio_encoder.safetensors"


class AudioEncoderError(FusionSerError):
    """An audio encoder that cannot be built or reloaded (missing model, bad saved directory)."""


def split_batch_audio(batch: dict[str, Any]) -> list[np.ndarray]:
    """The unpadded float32 waveforms of a batch ("wav" (B, S) + "wav_lengths" (B,))."""
    wav = batch["wav"]
    lengths = batch.get("wav_lengths")
    if lengths is None:
        lengths = torch.full((wav.shape[0],), wav.shape[1], dtype=torch.long)
    wav_np = wav.detach().to("cpu", torch.float32).numpy()
    return [wav_np[i, : int(n)] for i, n in enumerate(lengths.tolist())]


def pad_frames(frames: list[torch.Tensor]) -> EncoderOutput:
    """Stack per-utterance (..., T_i, D) tensors into (B, ..., T_max, D) zero-padded, with a (B, T_max) mask."""
    t_max = max(f.shape[-2] for f in frames)
    lead = frames[0].shape[:-2]
    out = frames[0].new_zeros((len(frames), *lead, t_max, frames[0].shape[-1]))
    mask = torch.zeros((len(frames), t_max), dtype=torch.bool, device=frames[0].device)
    for i, f in enumerate(frames):
        out[i, ..., : f.shape[-2], :] = f
        mask[i, : f.shape[-2]] = True
    return EncoderOutput(features=out, mask=mask)


def combine_layers(features: torch.Tensor, weights: Optional[torch.Tensor], mode: str) -> torch.Tensor:
    """(B, L+1, T, D) hidden-state stack -> (B, T, D') frames: the softmax(weights)-weighted sum (D' = D), or with
    mode "concat" the layers side by side (D' = (L+1) D, so pooled statistics hold every layer's); (B, T, D) passes."""
    if features.dim() == 3:
        return features
    if mode == "concat":
        b, layers, t, d = features.shape
        return features.permute(0, 2, 1, 3).reshape(b, t, layers * d)
    if weights is None:
        raise AudioEncoderError("a stack of hidden states needs layer weights to be combined with mode 'weighted'")
    return torch.einsum("l,bltd->btd", torch.softmax(weights, dim=0).to(features.dtype), features)


def cached_output(batch: dict[str, Any]) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """(features as float32, mask) from the batch's cached audio keys, or None when the batch holds raw audio."""
    if "cached_audio" not in batch:
        return None
    return batch["cached_audio"].float(), batch["cached_audio_mask"].bool()


class AudioEncoder(Encoder):
    """An audio encoder built from an AudioEncoderConfig, which it keeps as `config` so it can be saved."""

    config: AudioEncoderConfig

    def save_pretrained(self, directory: str | Path) -> Path:
        """Save type, options and trainable weights so that `load_encoder(directory)` rebuilds this encoder."""
        return save_pretrained(self, directory)


def build_audio_encoder(cfg: AudioEncoderConfig) -> Encoder:
    """The audio encoder named by cfg.type: "hf", "ct2_whisper" or "fbank"."""
    if cfg.type == "ct2_whisper":
        from fusion_ser.encoders.ct2_whisper import CT2WhisperEncoder

        if cfg.finetune != "frozen":
            raise ConfigError("audio_encoder.finetune: the ct2_whisper encoder is always frozen; use finetune=frozen "
                              "or audio_encoder.type=hf to fine-tune")
        return CT2WhisperEncoder(cfg)
    if cfg.type == "hf":
        from fusion_ser.encoders.hf_audio import HFAudioEncoder

        return HFAudioEncoder(cfg)
    if cfg.type == "fbank":
        from fusion_ser.encoders.fbank import FbankEncoder

        return FbankEncoder(cfg)
    raise ConfigError(f"audio_encoder.type: '{cfg.type}' is not one of ['hf', 'ct2_whisper', 'fbank']")


def _trainable_state(encoder: Encoder) -> dict[str, torch.Tensor]:
    """Weights that differ from what the builder recreates: the parameters that train."""
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    state = encoder.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state.items() if k in trainable}


def save_pretrained(encoder: Encoder, directory: str | Path) -> Path:
    """Write audio_encoder.json (type + options) and the trainable weights as safetensors into `directory`."""
    cfg: AudioEncoderConfig = getattr(encoder, "config", None)
    if not isinstance(cfg, AudioEncoderConfig):
        raise AudioEncoderError(f"{type(encoder).__name__} has no AudioEncoderConfig; build it with build_audio_encoder")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = _trainable_state(encoder)
    if state:
        save_file(state, str(out / WEIGHTS_FILE))
    elif (out / WEIGHTS_FILE).exists():
        (out / WEIGHTS_FILE).unlink()
    meta = {"config": dataclasses.asdict(cfg), "weights": sorted(state)}
    (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    return out


def load_encoder(directory: str | Path) -> Encoder:
    """Rebuild an audio encoder saved by save_pretrained, without the original config files."""
    d = Path(directory)
    meta_path = d / CONFIG_FILE
    if not meta_path.is_file():
        raise AudioEncoderError(f"'{d}' holds no {CONFIG_FILE}; point at a directory written by save_pretrained")
    try:
        meta = json.loads(meta_path.read_text())
        cfg = AudioEncoderConfig(**meta["config"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise AudioEncoderError(f"'{meta_path}' is malformed ({e}); save the encoder again") from e
    encoder = build_audio_encoder(cfg)
    expected = set(meta.get("weights", []))
    if expected:
        weights_path = d / WEIGHTS_FILE
        if not weights_path.is_file():
            raise AudioEncoderError(f"'{weights_path}' is missing; the encoder in '{d}' had trained weights")
        state = load_file(str(weights_path))
        missing = expected - set(state)
        if missing:
            raise AudioEncoderError(f"'{weights_path}' lacks {len(missing)} saved weights (e.g. {sorted(missing)[0]})")
        result = encoder.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise AudioEncoderError(f"'{weights_path}' has weights the rebuilt encoder does not know: "
                                    f"{result.unexpected_keys[:3]}")
    log.info("loaded %s audio encoder from %s", cfg.type, d)
    return encoder
