"""Manifest reading/writing, every validation error (with lines and files), summaries, and folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from fusion_ser.data.folds import FoldError, apply_fold, assign_folds
from fusion_ser.data.manifest import (
    KNOWN_LABELS,
    MAX_REPORTED,
    ManifestError,
    check_manifest_audio,
    read_manifest,
    summarize,
    validate_manifest,
    write_manifest,
)


def _frame(n: int = 4, **overrides) -> pd.DataFrame:
    df = pd.DataFrame({
        "utt_id": [f"u{i}" for i in range(n)],
        "path": [f"audio/u{i}.wav" for i in range(n)],
        "split": (["train", "dev", "test"] * n)[:n],
        "speaker": [f"s{i % 2}" for i in range(n)],
        "gender": ["female", "male"] * (n // 2) + ["female"] * (n % 2),
        "label": (["anger", "neutral", "happiness", ""] * n)[:n],
        "arousal": [1.5 + i for i in range(n)],
        "valence": [""] * n,
        "dominance": [4.0] * n,
        "text": ["hello’s there", "", "x", ""] * (n // 4) + [""] * (n % 4),
    })
    for k, v in overrides.items():
        df[k] = v
    return df


def _write(tmp_path, df, name="m.csv"):
    p = tmp_path / name
    df.to_csv(p, index=False)
    return p


def _problems(path, **kwargs) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        read_manifest(path, **kwargs)
    return info.value


def test_read_resolves_paths_and_types(tmp_path):
    (tmp_path / "audio").mkdir()
    p = _write(tmp_path, _frame())
    df = read_manifest(p)
    assert df["path"].tolist() == [str((tmp_path / "audio" / f"u{i}.wav").resolve()) for i in range(4)]
    assert df["label"].tolist() == ["anger", "neutral", "happiness", ""]
    assert df["text"].tolist()[0] == "hello’s there" and df["text"].tolist()[1] == ""
    assert df["valence"].isna().all() and df["arousal"].tolist() == [1.5, 2.5, 3.5, 4.5]
    assert df["arousal"].dtype == float and df["dominance"].dtype == float


def test_write_then_read_round_trip(tmp_path):
    df = _frame(6)
    df["path"] = [str(tmp_path / f"u{i}.wav") for i in range(6)]
    df["fold"] = [0, 1, 2, 0, 1, 2]
    df["p_anger"] = np.linspace(0, 1, 6)
    df["extra"] = list("abcdef")
    out = tmp_path / "sub" / "out.csv"
    write_manifest(df.drop(columns=["gender"]), out)
    back = read_manifest(out)
    assert list(back.columns[:12]) == ["utt_id", "path", "split", "speaker", "gender", "label", "arousal",
                                       "valence", "dominance", "text", "fold", "p_anger"]
    assert back["gender"].tolist() == [""] * 6
    assert back["fold"].tolist() == [0, 1, 2, 0, 1, 2]
    np.testing.assert_allclose(back["p_anger"], np.linspace(0, 1, 6))
    assert back["extra"].tolist() == list("abcdef")
    assert back["text"].tolist() == df["text"].tolist()
    assert ",nan" not in out.read_text().lower()


def test_missing_file_and_missing_columns(tmp_path):
    assert "does not exist" in str(_problems(tmp_path / "none.csv"))
    p = _write(tmp_path, _frame().drop(columns=["split", "label"]))
    msg = str(_problems(p))
    assert "missing column" in msg and "'split'" in msg and "'label'" in msg and str(p) in msg


def test_duplicate_utt_id_names_both_lines(tmp_path):
    p = _write(tmp_path, _frame(utt_id=["a", "b", "a", "c"]))
    err = _problems(p)
    assert "lines 2, 4: duplicate utt_id 'a'" in str(err)
    assert str(p) in str(err)


def test_unknown_split_names_line_and_value(tmp_path):
    p = _write(tmp_path, _frame(split=["train", "Validation", "test", ""]))
    msg = str(_problems(p))
    assert "line 3 (utt_id 'u1'): unknown split 'Validation'" in msg
    assert "line 5 (utt_id 'u3'): unknown split ''" in msg


def test_labels_outside_the_label_set(tmp_path):
    p = _write(tmp_path, _frame(label=["anger", "calm", "Angry", ""]))
    msg = str(_problems(p))  # default: any lower-case name, so only the capitalised code fails
    assert "line 4 (utt_id 'u2'): label 'Angry'" in msg and "'calm'" not in msg.split("\n", 2)[2]
    err = _problems(p, labels=["anger", "neutral"])
    assert len(err.problems) == 3  # one summary + two rows
    assert "line 3 (utt_id 'u1'): label 'calm' is not in the label set" in str(err)
    read_manifest(_write(tmp_path, _frame(label=["anger", "calm", "boredom", ""]), "ok.csv"), labels=KNOWN_LABELS)


def test_attributes_outside_the_scale_and_not_numbers(tmp_path):
    p = _write(tmp_path, _frame(arousal=["1", "7.5", "0.5", "x"]))
    err = _problems(p, attribute_range=(1, 7))
    msg = str(err)
    assert "line 3 (utt_id 'u1'): arousal 7.5 is outside the scale [1, 7]" in msg
    assert "line 4 (utt_id 'u2'): arousal 0.5 is outside the scale [1, 7]" in msg
    assert "line 5: column 'arousal' value 'x' is not a number" in msg
    assert len(err.problems) == 3
    assert len(_problems(p).problems) == 1  # without a declared scale only the non-number is an error


def test_missing_audio_files(tmp_path):
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "u0.wav").write_bytes(b"x")
    p = _write(tmp_path, _frame())
    read_manifest(p)  # files are only checked on request
    err = _problems(p, check_files=True)
    assert len(err.problems) == 3
    assert f"audio file '{(tmp_path / 'audio' / 'u1.wav').resolve()}' does not exist" in str(err)


def test_soft_labels_fold_and_empty_rows(tmp_path):
    df = _frame(p_anger=[0.5, 1.2, "", "a"], fold=["0", "1", "-1", "1.5"])
    df.loc[3, ["path", "text"]] = ""
    msg = str(_problems(_write(tmp_path, df)))
    assert "soft label p_anger 1.2 is outside [0, 1]" in msg
    assert "column 'p_anger' value 'a' is not a number" in msg
    assert "fold '-1' is not a non-negative integer" in msg and "fold '1.5'" in msg
    assert "line 5 (utt_id 'u3'): neither an audio path nor a text" in msg


def test_all_problems_are_collected_and_the_first_ones_shown(tmp_path):
    n = 50
    p = _write(tmp_path, _frame(n, split=["bogus"] * n, label=["X"] * n))
    err = _problems(p)
    assert len(err.problems) == 2 * n + 1
    msg = str(err)
    assert f"has {2 * n + 1} problems" in msg
    assert f"... and {2 * n + 1 - MAX_REPORTED} more" in msg
    assert msg.count("\n  ") == MAX_REPORTED + 1


def test_validate_manifest_without_reading(tmp_path):
    validate_manifest(_frame(), "in-memory")
    with pytest.raises(ManifestError, match="in-memory"):
        validate_manifest(_frame(utt_id=["a", "a", "b", ""]), "in-memory")


def test_summarize_counts_match_pandas():
    df = _frame(12)
    df["path"] = ""
    s = summarize(df, durations=np.full(12, 1800.0))
    assert s["rows"] == 12
    assert s["splits"] == df["split"].value_counts().to_dict()
    counts = df["label"].replace("", "(none)").value_counts().to_dict()
    assert s["labels"] == counts
    assert s["split_labels"]["train"] == df[df.split == "train"]["label"].replace("", "(none)").value_counts().to_dict()
    assert s["speakers"] == 2 and s["hours"] == pytest.approx(6.0)
    assert summarize(df)["hours"] is None


@pytest.fixture
def speakers_frame():
    rng = np.random.default_rng(1)
    sizes = rng.integers(5, 40, size=23)
    spk = np.repeat([f"spk{i}" for i in range(len(sizes))], sizes)
    return pd.DataFrame({"utt_id": [f"u{i}" for i in range(len(spk))], "speaker": spk, "split": "train"})


def test_folds_are_speaker_independent_and_balanced(speakers_frame):
    df = speakers_frame
    folds = assign_folds(df, 5, seed=0)
    assert folds.index.equals(df.index) and set(folds) == set(range(5))
    assert df.groupby("speaker").apply(lambda g: folds[g.index].nunique()).max() == 1
    counts = folds.value_counts()
    largest = df["speaker"].value_counts().max()
    assert counts.max() - counts.min() <= largest  # greedy largest-first bound
    assert counts.max() - counts.min() < 0.25 * len(df) / 5
    assert assign_folds(df, 5, seed=0).equals(folds)


def test_apply_fold_rotates_test_and_dev(speakers_frame):
    df = speakers_frame.assign(fold=assign_folds(speakers_frame, 4, seed=2))
    for k in range(4):
        out = apply_fold(df, k)
        assert (out.loc[df.fold == k, "split"] == "test").all()
        assert (out.loc[df.fold == (k + 1) % 4, "split"] == "dev").all()
        assert set(out.loc[~df.fold.isin([k, (k + 1) % 4]), "split"]) == {"train"}
    assert (df["split"] == "train").all()  # the input is not modified


def test_fold_errors_say_what_to_do(speakers_frame):
    with pytest.raises(FoldError, match="cannot fill 30"):
        assign_folds(speakers_frame, 30)
    with pytest.raises(FoldError, match="no speaker"):
        assign_folds(speakers_frame.assign(speaker=[""] * len(speakers_frame)), 2)
    with pytest.raises(FoldError, match="no 'fold' column"):
        apply_fold(speakers_frame, 0)
    with pytest.raises(FoldError, match="at least 3"):
        apply_fold(speakers_frame.assign(fold=assign_folds(speakers_frame, 2)), 0)
    with pytest.raises(FoldError, match="out of range"):
        apply_fold(speakers_frame.assign(fold=assign_folds(speakers_frame, 3)), 3)


def test_check_manifest_audio_keeps_text_rows_and_drops_bad_audio(tmp_path):
    sf.write(tmp_path / "good.wav", np.full(3200, 0.1, dtype=np.float32), 16000)
    sf.write(tmp_path / "silent.wav", np.zeros(3200, dtype=np.float32), 16000)
    df = _frame(3, path=[str(tmp_path / "good.wav"), "", str(tmp_path / "silent.wav")], text=["", "hi", ""])
    calls = []
    kept, rejected = check_manifest_audio(df, progress=calls.append)
    assert kept["utt_id"].tolist() == ["u0", "u1"] and len(calls) == 2
    assert rejected.to_dict("records") == [
        {"utt_id": "u2", "path": str(tmp_path / "silent.wav"), "reason": "silent: every sample is zero"}]
