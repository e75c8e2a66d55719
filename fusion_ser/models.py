"""Models of the project: the baseline heads, the unimodal model (encoder + pooling + head), save and load.

Every model's forward takes the batch dict of docs/architecture.md and returns a `ModelOutput`, so the one
trainer, checkpointing and prediction code serve audio, text and fusion models alike.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from fusion_ser.config import Config, ConfigError, read_config, save_config
from fusion_ser.encoders.base import Encoder
from fusion_ser.errors import FusionSerError
from fusion_ser.training.losses import build_criterion

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.safetensors"
ENCODERS_DIR = "encoders"


class ModelLoadError(FusionSerError):
    """A model directory that cannot be rebuilt."""


@dataclass
class ModelOutput:
    """What every model returns: class logits or attribute values (manifest scale), the loss, and extra records."""

    logits: Optional[torch.Tensor] = None  # (B, K) categorical
    attributes: Optional[torch.Tensor] = None  # (B, A) attributes, on the manifest scale
    loss: Optional[torch.Tensor] = None  # when the batch carries targets
    records: dict[str, Any] = field(default_factory=dict)  # e.g. the pooled embedding

    @classmethod
    def from_head(cls, task: str, out: torch.Tensor, pooled: torch.Tensor, criterion: Any,
                  batch: dict[str, Any]) -> "ModelOutput":
        """Wrap a head's output for `task`, with the pooled embedding and the loss when the batch has targets."""
        result = cls(records={"embedding": pooled.detach()})
        if task == "attributes":
            result.attributes = out
        else:
            result.logits = out
        if criterion.has_targets(batch):
            result.loss = criterion(out, batch)
        return result


class BaselineHead(nn.Module):
    """The Odyssey 2024 baseline head: Dropout 0.5, Linear, LayerNorm, ReLU, Dropout, Linear."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 256, dropout: float = 0.5):
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(in_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AttributeHead(nn.Module):
    """Attribute regression: one baseline head for all attributes, or one per attribute (head.per_attribute).

    Outputs are on a [0, 1] scale; `scale_out` / `scale_in` map to and from the manifest's data.attribute_range.
    """

    def __init__(self, in_dim: int, attributes: list[str], hidden_dim: int, dropout: float, per_attribute: bool,
                 attribute_range: list[float]):
        super().__init__()
        self.per_attribute = per_attribute
        if per_attribute:
            self.heads = nn.ModuleList(BaselineHead(in_dim, 1, hidden_dim, dropout) for _ in attributes)
        else:
            self.heads = nn.ModuleList([BaselineHead(in_dim, len(attributes), hidden_dim, dropout)])
        self.low, self.high = float(attribute_range[0]), float(attribute_range[1])

    def scale_out(self, z: torch.Tensor) -> torch.Tensor:
        """Model scale [0, 1] -> manifest scale."""
        return self.low + z * (self.high - self.low)

    def scale_in(self, y: torch.Tensor) -> torch.Tensor:
        """Manifest scale -> model scale [0, 1]."""
        return (y - self.low) / (self.high - self.low)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attribute values on the manifest scale, (B, A)."""
        z = torch.cat([h(x) for h in self.heads], dim=-1)
        return self.scale_out(z)


def build_head(cfg: Config, in_dim: int, labels: list[str]) -> nn.Module:
    """The head of cfg.task: class logits (B, K) or attribute values (B, A) on the manifest scale."""
    if cfg.task == "attributes":
        return AttributeHead(in_dim, list(cfg.data.attributes), cfg.head.hidden_dim, cfg.head.dropout,
                             cfg.head.per_attribute, list(cfg.data.attribute_range))
    return BaselineHead(in_dim, len(labels), cfg.head.hidden_dim, cfg.head.dropout)


class TokenPooling(nn.Module):
    """Text pooling as text_encoder.pooling asks (cls / mean / last token), so decoder LLMs pool their last token."""

    def __init__(self, mode: str, dim: int):
        super().__init__()
        self.mode = mode
        self.output_dim = dim

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from fusion_ser.encoders.text import pool_tokens

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

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean.to(features.dtype)) / self.std.to(features.dtype)


class UnimodalModel(nn.Module):
    """Encoder (audio or text) + pooling over frames/tokens + baseline head.

    Audio frames are pooled as cfg.pooling says; text tokens as text_encoder.pooling says (the encoder's mode).
    """

    def __init__(self, cfg: Config, labels: list[str], encoder: Optional[Encoder] = None):
        super().__init__()
        from fusion_ser.encoders.pooling import build_pooling

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
        self.frame_norm = FrameStandardizer(self.encoder.output_dim) if cfg.head.standardize_frames else None
        self.pooled_norm = (nn.BatchNorm1d(self.pooling.output_dim, affine=False) if cfg.head.standardize_pooled
                            else None)
        if self.frame_norm is not None and not self.encoder.is_frozen:
            raise ConfigError("head.standardize_frames needs a frozen encoder (train-set frame statistics would "
                              "drift while the encoder trains); set it to false or freeze the encoder")

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        """Encode, pool, predict; the loss is added when the batch carries targets."""
        enc = self.encoder(batch)
        features = self.frame_norm(enc.features) if self.frame_norm is not None else enc.features
        pooled = self.pooling(features, enc.mask)
        if self.pooled_norm is not None:
            pooled = self.pooled_norm(pooled)
        return ModelOutput.from_head(self.task, self.head(pooled), pooled, self.criterion, batch)


