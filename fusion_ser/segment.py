"""Splitting long recordings for prediction: fixed windows (length + hop) or energy-based speech regions.

A long file gets one prediction per segment (with its start and end time) and one for the whole file. The whole-file
prediction is the mean of the segment predictions (class probabilities and attribute values) weighted by segment
duration: the models were trained on utterance-length clips, so whole-file inference on minutes of audio would be
outside their training conditions (and truncated at data.max_eval_seconds). `covering_windows` and `fit_to_limit`
cut a recording (or segment) longer than a model's max_eval_seconds so that every second of it is seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from fusion_ser.errors import FusionSerError


class SegmentError(FusionSerError):
    """Segmentation options that cannot work (non-positive length or hop, hop longer than the window)."""


@dataclass(frozen=True)
class Segment:
    """A stretch of a recording, in seconds."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class SegmentConfig:
    """How to split: `window` (length, hop) or `energy` (speech regions, longer ones cut into windows)."""

    method: str = "window"  # window | energy
    length: float = 8.0  # seconds per window (energy: the longest region kept whole)
    hop: Optional[float] = None  # seconds between window starts; None: = length (no overlap)
    min_length: float = 1.0  # a shorter tail is merged into the previous window
    threshold_db: float = -40.0  # energy: frames quieter than the file's loudest frame by more than this are silence
    min_silence: float = 0.3  # energy: shorter pauses do not split
    min_speech: float = 0.25  # energy: shorter bursts are dropped

    def validate(self) -> "SegmentConfig":
        if self.method not in ("window", "energy"):
            raise SegmentError(f"segment method '{self.method}' is not one of ['window', 'energy']",
                               options=("segment_method",))
        hop = self.length if self.hop is None else self.hop
        if self.length <= 0 or hop <= 0:
            raise SegmentError(f"the segment length ({self.length}) and hop ({hop}) must be positive seconds",
                               options=("segment_length", "hop"))
        if hop > self.length:
            raise SegmentError(f"the hop ({hop}) is longer than the segment length ({self.length}): parts of the file "
                               "would never be seen; use a hop <= the segment length", options=("segment_length", "hop"))
        return self


def window_segments(duration: float, length: float, hop: Optional[float] = None, min_length: float = 1.0) -> list[Segment]:
    """Windows of `length` s starting every `hop` s, covering [0, duration]; the last ends at the file's end.

    A final window shorter than min_length is merged into the previous one (which then ends at the file's end), so no
    segment is a useless sliver.
    """
    hop = length if hop is None else hop
    SegmentConfig(length=length, hop=hop).validate()
    if duration <= length:
        return [Segment(0.0, float(duration))]
    n = int(math.ceil((duration - length) / hop)) + 1
    segs = [Segment(round(float(i * hop), 6), round(float(min(i * hop + length, duration)), 6)) for i in range(n)]
    if segs[-1].duration < min_length:
        segs = segs[:-2] + [Segment(segs[-2].start, float(duration))]
    return segs


def _windows(first: int, total: int, limit: int, sample_rate: int) -> list[Segment]:
    """The fewest equal windows covering samples [first, first + total) with none longer than `limit` samples."""
    n = max(1, int(math.ceil(total / limit)))
    edges = [first + total * i // n for i in range(n + 1)]
    return [Segment(a / sample_rate, b / sample_rate) for a, b in zip(edges[:-1], edges[1:])]


def covering_windows(duration: float, max_seconds: float, sample_rate: int) -> list[Segment]:
    """The fewest equal windows (no overlap) that cover [0, duration] with none longer than max_seconds.

    Equal lengths (rather than full windows plus a short tail) keep every window near the models' input length;
    counted in samples, so no window is cut by the model's first-max_seconds crop."""
    limit = max(1, int(max_seconds * sample_rate))
    total = int(round(duration * sample_rate))
    if total <= limit:
        return [Segment(0.0, float(duration))]
    return _windows(0, total, limit, sample_rate)


def fit_to_limit(segments: list[Segment], max_seconds: float, sample_rate: int) -> tuple[list[Segment], int]:
    """Segments with every one longer than max_seconds split by `covering_windows`; and how many were split."""
    limit = max(1, int(max_seconds * sample_rate))
    out: list[Segment] = []
    split_count = 0
    for seg in segments:
        first = int(round(seg.start * sample_rate))
        total = int(round(seg.end * sample_rate)) - first
        if total <= limit:
            out.append(seg)
            continue
        split_count += 1
        out.extend(_windows(first, total, limit, sample_rate))
    return out, split_count


def energy_segments(wav: np.ndarray, sample_rate: int, cfg: SegmentConfig) -> list[Segment]:
    """Speech regions from frame energy (25 ms frames, 10 ms hop); regions longer than cfg.length are windowed.

    Falls back to one segment over the whole file when nothing is above the threshold.
    """
    frame, step = int(0.025 * sample_rate), int(0.010 * sample_rate)
    duration = len(wav) / sample_rate
    if len(wav) < frame:
        return [Segment(0.0, duration)]
    frames = np.lib.stride_tricks.sliding_window_view(wav.astype(np.float64), frame)[::step]
    db = 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    active = db > db.max() + cfg.threshold_db
    regions = []
    start = None
    for i, a in enumerate(np.append(active, False)):
        if a and start is None:
            start = i
        elif not a and start is not None:
            regions.append([start * step / sample_rate, min((i - 1) * step + frame, len(wav)) / sample_rate])
            start = None
    merged: list[list[float]] = []
    for r in regions:
        if merged and r[0] - merged[-1][1] < cfg.min_silence:
            merged[-1][1] = r[1]
        else:
            merged.append(r)
    merged = [r for r in merged if r[1] - r[0] >= cfg.min_speech]
    if not merged:
        return [Segment(0.0, duration)]
    out = []
    for s, e in merged:
        for w in window_segments(e - s, cfg.length, cfg.hop, cfg.min_length):
            out.append(Segment(round(s + w.start, 6), round(s + w.end, 6)))
    return out


def split(wav: np.ndarray, sample_rate: int, cfg: SegmentConfig) -> list[Segment]:
    """Segments of one recording by cfg.method."""
    cfg.validate()
    if cfg.method == "energy":
        return energy_segments(wav, sample_rate, cfg)
    return window_segments(len(wav) / sample_rate, cfg.length, cfg.hop, cfg.min_length)


def cut(wav: np.ndarray, sample_rate: int, seg: Segment) -> np.ndarray:
    """The samples of one segment."""
    return wav[int(round(seg.start * sample_rate)): int(round(seg.end * sample_rate))]


def aggregate(segment_results: list[dict], keys: list[str]) -> dict[str, float]:
    """Duration-weighted mean of the numeric `keys` over segment results (each with `start` and `end`)."""
    weights = np.array([r["end"] - r["start"] for r in segment_results], dtype=np.float64)
    if weights.sum() <= 0:
        weights = np.ones_like(weights)
    weights = weights / weights.sum()
    return {k: float(np.dot(weights, [r[k] for r in segment_results])) for k in keys}
