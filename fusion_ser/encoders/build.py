"""The encoder of a modality from a config, and its reload from a saved folder: the one place that maps
modality -> encoder family, so models never import a particular encoder module."""

from __future__ import annotations

from pathlib import Path

from fusion_ser.config import Config
from fusion_ser.encoders.audio import build_audio_encoder, load_encoder as load_audio_encoder
from fusion_ser.encoders.base import Encoder
from fusion_ser.encoders.text import build_text_encoder, load_encoder as load_text_encoder
from fusion_ser.errors import FusionSerError


def build_encoder(cfg: Config, modality: str) -> Encoder:
    """The audio or text encoder of the config."""
    if modality == "audio":
        return build_audio_encoder(cfg.audio_encoder)
    if modality == "text":
        return build_text_encoder(cfg.text_encoder)
    raise FusionSerError(f"modality '{modality}' has no single encoder; use audio or text")


def load_encoder(modality: str, directory: str | Path) -> Encoder:
    """Rebuild an encoder of `modality` saved with its save_pretrained."""
    if modality == "text":
        return load_text_encoder(directory)
    return load_audio_encoder(directory)
