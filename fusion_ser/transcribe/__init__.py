"""Speech recognition behind one interface: faster-whisper (default, offline tiny.en), openai-whisper, transformers."""

from __future__ import annotations

import inspect
from typing import Any, Optional

from fusion_ser.transcribe.base import Transcriber, TranscribeError
from fusion_ser.transcribe.cache import TranscriptCache, default_cache_dir
from fusion_ser.transcribe.runner import TranscribeSummary, transcribe_frame

BACKENDS = ["faster-whisper", "openai-whisper", "transformers"]

__all__ = ["BACKENDS", "Transcriber", "TranscribeError", "TranscriptCache", "TranscribeSummary", "default_cache_dir",
           "get_transcriber", "transcribe_frame"]


def get_transcriber(backend: str = "faster-whisper", model: Optional[str] = None, **options: Any) -> Transcriber:
    """Build a transcriber; options are the backend's keyword arguments (device, beam_size, language, ...)."""
    if backend == "faster-whisper":
        from fusion_ser.transcribe.faster import FasterWhisperTranscriber as cls
    elif backend == "openai-whisper":
        from fusion_ser.transcribe.openai_whisper import OpenAIWhisperTranscriber as cls
    elif backend in ("transformers", "hf"):
        from fusion_ser.transcribe.hf import HFWhisperTranscriber as cls
    else:
        raise TranscribeError(f"backend '{backend}' is not one of {BACKENDS}", options=("backend",))
    accepted = [k for k in inspect.signature(cls.__init__).parameters if k not in ("self", "model")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TranscribeError(f"backend '{backend}' does not take option(s) {unknown}; it takes {accepted}")
    return cls(model, **options)
