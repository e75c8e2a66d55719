"""evaluate_run writes metrics.json, report.md and valid PNGs; submissions have exactly the challenge columns."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.metrics import f1_score

from fusion_ser.cli.main import main
from fusion_ser.evaluation.report import ReportError, evaluate_run
from fusion_ser.evaluation.resampling import ResamplingError
from fusion_ser.evaluation.submission import SubmissionError, export_submission, file_name, submission_frame
from fusion_ser.rundir import RunDirError, RunInfo
from tests.test_compare import ATTRS, LABELS, PNG_SIGNATURE, attr_frame, attr_info, cat_frame, cat_info, make_run, truth_labels

MSP_LABELS = ["anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]


def train_log() -> pd.DataFrame:
    """A log as the trainer writes it: epoch, train_*, dev_* figures, learning rates, best flag."""
    return pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.4, 1.0, 0.8], "train_utt_per_s": [50.0, 52.0, 51.0],
                         "dev_loss": [1.3, 1.1, 1.2], "dev_macro_f1": [0.3, 0.45, 0.42], "dev_n": [100, 100, 100],
                         "lr_head": [1e-3, 8e-4, 5e-4], "best": [True, True, False]})


def assert_png(path: Path) -> None:
    """A real PNG: the signature bytes, and matplotlib (and PIL, when installed) decode it to a non-empty image."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert img[..., :3].std() > 0  # not a blank canvas
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as im:
        im.verify()


def report_links(report: Path) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())


@pytest.fixture()
def manifest_and_run(tmp_path) -> tuple[Path, Path, pd.DataFrame]:
    y = truth_labels(240, 3)
    test = cat_frame(y, 0.6, 1)
    test.loc[:9, "label"] = ""  # unlabelled rows: skipped and counted
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"utt_id": test["utt_id"], "path": [f"{u}.wav" for u in test["utt_id"]], "split": "test",
                  "speaker": [f"spk{i % 12}" for i in range(len(test))], "label": test["label"]}).to_csv(manifest, index=False)
    run = make_run(tmp_path, "audio", {"test": test, "dev": cat_frame(truth_labels(120, 4), 0.5, 2)}, cat_info(),
                   manifest=manifest, train_log=train_log())
    return manifest, run, test


def test_evaluate_categorical_run_writes_metrics_report_and_pngs(manifest_and_run):
    _, run, test = manifest_and_run
    (run / "metrics.json").write_text(json.dumps({"best_epoch": 2, "train": {"n": 1}}))
    results = evaluate_run(run, n_boot=200)
    assert set(results) == {"dev", "test"}
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["best_epoch"] == 2 and saved["train"] == {"n": 1}  # what evaluate does not recompute is kept
    labelled = test.iloc[10:]
    expected = f1_score(labelled["label"], labelled["pred"], labels=LABELS, average="macro", zero_division=0)
    assert saved["test"]["macro_f1"] == pytest.approx(expected)
    assert saved["test"]["n"] == 230 and saved["test"]["n_skipped"] == 10
    ci = saved["test"]["ci"]["macro_f1"]
    assert ci["low"] < expected < ci["high"] and ci["value"] == pytest.approx(expected)
    assert saved["test"]["ci_method"]["unit"] == "utterance"

    report = run / "report.md"
    links = report_links(report)
    assert {"test_confusion.png", "test_per_class_f1.png", "dev_confusion.png", "training_curves.png"} <= set(links)
    for link in links:
        assert_png(run / link)
    text = report.read_text()
    assert "## test" in text and "230 utterances scored, 10 skipped" in text and f"{expected:.4f} [" in text


def test_evaluate_one_split_by_speaker_uses_the_recorded_manifest(manifest_and_run):
    _, run, _ = manifest_and_run
    results = evaluate_run(run, ["test"], n_boot=200, by_speaker=True)
    assert list(results) == ["test"]
    assert results["test"]["ci_method"]["unit"] == "speaker"
    assert "dev" not in json.loads((run / "metrics.json").read_text())
    evaluate_run(run, ["dev"], n_boot=100)
    assert json.loads((run / "metrics.json").read_text())["test"]["ci_method"]["unit"] == "speaker"
    text = (run / "report.md").read_text()
    assert text.index("## dev") < text.index("## test")  # the test section evaluated before is kept
    assert "1000 resamples of speakers" not in text and "200 resamples of speakers" in text


def test_speaker_resampling_without_a_manifest_is_a_clear_error(tmp_path):
    run = make_run(tmp_path, "r", {"test": cat_frame(truth_labels(50), 0.5, 1)}, cat_info())
    with pytest.raises(ReportError, match="give the manifest"):
        evaluate_run(run, by_speaker=True, n_boot=50)


def test_evaluate_refuses_unfinished_runs_and_unknown_splits(tmp_path):
    run = make_run(tmp_path, "r", {"test": cat_frame(truth_labels(50), 0.5, 1)}, cat_info(), complete=False)
    with pytest.raises(RunDirError, match="unfinished"):
        evaluate_run(run)
    done = make_run(tmp_path, "d", {"test": cat_frame(truth_labels(50), 0.5, 1)}, cat_info())
    with pytest.raises(RunDirError, match="no predictions for split 'dev'.*test"):
        evaluate_run(done, ["dev"])


