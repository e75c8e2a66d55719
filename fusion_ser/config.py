"""Typed experiment configuration: dataclasses loaded from YAML, dotted overrides, strict keys.

A config is the whole recipe of a run. Unknown or mistyped keys are errors that name the key and the closest
valid one, so a typo never silently falls back to a default. An option with a fixed set of choices is typed
`Literal[...]`: that type is the one declaration of its choices, checked when loading and by `Config.validate`, and
read by `choices()` (e.g. for the CLI's click.Choice lists). A number's range is declared on its field with `ranged`,
checked there too (NaN/inf never pass). Older keys map to their successors (`upgrade_legacy_keys`), so old runs load.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import logging
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from fusion_ser.data.schema import ATTRIBUTES, SAMPLE_RATE
from fusion_ser.errors import FusionSerError

log = logging.getLogger(__name__)


class ConfigError(FusionSerError):
    """A config file or override that cannot be turned into a valid config."""


def ranged(default: Any, interval: str) -> Any:
    """A numeric option's default and its valid range in interval notation ("[0, 1)", "(0, inf)")."""
    return field(default=default, metadata={"range": interval})


@dataclass
class DataConfig:
    """Which rows of the manifest are used and how audio is prepared."""

    manifest: Optional[str] = None
    labels: Optional[list[str]] = None  # None: the labels present in the train split, sorted
    attributes: list[str] = field(default_factory=lambda: list(ATTRIBUTES))
    attribute_range: list[float] = field(default_factory=lambda: [1.0, 7.0])
    keep_no_agreement: bool = False  # keep no_agreement rows in training (soft labels only)
    fold: Optional[int] = None  # with a `fold` column: fold k is test, fold k+1 (mod K) is dev, the rest train
    sample_rate: int = ranged(SAMPLE_RATE, "[1, inf)")
    max_train_seconds: float = ranged(15.0, "(0, inf)")  # random crop of longer clips, training only
    max_eval_seconds: float = ranged(60.0, "(0, inf)")  # longer clips are evaluated in their first N seconds
    min_seconds: float = ranged(0.1, "[0, inf)")
    speed_perturb: list[float] = field(default_factory=list)  # e.g. [0.9, 1.0, 1.1]: one per clip and epoch, train only


@dataclass
class AudioEncoderConfig:
    """Audio encoder: Hugging Face SSL model, CTranslate2 Whisper encoder, or log-mel + small CNN."""

    type: Literal["hf", "ct2_whisper", "fbank"] = "ct2_whisper"
    name_or_path: Optional[str] = None  # None: the offline default of the type
    finetune: Literal["frozen", "full", "top_n"] = "frozen"
    trainable_layers: int = ranged(0, "[0, inf)")  # with finetune=top_n
    freeze_feature_encoder: bool = True  # the CNN front end of SSL models
    # last: the encoder's last layer only | weighted: learned softmax-weighted sum of all hidden states |
    # concat: all hidden states side by side
    layers: Literal["last", "weighted", "concat"] = "weighted"
    gradient_checkpointing: bool = False
    compute_type: str = "default"  # CTranslate2 compute type
    threads: int = ranged(1, "[0, inf)")  # CTranslate2 threads per encode call (0: torch's count; 1: fastest on a shared CPU)
    n_mels: int = ranged(80, "[1, inf)")  # fbank
    hidden_dim: int = ranged(256, "[1, inf)")  # fbank network width


@dataclass
class LoraConfig:
    r: int = ranged(8, "[1, inf)")
    alpha: int = ranged(16, "(0, inf)")
    dropout: float = ranged(0.1, "[0, 1)")
    target_modules: Optional[list[str]] = None  # None: per-architecture default


@dataclass
class TextEncoderConfig:
    """Text encoder: any Hugging Face encoder or decoder LLM, frozen, full fine-tuned, or LoRA."""

    name_or_path: Optional[str] = None  # None: packaged all-MiniLM-L6-v2
    finetune: Literal["lora", "full", "frozen"] = "lora"
    pooling: Literal["auto", "cls", "mean", "last"] = "auto"  # auto: mean for encoders, last for decoders
    max_length: int = ranged(128, "[1, inf)")
    gradient_checkpointing: bool = False
    # the dtype the base weights load in (bf16 halves a 7B LLM; LoRA stays fp32)
    base_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class PoolingConfig:
    type: Literal["attentive_stats", "mean", "mean_std"] = "attentive_stats"
    attention_dim: int = ranged(128, "[1, inf)")


@dataclass
class HeadConfig:
    """The Odyssey baseline head: Dropout, Linear, LayerNorm, ReLU, Dropout, Linear."""

    hidden_dim: int = ranged(256, "[1, inf)")
    dropout: float = ranged(0.5, "[0, 1)")
    per_attribute: bool = False  # one head per attribute (the baseline trained one model per attribute)
    standardize_frames: bool = False  # frozen encoders: per-dimension standardisation of frames with train-set statistics
    standardize_pooled: bool = False  # standardise the pooled vector (BatchNorm without affine, running statistics)


