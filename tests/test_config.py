"""The typed config: strict keys with the closest valid name, types, dotted overrides, nulls, round trips."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from fusion_ser.rundir import load_run_config, write_run_config

from fusion_ser.config import (
    AudioEncoderConfig,
    Config,
    ConfigError,
    PoolingConfig,
    audio_encoder_config_from_dict,
    choices,
    load_config,
    parse_overrides,
    read_config,
    save_config,
    upgrade_legacy_keys,
)


def _yaml(tmp_path, data, name="c.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_defaults_without_a_file():
    cfg = load_config()
    assert cfg == Config() and cfg.train.epochs == 10 and cfg.data.labels is None


def test_unknown_key_names_the_closest_valid_key_and_the_file(tmp_path):
    p = _yaml(tmp_path, {"train": {"epocs": 3}})
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert str(p) in msg and "unknown config key 'train.epocs'" in msg and "Did you mean 'train.epochs'?" in msg
    with pytest.raises(ConfigError, match="unknown config key 'modalty'. Did you mean 'modality'"):
        load_config(None, ["modalty=text"])
    with pytest.raises(ConfigError, match="Valid keys: .*hidden_dim"):
        load_config(None, ["head.zzzzzz=1"])


@pytest.mark.parametrize("override,message", [
    ("train.epochs=three", "train.epochs: expected an integer, got 'three'"),
    ("train.epochs=2.5", "train.epochs: expected an integer"),
    ("optim.lr_head=fast", "optim.lr_head: expected a number"),
    ("train.bucketing=1", "train.bucketing: expected true or false"),
    ("data.labels=anger", "data.labels: expected a list"),
    ("data.attribute_range=[1, high]", r"data.attribute_range\[1\]: expected a number"),
    ("train=3", "train: expected a mapping"),
    ("task=categorcal", "task: 'categorcal' is not one of .* Did you mean 'categorical'"),
    ("train.batch_size=0", "train.batch_size"),
    ("data.attribute_range=[7, 1]", "low < high"),
])
def test_wrong_types_and_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_dotted_overrides_are_parsed_as_yaml_and_merged_over_the_file(tmp_path):
    p = _yaml(tmp_path, {"train": {"epochs": 3, "batch_size": 8}, "optim": {"lr_head": 0.01}})
    cfg = load_config(p, ["train.epochs=5", "optim.lr_head=1e-3", "data.labels=[anger, sadness]",
                          "text_encoder.lora.r=4", "seed=7", "data.attribute_range=[1, 5]"])
    assert cfg.train.epochs == 5 and cfg.train.batch_size == 8
    assert cfg.optim.lr_head == pytest.approx(1e-3) and isinstance(cfg.optim.lr_head, float)
    assert cfg.data.labels == ["anger", "sadness"] and cfg.text_encoder.lora.r == 4 and cfg.seed == 7
    assert cfg.data.attribute_range == [1.0, 5.0]
    assert load_config(None, ["optim.weight_decay=2"]).optim.weight_decay == 2.0


def test_yaml_exponents_without_a_dot_are_numbers(tmp_path):
    p = tmp_path / "lr.yaml"
    p.write_text("optim:\n  lr_encoder: 5e-5\n  lr_head: 1E-3\n")
    cfg = load_config(p)
    assert cfg.optim.lr_encoder == pytest.approx(5e-5) and cfg.optim.lr_head == pytest.approx(1e-3)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="must look like key=value"):
        parse_overrides(["train.epochs"])
    with pytest.raises(ConfigError, match="empty key"):
        parse_overrides(["=3"])
    with pytest.raises(ConfigError, match="conflicts"):
        parse_overrides(["train.epochs=5", "train.epochs.x=1"])
    assert parse_overrides(["a.b=1", "a.c=[x]", "d="]) == {"a": {"b": 1, "c": ["x"]}, "d": None}


def test_null_allowed_only_for_optional_fields(tmp_path):
    cfg = load_config(None, ["data.fold=null", "audio_encoder.name_or_path=", "train.cache_dir=~"])
    assert cfg.data.fold is None and cfg.audio_encoder.name_or_path is None and cfg.train.cache_dir is None
    with pytest.raises(ConfigError, match="train.epochs: null is not allowed"):
        load_config(None, ["train.epochs=null"])
    p = _yaml(tmp_path, {"data": None})
    with pytest.raises(ConfigError, match="data: null is not allowed"):
        load_config(p)
    assert load_config(_yaml(tmp_path, None, "empty.yaml")) == Config()


def test_bad_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping of options at the top level"):
        load_config(lst)


def test_save_then_read_round_trip_with_provenance(tmp_path):
    cfg = load_config(None, ["task=attributes", "modality=both", "data.labels=[a, b]", "data.fold=2",
                             "text_encoder.lora.target_modules=[q, v]", "optim.lr_head=3e-4", "seed=11"])
    path = tmp_path / "run" / "config.yaml"
    path.parent.mkdir()
    write_run_config(path, dataclasses.asdict(cfg), {"manifest": "/data/m.csv", "sha256": "abc"})
    raw = yaml.safe_load(path.read_text())
    assert raw["_run"] == {"manifest": "/data/m.csv", "sha256": "abc"}
    back, provenance = load_run_config(path)
    assert back == cfg and provenance == raw["_run"]
    assert dataclasses.asdict(back) == dataclasses.asdict(cfg)
    assert load_run_config(path, ["seed=12"])[0].seed == 12
    raw["train"]["epohcs"] = 2
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=f"{path}.*Did you mean 'train.epochs'"):
        load_run_config(path)
    model_cfg = tmp_path / "model_config.yaml"
    save_config(cfg, model_cfg)
    assert read_config(model_cfg) == cfg


LEGACY = "fusion_ser.config"


def _legacy_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LEGACY and r.levelname == "WARNING" and "replaced by audio_encoder.layers" in r.getMessage()]


def test_a_literal_option_with_a_wrong_value_names_the_key_from_yaml_overrides_and_code(tmp_path):
    p = _yaml(tmp_path, {"audio_encoder": {"layers": "concatenate"}})
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert str(p) in msg and "audio_encoder.layers: 'concatenate' is not one of ['last', 'weighted', 'concat']" in msg
    assert "Did you mean 'concat'?" in msg
    with pytest.raises(ConfigError, match=r"pooling\.type: 'attentive' is not one of .*Did you mean 'attentive_stats'"):
        load_config(None, ["pooling.type=attentive"])
    with pytest.raises(ConfigError, match=r"train\.precision: 'True' is not one of"):
        load_config(None, ["train.precision=true"])  # a YAML bool is no choice, even where str() would match none
    with pytest.raises(ConfigError, match=r"modality: 'video' is not one of \['audio', 'text', 'both'\]"):
        Config(modality="video").validate()
    with pytest.raises(ConfigError, match=r"audio_encoder\.finetune: 'adapters' is not one of"):
        Config(audio_encoder=AudioEncoderConfig(finetune="adapters")).validate()
    built = dataclasses.replace(Config(), pooling=PoolingConfig(type="mean"))  # replace and construction stay free
    assert built.validate().pooling.type == "mean"
    assert dataclasses.replace(Config(), task="attrs").task == "attrs"  # checked by validate, not construction


def test_choices_reads_the_literal():
    assert choices(Config, "modality") == ["audio", "text", "both"]
    assert choices(AudioEncoderConfig, "layers") == ["last", "weighted", "concat"]
    assert choices(Config, "audio_encoder.layers") == ["last", "weighted", "concat"]
    assert choices(Config, "pooling.type") == ["attentive_stats", "mean", "mean_std"]
    with pytest.raises(ValueError, match="no fixed set of choices"):
        choices(Config, "train.epochs")
    with pytest.raises(ValueError, match="no option"):
        choices(Config, "audio_encoder.nope")


@pytest.mark.parametrize("old,layers", [
    ({"layer_weighting": False}, "last"),
    ({"layer_weighting": False, "layer_combine": "concat"}, "last"),
    ({"layer_weighting": True}, "weighted"),
    ({"layer_weighting": True, "layer_combine": "weighted"}, "weighted"),
    ({"layer_weighting": True, "layer_combine": "concat"}, "concat"),
    ({"layer_combine": "concat"}, "concat"),  # layer_weighting defaulted to true
])
def test_legacy_layer_keys_map_to_layers_from_overrides_and_yaml(tmp_path, caplog, old, layers):
    overrides = [f"audio_encoder.{k}={str(v).lower()}" for k, v in old.items()]
    caplog.set_level("WARNING", logger=LEGACY)
    assert load_config(None, overrides).audio_encoder.layers == layers
    (line,) = _legacy_warnings(caplog)
    assert line.startswith("overrides: audio_encoder.") and line.endswith(f"read as layers={layers}")
    caplog.clear()
    p = _yaml(tmp_path, {"audio_encoder": {"type": "ct2_whisper", **old}, "train": {"epochs": 2}})
    cfg = load_config(p)
    assert cfg.audio_encoder.layers == layers and cfg.train.epochs == 2
    (line,) = _legacy_warnings(caplog)
    assert line.startswith(f"{p}: audio_encoder.{'/'.join(old)} ")
    assert "replaced by audio_encoder.layers" in line and line.endswith(f"read as layers={layers}")


def test_legacy_warning_names_both_old_keys_once(caplog):
    caplog.set_level("WARNING", logger=LEGACY)
    load_config(None, ["audio_encoder.layer_weighting=true", "audio_encoder.layer_combine=concat"])
    assert _legacy_warnings(caplog) == ["overrides: audio_encoder.layer_weighting/layer_combine are replaced by "
                                        "audio_encoder.layers; read as layers=concat"]


def test_legacy_keys_conflicting_with_layers_are_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"audio_encoder\.layers: 'weighted' conflicts with .*layer_weighting.*"
                                          r"layers=last"):
        load_config(None, ["audio_encoder.layers=weighted", "audio_encoder.layer_weighting=false"])
    p = _yaml(tmp_path, {"audio_encoder": {"layers": "last", "layer_weighting": True, "layer_combine": "concat"}})
    with pytest.raises(ConfigError, match=f"{p}: audio_encoder.layers: 'last' conflicts"):
        load_config(p)
    # the same choice given both ways is no conflict; a new key on the command line overrides old keys of the file
    both = load_config(None, ["audio_encoder.layers=last", "audio_encoder.layer_weighting=false"])
    assert both.audio_encoder.layers == "last"
    old = _yaml(tmp_path, {"audio_encoder": {"layer_weighting": True, "layer_combine": "concat"}}, "old.yaml")
    assert load_config(old, ["audio_encoder.layers=last"]).audio_encoder.layers == "last"
    # the old keys' own values are still checked
    with pytest.raises(ConfigError, match=r"audio_encoder\.layer_combine: 'sum' is not one of \['weighted', 'concat'"):
        load_config(None, ["audio_encoder.layer_combine=sum"])
    with pytest.raises(ConfigError, match="audio_encoder.layer_weighting: expected true or false"):
        load_config(None, ["audio_encoder.layer_weighting=maybe"])


def test_upgrade_legacy_keys_leaves_the_input_alone():
    raw = {"seed": 3, "audio_encoder": {"type": "hf", "layer_weighting": False}}
    assert upgrade_legacy_keys(raw, "x") == {"seed": 3, "audio_encoder": {"type": "hf", "layers": "last"}}
    assert raw == {"seed": 3, "audio_encoder": {"type": "hf", "layer_weighting": False}}
    current = {"audio_encoder": {"layers": "concat"}}
    assert upgrade_legacy_keys(current, "x") is current


def test_run_dir_config_of_the_previous_version_reads(tmp_path, caplog):
    data = dataclasses.asdict(Config(task="attributes", seed=5))
    section = data["audio_encoder"]
    del section["layers"]
    section.update(layer_weighting=True, layer_combine="concat")  # where the old version wrote them
    data["_run"] = {"manifest": "/data/m.csv", "sha256": "abc"}
    path = tmp_path / "run" / "config.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    caplog.set_level("WARNING", logger=LEGACY)
    cfg, _ = load_run_config(path)
    assert cfg == Config(task="attributes", seed=5, audio_encoder=AudioEncoderConfig(layers="concat"))
    (line,) = _legacy_warnings(caplog)
    assert line.startswith(f"{path}: ")


def test_audio_encoder_config_from_an_old_audio_encoder_json(caplog):
    old = dataclasses.asdict(AudioEncoderConfig(type="hf", name_or_path="/m", finetune="full"))
    del old["layers"]
    old.update(layer_weighting=False, layer_combine="weighted")
    caplog.set_level("WARNING", logger=LEGACY)
    cfg = audio_encoder_config_from_dict(old, "enc/audio_encoder.json")
    assert cfg == AudioEncoderConfig(type="hf", name_or_path="/m", finetune="full", layers="last")
    (line,) = _legacy_warnings(caplog)
    assert line.startswith("enc/audio_encoder.json: ")
    current = dataclasses.asdict(AudioEncoderConfig(layers="concat"))
    assert audio_encoder_config_from_dict(current, "x") == AudioEncoderConfig(layers="concat")
    with pytest.raises(ConfigError, match=r"enc\.json: unknown config key 'audio_encoder\.typo'"):
        audio_encoder_config_from_dict({"typo": 1}, "enc.json")
    with pytest.raises(ConfigError, match=r"enc\.json: audio_encoder\.type: 'ctc' is not one of"):
        audio_encoder_config_from_dict({"type": "ctc"}, "enc.json")
