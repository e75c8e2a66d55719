"""`fusion-ser test`: a run scored on another corpus (label map, an unknown class, a class the corpus lacks, a bad
row), the figures against sklearn, the unknown-as-error option, and `compare` reading the evaluation runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import f1_score, recall_score

from fusion_ser.cli.main import main
from fusion_ser.config import load_config
from fusion_ser.crosscorpus import CrossCorpusError, evaluate_on_corpus
from fusion_ser.evaluation.compare import compare_runs
from fusion_ser.rundir import RunDir
from tests.test_trainer import make_corpus


@pytest.fixture(scope="module")
def source_runs(tmp_path_factory):
    """Two 1-epoch fbank runs (seeds 0, 1) on sine clips of anger / happiness / sadness."""
    from fusion_ser.training.job import train_run

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cc_source")
    manifest = make_corpus(root / "corpus")
    runs = []
    for seed in (0, 1):
        cfg = load_config(None, [f"seed={seed}", "train.epochs=1", "train.batch_size=8", "train.cache_features=false",
                                 "head.hidden_dim=16", "pooling.type=mean", "audio_encoder.type=fbank",
                                 "audio_encoder.finetune=full", "audio_encoder.hidden_dim=16", "audio_encoder.n_mels=20"])
        runs.append(train_run(cfg, manifest, root / f"run{seed}").path)
    return runs


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """Another corpus: 'angry' (mapped to anger), happiness, fear (no class of the runs), no sadness; one row whose
    audio is missing."""
    root = tmp_path_factory.mktemp("cc_target")
    path = make_corpus(root, n_speakers=3, per_class=3, seed=5)
    df = pd.read_csv(path)
    df["label"] = df["label"].map({"anger": "angry", "happiness": "happiness", "sadness": "fear"})
    df["utt_id"] = "t_" + df["utt_id"]
    missing = df.iloc[[0]].assign(utt_id="t_missing", path="no_such_file.wav")
    pd.concat([df, missing]).to_csv(path, index=False)
    return path


def _expected(run_dir, target_path, errors: bool) -> tuple[float, float]:
    pred = RunDir(run_dir).read_predictions("all")
    truth = pred["label"].astype(str)
    keep = truth.isin(["anger", "happiness"]) | (errors & (truth == "fear"))
    labels = ["anger", "happiness"] + (["fear"] if errors else [])
    y, p = truth[keep], pred["pred"][keep]
    return (f1_score(y, p, labels=labels, average="macro", zero_division=0),
            recall_score(y, p, labels=labels, average="macro", zero_division=0))


def test_shared_classes_by_default_and_unknown_as_errors(source_runs, target, tmp_path):
    res = evaluate_on_corpus(source_runs[0], target, tmp_path / "eval", split="all", label_map={"angry": "anger"},
                             n_boot=50)
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())["all"]
    assert res.classes == {"shared": ["anger", "happiness"], "unknown": ["fear"], "absent": ["sadness"]}
    assert m["classes"] == res.classes and m["n_skipped_rows"] == 1 and "t_missing" in m["skipped_rows"]
    assert m["n"] == 18 and m["unscored"] == {"class unknown to the run": 9}
    f1, uar = _expected(tmp_path / "eval", target, errors=False)
    assert m["macro_f1"] == pytest.approx(f1) and m["uar"] == pytest.approx(uar)
    assert m["ci"]["macro_f1"]["value"] == pytest.approx(f1)  # the bootstrap scores the same way
    info = RunDir(tmp_path / "eval").read_info()
    assert info.kind == "evaluation" and info.complete and info.members == [str(source_runs[0])]
    provenance = RunDir(tmp_path / "eval").provenance()
    assert provenance["source_run"] == str(source_runs[0]) and provenance["manifest"] == str(target.resolve())
    assert len(provenance["manifest_sha256"]) == 64

    res = evaluate_on_corpus(source_runs[0], target, tmp_path / "eval_err", split="all", label_map={"angry": "anger"},
                             unknown="error", n_boot=50)
    f1, uar = _expected(tmp_path / "eval_err", target, errors=True)
    assert res.metrics["n"] == 27 and res.metrics["n_unknown_class"] == 9
    assert res.metrics["macro_f1"] == pytest.approx(f1) and res.metrics["uar"] == pytest.approx(uar)
    assert res.metrics["ci"]["macro_f1"]["value"] == pytest.approx(f1)


def test_cli_reports_classes_and_compare_ranks_evaluation_runs(source_runs, target, tmp_path):
    outs = []
    for k, run in enumerate(source_runs):
        out = tmp_path / f"eval{k}"
        r = CliRunner().invoke(main, ["test", str(run), "--manifest", str(target), "--split", "all",
                                      "--map", "angry=anger", "--n-boot", "20", "-o", str(out)])
        assert r.exit_code == 0, r.output
        assert "corpus classes the run does not know: fear" in r.output and "lacks: sadness" in r.output
        assert "1 row(s) skipped" in r.output
        outs.append(out)
    comp = compare_runs(outs[1:], outs[0], split="all", n_boot=20, n_perm=20)
    table = comp.table.set_index("run")
    for out in outs:
        stored = json.loads((out / "metrics.json").read_text())["all"]["macro_f1"]
        assert table.loc[out.name, "macro_f1"] == pytest.approx(stored)


def test_no_shared_class_and_bad_map_are_clear_errors(source_runs, target, tmp_path):
    with pytest.raises(CrossCorpusError, match="none of its labels"):
        evaluate_on_corpus(source_runs[0], target, tmp_path / "e", split="all",
                           label_map={"angry": "x", "happiness": "y", "fear": "z"})
    r = CliRunner().invoke(main, ["test", str(source_runs[0]), "--manifest", str(target), "--map", "angry",
                                  "-o", str(tmp_path / "e2")])
    assert r.exit_code == 1 and "VALUE=LABEL" in r.output and "--map" in r.output
    r = CliRunner().invoke(main, ["test", str(source_runs[0]), "--manifest", str(target), "--split", "eval",
                                  "-o", str(tmp_path / "e3")])
    assert r.exit_code == 1 and "no rows of split 'eval'" in r.output and "--split" in r.output
