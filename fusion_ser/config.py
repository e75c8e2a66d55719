"""Typed experiment configuration: dataclasses loaded from YAML, dotted overrides, strict keys.

A config is the whole recipe of a run. Unknown or mistyped keys are errors that name the key and the closest
valid one, so a typo never silently falls back to a default. An option with a fixed set of choices is typed
`Literal[...]`: that type is the one declaration of its choices, checked when loading and by `Config.validate`, and
read by `choices()` (e.g. for the CLI's click.Choice lists). A number's range is declared on its field with `ranged`,
checked there too (NaN/inf never pass); that generic machinery is `fusion_ser.typed_config`. Older keys map to
their successors (`upgrade_legacy_keys`), so old runs load.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml

from fusion_ser.schema import ATTRIBUTES, SAMPLE_RATE
from fusion_ser.typed_config import (  # noqa: F401  (re-exported: the config's public surface)
    ConfigError, _coerce, _merge, build_dataclass, check_choices, choices, parse_overrides, ranged,
)

log = logging.getLogger(__name__)


@dataclass
class ManifestSource:
    """One corpus of a multi-corpus training (data.manifests): its manifest, its name, labels renamed on reading."""

    path: str = ""
    corpus: Optional[str] = None  # None: the manifest file's stem
    label_map: dict = field(default_factory=dict)  # e.g. {calm: neutral}; a label mapped to "" leaves the rows out


@dataclass
class TextColumns:
    """The manifest column each split's text comes from: e.g. human transcripts (`text`) to train on and Whisper's
    (`asr_text`, from `fusion-ser transcribe --column asr_text`) for dev and test, as the model meets ASR output."""

    train: str = "text"
    dev: str = "text"
    test: str = "text"


@dataclass
class DataConfig:
    """Which rows of the manifest are used and how audio is prepared."""

    manifest: Optional[str] = None
    # several corpora instead of one manifest: their rows concatenated with a `corpus` column
    manifests: list[ManifestSource] = field(default_factory=list)
    corpus_sampling: Literal["proportional", "balanced"] = "proportional"  # balanced: each corpus equally often
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
    # class sampling of the train epochs (training/sampling.py): random (as the rows come) | balanced (every class
    # an equal share of each epoch, unweighted loss) | staged (MEDUSA: data.staged_epochs random epochs with class
    # weights (N / (K n_c))^0.5, then balanced epochs holding data.no_agreement_quota of no-agreement rows)
    sampler: Literal["random", "balanced", "staged"] = "random"
    staged_epochs: int = ranged(2, "[0, inf)")
    no_agreement_quota: float = ranged(0.1, "[0, 1)")  # fraction of each balanced-stage epoch (staged)
    # soft targets from the manifest's `annotations` column (one vote per annotator): each epoch every vote is
    # dropped with probability data.annotator_dropout (at least one kept), from (seed, epoch, utt_id)
    soft_labels: Literal["none", "annotators"] = "none"
    annotator_dropout: float = ranged(0.0, "[0, 1)")
    # mixup of training batches (training/mixup.py): with probability data.mixup a batch is mixed with a permutation
    # of itself, lambda ~ Beta(mixup_alpha, mixup_alpha), targets mixed the same way; pooled: the pooled embedding
    # before the head (manifold mixup) | waveform: the raw audio (a trained encoder reading waveforms)
    mixup: float = ranged(0.0, "[0, 1]")
    mixup_alpha: float = ranged(0.4, "(0, inf)")
    mixup_on: Literal["pooled", "waveform"] = "pooled"
    text_columns: TextColumns = field(default_factory=TextColumns)  # text and attention models: the text of each split


@dataclass
class AudioEncoderConfig:
    """Audio encoder: Hugging Face SSL model, CTranslate2 Whisper encoder, or log-mel + small CNN."""

    type: Literal["hf", "ct2_whisper", "fbank"] = "ct2_whisper"
    name_or_path: Optional[str] = None  # None: the offline default of the type
    # lora: adapters on a frozen backbone (hf models; ct2_whisper through its PyTorch copy); the rest stays frozen
    finetune: Literal["frozen", "full", "top_n", "lora"] = "frozen"
    trainable_layers: int = ranged(0, "[0, inf)")  # with finetune=top_n
    freeze_feature_encoder: bool = True  # the CNN front end of SSL models
    # last: the encoder's last layer only | weighted: learned softmax-weighted sum of all hidden states |
    # concat: all hidden states side by side
    layers: Literal["last", "weighted", "concat"] = "weighted"
    gradient_checkpointing: bool = False
    compute_type: str = "default"  # CTranslate2 compute type
    threads: int = ranged(1, "[0, inf)")  # CTranslate2 threads per encode call (0: torch's count; 1: fastest on a shared CPU)
    # ct2_whisper, layers last: 0 = each clip encoded unpadded | W = each <= 30 s piece padded to the transcriber's
    # window (2x its length, >= W s; fusion_ser.whisper_window): the frames the faster-whisper transcriber with
    # window_seconds W computes, so predict shares one encoder pass between the ASR and the audio model
    window_seconds: float = ranged(0.0, "[0, 30]")
    # ct2_whisper's PyTorch copy (layers weighted/concat, frozen): none = float32 | int8 = dynamic int8 matmuls (the
    # Linear layers; CPU), about 2x faster, frames close to float32's, cached apart from them
    quantize: Literal["none", "int8"] = "none"
    # ct2_whisper's frozen float32 copy on the CPU: auto = ONNX Runtime where it is installed (within 10 % of
    # CTranslate2's speed, the same frames to float rounding), else PyTorch | torch | onnxruntime (an error without it)
    runtime: Literal["auto", "torch", "onnxruntime"] = "auto"
    n_mels: int = ranged(80, "[1, inf)")  # fbank
    hidden_dim: int = ranged(256, "[1, inf)")  # fbank network width
    # finetune=lora: SAIL's (Interspeech 2025) rank 16 on the feed-forward layers of the upper half of the layers
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(r=16, alpha=32, layers="upper_half"))


@dataclass
class LoraConfig:
    r: int = ranged(8, "[1, inf)")
    alpha: int = ranged(16, "(0, inf)")
    dropout: float = ranged(0.1, "[0, 1)")
    target_modules: Optional[list[str]] = None  # None: per-architecture default
    layers: Literal["all", "upper_half"] = "all"  # upper_half: only the targets in the upper half of the layers


@dataclass
class TextEncoderConfig:
    """Text encoder: any Hugging Face encoder or decoder LLM, frozen, full fine-tuned, or LoRA."""

    name_or_path: Optional[str] = None  # None: packaged all-MiniLM-L6-v2
    finetune: Literal["lora", "full", "frozen"] = "lora"
    pooling: Literal["auto", "cls", "mean", "last"] = "auto"  # auto: mean for encoders, last for decoders
    max_length: int = ranged(128, "[1, inf)")
    # previous turns of the same conversation read before each text (manifest columns conversation, turn; rows
    # without them get none); the target is kept whole, the oldest context is cut first (data/context.py). A
    # manifest without conversations records 0 in its run. 0: on MELD dev two turns tie with none over two seeds
    context_turns: int = ranged(0, "[0, inf)")
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
    # frozen encoders: standardise each clip's frames with the statistics of its speaker's or corpus's frames (at
    # test time those of the unlabelled rows evaluated together; training statistics for a clip alone)
    standardize: Literal["none", "corpus", "speaker"] = "none"


@dataclass
class MultitaskConfig:
    """task: multitask: loss = weight_categorical * (loss.type) + weight_attributes * sum of (1 - CCC) (MEDUSA: 1.5, 0.4)."""

    weight_categorical: float = ranged(1.5, "[0, inf)")
    weight_attributes: float = ranged(0.4, "[0, inf)")
    # an auxiliary classifier on a manifest column (SAIL: gender), any task: + weight_auxiliary * its cross-entropy
    # while training; its classes are the column's train values; not predicted or saved. None: off
    auxiliary: Optional[str] = None
    weight_auxiliary: float = ranged(0.1, "[0, inf)")


@dataclass
class LossConfig:
    # soft_ce / kl: against soft targets (p_<label> columns, or data.soft_labels annotators); attributes: 1-CCC
    type: Literal["ce", "weighted_ce", "focal", "soft_ce", "kl"] = "weighted_ce"
    # class weights of the weighted losses: (N / (K n_c)) ** power; 1 the Odyssey baseline's, 0.5 MEDUSA's square root
    class_weight_power: float = ranged(1.0, "[0, 2]")
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
    selection_metric: str = "auto"  # auto: macro_f1 (categorical) / ccc_mean (attributes) / multitask_score
    cache_features: bool = True  # cache frames of frozen encoders on disk
    cache_dir: Optional[str] = None  # None: ~/.cache/fusion-ser/features
    # fraction of the machine's RAM that cached frames may hold in memory (shared by a node's ranks); 0: read from disk
    feature_memory: float = ranged(0.25, "[0, 1]")
    # the resumable checkpoint: after a fit's first and last epoch, and in between at most every N seconds (a head
    # over cached vectors trains an epoch in less time than writing one); 0: after every epoch
    checkpoint_seconds: float = ranged(30.0, "[0, inf)")
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
    task: Literal["categorical", "attributes", "multitask"] = "categorical"
    modality: Literal["audio", "text", "both"] = "audio"
    data: DataConfig = field(default_factory=DataConfig)
    audio_encoder: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    multitask: MultitaskConfig = field(default_factory=MultitaskConfig)
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
        if self.data.soft_labels == "annotators" and (self.task == "attributes" or self.loss.type not in ("soft_ce", "kl")):
            raise ConfigError("data.soft_labels=annotators trains a categorical model on the annotators' vote "
                              f"distributions: set loss.type to soft_ce or kl (got task {self.task}, loss.type "
                              f"{self.loss.type})")
        target_columns = ["utt_id", "path", "split", "label", "text", *self.data.attributes]
        if self.multitask.auxiliary is not None and self.multitask.auxiliary in target_columns:
            raise ConfigError(f"multitask.auxiliary: '{self.multitask.auxiliary}' is a target or key column; name "
                              "another manifest column (e.g. gender)", options=("multitask.auxiliary",))
        if self.data.mixup > 0 and self.data.mixup_on == "waveform" and self.modality != "audio":
            raise ConfigError(f"data.mixup_on=waveform mixes the audio of an audio model; modality {self.modality} "
                              "mixes its pooled embedding: set data.mixup_on=pooled")
        return self


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
