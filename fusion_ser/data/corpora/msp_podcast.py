"""MSP-Podcast release layout: Audios/*.wav, Labels/labels_consensus.{csv,json}, Transcripts/, labels_detailed.json.

Codes A,S,H,U,F,D,C,N map to the 8 emotion names; O and X stay as `other` / `no_agreement`. Test3 audio (no label
rows) becomes split `test` with empty labels. Per-annotator votes (Labels/labels_detailed.json, or .csv) give
`p_<label>` soft labels (each class's share of the votes for the 8 classes) and the `annotations` column (every
annotator's vote as a label name, in file order, joined by ";": data.soft_labels annotators).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fusion_ser.data.annotations import format_votes
from fusion_ser.schema import ANNOTATIONS_COLUMN, CATEGORICAL_LABELS
from fusion_ser.data.corpora.common import CorpusError, gender_name, make_frame, require_dir

log = logging.getLogger(__name__)

CODES = {
    "A": "anger", "S": "sadness", "H": "happiness", "U": "surprise", "F": "fear", "D": "disgust", "C": "contempt",
    "N": "neutral", "O": "other", "X": "no_agreement",
}
# Names used for annotator votes in labels_detailed.json.
VOTE_NAMES = {
    "angry": "anger", "anger": "anger", "sad": "sadness", "sadness": "sadness", "happy": "happiness",
    "happiness": "happiness", "surprise": "surprise", "surprised": "surprise", "fear": "fear", "disgust": "disgust",
    "contempt": "contempt", "neutral": "neutral",
}
SPLITS = {
    "train": "train", "development": "dev", "validation": "dev", "test": "test", "test1": "test", "test2": "test",
    "test3": "test",
}
LABEL_FILES = ["labels_consensus.csv", "labels_concensus.csv", "labels_consensus.json", "labels_concensus.json"]
ATTRIBUTE_RANGE = (1.0, 7.0)
COLUMNS = ["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"]
# MSP-PODCAST_<podcast>_<segment>: consecutive segments of one podcast, the conversation of context_turns
SEGMENT_NAME = re.compile(r"MSP-PODCAST_(\d+)_(\d+)", re.IGNORECASE)


@dataclass
class MspPodcastConfig:
    """Options of the MSP-Podcast adapter."""

    include_test3: bool = True  # unlabelled *test3* audio -> split test, empty labels
    transcripts: bool = True  # fill `text` from Transcripts/<utt>.txt
    soft_labels: bool = True  # p_<label> from Labels/labels_detailed.json (or .csv) when present


def _labels_file(labels_dir: Path) -> Path:
    for name in LABEL_FILES:
        if (labels_dir / name).is_file():
            return labels_dir / name
    raise CorpusError(f"no consensus label file in '{labels_dir}'; expected one of {LABEL_FILES}")


def _read_consensus(path: Path) -> pd.DataFrame:
    """Consensus labels as a frame with the CSV's columns, from either the CSV or the JSON release file."""
    if path.suffix == ".csv":
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    else:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        rows = []
        for name, entry in data.items():
            entry = entry[0] if isinstance(entry, list) and entry else entry
            if not isinstance(entry, dict):
                raise CorpusError(f"{path}: entry '{name}' is not an object of label fields")
            rows.append({"FileName": name, **{k: str(v) for k, v in entry.items()}})
        df = pd.DataFrame(rows)
        if "EmoClass" not in df.columns and "EmoClass_Major" in df.columns:
            df = df.rename(columns={"EmoClass_Major": "EmoClass"})
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise CorpusError(f"{path}: missing column(s) {missing}; expected {COLUMNS}")
    return df


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _vote_label(raw: object) -> str | None:
    raw = str(raw).strip()
    if raw.lower().startswith("other"):  # "Other", "Other-Annoyed", ...: a vote outside the 8 classes
        return "other"
    return CODES.get(raw.upper()) if len(raw) == 1 else VOTE_NAMES.get(raw.lower())


def _annotations(path: Path) -> dict[str, list[str | None]]:
    """utt_id -> the primary class of every annotation, from labels_detailed.json or labels_detailed.csv."""
    out: dict[str, list[str | None]] = {}
    if path.suffix == ".csv":
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
        if not {"FileName", "EmoClass_Major"} <= set(df.columns):
            raise CorpusError(f"{path}: expected columns FileName and EmoClass_Major (one row per annotation)")
        for name, raw in zip(df["FileName"], df["EmoClass_Major"]):
            out.setdefault(Path(name.strip()).stem, []).append(_vote_label(raw))
        return out
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    for name, workers in data.items():
        annotations = workers.values() if isinstance(workers, dict) else workers
        out[Path(name).stem] = [
            _vote_label(a.get("EmoClass_Major", a.get("EmoClass", ""))) for a in annotations if isinstance(a, dict)
        ]
    return out


