"""The Whisper encoder in PyTorch, built from a CTranslate2 model directory, for its hidden states of every layer.

CTranslate2 returns only the encoder's last layer, yet for emotion the middle layers of Whisper carry more: on the
RAVDESS dev folds a linear probe on layer 2 of tiny.en scores 0.72 macro-F1 against 0.65 for the last layer. This
module reads the same model.bin (float16/float32 weights; see `read_ct2_variables`) into a small pre-LayerNorm
transformer, so the packaged Whisper tiny.en serves both paths without any download. Its last hidden state equals
CTranslate2's `encode` output to float tolerance (tests/test_audio_encoders.py).
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fusion_ser.errors import FusionSerError

# CTranslate2's variable type ids (include/ctranslate2/types.h); bfloat16 is read as raw 16-bit words
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
MAX_POSITIONS_KEY = "encoder/position_encodings/encodings"
MAX_MEL_FRAMES = 3000  # Whisper's 30 s window at 100 log-mel frames/s: the longest input its encoder takes


class WhisperWeightsError(FusionSerError):
    """A CTranslate2 model directory whose encoder weights cannot be read into PyTorch."""


def read_ct2_variables(model_bin: str | Path, prefix: str = "encoder/", *, names_only: bool = False
                       ) -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 model.bin whose names start with `prefix` (others are skipped unread); with
    names_only, each mapped to a read-only placeholder of its shape (a broadcast zero), without reading any data."""
    path = Path(model_bin)
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        def unpack(fmt: str) -> int:
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def string() -> str:
            return f.read(unpack("H"))[:-1].decode("utf-8")

        try:
            version = unpack("I")
            if version < 5:
                raise WhisperWeightsError(f"{path}: CTranslate2 binary version {version} is too old (need >= 5); "
                                          "re-convert the model with a current ct2-transformers-converter")
            string()  # spec name
            unpack("I")  # spec revision
            for _ in range(unpack("I")):
                name = string()
                shape = [unpack("I") for _ in range(unpack("B"))]
                dtype = _DTYPES.get(unpack("B"))
                size = unpack("I")
                if not name.startswith(prefix) or names_only:
                    f.seek(size, 1)
                    if name.startswith(prefix):
                        out[name] = np.broadcast_to(np.zeros((), dtype=np.float32), shape)
                    continue
                if dtype is None:
                    raise WhisperWeightsError(f"{path}: variable '{name}' has an unknown CTranslate2 type")
                out[name] = np.frombuffer(f.read(size), dtype=dtype).reshape(shape)
        except struct.error as e:
            raise WhisperWeightsError(f"{path}: truncated or not a CTranslate2 model.bin ({e})") from e
    return out


def encoder_width(model_dir: str | Path) -> int:
    """Width of a CTranslate2 Whisper model's encoder frames, from model.bin's variable shapes alone."""
    return int(read_ct2_variables(Path(model_dir) / "model.bin", names_only=True)["encoder/conv2/bias"].shape[0])


def _layer_ids(names: Iterable[str]) -> set[str]:
    return {n.split("/")[1] for n in names if n.count("/") > 1 and n.split("/")[1].removeprefix("layer_").isdigit()}


def encoder_layer_count(model_dir: str | Path) -> int:
    """Number of encoder layers of a CTranslate2 Whisper model, from model.bin's variable names alone."""
    return len(_layer_ids(read_ct2_variables(Path(model_dir) / "model.bin", names_only=True)))


