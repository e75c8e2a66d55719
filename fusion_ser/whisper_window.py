"""Whisper's padding rule, one definition for the transcriber and the audio encoder so one encoder pass serves both.

A piece of a clip (at most Whisper's 30 s) is padded to its *window*: twice its length (half the window silence, as
Whisper saw short training clips), at least `min_seconds`, at most 30 s, rounded up to a whole second, so that a
piece's window (and so its encoding and its transcript) depends on the piece alone, never on the rest of its batch.
The piece's own encoder frames are the first ceil(mel frames / 2) of its window's output: as many as the unpadded
piece would give, each having attended to the window's silence as Whisper does when it transcribes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fusion_ser.schema import SAMPLE_RATE

WINDOW_SECONDS = 30.0  # Whisper's input window
HOP = 160  # samples per log-mel frame


def window_samples(n: int, min_seconds: float) -> int:
    """Samples a piece of `n` samples is padded to: 2 n, at least `min_seconds`, at most 30 s, in whole seconds."""
    seconds = min(WINDOW_SECONDS, max(float(min_seconds), 2 * n / SAMPLE_RATE, n / SAMPLE_RATE))
    return int(min(WINDOW_SECONDS, math.ceil(seconds - 1e-9))) * SAMPLE_RATE


def windows(audio: np.ndarray, seconds: float = WINDOW_SECONDS) -> list[np.ndarray]:
    """Consecutive pieces of at most `seconds` (one for a short clip): Whisper's 30 s pieces by default."""
    n = int(seconds * SAMPLE_RATE)
    return [audio[i:i + n] for i in range(0, max(len(audio), 1), n)]


def windowed_mel(extractor: Any, piece: np.ndarray, window: int) -> np.ndarray:
    """(n_mels, window / 160) float32 log-mel of `piece` padded with silence to `window` samples (faster-whisper's
    FeatureExtractor, as the transcriber computes it)."""
    padded = np.pad(np.asarray(piece, dtype=np.float32), (0, max(0, window - len(piece))))
    return np.ascontiguousarray(extractor(padded, padding=0)[:, : window // HOP], dtype=np.float32)


def piece_frames(n: int) -> int:
    """Encoder frames (50 per second) that belong to a piece of `n` samples: as many as its unpadded encoding has
    (faster-whisper's extractor adds one hop, so n // 160 + 1 mel frames, halved by the stride-2 convolution), at most
    the 1500 of a full window."""
    return min((n // HOP + 2) // 2, int(WINDOW_SECONDS * SAMPLE_RATE) // (2 * HOP))
