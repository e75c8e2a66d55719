"""The demo: the TTS corpus is deterministic, speaker-independent and carries emotion in words and prosody as designed;
`fusion-ser demo --size small` runs the whole flow and leaves complete runs and a report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from fusion_ser.cli.main import main
from fusion_ser.demo.corpus import (EMOTIONAL_TEMPLATES, EMOTIONS, NEUTRAL_TEMPLATES, generate_corpus,
                                    utterance_plan)
from fusion_ser.rundir import RunDir


def _f0_median(wav: np.ndarray, sr: int = 16000) -> float:
    """Median pitch (60-400 Hz) of the loud, periodic 40 ms frames by autocorrelation: independent of the generator."""
    frame, hop, lo, hi = int(0.04 * sr), int(0.01 * sr), sr // 400, sr // 60
    rms = np.sqrt(np.mean(wav**2))
    out = []
    for s in range(0, len(wav) - frame, hop):
        x = wav[s: s + frame] - wav[s: s + frame].mean()
        if np.sqrt(np.mean(x**2)) < 0.3 * rms:
            continue
        r = np.correlate(x, x, "full")[frame - 1:]
        r = r[lo:hi] / r[0]
        if r.max() >= 0.5:
            out.append(sr / (lo + int(np.argmax(r))))
    return float(np.median(out)) if out else float("nan")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_corpus")
    return root, generate_corpus(root, n_speakers=4, per_emotion=3, seed=3)


def test_corpus_is_speaker_independent_and_deterministic(small_corpus, tmp_path):
    root, manifest = small_corpus
    df = pd.read_csv(manifest)
    assert len(df) == 4 * 3 * len(EMOTIONS)
    assert (df.groupby(["speaker", "label"]).size() == 3).all()
    assert (df.groupby("speaker")["split"].nunique() == 1).all()  # every speaker in exactly one split
    assert set(df["split"]) == {"train", "dev", "test"}
    assert set(df["gender"]) == {"female", "male"}
    first = pd.read_csv(generate_corpus(tmp_path / "a", n_speakers=3, per_emotion=1, seed=7))
    again = pd.read_csv(generate_corpus(tmp_path / "b", n_speakers=3, per_emotion=1, seed=7))
    pd.testing.assert_frame_equal(first, again)
    for p in first["path"]:
        assert np.array_equal(sf.read(tmp_path / "a" / p)[0], sf.read(tmp_path / "b" / p)[0])
    assert sf.info(tmp_path / "a" / first["path"][0]).samplerate == 16000
    plans = [utterance_plan(6, np.random.default_rng([s, 2, 0])) for s in (7, 8)]
    assert plans[0] != plans[1]


def test_corpus_words_and_prosody_carry_the_emotion_as_designed(small_corpus):
    root, manifest = small_corpus
    df = pd.read_csv(manifest)
    # "prosody" utterances use the neutral sentences (words alone cannot tell); "both"/"words" ones the emotional.
    def prefixes(templates):
        return tuple(t.split("{")[0] for t in templates)

    neutral = prefixes(NEUTRAL_TEMPLATES)
    prosody_only = df[df["kind"] == "prosody"]
    assert len(prosody_only) > 0 and prosody_only["text"].str.startswith(neutral).all()
    assert df.loc[df["label"] == "neutral", "text"].str.startswith(neutral).all()
    for emotion, templates in EMOTIONAL_TEMPLATES.items():
        worded = df[(df["label"] == emotion) & (df["kind"] != "prosody")]
        assert len(worded) > 0 and worded["text"].str.startswith(prefixes(templates)).all()
    # Sadness in the prosody is slower and lower; a flat ("words") delivery is not.
    df["f0"] = [_f0_median(sf.read(root / p)[0]) for p in df["path"]]
    df["rate"] = df["text"].str.split().str.len() / df["duration_s"]
    for spk, g in df.groupby("speaker"):
        sad = g[(g["label"] == "sadness") & (g["kind"] != "words")]
        neu = g[g["label"] == "neutral"]
        assert sad["f0"].median() < neu["f0"].median()
        assert sad["rate"].median() < neu["rate"].median()
    male = df[df["gender"] == "male"]["f0"].median()
    female = df[df["gender"] == "female"]["f0"].median()
    assert male < female


def test_demo_small_runs_end_to_end(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "demo"
    res = CliRunner().invoke(main, ["demo", "-o", str(out), "--size", "small", "--seed", "1"])
    assert res.exit_code == 0, res.output
    for name in ("audio", "text", "late", "both"):
        run = RunDir(out / "runs" / name)
        info = run.require_complete()
        assert set(info.labels) == set(EMOTIONS)
        test = run.read_predictions("test")
        assert len(test) == 12 and "prob_anger" in test.columns
        assert "macro_f1" in run.read_metrics()["test"]
        assert str(out / "runs" / name) in res.output
    assert RunDir(out / "runs" / "late").read_info().kind == "fusion"
    assert RunDir(out / "runs" / "both").read_info().modality == "both"
    summary = json.loads((out / "demo_summary.json").read_text())
    assert set(summary["test_scores"]) == {"audio", "text", "late", "both"}
    for name, score in summary["test_scores"].items():
        assert score == pytest.approx(RunDir(out / "runs" / name).read_metrics()["test"]["macro_f1"])
    assert 0.0 <= summary["asr_wer"] < 0.5  # Whisper hears the TTS words
    report = (out / "reports" / "demo_report.md").read_text()
    assert "attention fusion" in report and "prosody" in report
    assert (out / "reports" / "demo_scores.png").stat().st_size > 1000
    assert (out / "reports" / "comparison.md").is_file()
    manifest = pd.read_csv(out / "corpus" / "manifest_asr.csv")
    assert (manifest["text"].str.len() > 0).mean() > 0.9
    assert "fusion-ser predict" in res.output and "fusion-ser train" in res.output
