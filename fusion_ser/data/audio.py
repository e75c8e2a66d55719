"""Audio loading: any file soundfile reads, any rate or channel count -> 16 kHz mono float32.

Bad clips raise `AudioError` with a short `reason` (unreadable, empty, non-finite, silent, too short, truncated)
and a message naming the file, so a job over many files can report and skip them. `load_audio` is the one decode
path of every command (training, the feature cache, transcription, prediction) and rejects a truncated file (its
header declares more audio than the file holds) from the header alone, as `prepare --check-audio` does.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import soundfile as sf
import soxr

from fusion_ser.schema import SAMPLE_RATE
from fusion_ser.errors import FusionSerError

log = logging.getLogger(__name__)

# WAV headers that streaming writers leave unfilled; a mismatch with them is not truncation.
_UNSET_SIZES = {0, 0x7FFFFFFF, 0xFFFFFFFF}
_DATA_SIZE = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


class AudioError(FusionSerError):
    """A clip that cannot be used; `reason` is a short code, the message names the file and what is wrong."""

    def __init__(self, path: str | Path, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        extra = f" ({detail})" if detail else ""
        super().__init__(f"audio file '{path}': {reason}{extra}")


def _require_file(path: str | Path) -> None:
    if not str(path).strip():
        raise AudioError(path, "unreadable", "no audio path given")
    if Path(path).is_dir():
        raise AudioError(path, "unreadable", "it is a directory, not an audio file")
    if not Path(path).is_file():
        exists = Path(path).exists()
        raise AudioError(path, "unreadable", "it is not a regular file" if exists else "file does not exist")


def _unreadable(path: str | Path, e: Exception) -> AudioError:
    return AudioError(path, "unreadable", str(e).splitlines()[0] if str(e) else type(e).__name__)


def _truncation_detail(extra_info: str) -> Optional[str]:
    """Detail text when a header log (soundfile's extra_info) declares more audio data than the file holds."""
    m = _DATA_SIZE.search(extra_info or "")
    if m is None:
        return None
    declared, actual = int(m.group(1)), int(m.group(2))
    if declared in _UNSET_SIZES or declared <= actual:
        return None
    return (f"header declares {declared} data bytes, file holds {actual}: the file was cut short; copy or export it "
            "again")


def _read(path: str | Path) -> tuple[np.ndarray, int]:
    _require_file(path)
    try:
        f = sf.SoundFile(str(path))
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as e:
        raise _unreadable(path, e) from None
    with f:
        detail = _truncation_detail(f.extra_info)  # the header only: no second decode
        if detail is not None:
            raise AudioError(path, "truncated", detail)
        try:
            data = f.read(dtype="float32", always_2d=True)
        except (sf.SoundFileError, RuntimeError, OSError, ValueError) as e:
            raise _unreadable(path, e) from None
        return data, f.samplerate


def to_mono_16k(data: np.ndarray, rate: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Average channels of a (frames,) or (frames, channels) array and resample with soxr to `sample_rate`."""
    x = np.asarray(data, dtype=np.float32)
    if x.ndim == 2:
        channels = x.shape[1]  # a mat-vec product: much faster than a strided mean over interleaved frames
        x = x @ np.full(channels, 1.0 / channels, dtype=np.float32) if channels > 1 else x[:, 0]
    if rate != sample_rate and x.size:
        x = soxr.resample(x, rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(x, dtype=np.float32)


def check_samples(data: np.ndarray, rate: int, source: str | Path, min_seconds: float = 0.1) -> None:
    """Raise AudioError naming `source` when samples ((frames,) or (frames, channels)) are empty, non-finite,
    all zero, or shorter than min_seconds: the one check of decoded files and of arrays given in memory."""
    if data.size == 0:
        raise AudioError(source, "empty", "no audio frames")
    if not np.isfinite(data).all():
        raise AudioError(source, "non-finite", "contains NaN or infinite samples")
    if not np.any(data):
        raise AudioError(source, "silent", "every sample is zero")
    seconds = data.shape[0] / rate
    if seconds < min_seconds:
        raise AudioError(source, "too short", f"{seconds:.3f} s < {min_seconds} s")


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, min_seconds: float = 0.1) -> np.ndarray:
    """Decode a clip to mono float32 at `sample_rate`; raise AudioError for unreadable/truncated/empty/bad/short clips."""
    data, rate = _read(path)
    check_samples(data, rate, path, min_seconds)
    return to_mono_16k(data, rate, sample_rate)


def waveform(samples: np.ndarray, source: str, min_seconds: float = 0.1,
             sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """An in-memory mono waveform at `sample_rate`, checked like a decoded file; AudioError names `source`."""
    wav = np.asarray(samples, dtype=np.float32)
    if wav.ndim != 1:
        raise AudioError(source, "not mono", f"expected a 1-D waveform at {sample_rate} Hz, got shape {wav.shape}")
    check_samples(wav, sample_rate, source, min_seconds)
    return np.ascontiguousarray(wav)


def audio_duration(path: str | Path, *, reject_truncated: bool = False) -> float:
    """Duration in seconds from the file header only (no decoding); with `reject_truncated`, a file whose header
    declares more data than it holds raises AudioError("truncated") as load_audio would."""
    _require_file(path)
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as e:
        raise _unreadable(path, e) from None
    if reject_truncated:
        detail = _truncation_detail(info.extra_info)
        if detail is not None:
            raise AudioError(path, "truncated", detail)
    return info.frames / info.samplerate if info.samplerate else 0.0


def check_clip(path: str | Path, sample_rate: int = SAMPLE_RATE, min_seconds: float = 0.1) -> None:
    """Fully decode a clip (header truncation check included); raise AudioError when it is not usable."""
    load_audio(path, sample_rate=sample_rate, min_seconds=min_seconds)


def check_audio(
    paths: Iterable[str | Path],
    progress: Optional[Callable[[int], object]] = None,
    sample_rate: int = SAMPLE_RATE,
    min_seconds: float = 0.1,
) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode every clip; return a boolean ok mask (one per path) and the rejected (path, reason) pairs.

    `progress`, when given, is called with 1 after each file (e.g. a tqdm bar's `update`).
    """
    paths = [str(p) for p in paths]
    ok = np.ones(len(paths), dtype=bool)
    rejected: list[tuple[str, str]] = []
    for i, p in enumerate(paths):
        try:
            check_clip(p, sample_rate=sample_rate, min_seconds=min_seconds)
        except AudioError as e:
            ok[i] = False
            reason = f"{e.reason}: {e.detail}" if e.detail else e.reason
            rejected.append((p, reason))
            log.info("rejected %s: %s", p, reason)
        if progress is not None:
            progress(1)
    return ok, rejected


def audio_durations(paths: Iterable[str | Path]) -> np.ndarray:
    """Header durations in seconds, NaN for empty paths and unreadable files."""
    out = []
    for p in paths:
        try:
            out.append(audio_duration(p) if p else float("nan"))
        except AudioError:
            out.append(float("nan"))
    return np.asarray(out, dtype=float)
