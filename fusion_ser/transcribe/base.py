"""The one transcriber interface: 16 kHz float32 audio in, text out, with an id that keys the transcript cache."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from typing import Any, Optional

import numpy as np
import torch

from fusion_ser.device import resolve_device
from fusion_ser.errors import FusionSerError


class TranscribeError(FusionSerError):
    """A transcription backend, model or option that cannot be used as asked."""


class Transcriber(ABC):
    """A speech recognizer; backends batch in `transcribe_batch` where they can."""

    backend: str = ""

    def __init__(self, model: str, options: dict[str, Any]):
        self.model_name = model
        self.options = dict(options)

    @abstractmethod
    def transcribe_batch(self, audios: list[np.ndarray]) -> list[str]:
        """Transcripts of several clips (each 16 kHz mono float32), in order."""

    def transcribe(self, audio: np.ndarray) -> str:
        """Transcript of one clip (16 kHz mono float32)."""
        return self.transcribe_batch([audio])[0]

    def cache_id(self) -> str:
        """Identifies (backend, model, options that change the text): the key prefix of the transcript cache."""
        key = json.dumps({"backend": self.backend, "model": self.model_name, "options": self.options},
                         sort_keys=True, default=str)
        return f"{self.backend}-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def check_audio_array(audio: Any, index: int = 0) -> np.ndarray:
    """A 1-D float32 array, or TranscribeError naming which clip of the batch is malformed."""
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim != 1 or a.size == 0:
        raise TranscribeError(f"clip {index} of the batch: expected 1-D 16 kHz mono audio, got shape {a.shape}")
    return a


def normalize_text(text: str) -> str:
    """Collapse whitespace of a decoded transcript."""
    return " ".join(text.split())


def optional(value: Optional[str]) -> Optional[str]:
    """None for empty/'auto' option strings, else the string."""
    return None if value in (None, "", "auto") else value


def pick_device(device: str) -> torch.device:
    """fusion_ser.device.resolve_device, with an unusable device turned into a TranscribeError."""
    try:
        return resolve_device(device)
    except RuntimeError as e:
        raise TranscribeError(f"device '{device}': {e}", options=("device",)) from None
