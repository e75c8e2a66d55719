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
from typing import Any, Callable, Iterator, Optional

import numpy as np

log = logging.getLogger(__name__)

Frames = dict[bytes, np.ndarray]


def content_key(wav: np.ndarray) -> bytes:
    """A waveform's identity by content (the audio model sees a copy of the array the ASR saw)."""
    a = np.ascontiguousarray(wav, dtype=np.float32)
    return hashlib.blake2b(a.tobytes(), digest_size=16, person=str(a.shape).encode()[:16]).digest()


class SharedPass:
    """The transcriber and the audio encoders that share its encoder pass.

    `encoders` (None: no sharing) is called on the first `serving`, not before: `predict` starts the ASR of the first
    batches before it loads the run's models, so until then the transcriber keeps the frames of every clip it can
    share (its `shared_pass_key()` is not None) and drops them once no encoder turns out to take them.
    """

    def __init__(self, transcriber: Any, encoders: Optional[Callable[[], list]]):
        can_share = encoders is not None and transcriber is not None
        self.transcriber = transcriber
        self.key = getattr(transcriber, "shared_pass_key", lambda: None)() if can_share else None
        self._find = encoders
        self._encoders: Optional[list] = None if self.key is not None else []
        self.served = 0  # clips whose frames came from the ASR's pass

    @property
    def encoders(self) -> list:
        """The audio encoders whose `shared_pass_key()` is the transcriber's (found on first use)."""
        if self._encoders is None:
            found = self._find()
            self._encoders = [e for e in found if e.shared_pass_key() == self.key]
            if found and not self._encoders:
                log.info("the ASR's encoder pass is not shared with the audio model: transcriber %s, encoders %s "
                         "differ (model, compute type or window)", self.key, [e.shared_pass_key() for e in found])
            if not self._encoders:
                self.key = None  # the transcriber stops keeping frames
        return self._encoders

    def transcribe(self, wavs: list[np.ndarray]) -> tuple[list[str], Frames]:
        """Transcripts of a batch, and (while an encoder may share the pass) each clip's encoder frames by content."""
        if self.key is None:
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

        encoders = self.encoders
        for encoder in encoders:
            encoder.frame_source = source if frames else None
        try:
            yield
        finally:
            for encoder in encoders:
                encoder.frame_source = None
