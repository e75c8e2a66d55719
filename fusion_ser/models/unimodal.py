"""The unimodal model: one encoder (audio or text) + pooling over frames/tokens + the baseline head."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Iterable, Optional, Sequence

import torch
from torch import nn

from fusion_ser.config import Config, ConfigError
from fusion_ser.data.frame_store import Pooler
from fusion_ser.encoders.base import Encoder
from fusion_ser.encoders.build import build_encoder
from fusion_ser.encoders.pooling import build_pooling
from fusion_ser.encoders.text import pool_tokens
from fusion_ser.models.domain import DomainStandardizer
from fusion_ser.models.heads import build_auxiliary, build_head
from fusion_ser.models.losses import build_criterion
from fusion_ser.models.output import MIX_KEY, ModelOutput, mix_rows

logger = logging.getLogger(__name__)


class TokenPooling(nn.Module):
    """Text pooling as text_encoder.pooling asks (cls / mean / last token), so decoder LLMs pool their last token."""

    def __init__(self, mode: str, dim: int):
        super().__init__()
        self.mode = mode
        self.output_dim = dim

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return pool_tokens(features, mask, self.mode)


class FrameStandardizer(nn.Module):
    """Per-dimension standardisation of encoder frames with train-set statistics (buffers, saved with the model)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Install the train-set mean and standard deviation of each feature dimension."""
        self.mean.copy_(mean.to(self.mean))
        self.std.copy_(std.clamp(min=1e-5).to(self.std))

    def forward(self, features: torch.Tensor, utt_ids: Optional[Sequence[str]] = None) -> torch.Tensor:
        return (features - self.mean.to(features.dtype)) / self.std.to(features.dtype)


class UnimodalModel(nn.Module):
    """Encoder (audio or text) + pooling over frames/tokens + baseline head.

    Audio frames are pooled as cfg.pooling says; text tokens as text_encoder.pooling says (the encoder's mode).
    """

    def __init__(self, cfg: Config, labels: list[str], encoder: Optional[Encoder] = None,
                 auxiliary_classes: Optional[Sequence[str]] = None):
        super().__init__()
        self.task = cfg.task
        self.labels = list(labels)
        self.attributes = list(cfg.data.attributes)
        self.encoder = encoder if encoder is not None else build_encoder(cfg, cfg.modality)
        mode = getattr(self.encoder, "pooling_mode", None)
        if self.encoder.modality == "text" and mode is not None:
            self.pooling = TokenPooling(mode, self.encoder.output_dim)
        else:
            self.pooling = build_pooling(cfg.pooling, self.encoder.output_dim)
        self.head = build_head(cfg, self.pooling.output_dim, self.labels)
        self.criterion = build_criterion(cfg, len(self.labels))
        self.auxiliary = build_auxiliary(cfg, self.pooling.output_dim, auxiliary_classes)  # training only
        self.frame_norm = FrameStandardizer(self.encoder.output_dim) if cfg.head.standardize_frames else None
        if cfg.head.standardize != "none":  # by speaker or corpus, the training statistics as fallback
            self.frame_norm = DomainStandardizer(self.encoder.output_dim, cfg.head.standardize)
        self.pooled_norm = (nn.BatchNorm1d(self.pooling.output_dim, affine=False) if cfg.head.standardize_pooled
                            else None)
        if self.frame_norm is not None and not self.encoder.is_frozen:
            raise ConfigError("head.standardize_frames / head.standardize need a frozen encoder (frame statistics "
                              "would drift while the encoder trains); set them off or freeze the encoder",
                              options=("head.standardize",))

    @property
    def wants_statistics(self) -> bool:
        """True when the model standardises frames with train-set statistics that `fit_statistics` must set."""
        return self.frame_norm is not None

    @torch.no_grad()
    def fit_statistics(self, batches: Iterable[dict[str, Any]]) -> None:
        """Per-dimension mean/std of the encoder's frames over `batches` (the uncropped train set, on the model's
        device), installed into the frame standardiser."""
        if self.frame_norm is None:
            return
        was_training = self.training
        self.eval()
        total = sq = None
        count = 0.0
        for batch in batches:
            enc = self.encoder(batch)
            f = enc.features.double()
            m = enc.mask.to(f.device).double().unsqueeze(-1)
            s1, s2 = (f * m).sum(dim=(0, 1)), (f * f * m).sum(dim=(0, 1))
            total, sq = (s1, s2) if total is None else (total + s1, sq + s2)
            count += float(m.sum())
        mean = total / count
        std = (sq / count - mean * mean).clamp(min=0).sqrt()
        self.frame_norm.set_statistics(mean.float(), std.float())
        self.train(was_training)
        logger.info("frame statistics from %d frames", int(count))

    def frame_pooler(self) -> Optional[Pooler]:
        """The map from one clip's cached frames to the pooled vector, when nothing on the way trains or needs
        statistics (frozen audio encoder without trainable weights, parameter-free pooling, no frame
        standardisation): the dataset may then serve the vector itself ("pooled_audio"); otherwise None."""
        enc = self.encoder
        if (enc.modality != "audio" or self.frame_norm is not None or enc.cache_id() is None
                or any(True for _ in self.pooling.parameters()) or any(p.requires_grad for p in enc.parameters())):
            return None
        options = getattr(enc, "config", None)
        options = json.dumps(dataclasses.asdict(options), sort_keys=True, default=str) if options is not None else ""
        pooling = self.pooling

        def pool(frames: torch.Tensor) -> torch.Tensor:
            x = frames.float().unsqueeze(0)
            out = enc({"cached_audio": x, "cached_audio_mask": torch.ones(1, x.shape[-2], dtype=torch.bool)})
            return pooling(out.features, out.mask)[0]

        return Pooler(f"{enc.cache_id()}|{options}|{type(pooling).__name__}", pool)

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        """Encode, pool, predict (or start from the pooled vectors the dataset served); the loss is added when the
        batch carries targets."""
        if "pooled_audio" in batch and self.encoder.modality == "audio":
            pooled = batch["pooled_audio"].float()
        else:
            enc = self.encoder(batch)
            features = self.frame_norm(enc.features, batch.get("utt_id")) if self.frame_norm is not None else enc.features
            pooled = self.pooling(features, enc.mask)
        if self.pooled_norm is not None:
            pooled = self.pooled_norm(pooled)
        pooled = mix_rows(pooled, batch.get(MIX_KEY))  # data.mixup_on pooled: manifold mixup before the head
        result = ModelOutput.from_head(self.task, self.head(pooled), pooled, self.criterion, batch)
        return self.auxiliary.add_loss(result, pooled, batch) if self.auxiliary is not None else result
