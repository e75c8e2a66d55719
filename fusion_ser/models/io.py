"""Saving and loading a model directory: config.yaml, labels.json, each encoder's own folder, other weights.

A saved model is rebuilt from its folder alone (no training config files); weights are safetensors only.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from fusion_ser.config import Config, read_config, save_config
from fusion_ser.encoders.build import load_encoder
from fusion_ser.errors import FusionSerError
from fusion_ser.models.attention import AttentionFusionModel
from fusion_ser.models.factory import build_model, model_encoders
from fusion_ser.models.unimodal import UnimodalModel

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.safetensors"
ENCODERS_DIR = "encoders"


class ModelLoadError(FusionSerError):
    """A model directory that cannot be rebuilt."""


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
    state = {  # the encoders are saved above; the training-only auxiliary head is not kept
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if not any(k == n or k.startswith(n + ".") for n in encoders) and not k.startswith("auxiliary.")
    }
    save_file(state, str(d / WEIGHTS_FILE))
    return d


def read_saved(directory: str | Path) -> tuple[Config, list[str]]:
    """The config and labels of a folder written by save_model, checked to be one; its weights stay on disk (a
    predictor reads them on first use, see load_model)."""
    d = Path(directory)
    if not (d / "config.yaml").is_file() or not (d / WEIGHTS_FILE).is_file():
        raise ModelLoadError(f"'{d}' is not a saved model (needs config.yaml and {WEIGHTS_FILE}); point at a run's model/ folder")
    return read_config(d / "config.yaml"), json.loads((d / "labels.json").read_text())


def load_model(directory: str | Path) -> tuple[nn.Module, Config, list[str]]:
    """Rebuild a model saved by save_model, without access to the training config files."""
    d = Path(directory)
    cfg, labels = read_saved(d)
    index = json.loads((d / "encoders.json").read_text()) if (d / "encoders.json").is_file() else {}
    loaded = {}
    for name, meta in index.items():
        try:
            loaded[name] = load_encoder(meta["modality"], d / meta["dir"])
        except pickle.UnpicklingError as e:  # a pickle in the folder is refused by the weights-only load
            raise ModelLoadError(f"'{d / meta['dir']}' holds pickle weights that do not load as plain tensors (they "
                                 "could run code), so they are refused; weights must be safetensors: re-save the "
                                 "model") from e
    if cfg.modality in ("audio", "text") and set(loaded) == {"encoder"}:
        model = UnimodalModel(cfg, labels, encoder=loaded["encoder"])
    elif cfg.modality == "both" and set(loaded) == {"audio_encoder", "text_encoder"}:
        model = AttentionFusionModel(cfg, labels, **loaded)
    else:
        model = build_model(cfg, labels)
        for name, enc in loaded.items():
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, enc)
    try:
        state = load_file(str(d / WEIGHTS_FILE))
    except (SafetensorError, OSError) as e:
        raise ModelLoadError(f"'{d / WEIGHTS_FILE}' cannot be read ({e}); the model folder is damaged: restore it, "
                             "or train the run again") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not any(k == n or k.startswith(n + ".") for n in loaded)]
    if missing or unexpected:
        raise ModelLoadError(f"'{d / WEIGHTS_FILE}' does not match the model of its config.yaml "
                             f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})")
    model.eval()
    return model, cfg, labels
