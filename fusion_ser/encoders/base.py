"""The one encoder interface: a batch in, frame/token features and a validity mask out.

Audio and text encoders, frozen or trained, all implement `Encoder`, so pooling, heads, fusion and the trainer
never need to know which model sits underneath.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from torch import nn


@dataclass
class EncoderOutput:
    features: torch.Tensor  # (B, T, D) float
    mask: torch.Tensor  # (B, T) bool, True where a frame/token is real (not padding)


class Encoder(nn.Module, ABC):
    """Base class of every encoder.

    Batch keys an encoder may read (see docs/architecture.md, "The batch"):
      audio: "wav" (B, S) float32 16 kHz padded with zeros, "wav_lengths" (B,) long
      text:  "text" list[str] (an empty string where a row has no text)
      cached features (frozen encoders): "cached_<modality>" (B, ..., T, D) padded, "cached_<modality>_mask" (B, T);
      when these keys are present the encoder uses them instead of running its backbone.
    """

    modality: ClassVar[str] = "audio"  # "audio" | "text"

    @property
    @abstractmethod
    def output_dim(self) -> int:
        """Dimension D of the features."""

    @abstractmethod
    def forward(self, batch: dict[str, Any]) -> EncoderOutput:
        """Encode a batch; padding frames are marked False in the mask."""

    @property
    def is_frozen(self) -> bool:
        """True when nothing in the encoder trains, so its outputs can be cached on disk."""
        return not any(p.requires_grad for p in self.parameters())

    def cache_id(self) -> Optional[str]:
        """A string that identifies this encoder's outputs (model + options); None when it cannot be cached."""
        return None

    def encode_for_cache(self, sample: dict[str, Any]) -> torch.Tensor:
        """Backbone output (..., T, D) of one utterance ({"wav": (S,)} or {"text": str}) for the feature cache.

        Encoders whose cache_id() is not None override this; their forward accepts the cached tensors back.
        """
        raise NotImplementedError(f"{type(self).__name__} does not support feature caching")