@dataclass
class LossConfig:
    type: Literal["ce", "weighted_ce", "focal", "soft_ce"] = "weighted_ce"  # attributes always use 1-CCC
    focal_gamma: float = ranged(2.0, "[0, inf)")
    label_smoothing: float = ranged(0.0, "[0, 1)")


@dataclass
class OptimConfig:
    lr_encoder: float = ranged(1e-5, "(0, inf)")
    lr_head: float = ranged(1e-3, "(0, inf)")
    weight_decay: float = ranged(0.01, "[0, inf)")
    warmup_ratio: float = ranged(0.1, "[0, 1)")
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    grad_clip: float = ranged(1.0, "[0, inf)")  # 0: no clipping
    ema_decay: float = ranged(0.0, "[0, 1)")  # > 0: evaluate, select and save a moving average of the weights


@dataclass
class TrainConfig:
    epochs: int = ranged(10, "[1, inf)")
    batch_size: int = ranged(32, "[1, inf)")
    grad_accum: int = ranged(1, "[1, inf)")  # effective batch = batch_size * grad_accum * world size
    bucketing: bool = True  # length-bucketed batches
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    early_stopping: int = ranged(0, "[0, inf)")  # epochs without dev improvement before stopping; 0: off
    selection_metric: str = "auto"  # auto: macro_f1 (categorical) / ccc_mean (attributes)
    cache_features: bool = True  # cache frames of frozen encoders on disk
    cache_dir: Optional[str] = None  # None: ~/.cache/fusion-ser/features
    num_workers: int = ranged(0, "[0, inf)")
    log_every: int = ranged(10, "[1, inf)")
    report: bool = True  # write report.md + figures (fusion_ser.evaluation) when training ends
    refit_on_dev: bool = False  # after dev selection: retrain on train+dev for the selected epochs, test with it


@dataclass
class FusionModelConfig:
    """Cross-modal attention fusion (train --modality both)."""

    dim: int = ranged(256, "[1, inf)")  # divisible by heads
    heads: int = ranged(4, "[1, inf)")
    layers: int = ranged(1, "[1, inf)")
    dropout: float = ranged(0.1, "[0, 1)")


@dataclass
class Config:
    seed: int = 0
    task: Literal["categorical", "attributes"] = "categorical"
    modality: Literal["audio", "text", "both"] = "audio"
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
        """Check every Literal option's value, every number's range (also of a config built in code), cross-fields."""
        check_choices(self)
        if self.fusion.dim % self.fusion.heads:
            raise ConfigError(f"fusion.dim ({self.fusion.dim}) must be divisible by fusion.heads ({self.fusion.heads})")
        if len(self.data.attribute_range) != 2 or self.data.attribute_range[0] >= self.data.attribute_range[1]:
            raise ConfigError("data.attribute_range must be [low, high] with low < high, e.g. [1, 7]")
        if any(not 0.5 <= float(f) <= 2.0 for f in self.data.speed_perturb):
            raise ConfigError(f"data.speed_perturb: factors must lie in [0.5, 2.0], got {self.data.speed_perturb}; "
                              "e.g. [0.9, 1.0, 1.1]")
        return self


def _choice(key: str, value: Any, allowed: list) -> Any:
    """`value` when it is one of `allowed` (same type and value), else raise naming the key and the closest choice."""
    if any(type(value) is type(a) and value == a for a in allowed):
        return value
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"{key}: '{value}' is not one of {allowed}.{hint}")


def _strip_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    """The resolved field types of a config dataclass (the annotations are strings under `from __future__`)."""
    return typing.get_type_hints(cls)


def choices(cls: type, field_name: str) -> list:
    """The allowed values of a Literal option, e.g. choices(Config, "modality") or choices(Config, "pooling.type")."""
    *parents, name = field_name.split(".")
    for part in parents:
        tp = _strip_optional(_hints(cls).get(part)) if dataclasses.is_dataclass(cls) else None
        if not dataclasses.is_dataclass(tp):
            raise ValueError(f"{field_name}: '{part}' is not a section of {cls.__name__}")
        cls = tp
    if not dataclasses.is_dataclass(cls) or name not in _hints(cls):
        raise ValueError(f"{field_name}: {cls.__name__} has no option '{name}'")
    tp = _strip_optional(_hints(cls)[name])
    if typing.get_origin(tp) is not Literal:
        raise ValueError(f"{field_name}: option '{name}' of {cls.__name__} has no fixed set of choices")
    return list(typing.get_args(tp))


