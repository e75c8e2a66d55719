"""Building models from a config: the model of cfg.modality, with the train split's class weights installed."""

from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from fusion_ser.config import Config, ConfigError
from fusion_ser.schema import has_classes
from fusion_ser.encoders.base import Encoder
from fusion_ser.models.attention import AttentionFusionModel
from fusion_ser.models.losses import WEIGHTED_LOSSES, class_weights
from fusion_ser.models.unimodal import UnimodalModel


def build_model(cfg: Config, labels: list[str], train_labels: Optional[Sequence[str]] = None,
                auxiliary_classes: Optional[Sequence[str]] = None) -> nn.Module:
    """The model of cfg.modality (UnimodalModel for audio/text, AttentionFusionModel for both).

    With `train_labels` (the label of every training row), a categorical model whose loss is class-weighted gets
    the weights (N / (K * n_c)) ** loss.class_weight_power of those rows; with `auxiliary_classes`, the training-only head of
    multitask.auxiliary.
    """
    if cfg.head.standardize != "none" and cfg.modality != "audio":
        raise ConfigError(f"head.standardize={cfg.head.standardize} standardises the frames of an audio model; "
                          f"modality {cfg.modality} has none of its own: set head.standardize=none",
                          options=("head.standardize",))
    cls = AttentionFusionModel if cfg.modality == "both" else UnimodalModel
    model = cls(cfg, labels, auxiliary_classes=auxiliary_classes)
    if train_labels is not None and has_classes(cfg.task) and cfg.loss.type in WEIGHTED_LOSSES:
        model.criterion.set_class_weights(class_weights([str(x) for x in train_labels], labels,
                                                        cfg.loss.class_weight_power))
    return model


def model_encoders(model: nn.Module) -> dict[str, Encoder]:
    """The outermost Encoder submodules of a model by dotted name (unwraps DDP)."""
    model = getattr(model, "module", model)
    found: dict[str, Encoder] = {}
    for name, module in model.named_modules():
        if isinstance(module, Encoder) and not any(name.startswith(p + ".") for p in found):
            found[name] = module
    return found