class _Block(nn.Module):
    """One pre-LayerNorm encoder layer: self-attention with fused QKV, then a GELU feed-forward."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn_in = nn.Linear(dim, 4 * dim)
        self.ffn_out = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.attn_out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))
        return x + self.ffn_out(F.gelu(self.ffn_in(self.ffn_norm(x))))


class WhisperEncoderTorch(nn.Module):
    """Whisper's audio encoder: two convolutions (the second strides by 2), sinusoidal positions, N layers, final
    LayerNorm. `forward(mel)` returns the N+1 hidden states, the last one after the final LayerNorm (as Whisper
    and CTranslate2 output it)."""

    def __init__(self, n_mels: int, dim: int, heads: int, layers: int, positions: int):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, dim, 3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(positions, dim))
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @classmethod
    def from_ct2(cls, model_dir: str | Path) -> "WhisperEncoderTorch":
        """Build from a CTranslate2 Whisper directory; quantised (int8) models are refused with what to do."""
        path = Path(model_dir) / "model.bin"
        w = read_ct2_variables(path)
        if any(k.endswith("weight_scale") for k in w) or any(v.dtype == np.int8 for v in w.values()):
            raise WhisperWeightsError(f"{path}: int8-quantised weights cannot be read into PyTorch; use a float16 or "
                                      "float32 conversion (ct2-transformers-converter --quantization float16)")
        try:
            n_layers = len(_layer_ids(w))
            dim, n_mels, _ = w["encoder/conv1/weight"].shape
            model = cls(int(n_mels), int(dim), int(w["encoder/num_heads"]), n_layers,
                        int(w[MAX_POSITIONS_KEY].shape[0]))

            def put(module: nn.Module, attr: str, key: str) -> None:
                raw = w[key]
                if raw.dtype == np.uint16:  # bfloat16 words -> float32
                    raw = (raw.astype(np.uint32) << 16).view(np.float32)
                getattr(module, attr).copy_(torch.from_numpy(raw.astype(np.float32)))

            with torch.no_grad():
                for conv in ("conv1", "conv2"):
                    put(getattr(model, conv), "weight", f"encoder/{conv}/weight")
                    put(getattr(model, conv), "bias", f"encoder/{conv}/bias")
                put(model, "positions", MAX_POSITIONS_KEY)
                put(model.norm, "weight", "encoder/layer_norm/gamma")
                put(model.norm, "bias", "encoder/layer_norm/beta")
                for i, block in enumerate(model.blocks):
                    p = f"encoder/layer_{i}/"
                    for norm, name in ((block.attn_norm, "self_attention/layer_norm"), (block.ffn_norm, "ffn/layer_norm")):
                        put(norm, "weight", p + name + "/gamma")
                        put(norm, "bias", p + name + "/beta")
                    for lin, name in ((block.qkv, "self_attention/linear_0"), (block.attn_out, "self_attention/linear_1"),
                                      (block.ffn_in, "ffn/linear_0"), (block.ffn_out, "ffn/linear_1")):
                        put(lin, "weight", p + name + "/weight")
                        put(lin, "bias", p + name + "/bias")
        except KeyError as e:
            raise WhisperWeightsError(f"{path}: no Whisper encoder variable {e}; is this a CTranslate2 Whisper model?") from e
        return model.eval().requires_grad_(False)

    def forward(self, mel: torch.Tensor) -> list[torch.Tensor]:
        """(B, n_mels, F) log-mel of at most 30 s -> N+1 tensors (B, ceil(F/2), D)."""
        x = F.gelu(self.conv2(F.gelu(self.conv1(mel)))).transpose(1, 2)
        x = x + self.positions[: x.shape[1]]
        hidden = [x]
        for block in self.blocks:
            x = block(x)
            hidden.append(x)
        hidden[-1] = self.norm(x)
        return hidden


def quantize_int8(model: WhisperEncoderTorch) -> nn.Module:
    """The encoder with dynamic int8 matmuls in its Linear layers (weights int8 per output channel, activations
    quantised per call; convolutions, LayerNorms and attention stay float32): about 2x faster on a CPU, CPU only.

    torch.ao's eager dynamic quantisation is deprecated upstream (its successor is torchao); its warnings are kept
    out of the log, and a torch without it is a WhisperWeightsError naming the option."""
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as e:
        raise WhisperWeightsError(f"audio_encoder.quantize=int8 needs torch.ao.quantization, which this torch "
                                  f"{torch.__version__} lacks ({e}); set audio_encoder.quantize=none",
                                  options=("audio_encoder.quantize",)) from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (UserWarning, DeprecationWarning, FutureWarning))
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
