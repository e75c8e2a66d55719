"""Bootstrap intervals, paired tests and the compare leaderboard, on run dirs built by hand."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from fusion_ser.cli.main import main
from fusion_ser.evaluation.compare import CompareError, compare_runs, write_comparison
from fusion_ser.evaluation.report import ReportError
from fusion_ser.evaluation.resampling import ResamplingError, bootstrap_ci, paired_test, score_data
from fusion_ser.rundir import RunDir, RunInfo

LABELS = ["anger", "happiness", "neutral", "sadness"]
ATTRS = ["arousal", "valence", "dominance"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_run(root: Path, name: str, predictions: dict[str, pd.DataFrame], info: RunInfo, *,
             manifest: Path | None = None, train_log: pd.DataFrame | None = None, complete: bool = True) -> Path:
    """A run directory as train/fuse write it: run.json, config.yaml, predictions/<split>.csv, train_log.csv."""
    run = RunDir(root / name)
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_info(RunInfo(**{**info.__dict__, "complete": False}))
    cfg = {"seed": 0, "task": info.task, "data": {"attribute_range": [1.0, 7.0]}}
    if manifest is not None:
        cfg["_run"] = {"manifest": str(manifest), "manifest_sha256": None}
    run.config_path.write_text(yaml.safe_dump(cfg))
    for split, df in predictions.items():
        run.write_predictions(split, df)
    if train_log is not None:
        train_log.to_csv(run.train_log_path, index=False)
    if complete:
        run.mark_complete()
    return run.path


def cat_info() -> RunInfo:
    return RunInfo(kind="model", task="categorical", labels=LABELS)


def attr_info() -> RunInfo:
    return RunInfo(kind="model", task="attributes", attributes=ATTRS)


def truth_labels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).choice(LABELS, n)


def cat_frame(y: np.ndarray, p_correct: float, seed: int, ids: list[str] | None = None) -> pd.DataFrame:
    """Predictions that are right with probability p_correct, else a random class."""
    rng = np.random.default_rng(seed)
    pred = np.where(rng.random(len(y)) < p_correct, y, rng.choice(LABELS, len(y)))
    return pd.DataFrame({"utt_id": ids or [f"utt{i:04d}" for i in range(len(y))], "label": y, "pred": pred})


def attr_frame(truth: np.ndarray, noise: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"utt_id": [f"utt{i:04d}" for i in range(len(truth))]})
    for j, a in enumerate(ATTRS):
        df[a] = truth[:, j]
        df[f"{a}_pred"] = truth[:, j] + rng.normal(0, noise, len(truth))
    return df


def width(ci: dict) -> float:
    return ci["high"] - ci["low"]


def test_ci_contains_point_estimate_and_narrows_with_n():
    info = cat_info()
    small = score_data(cat_frame(truth_labels(80), 0.6, 1), info)
    large = score_data(cat_frame(truth_labels(3000), 0.6, 1), info)
    ci_small = bootstrap_ci(small, n_boot=400, seed=0)
    ci_large = bootstrap_ci(large, n_boot=400, seed=0)
    for key in ("macro_f1", "micro_f1", "uar", "accuracy"):
        for ci in (ci_small, ci_large):
            assert ci[key]["low"] < ci[key]["value"] < ci[key]["high"]
        assert width(ci_large[key]) < width(ci_small[key]) / 3  # ~ 1/sqrt(n): sqrt(3000/80) > 6


def test_ci_is_identical_under_the_same_seed_and_differs_under_another():
    data = score_data(cat_frame(truth_labels(200), 0.5, 2), cat_info())
    a = bootstrap_ci(data, n_boot=300, seed=7)
    assert bootstrap_ci(data, n_boot=300, seed=7) == a
    assert bootstrap_ci(data, n_boot=300, seed=8) != a


def test_attribute_ci_contains_ccc():
    truth = np.random.default_rng(3).uniform(1, 7, (500, 3))
    ci = bootstrap_ci(score_data(attr_frame(truth, 1.5, 4), attr_info()), n_boot=300, seed=0)
    assert set(ci) == {"ccc_arousal", "ccc_valence", "ccc_dominance", "ccc_mean"}
    for c in ci.values():
        assert c["low"] < c["value"] < c["high"]


def test_speaker_bootstrap_widens_the_interval_when_errors_cluster_by_speaker():
    n_spk, per = 20, 30
    y = truth_labels(n_spk * per, 5)
    df = cat_frame(y, 1.0, 0)
    wrong_speakers = np.arange(n_spk) % 2 == 0  # every utterance of half the speakers is wrong
    spk = np.repeat(np.arange(n_spk), per)
    bad = wrong_speakers[spk]
    df.loc[bad, "pred"] = [LABELS[(LABELS.index(v) + 1) % len(LABELS)] for v in df.loc[bad, "label"]]
    speakers = {u: f"spk{s}" for u, s in zip(df["utt_id"], spk)}
    data = score_data(df, cat_info())
    by_utt = bootstrap_ci(data, n_boot=400, seed=0)["accuracy"]
    by_spk = bootstrap_ci(data, n_boot=400, seed=0, speakers=speakers)["accuracy"]
    assert by_utt["value"] == by_spk["value"] == pytest.approx(0.5)
    assert width(by_spk) > 2.5 * width(by_utt)
    with pytest.raises(ResamplingError, match="no speaker"):
        bootstrap_ci(data, n_boot=50, speakers={})


def test_paired_test_against_itself_gives_p_one_and_against_a_better_run_a_small_p():
    y = truth_labels(400, 6)
    base = score_data(cat_frame(y, 0.4, 1), cat_info())
    better = score_data(cat_frame(y, 0.8, 2), cat_info())
    same = paired_test(base, base, n_boot=200, n_perm=200, seed=0)
    for r in same.values():
        assert r["delta"] == 0 and r["p_value"] == 1.0
    res = paired_test(base, better, n_boot=200, n_perm=200, seed=0)
    assert res["macro_f1"]["delta"] > 0.2
    assert res["macro_f1"]["p_value"] < 0.01
    assert 0 < res["macro_f1"]["low"] < res["macro_f1"]["delta"] < res["macro_f1"]["high"]


def test_paired_test_of_two_equally_good_runs_is_not_significant():
    y = truth_labels(400, 6)
    res = paired_test(score_data(cat_frame(y, 0.6, 11), cat_info()), score_data(cat_frame(y, 0.6, 12), cat_info()),
                      n_boot=200, n_perm=500, seed=0)
    assert res["accuracy"]["p_value"] > 0.05
    assert res["accuracy"]["low"] < 0 < res["accuracy"]["high"]


def test_paired_test_on_attributes():
    truth = np.random.default_rng(8).uniform(1, 7, (300, 3))
    base = score_data(attr_frame(truth, 2.0, 1), attr_info())
    better = score_data(attr_frame(truth, 0.5, 2), attr_info())
    assert paired_test(base, base, n_boot=100, n_perm=100)["ccc_mean"]["p_value"] == 1.0
    res = paired_test(base, better, n_boot=100, n_perm=200)
    assert res["ccc_mean"]["delta"] > 0.2 and res["ccc_mean"]["p_value"] < 0.01


@pytest.fixture(scope="module")
def cat_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    y = truth_labels(300, 9)
    runs = {name: make_run(root, name, {"test": cat_frame(y, p, seed), "dev": cat_frame(y, p, seed + 50)}, cat_info())
            for name, p, seed in [("audio", 0.5, 1), ("text", 0.3, 2), ("fusion", 0.8, 3)]}
    short = cat_frame(y, 0.6, 4).iloc[:250]
    runs["partial"] = make_run(root, "partial", {"test": short}, cat_info())
    return runs


def test_compare_ranks_runs_and_tests_them_against_the_baseline(cat_runs):
    comp = compare_runs([cat_runs["text"], cat_runs["fusion"]], cat_runs["audio"], split="test", n_boot=200, n_perm=200)
    t = comp.table
    assert list(t["run"]) == ["fusion", "audio", "text"]
    assert list(t["rank"]) == [1, 2, 3]
    assert list(t["baseline"]) == [False, True, False]
    fusion = t.iloc[0]
    assert fusion["delta_macro_f1"] == pytest.approx(fusion["macro_f1"] - t.iloc[1]["macro_f1"])
    assert fusion["delta_macro_f1"] > 0 and fusion["p_macro_f1"] < 0.01
    assert t.iloc[2]["delta_macro_f1"] < 0
    assert pd.isna(t.iloc[1]["p_macro_f1"])  # no test of the baseline against itself in the table
    assert comp.n == 300 and list(comp.per_class.columns) == ["fusion", "audio", "text"]
    assert list(comp.per_class.index) == LABELS


def test_compare_refuses_runs_on_different_utterances(cat_runs):
    with pytest.raises(CompareError) as e:
        compare_runs([cat_runs["partial"]], cat_runs["audio"], n_boot=50, n_perm=50)
    msg = str(e.value)
    assert "'audio': 300" in msg and "'partial': 250" in msg and "common ones only" in msg
    assert e.value.options == ("intersect",)


def test_compare_intersect_uses_common_utterances(cat_runs):
    comp = compare_runs([cat_runs["partial"]], cat_runs["audio"], intersect=True, n_boot=50, n_perm=50)
    assert comp.n == 250
    assert comp.dropped == {"audio": 50, "partial": 0}
    assert comp.metrics["audio"]["n"] == 250


def test_compare_refuses_a_different_task(cat_runs, tmp_path):
    truth = np.random.default_rng(1).uniform(1, 7, (300, 3))
    attr = make_run(tmp_path, "attr", {"test": attr_frame(truth, 1.0, 1)}, attr_info())
    with pytest.raises(CompareError, match="attributes run"):
        compare_runs([attr], cat_runs["audio"], n_boot=50, n_perm=50)


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.tables = [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])
        if tag == "table":
            self.tables += 1


def test_report_formats_parse(cat_runs, tmp_path):
    comp = compare_runs([cat_runs["text"], cat_runs["fusion"]], cat_runs["audio"], n_boot=100, n_perm=100)

    md = write_comparison(comp, tmp_path / "table.md").read_text()
    assert "| 1 | fusion |" in md and "baseline" in md
    for link in ("table_per_class_f1.png", "table_confusions.png"):
        assert f"]({link})" in md and (tmp_path / link).read_bytes().startswith(PNG_SIGNATURE)

    page = write_comparison(comp, tmp_path / "table.html").read_text()
    parser = _Images()
    parser.feed(page)
    assert parser.tables == 2 and len(parser.srcs) == 2
    for src in parser.srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_SIGNATURE)
    assert (tmp_path / "table_per_class_f1.png").is_file()  # the md report's figures survive the html export

    csv = pd.read_csv(write_comparison(comp, tmp_path / "t.out", fmt="csv"))
    assert list(csv["run"]) == ["fusion", "audio", "text"] and list(csv["rank"]) == [1, 2, 3]
    assert {"macro_f1", "macro_f1_low", "macro_f1_high", "micro_f1", "delta_macro_f1", "p_macro_f1"} <= set(csv.columns)

    doc = json.loads(write_comparison(comp, tmp_path / "table.json").read_text())
    assert doc["baseline"] == "audio" and [r["run"] for r in doc["table"]] == ["fusion", "audio", "text"]
    assert doc["confusion_matrices"]["fusion"] == comp.metrics["fusion"]["confusion_matrix"]


def test_attribute_comparison_ranks_by_mean_ccc(tmp_path):
    truth = np.random.default_rng(2).uniform(1, 7, (300, 3))
    base = make_run(tmp_path, "base", {"test": attr_frame(truth, 1.5, 1)}, attr_info())
    good = make_run(tmp_path, "good", {"test": attr_frame(truth, 0.5, 2)}, attr_info())
    comp = compare_runs([good], base, n_boot=100, n_perm=100)
    assert list(comp.table["run"]) == ["good", "base"]
    md = write_comparison(comp, tmp_path / "attr.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| rank"))
    assert header.index("CCC valence") < header.index("CCC arousal") < header.index("CCC dominance") < header.index("mean CCC")
    assert (tmp_path / "attr_mse_by_range.png").read_bytes().startswith(PNG_SIGNATURE)


def test_compare_cli_writes_report_and_refuses_mismatch_cleanly(cat_runs, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli.md"
    res = runner.invoke(main, ["compare", str(cat_runs["fusion"]), "--baseline", str(cat_runs["audio"]), "-o", str(out),
                               "--n-boot", "50", "--n-perm", "50"])
    assert res.exit_code == 0, res.output
    assert "1. fusion" in res.output and out.is_file()
    res = runner.invoke(main, ["compare", str(cat_runs["partial"]), "--baseline", str(cat_runs["audio"]), "-o",
                               str(tmp_path / "x.md"), "--n-boot", "50"])
    assert res.exit_code == 1
    assert "Error: runs were evaluated on different utterances" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["compare", str(cat_runs["partial"]), "--baseline", str(cat_runs["audio"]), "-o",
                               str(tmp_path / "x.csv"), "--intersect", "--n-boot", "50", "--n-perm", "50"])
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(tmp_path / "x.csv")) == 2


def test_compare_by_speaker_reads_speakers_from_the_given_manifest(cat_runs, tmp_path):
    ids = RunDir(cat_runs["audio"]).read_predictions("test")["utt_id"]
    manifest = tmp_path / "m.csv"
    pd.DataFrame({"utt_id": ids, "speaker": [f"s{i % 3}" for i in range(len(ids))]}).to_csv(manifest, index=False)
    by_utt = compare_runs([cat_runs["fusion"]], cat_runs["audio"], n_boot=200, n_perm=50)
    by_spk = compare_runs([cat_runs["fusion"]], cat_runs["audio"], n_boot=200, n_perm=50, by_speaker=True, manifest=manifest)
    assert by_spk.settings["unit"] == "speaker"
    assert by_spk.table["macro_f1"].tolist() == by_utt.table["macro_f1"].tolist()
    assert by_spk.table["macro_f1_low"].tolist() != by_utt.table["macro_f1_low"].tolist()
    with pytest.raises(ReportError, match="no column"):
        compare_runs([cat_runs["fusion"]], cat_runs["audio"], n_boot=20, n_perm=20, by_speaker=True,
                     manifest=write_csv(tmp_path / "bad.csv", pd.DataFrame({"utt_id": ids})))


def write_csv(path: Path, df: pd.DataFrame) -> Path:
    df.to_csv(path, index=False)
    return path
