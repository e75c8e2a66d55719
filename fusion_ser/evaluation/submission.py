"""MSP-Podcast challenge submission files: FileName + EmoClass (Task 1) or FileName + EmoAct, EmoVal, EmoDom (Task 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from fusion_ser.errors import FusionSerError
from fusion_ser.evaluation.report import attribute_range
from fusion_ser.rundir import RunDir, RunInfo, atomic_write_text

CLASS_CODES = {"anger": "A", "contempt": "C", "disgust": "D", "fear": "F", "happiness": "H", "neutral": "N",
               "sadness": "S", "surprise": "U"}
ATTRIBUTE_COLUMNS = {"arousal": "EmoAct", "valence": "EmoVal", "dominance": "EmoDom"}
CHALLENGE_RANGE = (1.0, 7.0)
AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a"}


class SubmissionError(FusionSerError):
    """Predictions that cannot be written in the challenge format."""


def file_name(utt_id: str) -> str:
    """The challenge FileName of an utterance: its utt_id, with .wav added unless it already ends in an audio suffix."""
    return utt_id if Path(utt_id).suffix.lower() in AUDIO_SUFFIXES else f"{utt_id}.wav"


def submission_frame(df: pd.DataFrame, info: RunInfo, value_range: Optional[list[float]] = None) -> pd.DataFrame:
    """The submission table of a prediction frame; attributes are mapped from value_range to 1-7 and clipped."""
    names = df["utt_id"].astype(str).map(file_name)
    if info.task == "categorical":
        if "pred" not in df.columns:
            raise SubmissionError("predictions have no 'pred' column; rewrite them with predict_frame")
        pred = df["pred"].astype(str)
        unknown = sorted(set(pred) - set(CLASS_CODES))
        if unknown:
            raise SubmissionError(f"predicted classes {unknown} have no MSP-Podcast code (the challenge classes are "
                                  f"{', '.join(f'{c}={k}' for k, c in CLASS_CODES.items())}); train on those 8 classes")
        return pd.DataFrame({"FileName": names, "EmoClass": pred.map(CLASS_CODES)})
    missing = [a for a in ATTRIBUTE_COLUMNS if f"{a}_pred" not in df.columns]
    if missing:
        raise SubmissionError(f"predictions have no {[f'{a}_pred' for a in missing]} column(s); the Task 2 submission "
                              "needs arousal, valence and dominance")
    lo, hi = value_range if value_range is not None else CHALLENGE_RANGE
    out = pd.DataFrame({"FileName": names})
    for attr, col in ATTRIBUTE_COLUMNS.items():
        v = pd.to_numeric(df[f"{attr}_pred"], errors="coerce").to_numpy(np.float64)
        if np.isnan(v).any():
            raise SubmissionError(f"{int(np.isnan(v).sum())} rows have no {attr} prediction; every utterance needs one")
        scaled = CHALLENGE_RANGE[0] + (v - lo) / (hi - lo) * (CHALLENGE_RANGE[1] - CHALLENGE_RANGE[0])
        out[col] = np.clip(scaled, *CHALLENGE_RANGE)
    return out


def export_submission(run_dir: str | Path, output: str | Path, split: str = "test") -> tuple[Path, int]:
    """Write a run's predictions on `split` as a challenge submission CSV; returns the path and the row count."""
    run = RunDir(run_dir)
    info = run.require_complete()
    frame = submission_frame(run.read_predictions(split), info, attribute_range(run))
    path = Path(output)
    atomic_write_text(path, frame.to_csv(index=False))
    return path, len(frame)
