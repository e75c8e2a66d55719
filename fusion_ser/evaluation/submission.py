"""MSP-Podcast challenge submission files: FileName + EmoClass (Task 1) or FileName + EmoAct, EmoVal, EmoDom (Task 2).

A multitask run holds both tracks; the caller names the one to write (`track`).

A submission must hold every row of the split in the run's manifest: rows without a prediction (e.g. clips that
could not be read) make `export_submission` refuse, naming the count and a few utt_ids, unless `allow_partial`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from fusion_ser.data.folds import apply_fold
from fusion_ser.data.manifest import read_manifest
from fusion_ser.errors import FusionSerError
from fusion_ser.evaluation.report import attribute_range
from fusion_ser.rundir import RunDir, RunInfo, atomic_write_text, read_run_config

log = logging.getLogger(__name__)

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


TRACKS = ("categorical", "attributes")  # Task 1, Task 2


def submission_track(info: RunInfo, track: Optional[str] = None) -> str:
    """The track a submission of the run is for: `track` (categorical = Task 1, attributes = Task 2) when the run
    predicts it, else the run's task; a multitask run has both and needs `track`."""
    if track is None:
        if info.task == "multitask":
            raise SubmissionError("this is a multitask run, which predicts both challenge tracks: choose track "
                                  "categorical (Task 1, EmoClass) or attributes (Task 2, EmoAct/EmoVal/EmoDom)",
                                  options=("track",))
        return info.task
    if track not in TRACKS:
        raise SubmissionError(f"track '{track}' is not one of {list(TRACKS)}", options=("track",))
    if track != info.task and info.task != "multitask":
        raise SubmissionError(f"track {track}: this is a {info.task} run, which predicts no "
                              f"{'classes' if track == 'categorical' else 'attributes'}; give track {info.task} "
                              "or a run of that task", options=("track",))
    return track


def submission_frame(df: pd.DataFrame, info: RunInfo, value_range: Optional[list[float]] = None,
                     track: Optional[str] = None) -> pd.DataFrame:
    """The submission table of a prediction frame for `track` (submission_track); attributes are mapped from
    value_range to 1-7 and clipped."""
    names = df["utt_id"].astype(str).map(file_name)
    if submission_track(info, track) == "categorical":
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


@dataclass
class Coverage:
    """How a run's predictions on a split cover that split of its manifest; `manifest` None: it could not be read."""

    manifest: Optional[Path]
    expected: int = 0
    missing: list[str] = field(default_factory=list)
    note: str = ""

    def describe(self, split: str) -> str:
        shown = ", ".join(self.missing[:5]) + (", ..." if len(self.missing) > 5 else "")
        return (f"{len(self.missing)} of the {self.expected} {split} rows of manifest '{self.manifest}' have no "
                f"prediction (e.g. {shown})")


def coverage(run_dir: str | Path, split: str = "test", predictions: Optional[pd.DataFrame] = None) -> Coverage:
    """Which rows of `split` in the run's manifest (the fold's split for a run on data.fold) have no prediction."""
    run = RunDir(run_dir)
    recorded = run.manifest()
    if not recorded:
        return Coverage(None, note=f"run '{run.path}' records no manifest, so the rows could not be checked")
    path = Path(recorded)
    if not path.is_file():
        return Coverage(None, note=f"the run's manifest '{path}' does not exist any more, so the rows could not be checked")
    df = read_manifest(path, validate=False)
    fold = (read_run_config(run.config_path)[0].get("data") or {}).get("fold")
    if fold is not None:
        df = apply_fold(df, int(fold))
    expected = df.loc[df["split"].astype(str) == split, "utt_id"].astype(str).tolist()
    preds = run.read_predictions(split) if predictions is None else predictions
    have = set(preds["utt_id"].astype(str))
    return Coverage(path, len(expected), [u for u in expected if u not in have])


def export_submission(run_dir: str | Path, output: str | Path, split: str = "test", *,
                      allow_partial: bool = False, track: Optional[str] = None) -> tuple[Path, int]:
    """Write a run's predictions on `split` as a challenge submission CSV for `track` (needed for a multitask run:
    submission_track); returns the path and the row count.

    Refuses (SubmissionError, nothing written) when rows of the split in the run's manifest have no prediction,
    unless `allow_partial` (then logged as a warning; `coverage` tells the caller the same)."""
    run = RunDir(run_dir)
    info = run.require_complete()
    preds = run.read_predictions(split)
    frame = submission_frame(preds, info, attribute_range(run), track)
    cov = coverage(run_dir, split, preds)
    if cov.note:
        log.warning("%s", cov.note)
    if cov.missing:
        if not allow_partial:
            raise SubmissionError(f"{cov.describe(split)}, so the submission would be incomplete and nothing was "
                                  f"written; predict those rows first, or allow a partial submission",
                                  options=("allow_partial",))
        log.warning("partial submission: %s", cov.describe(split))
    path = Path(output)
    atomic_write_text(path, frame.to_csv(index=False))
    return path, len(frame)
