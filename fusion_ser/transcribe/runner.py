"""Fill the text column of a manifest: keep human transcripts, reuse cached ones, transcribe the rest in batches.

A clip that cannot be read or decoded is reported in the summary and left empty; the job goes on. Under torchrun
(`dist` of a world > 1) each rank transcribes its share of the rows into the one cache and every rank ends with the
whole frame and a summary of all ranks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import pandas as pd

from fusion_ser.data.audio import AudioError, load_audio
from fusion_ser.schema import SAMPLE_RATE
from fusion_ser.training import distributed as D
from fusion_ser.transcribe.base import Transcriber
from fusion_ser.transcribe.cache import TranscriptCache

logger = logging.getLogger(__name__)

# progress(clips, audio_seconds, compute_seconds) after each clip handled (cached and failed clips: 0 seconds)
Progress = Callable[[int, float, float], None]


@dataclass
class TranscribeSummary:
    """What a transcription job did."""

    transcribed: int = 0
    cached: int = 0
    kept: int = 0
    failed: int = 0
    audio_seconds: float = 0.0  # audio decoded by the model in this job
    compute_seconds: float = 0.0  # wall time spent in the model
    failures: list[tuple[str, str]] = field(default_factory=list)  # (utt_id, reason)
    shares: list[int] = field(default_factory=list)  # under torchrun: clips handled by each rank, in rank order

    @property
    def rtf(self) -> float:
        """Real-time factor: model time / audio time (below 1 is faster than real time)."""
        return self.compute_seconds / self.audio_seconds if self.audio_seconds else 0.0


def _has_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def rows_to_transcribe(df: pd.DataFrame, overwrite: bool, column: str = "text") -> list[int]:
    """Positions of rows whose `column` will come from the recognizer (all with overwrite, else those without one)."""
    texts = df[column] if column in df.columns else pd.Series([""] * len(df))
    return [i for i, t in enumerate(texts) if overwrite or not _has_text(t)]


def transcribe_frame(df: pd.DataFrame, transcriber: Transcriber, cache: Optional[TranscriptCache] = None, *,
                     overwrite: bool = False, batch_size: int = 8, min_seconds: float = 0.1,
                     progress: Optional[Progress] = None,
                     dist: Optional[D.DistInfo] = None, column: str = "text") -> tuple[pd.DataFrame, TranscribeSummary]:
    """Return a copy of the manifest frame with `column` (default `text`) filled, and a summary
    (transcribed/cached/kept/failed, RTF). Another column (e.g. `asr_text`) keeps the human `text` beside the ASR
    transcript, so training can read one and testing the other (`data.text_columns`).

    With `dist` of a world > 1 this rank handles `distributed.shard` of the rows to transcribe, then the ranks
    exchange their texts, so each returns the same whole frame and the summary of all ranks.
    """
    out = df.copy()
    if column not in out.columns:
        out[column] = ""
    out[column] = out[column].where(out[column].map(_has_text), "").astype(str)
    todo = rows_to_transcribe(out, overwrite, column)
    summary = TranscribeSummary(kept=len(out) - len(todo))
    if dist is not None and dist.enabled:
        todo = D.shard(todo, dist)
    tid = transcriber.cache_id()
    col = out.columns.get_loc(column)

    pending = []
    for i in todo:
        hit = cache.get(tid, out.iat[i, out.columns.get_loc("path")]) if cache is not None else None
        if hit is None:
            pending.append(i)
        else:
            out.iat[i, col] = hit
            summary.cached += 1
            if progress is not None:
                progress(1, 0.0, 0.0)

    for start in range(0, len(pending), max(1, batch_size)):
        rows, audios = [], []
        for i in pending[start:start + batch_size]:
            utt, path = str(out["utt_id"].iat[i]), out["path"].iat[i]
            try:
                audios.append(load_audio(path, sample_rate=SAMPLE_RATE, min_seconds=min_seconds))
                rows.append(i)
            except AudioError as e:
                _fail(out, summary, i, col, utt, str(e), progress)
        if rows:
            _run_batch(out, rows, audios, transcriber, cache, summary, col, progress)
    if dist is not None and dist.enabled:
        return _merge_ranks(out, todo, summary, col, dist)
    return out, summary


def _merge_ranks(out: pd.DataFrame, share: list[int], summary: TranscribeSummary, col: int,
                 dist: D.DistInfo) -> tuple[pd.DataFrame, TranscribeSummary]:
    """Every rank's texts written into the frame, and one summary: counts and seconds summed, failures in row order."""
    parts = D.all_gather_object(([(i, out.iat[i, col]) for i in share], summary), dist)
    total = TranscribeSummary(kept=summary.kept)
    for texts, s in parts:
        for i, text in texts:
            out.iat[i, col] = text
        total.transcribed += s.transcribed
        total.cached += s.cached
        total.failed += s.failed
        total.audio_seconds += s.audio_seconds
        total.compute_seconds += s.compute_seconds  # model time of all ranks: the RTF stays per device
        total.failures += s.failures
        total.shares.append(len(texts))
    order = {str(u): k for k, u in enumerate(out["utt_id"])}
    total.failures.sort(key=lambda f: order.get(f[0], len(order)))
    return out, total


def _fail(out: pd.DataFrame, summary: TranscribeSummary, i: int, col: int, utt: str, reason: str,
          progress: Optional[Progress]) -> None:
    out.iat[i, col] = ""
    summary.failed += 1
    summary.failures.append((utt, reason))
    logger.warning("transcription of %s failed: %s", utt, reason)
    if progress is not None:
        progress(1, 0.0, 0.0)


def _run_batch(out: pd.DataFrame, rows: list[int], audios: list, transcriber: Transcriber,
               cache: Optional[TranscriptCache], summary: TranscribeSummary, col: int,
               progress: Optional[Progress]) -> None:
    """Decode a batch; if the batch fails, retry clip by clip so that only the bad clip is lost."""
    t0 = time.perf_counter()
    try:
        texts = transcriber.transcribe_batch(audios)
    except Exception as e:  # noqa: BLE001 - any backend failure is isolated by the per-clip retry below
        if len(rows) > 1:
            logger.info("batch failed (%s); retrying its %d clips one by one", e, len(rows))
            for i, a in zip(rows, audios):
                _run_batch(out, [i], [a], transcriber, cache, summary, col, progress)
            return
        _fail(out, summary, rows[0], col, str(out["utt_id"].iat[rows[0]]), f"{type(e).__name__}: {e}", progress)
        return
    elapsed = time.perf_counter() - t0
    total = sum(len(a) for a in audios) / SAMPLE_RATE
    for i, a, text in zip(rows, audios, texts):
        seconds = len(a) / SAMPLE_RATE
        share = elapsed * seconds / total if total else 0.0
        out.iat[i, col] = text
        if cache is not None:
            cache.put(transcriber.cache_id(), out["path"].iat[i], text, seconds)
        summary.transcribed += 1
        summary.audio_seconds += seconds
        summary.compute_seconds += share
        if progress is not None:
            progress(1, seconds, share)
