"""RAVDESS written in the MSP-Podcast release layout, with arousal / valence / dominance from a published lexicon, so
that the real msp-podcast adapter reads a corpus holding both categories and attributes (bench/multitask.py).

Layout, as fusion_ser/data/corpora/msp_podcast.py reads it: ROOT/Audios/<utt>.wav (symbolic links to the RAVDESS
FLAC files: soundfile reads a file by its content, not its name, and the feature cache keys resolve the link, so the
RAVDESS cache entries are reused), ROOT/Labels/labels_consensus.csv (FileName, EmoClass, EmoAct, EmoVal, EmoDom,
SpkrID, Gender, Split_Set) and ROOT/Transcripts/<utt>.txt (the spoken sentence). The MSP layout has no fold column,
so there is one layout per fold of the RAVDESS protocol (bench/ravdess_folds.py: actors sorted and dealt
round-robin into 4 folds; fold k is Test1, fold k+1 Development, the rest Train).

Classes: the rows come from the project's RAVDESS adapter (happy -> happiness, ..., calm kept as its own class) and
are written with the adapter's EmoClass codes (A S H U F D N). Calm has no MSP code: it is written as O ("other", an
emotion outside MSP's eight) and renamed back by the prepare step, `fusion-ser prepare msp-podcast ROOT --map
other=calm -o fold_k.csv` (`prepare_manifest(..., label_map={"other": "calm"})`), so calm stays a class.

Attributes: the NRC Valence, Arousal, and Dominance Lexicon v1.0 (S. M. Mohammad, "Obtaining Reliable Human Ratings
of Valence, Arousal, and Dominance for 20,000 English Words", ACL 2018; best-worst-scaling scores in [0, 1]), the
entries of the manifest's label words, as printed in NRC-VAD-Lexicon.txt (word, valence, arousal, dominance):

    neutral    0.469  0.184  0.357        anger     0.167  0.865  0.657
    calm       0.875  0.100  0.282        fear      0.073  0.840  0.293
    happiness  0.960  0.732  0.850        disgust   0.052  0.775  0.317
    sadness    0.052  0.288  0.164        surprise  0.875  0.875  0.562

mapped linearly onto MSP's 1-7 scale, 1 + 6 x. Intensity rule: a RAVDESS `strong` clip sits 25 % further from the
neutral entry than its category, x = clip(n + 1.25 (x_c - n), 0, 1) per axis (n: neutral's scores; neutral clips
are all `normal`); a `normal` clip takes its category's entry. Each clip's attributes are thus a function of its
class and intensity: an attribute model is scored on placing the categories (and their intensity) on the three
axes, with no rater disagreement within a class.

    python bench/ravdess_msp.py [--data /work/shared/data/ravdess] [--out /tmp/ravdess_msp]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd

from fusion_ser.data.corpora import prepare_corpus
from fusion_ser.data.corpora.msp_podcast import CODES
from fusion_ser.data.folds import apply_fold
from fusion_ser.data.prepare import prepare_manifest

N_FOLDS = 4  # bench/ravdess_folds.py
# NRC VAD Lexicon v1.0 (Mohammad 2018): (valence, arousal, dominance) in [0, 1] of each label word
NRC_VAD = {
    "neutral": (0.469, 0.184, 0.357), "calm": (0.875, 0.100, 0.282), "happiness": (0.960, 0.732, 0.850),
    "sadness": (0.052, 0.288, 0.164), "anger": (0.167, 0.865, 0.657), "fear": (0.073, 0.840, 0.293),
    "disgust": (0.052, 0.775, 0.317), "surprise": (0.875, 0.875, 0.562),
}
STRONG_GAIN = 1.25  # a strong clip's distance from neutral, relative to its category's
OTHER_CODE = "O"  # calm: MSP has no code for it
LABEL_MAP = {"other": "calm"}  # what the prepare step renames back
SPLIT_SET = {"train": "Train", "dev": "Development", "test": "Test1"}
CONSENSUS_COLUMNS = ["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"]
MSP_CODE = {name: code for code, name in CODES.items()}


def attributes(label: str, intensity: str) -> tuple[float, float, float]:
    """(arousal, valence, dominance) on the 1-7 scale of a clip of `label` at RAVDESS `intensity`."""
    x = np.array(NRC_VAD[label])
    if intensity == "strong":
        n = np.array(NRC_VAD["neutral"])
        x = np.clip(n + STRONG_GAIN * (x - n), 0.0, 1.0)
    valence, arousal, dominance = (1.0 + 6.0 * x).tolist()
    return arousal, valence, dominance


def emo_class(label: str) -> str:
    """The EmoClass code the msp-podcast adapter reads as `label` (calm: O, renamed back by LABEL_MAP)."""
    if label == "calm":
        return OTHER_CODE
    if label not in MSP_CODE or MSP_CODE[label] in ("O", "X"):
        raise ValueError(f"label '{label}' has no MSP-Podcast code; expected one of {sorted(NRC_VAD)}")
    return MSP_CODE[label]


def write_layout(rows: pd.DataFrame, root: Path) -> Path:
    """Write `rows` (utt_id, path, split, speaker, gender, label, intensity, text) in the MSP layout at `root`."""
    audios, labels, transcripts = root / "Audios", root / "Labels", root / "Transcripts"
    for d in (audios, labels, transcripts):
        d.mkdir(parents=True, exist_ok=True)
    records = []
    for r in rows.itertuples():
        link = audios / f"{r.utt_id}.wav"
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(Path(r.path).resolve(), link)
        (transcripts / f"{r.utt_id}.txt").write_text(str(r.text or ""), encoding="utf-8")
        arousal, valence, dominance = attributes(r.label, r.intensity)
        records.append((link.name, emo_class(r.label), round(arousal, 4), round(valence, 4), round(dominance, 4),
                        r.speaker, str(r.gender).capitalize(), SPLIT_SET[r.split]))
    pd.DataFrame(records, columns=CONSENSUS_COLUMNS).to_csv(labels / "labels_consensus.csv", index=False)
    return root


def round_robin_folds(speakers: pd.Series, n_folds: int = N_FOLDS) -> pd.Series:
    """bench/ravdess_folds.py's folds: speakers sorted by name and dealt round-robin (Actor_01 -> 0, ...)."""
    fold_of = {s: i % n_folds for i, s in enumerate(sorted(speakers.unique()))}
    return speakers.map(fold_of)


