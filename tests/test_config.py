"""The typed config: strict keys with the closest valid name, types, dotted overrides, nulls, round trips."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from fusion_ser.config import (
    Config,
    ConfigError,
    load_config,
    parse_overrides,
    read_config,
    save_config,
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
    save_config(cfg, path, extra={"manifest": "/data/m.csv", "sha256": "abc"})
    raw = yaml.safe_load(path.read_text())
    assert raw["_run"] == {"manifest": "/data/m.csv", "sha256": "abc"}
    back = read_config(path)
    assert back == cfg
    assert dataclasses.asdict(back) == dataclasses.asdict(cfg)
    raw["train"]["epohcs"] = 2
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=f"{path}.*Did you mean 'train.epochs'"):
        read_config(path)
