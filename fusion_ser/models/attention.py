"""Cross-modal attention fusion (`fusion-ser train --modality both`).

Audio frames and text tokens from any audio and text encoder of the project are projected to `fusion.dim`; in each
layer audio attends to text and text attends to audio (padding masked), then both sequences are pooled (masked)
and concatenated into the baseline head. A row without text sees one learned "no text" token instead of its
tokens, so it is predicted from the audio path alone rather than refused.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from fusion_ser.config import Config
from fusion_ser.encoders.base import Encoder
from fusion_ser.encoders.build import build_encoder
from fusion_ser.encoders.pooling import build_pooling
from fusion_ser.models.heads import build_auxiliary, build_head
from fusion_ser.models.losses import build_criterion
from fusion_ser.models.output import MIX_KEY, ModelOutput, mix_rows


class CrossModalBlock(nn.Module):
    """Audio attends to text and text attends to audio (residual + LayerNorm), then a feed-forward per modality."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.audio_to_text = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.text_to_audio = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_audio = nn.LayerNorm(dim)
        self.norm_text = nn.LayerNorm(dim)
        self.ff_audio = _feed_forward(dim, dropout)
        self.ff_text = _feed_forward(dim, dropout)
        self.norm_audio_ff = nn.LayerNorm(dim)
        self.norm_text_ff = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, audio: torch.Tensor, audio_mask: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, Ta, D), text (B, Tt, D); masks (B, T) bool, True on real frames/tokens."""
        a_ctx, _ = self.audio_to_text(audio, text, text, key_padding_mask=~text_mask, need_weights=False)
        t_ctx, _ = self.text_to_audio(text, audio, audio, key_padding_mask=~audio_mask, need_weights=False)
        audio = self.norm_audio(audio + self.dropout(a_ctx))
        text = self.norm_text(text + self.dropout(t_ctx))
        audio = self.norm_audio_ff(audio + self.dropout(self.ff_audio(audio)))
        text = self.norm_text_ff(text + self.dropout(self.ff_text(text)))
        return audio, text


def _feed_forward(dim: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))


def text_present(batch: dict[str, Any], size: int, device: torch.device) -> torch.Tensor:
    """(B,) bool: True where the row has non-blank text."""
    texts = batch.get("text") or [""] * size
    return torch.tensor([bool(str(t).strip()) for t in texts], dtype=torch.bool, device=device)


class AttentionFusionModel(nn.Module):
    """Audio encoder + text encoder + cross-modal attention + masked pooling of both + the baseline head."""

    def __init__(self, cfg: Config, labels: list[str], audio_encoder: Optional[Encoder] = None,
                 text_encoder: Optional[Encoder] = None, auxiliary_classes: Optional[Sequence[str]] = None):
        super().__init__()
        self.task = cfg.task
        self.labels = list(labels)
        self.attributes = list(cfg.data.attributes)
        self.audio_encoder = audio_encoder if audio_encoder is not None else build_encoder(cfg, "audio")
        self.text_encoder = text_encoder if text_encoder is not None else build_encoder(cfg, "text")
        dim = cfg.fusion.dim
        self.audio_proj = nn.Sequential(nn.Linear(self.audio_encoder.output_dim, dim), nn.LayerNorm(dim))
        self.text_proj = nn.Sequential(nn.Linear(self.text_encoder.output_dim, dim), nn.LayerNorm(dim))
        self.no_text = nn.Parameter(torch.randn(dim) * 0.02)
        self.blocks = nn.ModuleList(CrossModalBlock(dim, cfg.fusion.heads, cfg.fusion.dropout) for _ in range(cfg.fusion.layers))
        self.audio_pool = build_pooling(cfg.pooling, dim)
        self.text_pool = build_pooling(cfg.pooling, dim)
        self.head = build_head(cfg, self.audio_pool.output_dim + self.text_pool.output_dim, self.labels)
        self.criterion = build_criterion(cfg, len(self.labels))
        self.auxiliary = build_auxiliary(cfg, self.audio_pool.output_dim + self.text_pool.output_dim,
                                         auxiliary_classes)  # training only

    def encode(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projected audio frames and text tokens with their masks; rows without text get the "no text" token."""
        a = self.audio_encoder(batch)
        t = self.text_encoder(batch)
        audio, audio_mask = self.audio_proj(a.features), a.mask.to(a.features.device).bool()
        text, text_mask = self.text_proj(t.features.to(audio.device)), t.mask.to(audio.device).bool()
        missing = ~text_present(batch, audio.shape[0], audio.device)
        first = torch.zeros_like(text_mask)
        first[:, 0] = True
        text = torch.where(missing[:, None, None], self.no_text.to(text.dtype).expand_as(text), text)
        text_mask = torch.where(missing[:, None], first, text_mask)
        return audio, audio_mask, text, text_mask

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        """Same contract as the unimodal models: logits or attribute values, the loss when targets are present."""
        audio, audio_mask, text, text_mask = self.encode(batch)
        for block in self.blocks:
            audio, text = block(audio, audio_mask, text, text_mask)
        pooled = torch.cat([self.audio_pool(audio, audio_mask), self.text_pool(text, text_mask)], dim=-1)
        pooled = mix_rows(pooled, batch.get(MIX_KEY))  # data.mixup_on pooled: manifold mixup before the head
        result = ModelOutput.from_head(self.task, self.head(pooled), pooled, self.criterion, batch)
        return self.auxiliary.add_loss(result, pooled, batch) if self.auxiliary is not None else result
