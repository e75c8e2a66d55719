"""RAVDESS speech: the original Actor_XX/03-01-EE-II-SS-RR-AA.wav naming, or a ROOT/manifest.csv of that corpus.

File name fields: modality, vocal channel (01 speech, 02 song), emotion, intensity, statement, repetition, actor.
Odd actors are male, even female. There are no official splits: the registry assigns speaker-independent folds.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fusion_ser.data.corpora.common import CorpusError, gender_name, make_frame, require_dir

log = logging.getLogger(__name__)

EMOTIONS = {
    "01": "neutral", "02": "calm", "03": "happiness", "04": "sadness", "05": "anger", "06": "fear", "07": "disgust",
    "08": "surprise",
}
# The shared-data manifest and other conversions may spell labels the RAVDESS way.
LABEL_NAMES = {"happy": "happiness", "sad": "sadness", "angry": "anger", "fearful": "fear", "surprised": "surprise"}
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
INTENSITY = {"01": "normal", "02": "strong"}
NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
AUDIO_SUFFIXES = {".wav", ".flac"}


@dataclass
class RavdessConfig:
    """Options of the RAVDESS adapter."""

    include_song: bool = False  # vocal channel 02 (sung) files


def _actor_gender(actor: int) -> str:
    return "male" if actor % 2 else "female"


def parse_name(stem: str) -> dict | None:
    """Fields of a RAVDESS file name stem, or None when it does not follow the naming."""
    m = NAME.match(stem)
    if m is None or m.group(3) not in EMOTIONS:
        return None
    _, channel, emotion, intensity, statement, repetition, actor = m.groups()
    return {
        "channel": channel,
        "label": EMOTIONS[emotion],
        "intensity": INTENSITY.get(intensity, intensity),
        "text": STATEMENTS.get(statement, ""),
        "repetition": int(repetition),
        "actor": int(actor),
    }


def _from_files(root: Path, cfg: RavdessConfig) -> list[dict]:
    rows, skipped = [], []
    for p in sorted(q for q in root.rglob("*") if q.suffix.lower() in AUDIO_SUFFIXES):
        info = parse_name(p.stem)
        if info is None:
            skipped.append(p.name)
            continue
        if info["channel"] != "01" and not cfg.include_song:
            continue
        rows.append({
            "utt_id": p.stem, "path": str(p), "split": "", "speaker": f"Actor_{info['actor']:02d}",
            "gender": _actor_gender(info["actor"]), "label": info["label"], "text": info["text"],
            "intensity": info["intensity"], "repetition": info["repetition"],
        })
    if skipped:
        log.warning("skipped %d files not named like RAVDESS (e.g. %s)", len(skipped), skipped[0])
    return rows


def _from_manifest(path: Path) -> list[dict]:
    src = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("path", "label", "speaker") if c not in src.columns]
    if missing:
        raise CorpusError(f"{path}: missing column(s) {missing}; expected path, label, speaker, gender, text")
    rows = []
    for rec in src.to_dict("records"):
        p = Path(rec["path"])
        p = p if p.is_absolute() else path.parent / p
        label = rec["label"].strip().lower()
        row = {
            "utt_id": p.stem, "path": str(p), "split": "", "speaker": rec["speaker"].strip(),
            "gender": gender_name(rec.get("gender", "")), "label": LABEL_NAMES.get(label, label),
            "text": rec.get("text", ""),
        }
        for extra in ("intensity", "repetition"):
            if extra in rec:
                row[extra] = rec[extra]
        rows.append(row)
    return rows


def prepare(root: Path, cfg: RavdessConfig) -> pd.DataFrame:
    """Build the RAVDESS manifest (split left empty: the registry assigns folds and splits)."""
    require_dir(root, "the RAVDESS folder (Actor_XX/ sub-folders or a manifest.csv)")
    manifest = root / "manifest.csv"
    rows = _from_manifest(manifest) if manifest.is_file() else _from_files(root, cfg)
    return make_frame(rows, "ravdess")