def ravdess_rows(data: Path, n_folds: int = N_FOLDS) -> pd.DataFrame:
    """The RAVDESS rows as the project's adapter reads them (labels, intensity), with the bench's folds."""
    df = prepare_corpus("ravdess", data)
    return df.assign(fold=round_robin_folds(df["speaker"], n_folds))


def write_folds(rows: pd.DataFrame, out: Path) -> list[Path]:
    """One MSP layout and one manifest (through the msp-podcast adapter and the prepare step) per fold."""
    manifests = []
    for k in range(int(rows["fold"].max()) + 1):
        root = write_layout(apply_fold(rows, k), out / f"msp_fold{k}")
        manifest = out / f"msp_fold{k}.csv"
        prepare_manifest("msp-podcast", root, manifest, options={"include_test3": False}, label_map=LABEL_MAP,
                         extra_labels=set())
        manifests.append(manifest)
    return manifests


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/shared/data/ravdess")
    ap.add_argument("--out", default="/tmp/ravdess_msp")
    args = ap.parse_args()
    for path in write_folds(ravdess_rows(Path(args.data)), Path(args.out)):
        df = pd.read_csv(path)
        print(f"{path}: {len(df)} rows, splits {df['split'].value_counts().to_dict()}, "
              f"labels {df['label'].value_counts().to_dict()}")


if __name__ == "__main__":
    main()
