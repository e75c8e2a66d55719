"""Log-mel filterbank features and a small TDNN trained from scratch: the audio encoder with no pretrained weights.

The filterbank is our own torch implementation (25 ms Hann windows every 10 ms, 512-point FFT, HTK-mel triangular
filters, log, per-utterance mean normalisation over the real frames), so torchaudio is not needed. The network is a
few dilated 1-D convolutions with LayerNorm; padded frames are zeroed before every convolution, so a clip's features
do not depend on how much padding its batch adds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from fusion_ser.config import AudioEncoderConfig, ConfigError
from fusion_ser.schema import SAMPLE_RATE
from fusion_ser.encoders.base import AudioEncoder, EncoderOutput

WIN_LENGTH = 400  # 25 ms
HOP_LENGTH = 160  # 10 ms
N_FFT = 512
F_MIN = 20.0
F_MAX = 7600.0
LOG_FLOOR = 1e-6


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filters(n_mels: int = 80, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE, f_min: float = F_MIN,
                f_max: float = F_MAX) -> np.ndarray:
    """(n_fft//2+1, n_mels) triangular filters equally spaced on the mel scale, peak 1 at their centre."""
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_freqs[None, :] - lower) / (centre - lower)
    falling = (upper - fft_freqs[None, :]) / (upper - centre)
    return np.clip(np.minimum(rising, falling), 0.0, None).T.astype(np.float32)


def num_frames(lengths: torch.Tensor) -> torch.Tensor:
    """Frames of a clip of `lengths` samples (clips shorter than one window give one frame)."""
    return torch.clamp(lengths - WIN_LENGTH, min=0) // HOP_LENGTH + 1


class LogMelFilterbank(nn.Module):
    """(B, S) waveforms + lengths -> (B, T, n_mels) mean-normalised log-mel features and the (B, T) mask."""

    def __init__(self, n_mels: int = 80):
        super().__init__()
        self.n_mels = n_mels
        self.register_buffer("window", torch.hann_window(WIN_LENGTH, periodic=True), persistent=False)
        self.register_buffer("filters", torch.from_numpy(mel_filters(n_mels)), persistent=False)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wav = wav.float()
        if wav.shape[1] < WIN_LENGTH:
            wav = nn.functional.pad(wav, (0, WIN_LENGTH - wav.shape[1]))
        frames = wav.unfold(1, WIN_LENGTH, HOP_LENGTH) * self.window  # (B, T, WIN)
        power = torch.fft.rfft(frames, n=N_FFT).abs() ** 2
        logmel = torch.log(power @ self.filters + LOG_FLOOR)
        t = logmel.shape[1]
        mask = torch.arange(t, device=wav.device)[None, :] < num_frames(lengths.to(wav.device))[:, None]
        m = mask.unsqueeze(-1).to(logmel.dtype)
        mean = (logmel * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp(min=1.0)
        return (logmel - mean) * m, mask


class _ConvBlock(nn.Module):
    """Dilated 1-D convolution, ReLU, LayerNorm over channels; padded frames are zeroed first."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x * mask.unsqueeze(-1).to(x.dtype)
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return self.norm(torch.relu(y))


class FbankEncoder(AudioEncoder):
    """80-bin log-mel filterbank + a 3-layer TDNN (kernels 5, 3, 3; dilations 1, 2, 3) trained from scratch.

    It always trains (audio_encoder.finetune does not apply: there are no pretrained weights to keep), so it is
    never cached.
    """

    def __init__(self, cfg: AudioEncoderConfig):
        super().__init__()
        if cfg.n_mels < 1 or cfg.hidden_dim < 1:
            raise ConfigError("audio_encoder.n_mels and audio_encoder.hidden_dim must be >= 1 for the fbank encoder")
        self.config = cfg
        self.fbank = LogMelFilterbank(cfg.n_mels)
        self.blocks = nn.ModuleList([
            _ConvBlock(cfg.n_mels, cfg.hidden_dim, 5, 1),
            _ConvBlock(cfg.hidden_dim, cfg.hidden_dim, 3, 2),
            _ConvBlock(cfg.hidden_dim, cfg.hidden_dim, 3, 3),
        ])
        self._dim = cfg.hidden_dim

    @property
    def output_dim(self) -> int:
        return self._dim

    def forward(self, batch: dict[str, Any]) -> EncoderOutput:
        wav = batch["wav"]
        lengths = batch.get("wav_lengths")
        if lengths is None:
            lengths = torch.full((wav.shape[0],), wav.shape[1], dtype=torch.long, device=wav.device)
        x, mask = self.fbank(wav, lengths)
        for block in self.blocks:
            x = block(x, mask)
        return EncoderOutput(x * mask.unsqueeze(-1).to(x.dtype), mask)
