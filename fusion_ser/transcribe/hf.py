"""Hugging Face transformers Whisper backend: WhisperForConditionalGeneration by hub name or local path, batched."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from fusion_ser.schema import SAMPLE_RATE
from fusion_ser.transcribe.base import (Transcriber, TranscribeError, check_audio_array, normalize_text,
                                        optional, pick_device)
from fusion_ser.whisper_window import windows


class HFWhisperTranscriber(Transcriber):
    """Whisper in transformers; clips over 30 s are decoded in consecutive 30 s windows."""

    backend = "transformers"

    def __init__(self, model: Optional[str] = None, *, device: str = "auto", beam_size: int = 5,
                 language: Optional[str] = None, batch_size: int = 8, max_new_tokens: int = 128):
        from transformers import AutoProcessor, WhisperForConditionalGeneration

        if not model:
            raise TranscribeError("the transformers backend needs a model (e.g. openai/whisper-small or a local "
                                  "directory saved with save_pretrained)", options=("model",))
        super().__init__(model, {"beam_size": beam_size, "language": optional(language),
                                 "max_new_tokens": max_new_tokens})
        self.device = pick_device(device)
        try:
            self.processor = AutoProcessor.from_pretrained(model)
            self.model = WhisperForConditionalGeneration.from_pretrained(model).to(self.device).eval()
        except (OSError, ValueError) as e:
            raise TranscribeError(f"cannot load the transformers Whisper model '{model}': {e}. Give the model as a "
                                  "local directory or a reachable model name", options=("model",)) from e
        self.batch_size = max(1, batch_size)

    @torch.no_grad()
    def _decode(self, chunks: list[np.ndarray]) -> list[str]:
        feats = self.processor.feature_extractor(chunks, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        kwargs = {"num_beams": self.options["beam_size"], "max_new_tokens": self.options["max_new_tokens"]}
        if self.options["language"] and getattr(self.model.generation_config, "is_multilingual", False):
            kwargs.update(language=self.options["language"], task="transcribe")
        ids = self.model.generate(feats.input_features.to(self.device, self.model.dtype), **kwargs)
        return self.processor.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[str]:
        chunks, owner = [], []
        for i, a in enumerate(audios):
            for w in windows(check_audio_array(a, i)):
                chunks.append(w)
                owner.append(i)
        texts: list[list[str]] = [[] for _ in audios]
        for s in range(0, len(chunks), self.batch_size):
            for k, text in zip(owner[s:s + self.batch_size], self._decode(chunks[s:s + self.batch_size])):
                texts[k].append(text)
        return [normalize_text(" ".join(t)) for t in texts]
