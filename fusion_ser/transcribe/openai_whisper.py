"""openai-whisper backend (optional extra `fusion-ser[openai-whisper]`); one clip at a time, long-form native."""

from __future__ import annotations

from typing import Optional

import numpy as np

from fusion_ser.transcribe.base import (Transcriber, TranscribeError, check_audio_array, normalize_text, optional,
                                        pick_device)


class OpenAIWhisperTranscriber(Transcriber):
    """Whisper through the openai-whisper package (model size name or a local .pt checkpoint)."""

    backend = "openai-whisper"

    def __init__(self, model: Optional[str] = None, *, device: str = "auto", beam_size: int = 5,
                 language: Optional[str] = None):
        try:
            import whisper
        except ImportError as e:
            raise TranscribeError("the openai-whisper backend needs the optional extra: "
                                  "`pip install fusion-ser[openai-whisper]` (or use the faster-whisper backend)",
                                  options=("backend",)) from e
        model = model or "tiny.en"
        super().__init__(model, {"beam_size": beam_size, "language": optional(language)})
        self.device = pick_device(device)
        try:
            self.model = whisper.load_model(model, device=str(self.device))
        except (RuntimeError, OSError) as e:
            raise TranscribeError(f"cannot load openai-whisper model '{model}': {e}") from e

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[str]:
        out = []
        for i, a in enumerate(audios):
            result = self.model.transcribe(check_audio_array(a, i), beam_size=self.options["beam_size"],
                                           language=self.options["language"], fp16=self.device.type == "cuda")
            out.append(normalize_text(result["text"]))
        return out
