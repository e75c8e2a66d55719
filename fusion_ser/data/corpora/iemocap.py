"""IEMOCAP release layout: Session1..5 with dialog/EmoEvaluation/*.txt, sentences/wav/<dialog>/<utt>.wav and
dialog/transcriptions/*.txt. Sessions become folds 0..4; attributes keep the corpus scale 1-5.

Evaluation lines look like `[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]`,
the bracket holding valence, activation (arousal), dominance.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fusion_ser.data.corpora.common import CorpusError, make_frame

log = logging.getLogger(__name__)

EMOTIONS = {
    "ang": "anger", "hap": "happiness", "exc": "happiness", "sad": "sadness", "neu": "neutral",
    "fru": "frustration", "sur": "surprise", "fea": "fear", "dis": "disgust", "oth": "other", "xxx": "no_agreement",
}
ATTRIBUTE_RANGE = (1.0, 5.0)
EVAL_LINE = re.compile(
    r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(Ses\d\d[FM]_\S+)\s+(\w+)\s+\[\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)\s*\]"
)
TRANSCRIPT_LINE = re.compile(r"^(Ses\d\d[FM]_\S+)\s+\[[^\]]*\]:\s?(.*)$")
UTT = re.compile(r"^Ses(\d\d)[FM]_.*_([FM])\d+$")


@dataclass
class IemocapConfig:
    """Options of the IEMOCAP adapter."""

    excited_as_happiness: bool = True  # merge `exc` into happiness, as is common; False keeps `excitement`


def _transcripts(dialog_dir: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    tdir = dialog_dir / "transcriptions"
    if not tdir.is_dir():
        return out
    for f in sorted(tdir.glob("*.txt")):
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            m = TRANSCRIPT_LINE.match(line.strip())
            if m:
                out[m.group(1)] = m.group(2).strip()
    return out


def prepare(root: Path, cfg: IemocapConfig) -> pd.DataFrame:
    """Build the IEMOCAP manifest with fold = session - 1 (split left empty: the registry derives it)."""
    sessions = sorted(p for p in root.glob("Session[1-5]") if p.is_dir())
    if not sessions:
        raise CorpusError(f"'{root}' holds no Session1..Session5 folders; point ROOT at the IEMOCAP release")
    emotions = dict(EMOTIONS)
    if not cfg.excited_as_happiness:
        emotions["exc"] = "excitement"
    rows: list[dict] = []
    missing_audio = 0
    for session in sessions:
        dialog = session / "dialog"
        evaluations = sorted((dialog / "EmoEvaluation").glob("*.txt"))
        if not evaluations:
            raise CorpusError(f"'{dialog / 'EmoEvaluation'}' holds no evaluation .txt files")
        texts = _transcripts(dialog)
        for ev in evaluations:
            for line in ev.read_text(encoding="utf-8", errors="replace").splitlines():
                m = EVAL_LINE.match(line.strip())
                if m is None:
                    continue
                start, end, utt, code, val, act, dom = m.groups()
                um = UTT.match(utt)
                if um is None or code not in emotions:
                    raise CorpusError(f"{ev}: cannot read line '{line.strip()}' (unknown utterance or code '{code}')")
                dialog_name = utt.rsplit("_", 1)[0]
                wav = session / "sentences" / "wav" / dialog_name / f"{utt}.wav"
                if not wav.is_file():
                    missing_audio += 1
                    continue
                rows.append({
                    "utt_id": utt, "path": str(wav), "split": "", "speaker": f"Ses{um.group(1)}{um.group(2)}",
                    "gender": "female" if um.group(2) == "F" else "male", "label": emotions[code],
                    "arousal": float(act), "valence": float(val), "dominance": float(dom),
                    "text": texts.get(utt, ""), "fold": int(um.group(1)) - 1,
                    "start": float(start), "end": float(end),
                })
    if missing_audio:
        log.warning("%d evaluated utterances have no wav under sentences/wav/; they are left out", missing_audio)
    df = make_frame(rows, "iemocap")
    present = sorted(df["fold"].unique().tolist())
    df["fold"] = df["fold"].map({f: i for i, f in enumerate(present)}).astype("Int64")
    return df