def _check_number(key: str, value: Any, interval: Optional[str]) -> None:
    """Raise ConfigError for a NaN or infinite float (also in a list) or a number outside its `ranged` interval."""
    for name, v in [(f"{key}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else [(key, value)]:
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{name}: {v} is not a finite number; give " + (f"one in {interval}" if interval else "one"))
    if interval and isinstance(value, (int, float)):
        low, high = (float(x) for x in interval[1:-1].split(","))
        if value < low or value > high or (value == low and interval[0] == "(") or (value == high and interval[-1] == ")"):
            raise ConfigError(f"{key}: {value} is outside the allowed range {interval}")


def check_choices(obj: Any, prefix: str = "") -> None:
    """Raise ConfigError when a Literal option of a (nested) config dataclass holds a value outside its choices, or
    a numeric option is not finite or outside the range its field declares (`ranged`)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        tp = hints[f.name]
        base = _strip_optional(tp)
        if value is None and base is not tp:
            continue
        if dataclasses.is_dataclass(base) and dataclasses.is_dataclass(value):
            check_choices(value, f"{prefix}{f.name}.")
        elif typing.get_origin(base) is Literal:
            _choice(prefix + f.name, value, list(typing.get_args(base)))
        else:
            _check_number(prefix + f.name, value, f.metadata.get("range"))


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
    if origin is Literal:
        return _choice(key, value, list(typing.get_args(base)))
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
    hints = _hints(cls)
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


_LEGACY_LAYER_KEYS = ("layer_weighting", "layer_combine")


def _upgrade_audio_encoder(section: dict, source: str) -> dict:
    """An audio_encoder mapping with layer_weighting/layer_combine (before `layers`) read as `layers`."""
    old = [k for k in _LEGACY_LAYER_KEYS if k in section]
    if not old:
        return section
    out = {k: v for k, v in section.items() if k not in _LEGACY_LAYER_KEYS}
    weighting = _coerce(section.get("layer_weighting", True), bool, "audio_encoder.layer_weighting")
    combine = _coerce(section.get("layer_combine", "weighted"), Literal["weighted", "concat"],
                      "audio_encoder.layer_combine")
    layers = combine if weighting else "last"
    given = "/".join(old)
    if "layers" in out and out["layers"] != layers:
        raise ConfigError(f"audio_encoder.layers: '{out['layers']}' conflicts with the older audio_encoder.{given}, "
                          f"which read as layers={layers}; give only audio_encoder.layers")
    out["layers"] = out.get("layers", layers)
    verb = "is" if len(old) == 1 else "are"
    log.warning("%s: audio_encoder.%s %s replaced by audio_encoder.layers; read as layers=%s",
                source, given, verb, layers)
    return out


def upgrade_legacy_keys(values: dict, source: str) -> dict:
    """A copy of a raw config mapping with the keys of older versions replaced by their successors.

    audio_encoder.layer_weighting/layer_combine become audio_encoder.layers (false: last; true with layer_combine
    weighted or concat: that). A new key given beside old keys that read otherwise is an error. One warning per call
    names `source` (a file, "overrides") and what was read.
    """
    section = (values or {}).get("audio_encoder")
    if not isinstance(section, dict):
        return values
    upgraded = _upgrade_audio_encoder(section, source)
    if upgraded is section:
        return values
    return {**values, "audio_encoder": upgraded}


def audio_encoder_config_from_dict(values: dict, source: str) -> AudioEncoderConfig:
    """An AudioEncoderConfig from a mapping (e.g. a saved audio_encoder.json), older keys upgraded, strictly checked."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: audio_encoder must be a mapping of options, got {values!r}")
    try:
        return build_dataclass(AudioEncoderConfig, _upgrade_audio_encoder(values, source), "audio_encoder.")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def config_from_dict(values: dict, source: str = "config") -> Config:
    """A validated Config from a raw mapping; older keys are upgraded (a warning names `source`)."""
    return build_dataclass(Config, upgrade_legacy_keys(values or {}, source)).validate()


def read_yaml_mapping(path: str | Path) -> dict:
    """The top-level mapping of a YAML config file; ConfigError when it is missing, not YAML, or not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist")
    try:
        values = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{p}' is not valid YAML: {e}") from e
    if not isinstance(values, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of options at the top level")
    return values


def load_config(path: Optional[str | Path] = None, overrides: Optional[list[str]] = None) -> Config:
    """Load a YAML config (or the defaults when path is None) and apply dotted key=value overrides."""
    values = read_yaml_mapping(path) if path is not None else {}
    return config_with_overrides(values, overrides, str(path) if path is not None else None)


def config_with_overrides(values: dict, overrides: Optional[list[str]] = None, source: Optional[str] = None) -> Config:
    """A config from `values` (a YAML mapping, e.g. a run's saved config) with dotted key=value overrides applied;
    errors name `source`."""
    tree = parse_overrides(overrides or [])
    try:
        # each source is upgraded on its own, so a new key overrides old keys of the file (and old keys a new one)
        merged = _merge(upgrade_legacy_keys(values, source or "overrides"), upgrade_legacy_keys(tree, "overrides"))
        return config_from_dict(merged, source or "overrides")
    except ConfigError as e:
        where = f"{source}: " if source is not None else ""
        raise ConfigError(f"{where}{e}") from None


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (a model folder's config.yaml; a run's goes through rundir)."""
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))


def read_config(path: str | Path) -> Config:
    """Read a resolved config written by save_config."""
    data = read_yaml_mapping(path)
    try:
        return config_from_dict(data, str(path))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