def _soft_labels(annotations: dict[str, list[str | None]]) -> dict[str, dict[str, float]]:
    """utt_id -> {p_<label>: share of annotator votes among the 8 classes}; votes for other classes are ignored."""
    out: dict[str, dict[str, float]] = {}
    for utt, votes in annotations.items():
        counts = dict.fromkeys(CATEGORICAL_LABELS, 0)
        for label in votes:
            if label in counts:
                counts[label] += 1
        total = sum(counts.values())
        if total:
            out[utt] = {f"p_{k}": v / total for k, v in counts.items()}
    return out


def conversation_of(utt: str) -> tuple[str, float]:
    """(podcast, segment number) of MSP-PODCAST_0001_0008 -> ("0001", 8); ("", nan) for other names (test3, or
    names with more parts, whose order within the podcast the name alone does not give)."""
    m = SEGMENT_NAME.fullmatch(utt)
    return (m.group(1), float(int(m.group(2)))) if m else ("", float("nan"))


def _transcript(directory: Path, utt: str) -> str:
    p = directory / f"{utt}.txt"
    return p.read_text(encoding="utf-8", errors="replace").strip() if p.is_file() else ""


def prepare(root: Path, cfg: MspPodcastConfig) -> pd.DataFrame:
    """Build the manifest of an MSP-Podcast release rooted at `root`."""
    audios = require_dir(root / "Audios", "the MSP-Podcast Audios/ folder with the .wav files")
    labels_dir = require_dir(root / "Labels", "the MSP-Podcast Labels/ folder with labels_consensus.csv")
    consensus = _read_consensus(_labels_file(labels_dir))
    transcripts = root / "Transcripts"
    rows: list[dict] = []
    unknown_codes: set[str] = set()
    unknown_splits: set[str] = set()
    for rec in consensus.to_dict("records"):
        utt = Path(rec["FileName"].strip()).stem
        code = rec["EmoClass"].strip().upper()
        if code and code not in CODES:
            unknown_codes.add(code)
        split_raw = rec["Split_Set"].strip()
        split = SPLITS.get(split_raw.lower())
        if split is None:
            unknown_splits.add(split_raw)
        speaker = str(rec["SpkrID"]).strip()
        conversation, turn = conversation_of(utt)
        rows.append({
            "utt_id": utt,
            "conversation": conversation, "turn": turn,
            "path": str(audios / f"{utt}.wav"),
            "split": split or "",
            "speaker": "" if speaker.lower() in {"", "unknown", "nan"} else speaker,
            "gender": gender_name(rec["Gender"]),
            "label": CODES.get(code, ""),
            "arousal": _number(rec["EmoAct"]),
            "valence": _number(rec["EmoVal"]),
            "dominance": _number(rec["EmoDom"]),
            "set": split_raw,
        })
    if unknown_codes:
        raise CorpusError(f"{labels_dir}: unknown EmoClass code(s) {sorted(unknown_codes)}; known: {sorted(CODES)}")
    if unknown_splits:
        raise CorpusError(f"{labels_dir}: unknown Split_Set value(s) {sorted(unknown_splits)}; known: {sorted(SPLITS)}")
    labelled = {r["utt_id"] for r in rows}
    missing_audio = [r["utt_id"] for r in rows if not Path(r["path"]).is_file()]
    if missing_audio:
        log.warning("%d labelled utterances have no file in %s (e.g. %s); they are left out",
                    len(missing_audio), audios, missing_audio[0])
        gone = set(missing_audio)
        rows = [r for r in rows if r["utt_id"] not in gone]
    if cfg.include_test3:
        extra = sorted(p for p in audios.glob("*.wav") if "test3" in p.stem.lower() and p.stem not in labelled)
        for p in extra:
            rows.append({"utt_id": p.stem, "path": str(p), "split": "test", "speaker": "", "gender": "",
                         "conversation": conversation_of(p.stem)[0], "turn": conversation_of(p.stem)[1],
                         "label": "", "arousal": np.nan, "valence": np.nan, "dominance": np.nan, "set": "Test3"})
        if extra:
            log.info("added %d unlabelled test3 files", len(extra))
    if cfg.transcripts and transcripts.is_dir():
        for r in rows:
            r["text"] = _transcript(transcripts, r["utt_id"])
    df = make_frame(rows, "msp-podcast")
    candidates = [labels_dir / "labels_detailed.json", labels_dir / "labels_detailed.csv"]
    detailed = next((p for p in candidates if p.is_file()), None) if cfg.soft_labels else None
    if detailed is not None:
        votes = _annotations(detailed)
        soft = pd.DataFrame.from_dict(_soft_labels(votes), orient="index")
        cols = [f"p_{k}" for k in CATEGORICAL_LABELS]
        soft = soft.reindex(index=df["utt_id"], columns=cols).reset_index(drop=True)
        df = pd.concat([df.reset_index(drop=True), soft], axis=1)
        df[ANNOTATIONS_COLUMN] = [format_votes(votes.get(u, [])) for u in df["utt_id"]]
        log.info("soft labels for %d of %d utterances", int(soft.notna().all(axis=1).sum()), len(df))
    return df

