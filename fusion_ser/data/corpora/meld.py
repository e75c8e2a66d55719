"""MELD text: ROOT/{train,dev,test}_sent_emo.csv -> splits train/dev/test; no audio (`path` empty).

Each dialogue is a conversation (`conversation` "<split>_<Dialogue_ID>", `turn` Utterance_ID) for
text_encoder.context_turns.

Text is kept exactly as written (UTF-8, typographic apostrophes included).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fusion_ser.data.corpora.common import CorpusError, make_frame, require_dir

log = logging.getLogger(__name__)

EMOTIONS = {
    "neutral": "neutral", "joy": "happiness", "surprise": "surprise", "anger": "anger", "sadness": "sadness",
    "disgust": "disgust", "fear": "fear",
}
FILES = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
COLUMNS = ["Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID"]


@dataclass
class MeldConfig:
    """Options of the MELD adapter."""

    keep_sentiment: bool = True  # keep the Sentiment column as an extra manifest column


def _read(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{path} is not UTF-8 ({e}); MELD csvs are distributed as UTF-8") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise CorpusError(f"{path}: missing column(s) {missing}; expected the MELD columns {COLUMNS}")
    return df


def prepare(root: Path, cfg: MeldConfig) -> pd.DataFrame:
    """Build the MELD text manifest from whichever of the three split files are present."""
    require_dir(root, "a folder holding train_sent_emo.csv, dev_sent_emo.csv, test_sent_emo.csv")
    present = {s: root / f for s, f in FILES.items() if (root / f).is_file()}
    if not present:
        raise CorpusError(f"'{root}' holds none of {list(FILES.values())}")
    for s in FILES.keys() - present.keys():
        log.warning("no %s in %s: the manifest has no %s split", FILES[s], root, s)
    rows: list[dict] = []
    for split, path in present.items():
        src = _read(path)
        for i, rec in enumerate(src.to_dict("records")):
            emotion = rec["Emotion"].strip().lower()
            if emotion not in EMOTIONS:
                raise CorpusError(f"{path} line {i + 2}: unknown Emotion '{rec['Emotion']}'; known: {sorted(EMOTIONS)}")
            dialogue, turn = rec["Dialogue_ID"].strip(), rec["Utterance_ID"].strip()
            row = {
                "utt_id": f"{split}_dia{dialogue}_utt{turn}",
                "path": "", "split": split, "speaker": rec["Speaker"].strip(), "label": EMOTIONS[emotion],
                "text": rec["Utterance"],
                # dialogue ids restart in every split file: the split keeps the conversations apart
                "conversation": f"{split}_{dialogue}", "turn": turn,
            }
            if cfg.keep_sentiment and "Sentiment" in rec:
                row["sentiment"] = rec["Sentiment"].strip()
            rows.append(row)
    return make_frame(rows, "meld")