def build_encoder(cfg: Config, modality: str) -> Encoder:
    """The audio or text encoder of the config."""
    if modality == "audio":
        from fusion_ser.encoders.audio import build_audio_encoder

        return build_audio_encoder(cfg.audio_encoder)
    if modality == "text":
        from fusion_ser.encoders.text import build_text_encoder

        return build_text_encoder(cfg.text_encoder)
    raise FusionSerError(f"modality '{modality}' has no single encoder; use audio or text")


def build_model(cfg: Config, labels: list[str]) -> nn.Module:
    """The model of cfg.modality: UnimodalModel for audio/text, the attention fusion model for both."""
    if cfg.modality == "both":
        from fusion_ser.fusion.attention import AttentionFusionModel

        return AttentionFusionModel(cfg, labels)
    return UnimodalModel(cfg, labels)


def model_encoders(model: nn.Module) -> dict[str, Encoder]:
    """The outermost Encoder submodules of a model by dotted name (unwraps DDP)."""
    model = getattr(model, "module", model)
    found: dict[str, Encoder] = {}
    for name, module in model.named_modules():
        if isinstance(module, Encoder) and not any(name.startswith(p + ".") for p in found):
            found[name] = module
    return found


def set_class_weights(model: nn.Module, weights: torch.Tensor) -> bool:
    """Install train-split class weights into the model's criterion; False when the model has none."""
    criterion = getattr(getattr(model, "module", model), "criterion", None)
    if criterion is None or not hasattr(criterion, "set_class_weights"):
        return False
    criterion.set_class_weights(weights)
    return True


def _encoder_loader(modality: str):
    """load_encoder of the module that builds encoders of this modality."""
    if modality == "text":
        from fusion_ser.encoders.text import load_encoder
    else:
        from fusion_ser.encoders.audio import load_encoder
    return load_encoder


def save_model(model: nn.Module, cfg: Config, labels: list[str], directory: str | Path) -> Path:
    """Write config.yaml, labels.json, each encoder's save_pretrained and the other weights as safetensors."""
    model = getattr(model, "module", model)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_config(cfg, d / "config.yaml")
    (d / "labels.json").write_text(json.dumps(list(labels)))
    encoders = model_encoders(model)
    index = {}
    for name, enc in encoders.items():
        sub = d / ENCODERS_DIR / name
        enc.save_pretrained(sub)
        index[name] = {"modality": enc.modality, "dir": f"{ENCODERS_DIR}/{name}"}
    (d / "encoders.json").write_text(json.dumps(index, indent=2))
    state = {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if not any(k == n or k.startswith(n + ".") for n in encoders)
    }
    save_file(state, str(d / WEIGHTS_FILE))
    return d


def load_model(directory: str | Path) -> tuple[nn.Module, Config, list[str]]:
    """Rebuild a model saved by save_model, without access to the training config files."""
    d = Path(directory)
    if not (d / "config.yaml").is_file() or not (d / WEIGHTS_FILE).is_file():
        raise ModelLoadError(f"'{d}' is not a saved model (needs config.yaml and {WEIGHTS_FILE}); point at a run's model/ folder")
    cfg = read_config(d / "config.yaml")
    labels = json.loads((d / "labels.json").read_text())
    index = json.loads((d / "encoders.json").read_text()) if (d / "encoders.json").is_file() else {}
    loaded = {}
    for name, meta in index.items():
        loaded[name] = _encoder_loader(meta["modality"])(d / meta["dir"])
    if cfg.modality in ("audio", "text") and set(loaded) == {"encoder"}:
        model = UnimodalModel(cfg, labels, encoder=loaded["encoder"])
    elif cfg.modality == "both" and set(loaded) == {"audio_encoder", "text_encoder"}:
        from fusion_ser.fusion.attention import AttentionFusionModel

        model = AttentionFusionModel(cfg, labels, **loaded)
    else:
        model = build_model(cfg, labels)
        for name, enc in loaded.items():
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, enc)
    state = load_file(str(d / WEIGHTS_FILE))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not any(k == n or k.startswith(n + ".") for n in loaded)]
    if missing or unexpected:
        raise ModelLoadError(f"'{d / WEIGHTS_FILE}' does not match the model of its config.yaml "
                             f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})")
    model.eval()
    return model, cfg, labels
