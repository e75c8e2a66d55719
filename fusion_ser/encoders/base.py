"""The one encoder interface: a batch in, frame/token features and a validity mask out.

Audio and text encoders, frozen or trained, all implement `Encoder`, so pooling, heads, fusion and the trainer
never need to know which model sits underneath. The audio encoders share `AudioEncoder` and the helpers below;
their factory (`fusion_ser.encoders.audio`) imports them, and nothing here imports back.
"""

from __future__ import annotations

import dataclasses
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from fusion_ser.config import AudioEncoderConfig
from fusion_ser.errors import FusionSerError

AUDIO_CONFIG_FILE = "audio_encoder.json"
AUDIO_WEIGHTS_FILE = "audio_encoder.safetensors"


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


def pad_frames(frames: list[torch.Tensor], dtype: Optional[torch.dtype] = None) -> EncoderOutput:
    """Stack per-utterance (..., T_i, D) tensors into (B, ..., T_max, D) zero-padded, with a (B, T_max) mask.

    The stack has `dtype` (default: that of the first tensor) and lies on the first tensor's device.
    """
    t_max = max(f.shape[-2] for f in frames)
    lead = frames[0].shape[:-2]
    out = frames[0].new_zeros((len(frames), *lead, t_max, frames[0].shape[-1]), dtype=dtype or frames[0].dtype)
    mask = torch.zeros((len(frames), t_max), dtype=torch.bool, device=frames[0].device)
    for i, f in enumerate(frames):
        out[i, ..., : f.shape[-2], :] = f.to(out.dtype)
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
        """Write audio_encoder.json (type + options) and the trainable weights as safetensors into `directory`,
        so that `fusion_ser.encoders.audio.load_encoder(directory)` rebuilds this encoder."""
        cfg = getattr(self, "config", None)
        if not isinstance(cfg, AudioEncoderConfig):
            raise AudioEncoderError(f"{type(self).__name__} has no AudioEncoderConfig; build it with build_audio_encoder")
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = _trainable_state(self)
        if state:
            save_file(state, str(out / AUDIO_WEIGHTS_FILE))
        elif (out / AUDIO_WEIGHTS_FILE).exists():
            (out / AUDIO_WEIGHTS_FILE).unlink()
        meta = {"config": dataclasses.asdict(cfg), "weights": sorted(state)}
        (out / AUDIO_CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        return out


def _trainable_state(encoder: Encoder) -> dict[str, torch.Tensor]:
    """Weights that differ from what the builder recreates: the parameters that train."""
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    state = encoder.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state.items() if k in trainable}
