"""CREMA-D: ROOT/AudioWAV/<actor>_<sentence>_<emotion>_<level>.wav, gender from ROOT/VideoDemographics.csv."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fusion_ser.data.corpora.common import gender_name, make_frame

log = logging.getLogger(__name__)

EMOTIONS = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happiness", "NEU": "neutral", "SAD": "sadness"}
SENTENCES = {
    "IEO": "It's eleven o'clock", "TIE": "That is exactly what happened", "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about", "TAI": "The airplane is almost full", "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock", "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket", "ITS": "I think I've seen this before", "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}
LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{1,2})$")


@dataclass
class CremaDConfig:
    """Options of the CREMA-D adapter."""

    fill_text: bool = True  # the sentence of each sentence code


def _genders(root: Path) -> dict[str, str]:
    path = root / "VideoDemographics.csv"
    if not path.is_file():
        log.info("no %s: gender left empty", path)
        return {}
    demo = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"ActorID", "Sex"} <= set(demo.columns):
        log.warning("%s has no ActorID/Sex columns: gender left empty", path)
        return {}
    return {r["ActorID"].strip(): gender_name(r["Sex"]) for r in demo.to_dict("records")}


def prepare(root: Path, cfg: CremaDConfig) -> pd.DataFrame:
    """Build the CREMA-D manifest (split left empty: the registry assigns folds and splits)."""
    audio = root / "AudioWAV" if (root / "AudioWAV").is_dir() else root
    genders = _genders(root)
    rows, skipped = [], []
    for p in sorted(audio.glob("*.wav")):
        m = NAME.match(p.stem)
        if m is None or m.group(3) not in EMOTIONS:
            skipped.append(p.name)
            continue
        actor, sentence, emotion, level = m.groups()
        rows.append({
            "utt_id": p.stem, "path": str(p), "split": "", "speaker": actor, "gender": genders.get(actor, ""),
            "label": EMOTIONS[emotion], "text": SENTENCES.get(sentence, "") if cfg.fill_text else "",
            "intensity": LEVELS.get(level, level),
        })
    if skipped:
        log.warning("skipped %d files not named like CREMA-D (e.g. %s)", len(skipped), skipped[0])
    return make_frame(rows, "crema-d")
