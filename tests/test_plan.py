"""`train --dry-run` and the plan every training checks first: its figures against an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from fusion_ser.cli.main import main
from fusion_ser.config import load_config
from fusion_ser.training.job import dry_run, train_run
from fusion_ser.training.plan import PlanError
from tests.test_trainer import make_corpus

SR = 16000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("plan_corpus"))


def _cfg(tmp_path, *extra):
    return load_config(None, ["audio_encoder.type=ct2_whisper", "audio_encoder.layers=last", "pooling.type=mean_std",
                              "head.hidden_dim=16", "train.batch_size=5", "train.grad_accum=2", "train.epochs=3",
                              f"train.cache_dir={tmp_path / 'cache'}", "data.speed_perturb=[0.9, 1.0, 1.1]", *extra])


def test_plan_figures_match_an_independent_count(corpus, tmp_path):
    torch.set_num_threads(1)
    plan = dry_run(_cfg(tmp_path), corpus)
    df = pd.read_csv(corpus)
    rows = df["split"].value_counts()
    assert plan.rows == {s: int(rows[s]) for s in ("train", "dev", "test")}
    for split in ("train", "dev", "test"):
        counts = df[df["split"] == split]["label"].value_counts()
        assert plan.classes[split] == {c: int(counts[c]) for c in sorted(df["label"].unique())}
    n_train = int(rows["train"])
    assert plan.steps_per_epoch == math.ceil(math.ceil(n_train / 5) / 2) and plan.epochs == 3
    assert plan.device == "cpu" and plan.precision == "float32"
    assert plan.trainable_params == plan.total_params > 0  # CTranslate2's weights are not torch parameters
    # Whisper tiny.en: 50 frames/s, 384 dims, one layer; speed copies (0.9, 1.1) of the train rows; fp16
    seconds = {s: np.array([sf.info(str(corpus.parent / p)).duration for p in df[df["split"] == s]["path"]])
               for s in ("train", "dev", "test")}
    total = sum(v.sum() for v in seconds.values()) + sum((seconds["train"] / f).sum() for f in (0.9, 1.1))
    (cache,) = plan.cache
    assert cache.layers == 1 and cache.dims == 384
    assert cache.entries == len(df) + 2 * n_train
    assert abs(cache.frames - total * 50) <= 0.01 * total * 50 + cache.entries
    assert cache.bytes == cache.frames * 384 * 2
    assert plan.free_disk is not None and plan.free_disk > 0 and not plan.problems
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.fsc"))


def test_all_layers_cache_counts_every_hidden_state(corpus, tmp_path):
    plan = dry_run(_cfg(tmp_path, "audio_encoder.layers=concat", "data.speed_perturb=[]"), corpus)
    (cache,) = plan.cache
    assert cache.layers == 5 and cache.dims == 384  # tiny.en: 4 layers + the embedding output


def test_parameter_counts_of_a_frozen_hf_encoder(corpus, tmp_path):
    from fusion_ser.models.factory import build_model
    from tests.test_trainer import save_tiny_ssl

    path = save_tiny_ssl("wavlm", tmp_path / "wavlm")
    cfg = load_config(None, ["audio_encoder.type=hf", f"audio_encoder.name_or_path={path}", "audio_encoder.layers=last",
                             "pooling.type=mean", "head.hidden_dim=8", f"train.cache_dir={tmp_path / 'cache'}"])
    plan = dry_run(cfg, corpus)
    model = build_model(cfg, ["anger", "happiness", "sadness"])
    head = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("encoder."))
    assert plan.total_params == sum(p.numel() for p in model.parameters())
    assert plan.trainable_params == head + sum(p.numel() for p in model.encoder.parameters() if p.requires_grad)
    assert plan.trainable_params < plan.total_params
    (cache,) = plan.cache
    assert cache.dims == 32 and cache.layers == 1


def test_dry_run_cli_prints_the_plan_and_writes_nothing(corpus, tmp_path):
    out = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 0\n")
    res = CliRunner().invoke(main, ["train", "-c", str(cfg), "--manifest", str(corpus), "-o", str(out), "--dry-run",
                                    "audio_encoder.type=ct2_whisper", "audio_encoder.layers=last",
                                    f"train.cache_dir={tmp_path / 'cache'}", "train.batch_size=4"])
    assert res.exit_code == 0, res.output
    for words in ("plan (nothing trained", "rows: train 48, dev 12, test 12", "steps: 12 per epoch",
                  "feature cache (audio)", "free)", "device: cpu"):
        assert words in res.output
    assert not out.exists()


def test_a_declared_class_without_training_rows_is_refused_before_training(corpus, tmp_path):
    cfg = _cfg(tmp_path, "data.labels=[anger, happiness, sadness, fear]", "data.speed_perturb=[]")
    plan = dry_run(cfg, corpus)
    assert plan.problems and "['fear']" in plan.problems[0]
    with pytest.raises(PlanError, match=r"class\(es\) \['fear'\] of data.labels have no training row"):
        train_run(cfg, corpus, tmp_path / "r")
    assert not (tmp_path / "r").exists() or not (tmp_path / "r" / "run.json").exists()
    res = CliRunner().invoke(main, ["train", "--manifest", str(corpus), "-o", str(tmp_path / "r2"), "--dry-run",
                                    "-c", str(corpus.parent / "none.yaml")])
    assert res.exit_code == 1
