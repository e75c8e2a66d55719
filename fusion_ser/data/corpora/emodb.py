"""Berlin EmoDB, original distribution: ROOT/wav/*.wav named like 03a01Fa.wav.

Name fields: speaker (2 digits), text code (a01..b10), emotion letter (German initial), version letter.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fusion_ser.data.corpora.common import make_frame, require_dir

log = logging.getLogger(__name__)

EMOTIONS = {
    "W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness", "T": "sadness", "N": "neutral",
}
MALE = {"03", "10", "11", "12", "15"}
FEMALE = {"08", "09", "13", "14", "16"}
SENTENCES = {
    "a01": "Der Lappen liegt auf dem Eisschrank.",
    "a02": "Das will sie am Mittwoch abgeben.",
    "a04": "Heute abend könnte ich es ihm sagen.",
    "a05": "Das schwarze Stück Papier befindet sich da oben neben dem Holzstück.",
    "a07": "In sieben Stunden wird es soweit sein.",
    "b01": "Was sind denn das für Tüten, die da unter dem Tisch stehen?",
    "b02": "Sie haben es gerade hochgetragen und jetzt gehen sie wieder runter.",
    "b03": "An den Wochenenden bin ich jetzt immer nach Hause gefahren und habe Agnes besucht.",
    "b09": "Ich will das eben wegbringen und dann mit Karl was trinken gehen.",
    "b10": "Die wird auf dem Platz sein, wo wir sie immer hinlegen.",
}
NAME = re.compile(r"^(\d\d)([ab]\d\d)([WLEAFTN])([a-z])$")


@dataclass
class EmoDBConfig:
    """Options of the EmoDB adapter."""

    fill_text: bool = True  # the German sentence of each text code


def prepare(root: Path, cfg: EmoDBConfig) -> pd.DataFrame:
    """Build the EmoDB manifest (split left empty: the registry assigns folds and splits)."""
    wav = require_dir(root / "wav", "EmoDB's wav/ folder with files named like 03a01Fa.wav")
    rows, skipped = [], []
    for p in sorted(wav.glob("*.wav")):
        m = NAME.match(p.stem)
        if m is None:
            skipped.append(p.name)
            continue
        speaker, code, emotion, version = m.groups()
        rows.append({
            "utt_id": p.stem, "path": str(p), "split": "", "speaker": speaker,
            "gender": "male" if speaker in MALE else "female" if speaker in FEMALE else "",
            "label": EMOTIONS[emotion], "text": SENTENCES.get(code, "") if cfg.fill_text else "",
            "text_code": code, "version": version,
        })
    if skipped:
        log.warning("skipped %d files not named like EmoDB (e.g. %s)", len(skipped), skipped[0])
    return make_frame(rows, "emodb")
