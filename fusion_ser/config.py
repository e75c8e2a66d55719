"""Typed experiment configuration: dataclasses loaded from YAML, dotted overrides, strict keys.

A config is the whole recipe of a run. Unknown or mistyped keys are errors that name the key and the closest
valid one, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from fusion_ser.errors import FusionSerError

CATEGORICAL_LABELS = ["anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]
ATTRIBUTES = ["arousal", "valence", "dominance"]


class ConfigError(FusionSerError):
    """A config file or override that cannot be turned into a valid config."""


@dataclass
class DataConfig:
    """Which rows of the manifest are used and how audio is prepared."""

    manifest: Optional[str] = None
    labels: Optional[list[str]] = None  # None: the labels present in the train split, sorted
    attributes: list[str] = field(default_factory=lambda: list(ATTRIBUTES))
    attribute_range: list[float] = field(default_factory=lambda: [1.0, 7.0])
    keep_no_agreement: bool = False  # keep no_agreement rows in training (soft labels only)
    fold: Optional[int] = None  # with a `fold` column: fold k is test, fold k+1 (mod K) is dev, the rest train
    sample_rate: int = 16000
    max_train_seconds: float = 15.0  # random crop of longer clips, training only
    max_eval_seconds: float = 60.0  # longer clips are evaluated in their first N seconds
    min_seconds: float = 0.1
    speed_perturb: list[float] = field(default_factory=list)  # e.g. [0.9, 1.0, 1.1]: one per clip and epoch, train only


@dataclass
class AudioEncoderConfig:
    """Audio encoder: Hugging Face SSL model, CTranslate2 Whisper encoder, or log-mel + small CNN."""

    type: str = "ct2_whisper"  # hf | ct2_whisper | fbank
    name_or_path: Optional[str] = None  # None: the offline default of the type
    finetune: str = "frozen"  # frozen | full | top_n
    trainable_layers: int = 0  # with finetune=top_n
    freeze_feature_encoder: bool = True  # the CNN front end of SSL models
    layer_weighting: bool = True  # learned softmax-weighted sum of hidden states; False: last layer
    layer_combine: str = "weighted"  # with layer_weighting: weighted (learned softmax sum) | concat (side by side)
    gradient_checkpointing: bool = False
    compute_type: str = "default"  # CTranslate2 compute type
    threads: int = 1  # CTranslate2 CPU threads per encode call (0: torch's thread count); 1 is fastest on a shared CPU
    n_mels: int = 80  # fbank
    hidden_dim: int = 256  # fbank network width


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    target_modules: Optional[list[str]] = None  # None: per-architecture default


@dataclass
class TextEncoderConfig:
    """Text encoder: any Hugging Face encoder or decoder LLM, frozen, full fine-tuned, or LoRA."""

    name_or_path: Optional[str] = None  # None: packaged all-MiniLM-L6-v2
    finetune: str = "lora"  # lora | full | frozen
    pooling: str = "auto"  # auto | cls | mean | last (auto: mean for encoders, last for decoders)
    max_length: int = 128
    gradient_checkpointing: bool = False
    base_dtype: str = "fp32"  # fp32 | bf16 | fp16: dtype the base weights load in (bf16 halves a 7B LLM; LoRA stays fp32)
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class PoolingConfig:
    type: str = "attentive_stats"  # attentive_stats | mean | mean_std
    attention_dim: int = 128


@dataclass
class HeadConfig:
    """The Odyssey baseline head: Dropout, Linear, LayerNorm, ReLU, Dropout, Linear."""

    hidden_dim: int = 256
    dropout: float = 0.5
    per_attribute: bool = False  # one head per attribute (the baseline trained one model per attribute)
    standardize_frames: bool = False  # frozen encoders: per-dimension standardisation of frames with train-set statistics
    standardize_pooled: bool = False  # standardise the pooled vector (BatchNorm without affine, running statistics)


@dataclass
class LossConfig:
    type: str = "weighted_ce"  # ce | weighted_ce | focal | soft_ce   (attributes always use 1-CCC)
    focal_gamma: float = 2.0
    label_smoothing: float = 0.0


@dataclass
class OptimConfig:
    lr_encoder: float = 1e-5
    lr_head: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    schedule: str = "linear"  # linear | cosine | constant
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # > 0: evaluate, select and save an exponential moving average of the weights


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    grad_accum: int = 1  # effective batch = batch_size * grad_accum * world size
    bucketing: bool = True  # length-bucketed batches
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    early_stopping: int = 0  # epochs without dev improvement before stopping; 0: off
    selection_metric: str = "auto"  # auto: macro_f1 (categorical) / ccc_mean (attributes)
    cache_features: bool = True  # cache frames of frozen encoders on disk
    cache_dir: Optional[str] = None  # None: ~/.cache/fusion-ser/features
    num_workers: int = 0
    log_every: int = 10
    report: bool = True  # write report.md + figures (fusion_ser.evaluation) when training ends
    refit_on_dev: bool = False  # after dev selection: retrain on train+dev for the selected epochs, test with it


@dataclass
class FusionModelConfig:
    """Cross-modal attention fusion (train --modality both)."""

    dim: int = 256
    heads: int = 4
    layers: int = 1
    dropout: float = 0.1


@dataclass
class Config:
    seed: int = 0
    task: str = "categorical"  # categorical | attributes
    modality: str = "audio"  # audio | text | both
    data: DataConfig = field(default_factory=DataConfig)
    audio_encoder: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fusion: FusionModelConfig = field(default_factory=FusionModelConfig)

    def validate(self) -> "Config":
        """Check choices that the types alone cannot express."""
        _choice("task", self.task, ["categorical", "attributes"])
        _choice("modality", self.modality, ["audio", "text", "both"])
        _choice("audio_encoder.type", self.audio_encoder.type, ["hf", "ct2_whisper", "fbank"])
        _choice("audio_encoder.finetune", self.audio_encoder.finetune, ["frozen", "full", "top_n"])
        _choice("audio_encoder.layer_combine", self.audio_encoder.layer_combine, ["weighted", "concat"])
        _choice("text_encoder.finetune", self.text_encoder.finetune, ["lora", "full", "frozen"])
        _choice("text_encoder.pooling", self.text_encoder.pooling, ["auto", "cls", "mean", "last"])
        _choice("pooling.type", self.pooling.type, ["attentive_stats", "mean", "mean_std"])
        _choice("loss.type", self.loss.type, ["ce", "weighted_ce", "focal", "soft_ce"])
        _choice("optim.schedule", self.optim.schedule, ["linear", "cosine", "constant"])
        _choice("train.precision", self.train.precision, ["auto", "bf16", "fp16", "fp32"])
        if self.train.batch_size < 1 or self.train.grad_accum < 1 or self.train.epochs < 1:
            raise ConfigError("train.batch_size, train.grad_accum and train.epochs must be >= 1")
        if len(self.data.attribute_range) != 2 or self.data.attribute_range[0] >= self.data.attribute_range[1]:
            raise ConfigError("data.attribute_range must be [low, high] with low < high, e.g. [1, 7]")
        if any(not 0.5 <= float(f) <= 2.0 for f in self.data.speed_perturb):
            raise ConfigError(f"data.speed_perturb: factors must lie in [0.5, 2.0], got {self.data.speed_perturb}; "
                              "e.g. [0.9, 1.0, 1.1]")
        if not 0.0 <= self.optim.ema_decay < 1.0:
            raise ConfigError(f"optim.ema_decay must be 0 (off) or in (0, 1), got {self.optim.ema_decay}; "
                              "e.g. 0.995 averages over about 200 optimizer steps")
        return self


def _choice(key: str, value: str, allowed: list[str]) -> None:
    if value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{key}: '{value}' is not one of {allowed}.{hint}")


def _strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the field's declared type, or raise naming the key."""
    optional = typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)
    base = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: null is not allowed here (expected {getattr(base, '__name__', base)})")
    if dataclasses.is_dataclass(base):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of options, got {value!r}")
        return build_dataclass(base, value, key + ".")
    origin = typing.get_origin(base)
    if origin is list:
        (item_tp,) = typing.get_args(base) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if base is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if base is float:
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads exponents without a dot (1e-3) as strings
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if base is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def build_dataclass(cls: type, values: dict, prefix: str = "") -> Any:
    """Build a (nested) config dataclass from a mapping, strictly: unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else f" Valid keys: {', '.join(names)}."
            raise ConfigError(f"unknown config key '{prefix}{k}'.{hint}")
        kwargs[k] = _coerce(v, hints[k], prefix + k)
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_overrides(overrides: list[str]) -> dict:
    """Turn ["optim.lr_head=1e-3", "train.epochs=3"] into a nested dict; values are parsed as YAML."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value, e.g. train.epochs=5")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        value = yaml.safe_load(raw) if raw.strip() else None
        node = tree
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with another override of '{p}'")
        node[parts[-1]] = value
    return tree


def config_from_dict(values: dict) -> Config:
    return build_dataclass(Config, values or {}).validate()


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> Config:
    """Load a YAML config (or the defaults when path is None) and apply dotted key=value overrides."""
    values: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' does not exist")
        try:
            values = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{p}' is not valid YAML: {e}") from e
        if not isinstance(values, dict):
            raise ConfigError(f"config file '{p}' must hold a mapping of options at the top level")
    values = _merge(values, parse_overrides(overrides or []))
    try:
        return config_from_dict(values)
    except ConfigError as e:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{e}") from None


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path, extra: Optional[dict] = None) -> None:
    """Write the resolved config as YAML; `extra` adds top-level provenance (e.g. manifest hash) under `_run`."""
    data = config_to_dict(cfg)
    if extra:
        data["_run"] = extra
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


def read_config(path: str | Path) -> Config:
    """Read a resolved config written by save_config (ignores the `_run` provenance block)."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a resolved config must hold a mapping of options")
    data.pop("_run", None)
    try:
        return config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
