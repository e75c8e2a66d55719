"""Model cards: model/README.md of every evaluated run holds the figures of metrics.json exactly (front matter) and
rounded (tables), the data it was trained on and its config; runs without a card load and predict as before."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fusion_ser.config import load_config
from fusion_ser.evaluation.card import CARD_FILE, read_card_front_matter
from fusion_ser.evaluation.metrics import headline_keys, metric_label
from fusion_ser.evaluation.report import evaluate_run
from fusion_ser.rundir import RunDir, file_hash
from tests.test_compare import attr_frame, attr_info, cat_frame, cat_info, make_run, truth_labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """Two tiny fbank runs trained on a generated corpus, and their late fusion (mean)."""
    from fusion_ser.demo.corpus import generate_corpus
    from fusion_ser.fusion.late import late_fuse
    from fusion_ser.training.job import train_run

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("card")
    manifest = generate_corpus(root / "corpus", n_speakers=3, per_emotion=2, seed=0)
    out = {"manifest": manifest}
    for name, seed in (("audio", 0), ("audio2", 1)):
        cfg = load_config(None, ["train.epochs=1", "train.batch_size=8", "train.cache_features=false",
                                 "head.hidden_dim=32", "pooling.type=mean", "modality=audio", "audio_encoder.type=fbank",
                                 "audio_encoder.finetune=full", "audio_encoder.hidden_dim=32", "audio_encoder.n_mels=40",
                                 f"seed={seed}"])
        out[name] = train_run(cfg, manifest, root / name).path
    out["late"] = late_fuse([out["audio"], out["audio2"]], root / "late", method="mean").path
    return out


def table_rows(text: str, split: str) -> dict[str, list[str]]:
    """metric label -> [value, low, high] from the card's results table of one split."""
    section = text.split(f"### {split}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    rows = re.findall(r"^\| ([^|]+) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \|$", section, flags=re.M)
    return {r[0]: list(r[1:]) for r in rows}


def check_card_against_metrics(run: Path) -> dict:
    rd = RunDir(run)
    info = rd.read_info()
    metrics = json.loads(rd.metrics_path.read_text())
    card = rd.model_dir / CARD_FILE
    front = read_card_front_matter(card)
    text = card.read_text()
    keys = headline_keys(info)
    assert front["library_name"] == "fusion-ser" and "speech-emotion-recognition" in front["tags"]
    assert front["metrics"] == keys
    results = front["model-index"][0]["results"]
    assert [r["dataset"]["split"] for r in results] == ["dev", "test"]
    for r in results:
        split = r["dataset"]["split"]
        assert {m["type"]: m["value"] for m in r["metrics"]} == {k: metrics[split][k] for k in keys}  # exact
    for split, block in front["fusion_ser"]["results"].items():
        assert block["ci"] == {k: metrics[split]["ci"][k] for k in keys}  # value, low, high: exact
        assert block["n"] == metrics[split]["n"] and block["ci_method"] == metrics[split]["ci_method"]
        rows = table_rows(text, split)
        for k in keys:
            c = metrics[split]["ci"][k]
            assert rows[metric_label(k)] == [f"{c['value']:.4f}", f"{c['low']:.4f}", f"{c['high']:.4f}"]
    config = yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert config == yaml.safe_load(rd.config_path.read_text())
    return front


def test_a_trained_runs_card_holds_the_figures_of_metrics_json(trained):
    front = check_card_against_metrics(trained["audio"])
    prov = RunDir(trained["audio"]).provenance()
    assert front["fusion_ser"]["manifest"] == prov["manifest"] == str(trained["manifest"].resolve())
    assert front["fusion_ser"]["manifest_sha256"] == prov["manifest_sha256"] == file_hash(trained["manifest"])
    assert front["pipeline_tag"] == "audio-classification"
    text = (trained["audio"] / "model" / CARD_FILE).read_text()
    info = RunDir(trained["audio"]).read_info()
    for heading in ("## Model", "## Labels", "## Training data", "## Results", "## Intended use and limits", "## Config"):
        assert heading in text
    assert "fbank (40-bin log-mel" in text and "pooling: mean" in text and prov["manifest_sha256"] in text
    assert all(f". {c}" in text for c in info.labels) and "Unknown classes" in text


def test_reevaluating_rewrites_the_card_with_the_new_figures(trained, tmp_path):
    run = Path(shutil.copytree(trained["audio"], tmp_path / "copy"))
    evaluate_run(run, ["test"], n_boot=100, seed=3)
    front = check_card_against_metrics(run)
    assert front["fusion_ser"]["results"]["test"]["ci_method"]["n_boot"] == 100


def test_a_fused_runs_card_names_its_members_and_combiner(trained):
    front = check_card_against_metrics(trained["late"])
    assert front["fusion_ser"]["kind"] == "fusion" and "fusion" in front["tags"]
    text = (trained["late"] / "model" / CARD_FILE).read_text()
    assert "combiner: `mean` over 2 members" in text
    assert f"`{trained['audio']}`: model run, audio" in text and f"`{trained['audio2']}`: model run, audio" in text


@pytest.mark.parametrize("kind", ["audio", "late"])
def test_a_run_without_a_card_still_loads_and_predicts(trained, tmp_path, kind):
    import fusion_ser
    from fusion_ser.data.audio import load_audio
    from fusion_ser.data.manifest import read_manifest

    df = read_manifest(trained["manifest"])
    waves = [load_audio(p) for p in df[df["split"] == "test"]["path"].tolist()[:3]]
    expected = fusion_ser.load(trained[kind], device="cpu").predict(waves)
    bare = {}
    for name in ("audio", "audio2", "late"):  # the fusion's members lose their cards too
        bare[name] = Path(shutil.copytree(trained[name], tmp_path / name))
        (bare[name] / "model" / CARD_FILE).unlink()
    if kind == "late":  # point the copy at the card-less members
        for f in ("run.json", "config.yaml"):
            p = bare["late"] / f
            text = p.read_text()
            for name in ("audio2", "audio"):
                text = text.replace(str(trained[name]), str(bare[name]))
            p.write_text(text)
    got = fusion_ser.load(bare[kind], device="cpu").predict(waves)
    for a, b in zip(expected, got):
        assert a["label"] == b["label"]
        np.testing.assert_allclose(list(a["probs"].values()), list(b["probs"].values()), atol=1e-6)


def test_attribute_card_and_runs_without_a_model_folder(tmp_path):
    truth = np.random.default_rng(0).uniform(1, 7, (120, 3))
    run = make_run(tmp_path, "attr", {"test": attr_frame(truth, 0.8, 1), "dev": attr_frame(truth, 1.0, 2)}, attr_info())
    (run / "model").mkdir()
    evaluate_run(run, n_boot=100)
    front = check_card_against_metrics(run)
    assert "pipeline_tag" not in front and front["fusion_ser"]["attributes"] == ["arousal", "valence", "dominance"]
    assert "corpus scale [1.0, 7.0]" in (run / "model" / CARD_FILE).read_text()
    bare = make_run(tmp_path, "bare", {"test": cat_frame(truth_labels(60), 0.5, 1)}, cat_info())
    evaluate_run(bare, n_boot=50)
    assert not (bare / "model").exists()  # no model/ folder is made just to hold a card
