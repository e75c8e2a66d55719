"""Faulty and awkward inputs through the commands: no row or second disappears in silence, one audio validation for
every command, complete submissions, manifests that say where they are broken and keep their file mode.

Each case is (description, command, expected exit code, words the output must contain, paths that must be unchanged
on disk, extra check). One tiny fbank run (data.max_eval_seconds=2) on a generated sine corpus serves every case
that needs a run; it is trained by the first case and reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from click.testing import CliRunner

from fusion_ser.cli.main import main

SR = 16000
CLASSES = {"anger": 250.0, "happiness": 800.0, "neutral": 2200.0}
TINY = ["audio_encoder.type=fbank", "audio_encoder.finetune=full", "audio_encoder.hidden_dim=16",
        "audio_encoder.n_mels=40", "pooling.type=mean", "train.cache_features=false", "train.epochs=1",
        "train.batch_size=8", "head.hidden_dim=16", "data.max_eval_seconds=2", "train.report=true",
        "data.labels=[anger,happiness,neutral]"]


def _sine(path: Path, f0: float, seconds: float, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = 0.4 * np.sin(2 * np.pi * f0 * t) + 0.02 * rng.standard_normal(len(t))
    sf.write(path, x.astype(np.float32), SR)
    return path


def _truncated(path: Path, seconds: float = 1.0) -> Path:
    """A WAV whose header promises `seconds` of audio but whose file holds half of it."""
    _sine(path, 440.0, seconds)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


@dataclass
class Env:
    root: Path
    manifest: Path
    run: Path
    files: dict[str, Path] = field(default_factory=dict)
    results: dict[str, object] = field(default_factory=dict)


def _corpus(root: Path) -> Env:
    """Sine clips by class: train 5 per class plus faulty rows, dev 2 per class, test 2 per class plus faulty rows."""
    audio = root / "audio"
    audio.mkdir(parents=True)
    rows = []

    def add(utt, split, label, path, text="a b c", **extra):
        rows.append({"utt_id": utt, "path": str(path), "split": split, "speaker": f"spk_{split}", "label": label,
                     "text": text, **extra})

    for split, n in (("train", 5), ("dev", 2), ("test", 2)):
        for label, f0 in CLASSES.items():
            for j in range(n):
                utt = f"{split}_{label}_{j}"
                add(utt, split, label, _sine(audio / f"{utt}.wav", f0 * (1 + 0.02 * j), 0.5 + 0.1 * j, seed=j))
    add("train_nolabel", "train", "", _sine(audio / "train_nolabel.wav", 300.0, 0.5))
    add("train_surprise", "train", "surprise", _sine(audio / "train_surprise.wav", 500.0, 0.5))
    add("train_other", "train", "other", _sine(audio / "train_other.wav", 600.0, 0.5))
    add("train_truncated", "train", "anger", _truncated(audio / "train_truncated.wav"))
    (audio / "train_dir.wav").mkdir()
    add("train_dir", "train", "neutral", audio / "train_dir.wav")
    add("test_sadness", "test", "sadness", _sine(audio / "test_sadness.wav", 1500.0, 0.6))
    add("test_sadness_2", "test", "sadness", _sine(audio / "test_sadness_2.wav", 1400.0, 0.6))
    add("test_unlabelled", "test", "", _sine(audio / "test_unlabelled.wav", 800.0, 0.6))
    add("test_long", "test", "anger", _sine(audio / "test_long.wav", 250.0, 3.0))
    add("test_truncated", "test", "happiness", _truncated(audio / "test_truncated.wav"))
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    (root / "base.yaml").write_text("seed: 0\n")
    env = Env(root, manifest, root / "run")

    # Inputs of the other cases.
    f = env.files
    f["long"] = _sine(root / "long_7s.wav", 250.0, 7.0)
    f["truncated"] = _truncated(root / "cut.wav")
    folder = root / "clips"
    folder.mkdir()
    _sine(folder / "good.wav", 800.0, 0.6)
    (folder / "looks_like.wav").mkdir()
    (folder / "dangling.wav").symlink_to(root / "nowhere.wav")
    f["folder"] = folder
    bad = root / "latin1.csv"
    bad.write_bytes(b"utt_id,path,split,label\na1,x.wav,train,neutral\na2,caf\xe9.wav,train,neutral\n")
    f["latin1"] = bad
    # Transcription: every row has a human transcript except the truncated clip (so only it is decoded).
    tr = pd.DataFrame([{"utt_id": "ok", "path": str(audio / "train_anger_0.wav"), "split": "train", "label": "anger",
                        "text": "kept"},
                       {"utt_id": "cut", "path": str(f["truncated"]), "split": "train", "label": "anger", "text": ""}])
    f["to_transcribe"] = root / "to_transcribe.csv"
    tr.to_csv(f["to_transcribe"], index=False)
    f["texts"] = root / "texts.csv"
    tr.assign(text="kept").to_csv(f["texts"], index=False)
    os.chmod(f["texts"], 0o644)
    f["texts_640"] = root / "texts_640.csv"
    tr.assign(text="kept").to_csv(f["texts_640"], index=False)
    os.chmod(f["texts_640"], 0o640)
    prep = pd.DataFrame([{"utt_id": "d", "path": str(audio / "train_dir.wav"), "split": "train", "label": "anger"}])
    f["prep_csv"] = root / "prep_source.csv"
    prep.to_csv(f["prep_csv"], index=False)
    return env


def _snapshot(paths: list[Path]) -> dict[str, tuple]:
    out = {}
    for p in paths:
        if p.is_file():
            out[str(p)] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), stat.S_IMODE(p.stat().st_mode))
        else:
            out[str(p)] = ("dir" if p.is_dir() else "absent",)
    return out


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@dataclass
class Case:
    desc: str
    args: Callable[[Env], list[str]]
    exit_code: int
    words: list[str]
    unchanged: Callable[[Env], list[Path]] = lambda env: []
    check: Optional[Callable[[Env, object], None]] = None


def _train_args(env: Env) -> list[str]:
    return ["train", "-c", str(env.root / "base.yaml"), "--manifest", str(env.manifest), "-o", str(env.run), *TINY]


def _check_train(env: Env, res) -> None:
    dropped = json.loads((env.run / "dropped_rows.json").read_text())
    by = dropped["by_split"]
    assert by["train"]["empty label"]["count"] == 1 and by["train"]["empty label"]["examples"] == ["train_nolabel"]
    assert by["train"]["label not among the classes"]["examples"] == ["train_surprise"]
    assert by["train"]["other/no_agreement"]["examples"] == ["train_other"]
    assert sorted(by["train"]["unreadable audio"]["examples"]) == ["train_dir", "train_truncated"]
    assert by["test"]["unreadable audio"]["examples"] == ["test_truncated"]
    assert dropped["total"] == 6
    info = json.loads((env.run / "run.json").read_text())
    assert info["extra"]["dropped_rows"]["train"]["empty label"] == 1
    assert info["extra"]["cropped_eval_clips"] == {"test": 1}
    skipped = json.loads((env.run / "skipped_clips.json").read_text())
    assert "train_truncated.wav': truncated (header declares" in skipped["train_truncated"]
    assert "is a directory" in skipped["train_dir"]
    assert _mode(env.run / "run.json") == _umask_mode()
    metrics = json.loads((env.run / "metrics.json").read_text())["test"]
    preds = pd.read_csv(env.run / "predictions" / "test.csv", keep_default_na=False)
    assert len(preds) == 10 and "test_truncated" not in set(preds["utt_id"])  # 11 test rows, the truncated one unread
    assert metrics["n"] == 9 and metrics["n_unknown_class"] == 2 and metrics["unknown_classes"] == {"sadness": 2}
    assert metrics["n_skipped"] == 1 and metrics["unscored"] == {"no label": 1}
    assert metrics["support"]["sadness"] == 2 and metrics["per_class_recall"]["sadness"] == 0.0
    labelled = preds[preds["label"] != ""]
    assert metrics["accuracy"] == pytest.approx((labelled["label"] == labelled["pred"]).mean())
    report = (env.run / "report.md").read_text()
    assert "does not know, sadness: 2: they count as errors" in report and "1 skipped (no label: 1)" in report


def _check_predict_long(env: Env, res) -> None:
    (row,) = [json.loads(line) for line in (env.root / "long.jsonl").read_text().splitlines()]
    assert row["auto_segmented"] is True and "segmented automatically" in row["note"]
    segs = row["segments"]
    assert segs[0]["start"] == 0.0 and segs[-1]["end"] == pytest.approx(7.0)
    assert all(s["end"] - s["start"] <= 2.0 + 1e-9 for s in segs) and len(segs) == 4
    assert all(a["end"] == pytest.approx(b["start"]) for a, b in zip(segs, segs[1:]))  # contiguous: nothing left out
    assert sum(row["probs"].values()) == pytest.approx(1.0)


def _check_predict_segments(env: Env, res) -> None:
    (row,) = [json.loads(line) for line in (env.root / "seg.jsonl").read_text().splitlines()]
    assert max(s["end"] - s["start"] for s in row["segments"]) <= 2.0 + 1e-9
    assert row["segments"][-1]["end"] == pytest.approx(7.0) and not row.get("auto_segmented")


def _check_predict_folder(env: Env, res) -> None:
    rows = [json.loads(line) for line in (env.root / "folder.jsonl").read_text().splitlines()]
    assert [Path(r["input"]).name for r in rows] == ["good.wav"]


def _check_modes_kept(env: Env, res) -> None:
    assert _mode(env.files["texts"]) == 0o644 and _mode(env.files["texts_640"]) == 0o640
    assert _mode(env.root / "new_manifest.csv") == _umask_mode()


CASES = [
    # 1. Dropped and unscored rows are counted; unknown-class rows are errors. (Also 3: truncated / directory rows.)
    Case("train: rows dropped by split and reason; test rows of unknown classes scored as errors; truncated and "
         "directory clips skipped with their reason; a test clip longer than data.max_eval_seconds noted",
         _train_args, 0,
         ["6 manifest row(s) not used", "train: 1 empty label", "1 label not among the classes", "1 other/no_agreement",
          "2 unreadable audio", "test: 1 unreadable audio", "dropped_rows.json",
          "2 row(s) labelled with a class the model does not know (sadness) count as errors",
          "test: 1 row(s) not scored (1 no label)", "1 test clip(s) longer than data.max_eval_seconds"],
         lambda env: [env.manifest, env.manifest.parent / "audio" / "train_truncated.wav"], _check_train),
    Case("evaluate: unknown-class rows reported as scored errors, unlabelled rows as skipped",
         lambda env: ["evaluate", str(env.run), "--split", "test", "--n-boot", "20"], 0,
         ["test: 9 scored, 1 skipped (no label: 1)", "2 scored row(s) have labels the run has no class for (sadness: 2)"],
         lambda env: [env.run / "predictions" / "test.csv"]),
    Case("train on attributes: train rows without any attribute value are counted",
         lambda env: ["train", "-c", str(env.root / "base.yaml"), "--manifest", str(env.files["attr_manifest"]), "-o",
                      str(env.root / "attr_run"), "task=attributes", "data.attributes=[arousal]", *TINY[:-1]], 0,
         ["manifest row(s) not used", "train: 2 no attributes"],
         lambda env: [env.files["attr_manifest"]]),
    # 2. Long inputs covered whole.
    Case("predict: a 7 s file with a 2 s model limit is segmented automatically and covered whole",
         lambda env: ["predict", str(env.run), str(env.files["long"]), "-o", str(env.root / "long.jsonl")], 0,
         ["Predicted 1 of 1 file(s)", "Segmented 1 file(s) automatically", "2 s"],
         lambda env: [env.files["long"]], _check_predict_long),
    Case("predict --segment-length 5 over a 2 s model limit: segments are split to the limit, not cropped",
         lambda env: ["predict", str(env.run), str(env.files["long"]), "--segment-length", "5", "-o",
                      str(env.root / "seg.jsonl")], 0,
         ["segments longer than 2 s were split"], lambda env: [env.files["long"]], _check_predict_segments),
    # 3. One audio validation for every command.
    Case("predict: a truncated WAV is rejected with its reason, not used in part",
         lambda env: ["predict", str(env.run), str(env.files["truncated"]), "-o", str(env.root / "cut.jsonl")], 1,
         ["truncated", "header declares", "cut.wav", "none of the 1 file(s) could be used"],
         lambda env: [env.files["truncated"], env.root / "cut.jsonl"]),
    Case("predict on a folder: a directory named x.wav and a broken link are reported as skipped with the reason",
         lambda env: ["predict", str(env.run), str(env.files["folder"]), "-o", str(env.root / "folder.jsonl")], 0,
         ["Predicted 1 of 1 file(s)", "Skipped 2 file(s)", "looks_like.wav': it is a directory",
          "dangling.wav': it is a broken link"], lambda env: [env.files["folder"] / "good.wav"], _check_predict_folder),
    Case("predict given a directory named x.wav (nothing inside): the reason is named",
         lambda env: ["predict", str(env.run), str(env.files["folder"] / "looks_like.wav"), "-o",
                      str(env.root / "none.jsonl")], 1,
         ["no audio files found", "looks_like.wav': it is a directory, not an audio file"],
         lambda env: [env.root / "none.jsonl"]),
    Case("transcribe: the truncated clip is reported as failed (truncated), the human transcript kept",
         lambda env: ["transcribe", str(env.files["to_transcribe"]), "-o", str(env.root / "transcribed.csv")], 0,
         ["failed 1", "cut: audio file", "truncated", "kept 1"], lambda env: [env.files["to_transcribe"]]),
    Case("prepare --check-audio still rejects the truncated clip (the same check as every command)",
         lambda env: ["prepare", "csv", str(env.files["prep_truncated"]), "-o", str(env.root / "prep_ok.csv"),
                      "--check-audio"], 0,
         ["Wrote"], lambda env: [env.files["prep_truncated"]],
         lambda env, res: "truncated" in (env.root / "prep_ok.csv.rejected.csv").read_text() or pytest.fail("no reason")),
    Case("prepare: a manifest path that is a directory is named as a directory, not as missing",
         lambda env: ["prepare", "csv", str(env.files["prep_csv"]), "-o", str(env.root / "prep_out.csv")], 1,
         ["train_dir.wav' is a directory, not an audio file"], lambda env: [env.root / "prep_out.csv"]),
    # 4. Complete submissions.
    Case("export-submission: a test row without a prediction (the truncated clip) is an error naming it",
         lambda env: ["export-submission", str(env.run), "-o", str(env.root / "sub.csv")], 1,
         ["1 of the 11 test rows", "test_truncated", "have no prediction", "--allow-partial"],
         lambda env: [env.root / "sub.csv"]),
    Case("export-submission --allow-partial: written, with a warning giving the count",
         lambda env: ["export-submission", str(env.run), "-o", str(env.root / "sub_partial.csv"), "--allow-partial"], 0,
         ["wrote 10 rows", "Warning: partial submission: 1 of the 11 test rows", "test_truncated"],
         lambda env: [env.run / "predictions" / "test.csv"]),
    # 5. Manifests and text files.
    Case("a non-UTF-8 manifest names the file, the line and the column",
         lambda env: ["transcribe", str(env.files["latin1"]), "-o", str(env.root / "latin1_out.csv")], 1,
         ["latin1.csv", "line 3, column 7", "not UTF-8", "iconv"],
         lambda env: [env.files["latin1"], env.root / "latin1_out.csv"]),
    Case("transcribe -o onto its input keeps the file's mode (0644, 0640); a new manifest gets 0666 & ~umask",
         lambda env: ["transcribe", str(env.files["texts"]), "-o", str(env.files["texts"])], 0,
         ["Wrote", "kept 2"], lambda env: [],
         lambda env, res: (CliRunner().invoke(main, ["transcribe", str(env.files["texts_640"]), "-o",
                                                     str(env.files["texts_640"])]),
                           CliRunner().invoke(main, ["transcribe", str(env.files["texts"]), "-o",
                                                     str(env.root / "new_manifest.csv")]),
                           _check_modes_kept(env, res))),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    import torch

    torch.set_num_threads(1)
    e = _corpus(tmp_path_factory.mktemp("faults"))
    df = pd.read_csv(e.manifest, keep_default_na=False)
    df = df[~df["utt_id"].str.contains("truncated|dir|sadness|long")].copy()
    df["arousal"] = [float(3 + i % 3) for i in range(len(df))]
    df.loc[df["utt_id"].isin(["train_nolabel", "train_other"]), "arousal"] = np.nan
    e.files["attr_manifest"] = e.root / "attr_manifest.csv"
    df.to_csv(e.files["attr_manifest"], index=False)
    prep = pd.read_csv(e.manifest, keep_default_na=False)
    prep = prep[prep["utt_id"].isin(["train_anger_0", "train_truncated"])]
    e.files["prep_truncated"] = e.root / "prep_truncated.csv"
    prep.to_csv(e.files["prep_truncated"], index=False)
    return e


def _invoke(env: Env, case: Case):
    args = case.args(env)
    watched = case.unchanged(env)
    before = _snapshot(watched)
    res = CliRunner().invoke(main, args)
    after = _snapshot(watched)
    return res, before, after


@pytest.fixture(scope="module")
def trained(env):
    """The train case, run once: every case that needs the run uses it."""
    env.results[CASES[0].desc] = _invoke(env, CASES[0])
    return env


@pytest.mark.parametrize("case", CASES, ids=[c.desc.split(":")[0] + f"-{i}" for i, c in enumerate(CASES)])
def test_fault(trained, case):
    env = trained
    res, before, after = env.results.pop(case.desc, None) or _invoke(env, case)
    output = res.output
    assert res.exit_code == case.exit_code, f"{case.desc}\n{output}\n{res.exception!r}"
    assert "Traceback" not in output
    missing = [w for w in case.words if w not in output]
    assert not missing, f"{case.desc}: {missing} not in\n{output}"
    assert before == after, f"{case.desc}: changed on disk"
    if case.check is not None:
        case.check(env, res)


def test_predict_api_covers_a_long_waveform_whole(trained):
    """Predictor.predict on a 7 s in-memory waveform (model limit 2 s): equal windows <= 2 s tiling the input, a
    whole-file aggregate and a note; a short waveform stays one unit without segments."""
    import fusion_ser

    predictor = fusion_ser.load(trained.run, device="cpu")
    assert predictor.max_seconds == 2.0
    t = np.arange(7 * SR) / SR
    long_wav = (0.4 * np.sin(2 * np.pi * 250.0 * t)).astype(np.float32)
    long, short = predictor.predict([long_wav, long_wav[: SR]], batch_size=3)
    assert long["auto_segmented"] and "segmented automatically" in long["note"] and "4 windows" in long["note"]
    segs = long["segments"]
    assert [s["start"] for s in segs] == [0.0, 1.75, 3.5, 5.25] and segs[-1]["end"] == 7.0
    mean = {c: np.mean([s["probs"][c] for s in segs]) for c in long["probs"]}  # equal windows: the plain mean
    assert long["probs"] == pytest.approx(mean)
    assert "segments" not in short and "note" not in short and short["duration"] == 1.0


def test_unknown_classes_are_errors_in_metrics_and_in_their_intervals():
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    from fusion_ser.evaluation.metrics import compute_metrics
    from fusion_ser.evaluation.resampling import bootstrap_ci, score_data
    from fusion_ser.rundir import RunInfo

    info = RunInfo(kind="model", task="categorical", labels=["anger", "neutral"])
    df = pd.DataFrame({"utt_id": list("abcdefgh"),
                       "label": ["anger", "neutral", "neutral", "sadness", "sadness", "fear", "", "other"],
                       "pred": ["anger", "neutral", "anger", "neutral", "anger", "anger", "anger", "neutral"]})
    m = compute_metrics(df, info)
    scored = df.iloc[:6]
    assert m["n"] == 6 and m["n_unknown_class"] == 3 and m["unknown_classes"] == {"fear": 1, "sadness": 2}
    assert m["n_skipped"] == 2 and m["unscored"] == {"no label": 1, "other/no_agreement": 1}
    assert m["labels"] == ["anger", "neutral", "fear", "sadness"] and len(m["confusion_matrix"]) == 4
    assert m["accuracy"] == pytest.approx(accuracy_score(scored["label"], scored["pred"]))
    assert m["macro_f1"] == pytest.approx(f1_score(scored["label"], scored["pred"], average="macro", zero_division=0))
    assert m["uar"] == pytest.approx(recall_score(scored["label"], scored["pred"], average="macro", zero_division=0))
    ci = bootstrap_ci(score_data(df, info), n_boot=20)
    for key in ("macro_f1", "uar", "accuracy"):
        assert ci[key]["value"] == pytest.approx(m[key])


def test_atomic_writers_give_files_the_mode_open_would(tmp_path):
    """The feature cache, run files and manifests: a new file gets 0666 & ~umask, an overwritten one keeps its mode."""
    from fusion_ser.data.feature_cache import read_entry, write_entry
    from fusion_ser.data.manifest import write_manifest
    from fusion_ser.rundir import atomic_write_text

    entry = tmp_path / "aa" / "x.fsc"
    write_entry(entry, np.ones((3, 2)))
    assert _mode(entry) == _umask_mode() and read_entry(entry).shape == (3, 2)
    text = tmp_path / "run.json"
    atomic_write_text(text, "{}")
    os.chmod(text, 0o604)
    atomic_write_text(text, "{} ")
    assert _mode(text) == 0o604 and text.read_text() == "{} "
    manifest = tmp_path / "m.csv"
    write_manifest(pd.DataFrame({"utt_id": ["a"], "path": ["a.wav"], "split": ["train"], "label": ["anger"]}), manifest)
    assert _mode(manifest) == _umask_mode()
    assert [p.name for p in tmp_path.rglob(".*")] == []  # no temp file left behind
