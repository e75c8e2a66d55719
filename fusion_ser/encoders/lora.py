"""LoRA adapters on any encoder backbone through peft: which Linear layers get one, and wrapping the backbone.

Targets are given as module-name suffixes (e.g. `fc1`, `intermediate_dense`); `layers: upper_half` keeps only those
inside the upper half of the numbered layer stack (`...layers.7.fc1`, `blocks.3.ffn_in`), SAIL's choice for Whisper.
The selection is written out as full module names, so the adapter config peft saves says exactly what was adapted.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from torch import nn

from fusion_ser.config import LoraConfig
from fusion_ser.errors import FusionSerError

log = logging.getLogger(__name__)

_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|blocks)\.(\d+)\.")


class LoraError(FusionSerError):
    """LoRA options that do not fit the backbone."""


def layer_index(name: str) -> int | None:
    """The index of the numbered layer a module sits in (`encoder.layers.5.fc1` -> 5), or None outside the stack."""
    m = _LAYER_INDEX.search(name)
    return int(m.group(1)) if m else None


def select_targets(model: nn.Module, suffixes: list[str], layers: str, option: str) -> list[str]:
    """Full names of the Linear modules whose name ends with one of `suffixes`, in every layer or the upper half."""
    found = [n for n, mod in model.named_modules()
             if isinstance(mod, nn.Linear) and any(n == s or n.endswith("." + s) for s in suffixes)]
    if not found:
        raise LoraError(f"{option}.target_modules {suffixes} match no Linear layer of {type(model).__name__}; give the "
                        "names of its projections (e.g. [q_proj, v_proj] or [fc1, fc2])")
    if layers == "all":
        return found
    indexed = [(n, layer_index(n)) for n in found]
    depth = max((i for _, i in indexed if i is not None), default=-1) + 1
    if depth < 2:
        raise LoraError(f"{option}.layers: upper_half needs targets inside a stack of numbered layers; {suffixes} are "
                        f"not (found {found[:3]}); use layers: all")
    return [n for n, i in indexed if i is not None and i >= depth // 2]


def add_lora(backbone: nn.Module, cfg: LoraConfig, default_targets: list[str], option: str) -> nn.Module:
    """The backbone wrapped by peft with LoRA on the selected layers; only the adapter weights train."""
    import peft

    backbone.requires_grad_(False)
    targets = select_targets(backbone, list(cfg.target_modules or default_targets), cfg.layers, option)
    peft_cfg = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                               bias="none")
    model = peft.get_peft_model(backbone, peft_cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("LoRA (r=%d) on %d layers of %s: %d trainable weights", cfg.r, len(targets), type(backbone).__name__,
             trainable)
    return model


def save_adapter(backbone: nn.Module, directory: str | Path) -> None:
    """The peft adapter (adapter_config.json + adapter_model.safetensors) of a LoRA-wrapped backbone, for use
    outside fusion-ser (e.g. `PeftModel.from_pretrained(base, directory)`)."""
    backbone.save_pretrained(str(directory))
