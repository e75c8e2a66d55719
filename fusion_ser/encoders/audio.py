"""Audio encoder factory: build one of the three audio encoders from `AudioEncoderConfig`, or reload a saved one.

`build_audio_encoder(cfg)` returns a Hugging Face SSL model, the CTranslate2 Whisper encoder, or log-mel + a small
network (fbank trains fully; LoRA needs hf or ct2_whisper). `AudioEncoder.save_pretrained(directory)` (encoders/base.py) records the type and options in
`audio_encoder.json` and the trainable weights in `audio_encoder.safetensors`; `load_encoder(directory)` rebuilds
the encoder from those files alone (frozen base weights are re-read from name_or_path).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from safetensors.torch import load_file

from fusion_ser.config import AudioEncoderConfig, ConfigError, audio_encoder_config_from_dict, check_choices
from fusion_ser.encoders.base import AUDIO_CONFIG_FILE, AUDIO_WEIGHTS_FILE, AudioEncoderError, Encoder

log = logging.getLogger(__name__)


def build_audio_encoder(cfg: AudioEncoderConfig) -> Encoder:
    """The audio encoder named by cfg.type (choices declared in AudioEncoderConfig)."""
    check_choices(cfg, "audio_encoder.")
    if cfg.quantize != "none" and cfg.type != "ct2_whisper":
        raise ConfigError(f"audio_encoder.quantize: {cfg.quantize} applies to the ct2_whisper encoder's PyTorch copy, "
                          f"not to type {cfg.type}; set audio_encoder.quantize=none", options=("audio_encoder.quantize",))
    if cfg.runtime == "onnxruntime" and cfg.type != "ct2_whisper":
        raise ConfigError(f"audio_encoder.runtime: onnxruntime runs the ct2_whisper encoder's all-layers copy, not type "
                          f"{cfg.type}; set audio_encoder.runtime=auto", options=("audio_encoder.runtime",))
    if cfg.window_seconds and cfg.type != "ct2_whisper":
        raise ConfigError(f"audio_encoder.window_seconds: {cfg.window_seconds:g} applies to the ct2_whisper encoder (the "
                          f"transcriber's window), not to type {cfg.type}; set audio_encoder.window_seconds=0",
                          options=("audio_encoder.window_seconds",))
    if cfg.type == "ct2_whisper":
        from fusion_ser.encoders.ct2_whisper import CT2WhisperEncoder

        if cfg.finetune not in ("frozen", "lora"):
            raise ConfigError(f"audio_encoder.finetune: the ct2_whisper encoder is frozen or adapted with LoRA (through "
                              f"its PyTorch copy), not '{cfg.finetune}'; use finetune=frozen or lora, or "
                              "audio_encoder.type=hf to fine-tune a transformers checkpoint")
        return CT2WhisperEncoder(cfg)
    if cfg.type == "hf":
        from fusion_ser.encoders.hf_audio import HFAudioEncoder

        return HFAudioEncoder(cfg)
    from fusion_ser.encoders.fbank import FbankEncoder

    if cfg.finetune == "lora":
        raise ConfigError("audio_encoder.finetune: lora needs a pretrained encoder (type hf or ct2_whisper); the "
                          "fbank network trains all its weights: use finetune=full")

    return FbankEncoder(cfg)


def load_encoder(directory: str | Path) -> Encoder:
    """Rebuild an audio encoder saved by save_pretrained, without the original config files."""
    d = Path(directory)
    meta_path = d / AUDIO_CONFIG_FILE
    if not meta_path.is_file():
        raise AudioEncoderError(f"'{d}' holds no {AUDIO_CONFIG_FILE}; point at a directory written by save_pretrained")
    try:
        meta = json.loads(meta_path.read_text())
        cfg = audio_encoder_config_from_dict(meta["config"], str(meta_path))
    except (json.JSONDecodeError, KeyError, TypeError, ConfigError) as e:
        raise AudioEncoderError(f"'{meta_path}' is malformed ({e}); save the encoder again") from e
    encoder = build_audio_encoder(cfg)
    expected = set(meta.get("weights", []))
    if expected:
        weights_path = d / AUDIO_WEIGHTS_FILE
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