def test_evaluate_attribute_run_draws_scatter_and_mse_by_range(tmp_path):
    truth = np.random.default_rng(0).uniform(1, 7, (200, 3))
    run = make_run(tmp_path, "attr", {"test": attr_frame(truth, 0.8, 1)}, attr_info())
    results = evaluate_run(run, n_boot=100)
    assert set(results["test"]["ci"]) == {"ccc_arousal", "ccc_valence", "ccc_dominance", "ccc_mean"}
    links = report_links(run / "report.md")
    assert {f"test_scatter_{a}.png" for a in ATTRS} | {"test_mse_by_range.png"} == set(links)
    for link in links:
        assert_png(run / link)
    assert "MSE bottom 25 %" in (run / "report.md").read_text()


def test_evaluate_cli_prints_summary_and_fails_cleanly(manifest_and_run, tmp_path):
    _, run, _ = manifest_and_run
    runner = CliRunner()
    res = runner.invoke(main, ["evaluate", str(run), "--split", "test", "--n-boot", "50"])
    assert res.exit_code == 0, res.output
    assert "test: 230 scored, 10 skipped" in res.output and "macro_f1" in res.output
    res = runner.invoke(main, ["evaluate", str(tmp_path / "nowhere")])
    assert res.exit_code == 1 and "Error:" in res.output and "no run.json" in res.output and "Traceback" not in res.output


def test_categorical_submission_has_exactly_the_challenge_columns(tmp_path):
    ids = ["MSP-PODCAST_0001_0001", "MSP-PODCAST_0001_0002", "clip.wav"]
    df = pd.DataFrame({"utt_id": ids, "pred": ["anger", "surprise", "neutral"]})
    run = make_run(tmp_path, "cat", {"test": df}, RunInfo(kind="model", task="categorical", labels=MSP_LABELS))
    path, n = export_submission(run, tmp_path / "sub.csv")
    sub = pd.read_csv(path)
    assert n == 3 and list(sub.columns) == ["FileName", "EmoClass"]
    assert list(sub["FileName"]) == ["MSP-PODCAST_0001_0001.wav", "MSP-PODCAST_0001_0002.wav", "clip.wav"]
    assert list(sub["EmoClass"]) == ["A", "U", "N"]


def test_attribute_submission_is_on_the_1_to_7_scale(tmp_path):
    df = pd.DataFrame({"utt_id": ["a", "b"], "arousal_pred": [0.0, 0.5], "valence_pred": [1.0, 1.2],
                       "dominance_pred": [0.25, -0.1]})
    sub = submission_frame(df, attr_info(), value_range=[0.0, 1.0])
    assert list(sub.columns) == ["FileName", "EmoAct", "EmoVal", "EmoDom"]
    assert sub["EmoAct"].tolist() == [1.0, 4.0]
    assert sub["EmoVal"].tolist() == [7.0, 7.0]  # 1.2 on [0, 1] is clipped to the top of the scale
    assert sub["EmoDom"].tolist() == [2.5, 1.0]
    run = make_run(tmp_path, "attr", {"test": attr_frame(np.full((4, 3), 4.0), 0.5, 0)}, attr_info())
    out = tmp_path / "attr.csv"
    res = CliRunner().invoke(main, ["export-submission", str(run), "--split", "test", "-o", str(out)])
    assert res.exit_code == 0, res.output
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["FileName", "EmoAct", "EmoVal", "EmoDom"] and len(sub) == 4
    expected = pd.read_csv(run / "predictions" / "test.csv")["arousal_pred"].to_numpy()
    assert np.allclose(sub["EmoAct"], expected)  # a run on the 1-7 scale is written unchanged


def test_submission_refuses_classes_without_a_challenge_code(tmp_path):
    df = pd.DataFrame({"utt_id": ["a"], "pred": ["calm"]})
    with pytest.raises(SubmissionError, match="calm"):
        submission_frame(df, RunInfo(kind="model", task="categorical", labels=["calm", "neutral"]))
    assert file_name("x.flac") == "x.flac" and file_name("03-01-05") == "03-01-05.wav"


def test_unlabelled_test_split_is_reported_not_scored(tmp_path):
    test = cat_frame(truth_labels(40), 0.5, 1).drop(columns=["label"])  # the MSP-Podcast test3 case
    run = make_run(tmp_path, "r", {"test": test, "dev": cat_frame(truth_labels(60), 0.5, 2)}, cat_info())
    results = evaluate_run(run, n_boot=50)
    assert results["test"] == {"n": 0, "n_skipped": 40, "unscored": {"no label": 40}} and results["dev"]["n"] == 60
    assert "No scored utterances: all 40 rows have unknown ground truth." in (run / "report.md").read_text()
    assert set(report_links(run / "report.md")) == {"dev_confusion.png", "dev_per_class_f1.png"}


def test_malformed_predictions_are_errors_naming_the_file(tmp_path):
    bad = cat_frame(truth_labels(30), 0.5, 1)
    bad.loc[3, "pred"] = "calm"
    run = make_run(tmp_path, "bad", {"test": bad}, cat_info())
    res = CliRunner().invoke(main, ["evaluate", str(run)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert str(run / "predictions" / "test.csv") in res.output and "'calm'" in res.output
    dup = pd.concat([cat_frame(truth_labels(30), 0.5, 1)] * 2)
    run = make_run(tmp_path, "dup", {"test": dup}, cat_info())
    with pytest.raises(ResamplingError, match=r"test\.csv: 30 utt_id\(s\) occur twice"):
        evaluate_run(run, n_boot=20)
