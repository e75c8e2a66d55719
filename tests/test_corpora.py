"""Corpus adapters on tiny corpora that follow each real layout, and the `prepare` command end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from click.testing import CliRunner

from fusion_ser.cli.main import main
from fusion_ser.data.corpora import CorpusError, corpus_config, get_corpus, prepare_corpus
from fusion_ser.data.folds import FoldError
from fusion_ser.data.manifest import KNOWN_LABELS, read_manifest, validate_manifest

RNG = np.random.default_rng(0)


def _wav(path: Path, seconds: float = 0.2, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.1 * RNG.standard_normal(int(seconds * rate))).astype(np.float32), rate)
    return path


def _by_id(df: pd.DataFrame) -> pd.DataFrame:
    return df.set_index("utt_id")


# ---------------------------------------------------------------- MSP-Podcast

MSP_ROWS = [  # FileName, EmoClass, EmoAct, EmoVal, EmoDom, SpkrID, Gender, Split_Set
    ("MSP-PODCAST_0001_0008.wav", "A", 5.2, 2.0, 5.6, "127", "Male", "Train"),
    ("MSP-PODCAST_0001_0019.wav", "S", 2.0, 2.4, 3.0, "127", "Male", "Development"),
    ("MSP-PODCAST_0002_0033.wav", "H", 4.4, 6.0, 4.2, "12", "Female", "Test1"),
    ("MSP-PODCAST_0002_0051.wav", "O", 3.0, 4.0, 4.0, "Unknown", "Unknown", "Test2"),
    ("MSP-PODCAST_0003_0001.wav", "X", 3.8, 3.4, 4.4, "9", "Female", "Train"),
]
MSP_COLUMNS = ["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"]


def _msp(root: Path, label_file: str = "labels_consensus.csv", split_names: dict | None = None) -> Path:
    for row in MSP_ROWS:
        _wav(root / "Audios" / row[0])
    _wav(root / "Audios" / "MSP-PODCAST_test3_0001_0002.wav")  # unlabelled test3 audio
    _wav(root / "Audios" / "MSP-PODCAST_0009_0009.wav")  # audio without labels, not test3: ignored
    rows = [list(r) for r in MSP_ROWS]
    for r in rows:
        r[7] = (split_names or {}).get(r[7], r[7])
    (root / "Labels").mkdir(parents=True, exist_ok=True)
    if label_file.endswith(".csv"):
        pd.DataFrame(rows, columns=MSP_COLUMNS).to_csv(root / "Labels" / label_file, index=False)
    else:
        data = {r[0]: dict(zip(MSP_COLUMNS[1:], r[1:])) for r in rows}
        (root / "Labels" / label_file).write_text(json.dumps(data))
    (root / "Transcripts").mkdir(exist_ok=True)
    (root / "Transcripts" / "MSP-PODCAST_0001_0008.txt").write_text("I can’t believe it, honestly.\n")
    (root / "Transcripts" / "MSP-PODCAST_0002_0033.txt").write_text("That's wonderful")
    detailed = {
        "MSP-PODCAST_0001_0008.wav": {
            "WORKER00001": {"EmoClass_Major": "Angry", "EmoClass_Second": "Angry,Frustrated", "EmoAct": 5.0},
            "WORKER00002": {"EmoClass_Major": "Angry", "EmoClass_Second": "", "EmoAct": 6.0},
            "WORKER00003": {"EmoClass_Major": "Disgust", "EmoClass_Second": "", "EmoAct": 5.0},
            "WORKER00004": {"EmoClass_Major": "Other-Annoyed", "EmoClass_Second": "", "EmoAct": 5.0},
        },
        "MSP-PODCAST_0003_0001.wav": {
            "WORKER00001": {"EmoClass_Major": "Happy"}, "WORKER00005": {"EmoClass_Major": "Sad"},
        },
    }
    (root / "Labels" / "labels_detailed.json").write_text(json.dumps(detailed))
    return root


def test_msp_podcast_release_layout(tmp_path):
    df = prepare_corpus("msp-podcast", _msp(tmp_path / "MSP"))
    validate_manifest(df, "msp", labels=KNOWN_LABELS, attribute_range=(1, 7), check_files=True)
    d = _by_id(df)
    assert len(df) == 6 and "MSP-PODCAST_0009_0009" not in d.index
    assert d["label"].to_dict() == {
        "MSP-PODCAST_0001_0008": "anger", "MSP-PODCAST_0001_0019": "sadness", "MSP-PODCAST_0002_0033": "happiness",
        "MSP-PODCAST_0002_0051": "other", "MSP-PODCAST_0003_0001": "no_agreement", "MSP-PODCAST_test3_0001_0002": "",
    }
    assert d["split"].tolist() == ["train", "dev", "test", "test", "train", "test"]
    assert d["set"].tolist() == ["Train", "Development", "Test1", "Test2", "Train", "Test3"]
    assert d.loc["MSP-PODCAST_0001_0008", ["arousal", "valence", "dominance"]].tolist() == [5.2, 2.0, 5.6]
    assert np.isnan(d.loc["MSP-PODCAST_test3_0001_0002", "arousal"])
    assert d.loc["MSP-PODCAST_0002_0051", "speaker"] == "" and d.loc["MSP-PODCAST_0002_0051", "gender"] == ""
    assert d.loc["MSP-PODCAST_0001_0008", ["speaker", "gender"]].tolist() == ["127", "male"]
    assert d.loc["MSP-PODCAST_0001_0008", "text"] == "I can’t believe it, honestly."
    assert d.loc["MSP-PODCAST_0001_0019", "text"] == ""
    assert d.loc["MSP-PODCAST_0001_0008", "path"] == str(tmp_path / "MSP" / "Audios" / "MSP-PODCAST_0001_0008.wav")
    soft = [c for c in df.columns if c.startswith("p_")]
    assert soft == [f"p_{k}" for k in ["anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness",
                                       "surprise"]]
    row = d.loc["MSP-PODCAST_0001_0008", soft]
    assert row["p_anger"] == pytest.approx(2 / 3) and row["p_disgust"] == pytest.approx(1 / 3)
    assert row.sum() == pytest.approx(1.0)
    assert d.loc["MSP-PODCAST_0003_0001", ["p_happiness", "p_sadness"]].tolist() == [0.5, 0.5]
    assert d.loc["MSP-PODCAST_0001_0019", soft].isna().all()


@pytest.mark.parametrize("label_file,split_names,expected", [
    ("labels_concensus.csv", {"Development": "Validation"}, ["train", "dev", "test", "test", "train"]),
    ("labels_consensus.json", {"Test1": "Test", "Test2": "Test"}, ["train", "dev", "test", "test", "train"]),
])
def test_msp_podcast_older_and_newer_releases(tmp_path, label_file, split_names, expected):
    root = _msp(tmp_path / "MSP", label_file, split_names)
    df = prepare_corpus("msp-podcast", root, {"include_test3": False, "soft_labels": False})
    assert df["split"].tolist() == expected
    assert df["label"].tolist() == ["anger", "sadness", "happiness", "other", "no_agreement"]
    assert not [c for c in df.columns if c.startswith("p_")]


def test_msp_podcast_detailed_labels_as_csv(tmp_path):
    root = _msp(tmp_path / "MSP")
    (root / "Labels" / "labels_detailed.json").unlink()
    pd.DataFrame({"FileName": ["MSP-PODCAST_0001_0019.wav"] * 3 + ["MSP-PODCAST_0002_0033.wav"],
                  "WorkerID": ["W1", "W2", "W3", "W1"], "EmoClass_Major": ["Sad", "Neutral", "S", "Other"]}
                 ).to_csv(root / "Labels" / "labels_detailed.csv", index=False)
    d = _by_id(prepare_corpus("msp-podcast", root))
    assert d.loc["MSP-PODCAST_0001_0019", ["p_sadness", "p_neutral", "p_anger"]].tolist() == [2 / 3, 1 / 3, 0.0]
    assert d.loc["MSP-PODCAST_0002_0033", "p_sadness"] != d.loc["MSP-PODCAST_0002_0033", "p_sadness"]  # NaN


def test_msp_podcast_layout_errors(tmp_path):
    with pytest.raises(CorpusError, match="Audios"):
        prepare_corpus("msp-podcast", tmp_path)
    root = _msp(tmp_path / "MSP")
    (root / "Labels" / "labels_consensus.csv").unlink()
    with pytest.raises(CorpusError, match="labels_concensus.csv"):
        prepare_corpus("msp-podcast", root)


# ---------------------------------------------------------------- RAVDESS

def _ravdess(root: Path) -> list[str]:
    names = []
    for actor in range(1, 5):
        for emotion, intensity, statement in [("02", "01", "01"), ("05", "02", "02")]:
            name = f"03-01-{emotion}-{intensity}-{statement}-01-{actor:02d}"
            _wav(root / f"Actor_{actor:02d}" / f"{name}.wav")
            names.append(name)
    _wav(root / "Actor_01" / "03-02-03-01-01-01-01.wav")  # song: left out by default
    _wav(root / "Actor_01" / "notes.wav")  # not RAVDESS naming: skipped
    return names


def test_ravdess_original_naming(tmp_path):
    names = _ravdess(tmp_path / "rav")
    df = prepare_corpus("ravdess", tmp_path / "rav")
    d = _by_id(df)
    assert sorted(d.index) == sorted(names)
    assert d.loc["03-01-02-01-01-01-01", ["label", "speaker", "gender", "text", "intensity"]].tolist() == [
        "calm", "Actor_01", "male", "Kids are talking by the door", "normal"]
    assert d.loc["03-01-05-02-02-01-02", ["label", "gender", "text", "intensity"]].tolist() == [
        "anger", "female", "Dogs are sitting by the door", "strong"]
    assert sorted(df["fold"].unique()) == [0, 1, 2, 3]
    assert df.groupby("speaker")["fold"].nunique().max() == 1
    assert (df.loc[df.fold == 0, "split"] == "test").all() and (df.loc[df.fold == 1, "split"] == "dev").all()
    with_song = prepare_corpus("ravdess", tmp_path / "rav", {"include_song": True})
    assert len(with_song) == len(df) + 1
    assert with_song.set_index("utt_id").loc["03-02-03-01-01-01-01", "label"] == "happiness"


def test_ravdess_shared_manifest_layout(tmp_path):
    root = tmp_path / "ravdess"
    rows = []
    for actor in range(1, 5):
        rel = f"audio/Actor_{actor:02d}/03-01-04-01-01-01-{actor:02d}.flac"
        sf.write(root / rel if (root / rel).parent.mkdir(parents=True, exist_ok=True) is None else None,
                 np.full(1600, 0.1, dtype=np.float32), 16000)
        rows.append([rel, "sadness", f"Actor_{actor:02d}", "male" if actor % 2 else "female",
                     "Kids are talking by the door", 0.1, "normal", 1])
    pd.DataFrame(rows, columns=["path", "label", "speaker", "gender", "text", "duration_s", "intensity",
                                "repetition"]).to_csv(root / "manifest.csv", index=False)
    df = prepare_corpus("ravdess", root, folds=4, seed=1)
    assert df["utt_id"].tolist() == [f"03-01-04-01-01-01-{a:02d}" for a in range(1, 5)]
    assert df["path"].map(lambda p: Path(p).is_file()).all()
    assert set(df["label"]) == {"sadness"} and sorted(df["fold"].unique()) == [0, 1, 2, 3]
    assert df.groupby("fold").size().tolist() == [1, 1, 1, 1]
    with pytest.raises(FoldError, match="at least 3"):
        prepare_corpus("ravdess", root, folds=2)


# ---------------------------------------------------------------- EmoDB, CREMA-D

def test_emodb_file_names(tmp_path):
    for name in ["03a01Fa", "08b10Wb", "10a02Lc", "13a04Nd", "16b03Ta", "11a05Ea", "09a07Ab"]:
        _wav(tmp_path / "emodb" / "wav" / f"{name}.wav")
    df = prepare_corpus("emodb", tmp_path / "emodb")
    d = _by_id(df)
    assert d["label"].to_dict() == {"03a01Fa": "happiness", "08b10Wb": "anger", "10a02Lc": "boredom",
                                    "13a04Nd": "neutral", "16b03Ta": "sadness", "11a05Ea": "disgust",
                                    "09a07Ab": "fear"}
    assert d["speaker"]["03a01Fa"] == "03" and d["gender"]["03a01Fa"] == "male" and d["gender"]["08b10Wb"] == "female"
    assert d.loc["03a01Fa", "text"] == "Der Lappen liegt auf dem Eisschrank."
    assert d.loc["16b03Ta", "text"].startswith("An den Wochenenden")
    assert set(df["split"]) == {"train", "dev", "test"}
    assert prepare_corpus("emodb", tmp_path / "emodb", {"fill_text": False})["text"].eq("").all()


def test_crema_d_file_names_and_demographics(tmp_path):
    root = tmp_path / "CREMA-D"
    names = ["1001_DFA_ANG_XX", "1002_IEO_HAP_HI", "1003_TIE_SAD_LO", "1004_IOM_NEU_MD", "1091_WSI_FEA_XX",
             "1005_ITS_DIS_XX"]
    for n in names:
        _wav(root / "AudioWAV" / f"{n}.wav")
    pd.DataFrame({"ActorID": ["1001", "1002", "1003", "1004"], "Age": [51, 21, 21, 42],
                  "Sex": ["Male", "Female", "Female", "Male"]}).to_csv(root / "VideoDemographics.csv", index=False)
    d = _by_id(prepare_corpus("crema-d", root))
    assert d["label"].tolist() == ["anger", "happiness", "sadness", "neutral", "disgust", "fear"]
    assert d["gender"].tolist() == ["male", "female", "female", "male", "", ""]
    assert d.loc["1001_DFA_ANG_XX", "text"] == "Don't forget a jacket"
    assert d.loc["1002_IEO_HAP_HI", "intensity"] == "high"
    assert d["speaker"].tolist() == ["1001", "1002", "1003", "1004", "1005", "1091"]


# ---------------------------------------------------------------- IEMOCAP

IEMO_HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"


def _iemocap(root: Path) -> None:
    utts = {1: [("Ses01F_impro01_F000", "neu", "2.5000, 2.5000, 2.5000", "Excuse me."),
                ("Ses01F_impro01_M001", "exc", "4.0000, 3.5000, 3.0000", "Yeah?")],
            2: [("Ses02M_script01_1_F003", "fru", "2.0000, 4.0000, 3.5000", "No, it's not."),
                ("Ses02M_script01_1_M010", "xxx", "3.0000, 3.0000, 3.0000", "Okay [LAUGHTER].")],
            3: [("Ses03F_impro02_F000", "ang", "1.5000, 4.5000, 4.0000", "Stop it!")]}
    for s, rows in utts.items():
        session = root / f"Session{s}"
        by_dialog: dict[str, list] = {}
        for r in rows:
            by_dialog.setdefault(r[0].rsplit("_", 1)[0], []).append(r)
        for dialog, rs in by_dialog.items():
            ev = session / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
            ev.parent.mkdir(parents=True, exist_ok=True)
            text = IEMO_HEADER
            tr = ""
            for i, (utt, code, vad, words) in enumerate(rs):
                text += f"[{6.29 + i:.4f} - {8.23 + i:.4f}]\t{utt}\t{code}\t[{vad}]\n"
                text += "C-E1:\tNeutral;\t()\nA-E1:\tval 3; act 2; dom  2;\t()\n\n"
                tr += f"{utt} [{6.29 + i:08.4f}-{8.23 + i:08.4f}]: {words}\n"
                _wav(session / "sentences" / "wav" / dialog / f"{utt}.wav")
            ev.write_text(text)
            (session / "dialog" / "transcriptions").mkdir(parents=True, exist_ok=True)
            (session / "dialog" / "transcriptions" / f"{dialog}.txt").write_text(tr)


def test_iemocap_sessions_become_folds(tmp_path):
    _iemocap(tmp_path / "IEMOCAP")
    df = prepare_corpus("iemocap", tmp_path / "IEMOCAP")
    validate_manifest(df, "iemocap", labels=KNOWN_LABELS, attribute_range=(1, 5), check_files=True)
    d = _by_id(df)
    assert d["label"].tolist() == ["neutral", "happiness", "frustration", "no_agreement", "anger"]
    assert d["fold"].tolist() == [0, 0, 1, 1, 2]
    assert d["split"].tolist() == ["test", "test", "dev", "dev", "train"]
    assert d.loc["Ses01F_impro01_M001", ["valence", "arousal", "dominance"]].tolist() == [4.0, 3.5, 3.0]
    assert d.loc["Ses01F_impro01_M001", ["speaker", "gender"]].tolist() == ["Ses01M", "male"]
    assert d.loc["Ses02M_script01_1_F003", ["speaker", "gender"]].tolist() == ["Ses02F", "female"]
    assert d.loc["Ses02M_script01_1_F003", "text"] == "No, it's not."
    keep = prepare_corpus("iemocap", tmp_path / "IEMOCAP", {"excited_as_happiness": False})
    assert "excitement" in set(keep["label"])


# ---------------------------------------------------------------- MELD, CSV

def _meld(root: Path, splits=("train", "dev", "test")) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for k, split in enumerate(splits):
        pd.DataFrame({
            "Sr No.": [1, 2, 3], "Utterance": ["Oh my God, he’s lost it.", "What?", "I’m “fine”, okay"],
            "Speaker": ["Phoebe", "Monica", "Joey"], "Emotion": ["sadness", "surprise", "joy"],
            "Sentiment": ["negative", "negative", "positive"], "Dialogue_ID": [k, k, k + 1],
            "Utterance_ID": [0, 1, 0], "Season": [4, 4, 4], "Episode": [7, 7, 7],
            "StartTime": ["00:20:57,256"] * 3, "EndTime": ["00:21:00,049"] * 3,
        }).to_csv(root / f"{split}_sent_emo.csv", index=False, encoding="utf-8")


def test_meld_text_only(tmp_path):
    _meld(tmp_path / "meld")
    df = prepare_corpus("meld", tmp_path / "meld")
    assert df.groupby("split").size().to_dict() == {"dev": 3, "test": 3, "train": 3}
    assert df["path"].eq("").all()
    assert df["label"].tolist()[:3] == ["sadness", "surprise", "happiness"]
    assert df["text"].tolist()[:3] == ["Oh my God, he’s lost it.", "What?", "I’m “fine”, okay"]
    assert df["utt_id"].tolist()[:3] == ["train_dia0_utt0", "train_dia0_utt1", "train_dia1_utt0"]
    assert df["sentiment"].tolist()[0] == "negative"
    validate_manifest(df, "meld", labels=KNOWN_LABELS)


def test_csv_with_column_label_and_split_mapping(tmp_path):
    for i in range(4):
        _wav(tmp_path / "clips" / f"c{i}.wav")
    src = pd.DataFrame({"File": [f"clips/c{i}.wav" for i in range(4)], "Emo": ["A", "H", "Calm", "A"],
                        "Set": ["Training", "Validation", "Testing", "Training"], "Who": ["x", "y", "z", "x"],
                        "Act": ["3.5", "", "2", "6"], "Note": ["n0", "n1", "n2", "n3"]})
    src.to_csv(tmp_path / "my.csv", index=False)
    options = {"columns": {"path": "File", "label": "Emo", "split": "Set", "speaker": "Who", "arousal": "Act"},
               "label_map": {"A": "anger", "H": "happiness"},
               "split_map": {"Training": "train", "Validation": "dev", "Testing": "test"}}
    df = prepare_corpus("csv", tmp_path / "my.csv", options)
    assert df["utt_id"].tolist() == ["c0", "c1", "c2", "c3"]
    assert df["label"].tolist() == ["anger", "happiness", "calm", "anger"]
    assert df["split"].tolist() == ["train", "dev", "test", "train"]
    assert df["arousal"].tolist()[0] == 3.5 and np.isnan(df["arousal"].tolist()[1])
    assert df["path"].tolist()[0] == str(tmp_path / "clips" / "c0.wav")
    assert df["Note"].tolist() == ["n0", "n1", "n2", "n3"]


def test_csv_mapping_errors_name_the_column(tmp_path):
    pd.DataFrame({"File": ["a.wav"], "Act": ["high"]}).to_csv(tmp_path / "x.csv", index=False)
    with pytest.raises(CorpusError, match="Emotion"):
        prepare_corpus("csv", tmp_path / "x.csv", {"columns": {"path": "File", "label": "Emotion"}})
    with pytest.raises(CorpusError, match="lable"):
        prepare_corpus("csv", tmp_path / "x.csv", {"columns": {"path": "File", "lable": "Act"}})
    with pytest.raises(Exception, match="line 2: arousal column 'Act' value 'high' is not a number"):
        prepare_corpus("csv", tmp_path / "x.csv", {"columns": {"path": "File", "arousal": "Act"}})


def test_registry_names_the_closest_option_and_corpus(tmp_path):
    with pytest.raises(CorpusError, match="Did you mean 'include_song'"):
        corpus_config("ravdess", {"include_sng": True})
    with pytest.raises(CorpusError, match="unknown corpus 'msp'"):
        get_corpus("msp")
    assert get_corpus("crema_d").name == "crema-d"


# ---------------------------------------------------------------- the prepare command

def _run(*args):
    return CliRunner().invoke(main, ["prepare", *map(str, args)])


def test_prepare_cli_writes_manifest_and_summary(tmp_path):
    _ravdess(tmp_path / "rav")
    out = tmp_path / "out" / "rav.csv"
    result = _run("ravdess", tmp_path / "rav", "-o", out, "--folds", 4, "--map", "calm=neutral")
    assert result.exit_code == 0, result.output
    assert "8 utterances, 4 speakers" in result.output and "h of audio" in result.output
    assert "train: 4  dev: 2  test: 2" in result.output
    df = read_manifest(out, labels=KNOWN_LABELS, check_files=True)
    assert sorted(df["label"].unique()) == ["anger", "neutral"] and sorted(df["fold"].unique()) == [0, 1, 2, 3]


def test_prepare_cli_check_audio_rejects_bad_files(tmp_path):
    clips = tmp_path / "clips"
    good = [_wav(clips / f"good{i}.wav") for i in range(3)]
    (clips / "corrupt.wav").write_bytes(b"not audio" * 50)
    sf.write(clips / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    sf.write(clips / "silent.wav", np.zeros(4000, dtype=np.float32), 16000)
    _wav(clips / "trunc.wav", seconds=1.0)
    raw = (clips / "trunc.wav").read_bytes()
    (clips / "trunc.wav").write_bytes(raw[: len(raw) // 3])
    names = [p.stem for p in good] + ["corrupt", "empty", "silent", "trunc"]
    pd.DataFrame({"path": [f"clips/{n}.wav" for n in names], "label": "neutral", "split": "train",
                  "speaker": "s"}).to_csv(tmp_path / "in.csv", index=False)
    out = tmp_path / "m.csv"
    result = _run("csv", tmp_path / "in.csv", "-o", out, "--check-audio")
    assert result.exit_code == 0, result.output
    assert "Rejected 4 of 7 audio files" in result.output
    rejected = pd.read_csv(tmp_path / "m.csv.rejected.csv")
    reasons = dict(zip(rejected["utt_id"], rejected["reason"].str.split(":").str[0]))
    assert reasons == {"corrupt": "unreadable", "empty": "empty", "silent": "silent", "trunc": "truncated"}
    assert read_manifest(out)["utt_id"].tolist() == ["good0", "good1", "good2"]
    strict = _run("csv", tmp_path / "in.csv", "-o", tmp_path / "s.csv", "--check-audio", "--strict")
    assert strict.exit_code == 1 and "Error: 4 audio file(s) failed the check (--strict)" in strict.output
    assert (tmp_path / "s.csv").is_file()


def test_prepare_cli_errors_are_clean(tmp_path):
    result = _run("emodb", tmp_path / "nothing", "-o", tmp_path / "m.csv")
    assert result.exit_code == 1 and "Error: ROOT" in result.output and "Traceback" not in result.output
    pd.DataFrame({"path": ["a.wav", "b.wav"], "label": ["Angry", "sad"], "split": ["train", "later"],
                  "speaker": ["s", "s"]}).to_csv(tmp_path / "bad.csv", index=False)
    result = _run("csv", tmp_path / "bad.csv", "-o", tmp_path / "m.csv")
    assert result.exit_code == 1
    for part in ["label 'angry' is not in the label set", "unknown split 'later'", "audio file", "does not exist"]:
        assert part in result.output
    ok = _run("csv", tmp_path / "bad.csv", "-o", tmp_path / "m.csv", "--map", "Angry=anger", "--map", "sad=sadness",
              "--split-map", "later=test", "--check-audio")
    assert ok.exit_code == 0 and "Rejected 2 of 2 audio files" in ok.output
    assert _run("ravdess", tmp_path, "-o", tmp_path / "m.csv", "--col", "a=b").exit_code == 1
