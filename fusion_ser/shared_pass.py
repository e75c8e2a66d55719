"""One Whisper encoder pass per clip for the ASR and the audio models that read the same frames, in `predict`.

The offline default audio model *is* the packaged Whisper's encoder: where an audio encoder takes its frames in the
transcriber's window (CT2WhisperEncoder with the transcriber's model, compute type and audio_encoder.window_seconds,
so both `shared_pass_key()`s agree), the transcriber returns each clip's frames from the pass it decodes from, and the
encoder is handed them (its `frame_source`, looked up by the waveform's content) instead of encoding the clip again.
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager
from typing import Any, Iterator, Optional

import numpy as np

log = logging.getLogger(__name__)

Frames = dict[bytes, np.ndarray]


def content_key(wav: np.ndarray) -> bytes:
    """A waveform's identity by content (the audio model sees a copy of the array the ASR saw)."""
    a = np.ascontiguousarray(wav, dtype=np.float32)
    return hashlib.blake2b(a.tobytes(), digest_size=16, person=str(a.shape).encode()[:16]).digest()


class SharedPass:
    """The transcriber and the audio encoders that share its encoder pass (none: each encodes on its own)."""

    def __init__(self, transcriber: Any, encoders: list):
        key = getattr(transcriber, "shared_pass_key", lambda: None)() if encoders else None
        self.transcriber = transcriber
        self.encoders = [e for e in encoders if key is not None and e.shared_pass_key() == key]
        self.served = 0  # clips whose frames came from the ASR's pass
        if encoders and not self.encoders:
            log.info("the ASR's encoder pass is not shared with the audio model: transcriber %s, encoders %s differ "
                     "(model, compute type or window)", key, [e.shared_pass_key() for e in encoders])

    def transcribe(self, wavs: list[np.ndarray]) -> tuple[list[str], Frames]:
        """Transcripts of a batch, and (when an encoder shares the pass) each clip's encoder frames by content."""
        if not self.encoders:
            return self.transcriber.transcribe_batch(wavs), {}
        texts, frames = self.transcriber.transcribe_with_frames(wavs)
        return texts, {content_key(w): f for w, f in zip(wavs, frames)}

    @contextmanager
    def serving(self, frames: Frames) -> Iterator[None]:
        """While the models run on a batch, the sharing encoders read its frames (a clip not found encodes itself)."""
        def source(wav: np.ndarray) -> Optional[np.ndarray]:
            hit = frames.get(content_key(wav))
            self.served += hit is not None
            return hit

        for encoder in self.encoders:
            encoder.frame_source = source if frames else None
        try:
            yield
        finally:
            for encoder in self.encoders:
                encoder.frame_source = None
