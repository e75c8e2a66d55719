"""Whisper's log-mel front end and encoder on zero-padded batches, in PyTorch tensor operations only.

The `ct2_whisper` encoder computes log-mels with faster-whisper's numpy feature extractor on each unpadded clip and
runs 30 s chunks one clip at a time. `WhisperFrames` does the same arithmetic on a padded batch (B, S) with its
lengths (B,), so that it can be traced into one graph (ONNX export): per-clip reflect padding by index, a periodic
Hann window STFT, Whisper's Slaney mel filters, log10 with the per-clip dynamic-range floor, then the weights of the
PyTorch copy of the encoder (`whisper_torch.py`) with padding zeroed before each convolution and masked out of
self-attention, and 30 s chunks kept apart inside one sequence (no convolution tap and no attention crosses a chunk
boundary; positions restart in each chunk), so the graph has no chunk count baked in. A clip's frames therefore do
not depend on the batch it is in, and they equal what the per-clip path computes (to float rounding).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fusion_ser.schema import SAMPLE_RATE
from fusion_ser.encoders.whisper_torch import MAX_MEL_FRAMES as CHUNK_FRAMES, WhisperEncoderTorch

N_FFT = 400
HOP = 160
_MASKED = -1e9  # additive attention mask of padded keys (finite, so a fully padded chunk stays finite)


def whisper_mel_filters(n_mels: int) -> np.ndarray:
    """(n_mels, N_FFT//2+1) Slaney mel filters, exactly those of faster-whisper's feature extractor."""
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor.get_mel_filters(SAMPLE_RATE, N_FFT, n_mels=n_mels).astype(np.float32)


def mel_frame_count(lengths: torch.Tensor) -> torch.Tensor:
    """Log-mel frames of clips of `lengths` samples (faster-whisper pads 160 zeros, centres, drops the last)."""
    return lengths // HOP + 1


class WhisperFrames(nn.Module):
    """(B, S) 16 kHz waveforms + (B,) lengths -> Whisper encoder frames and their (B, T) mask.

    `forward` returns the (B, L+1, T, D) stack of hidden states when `all_layers`, else the last layer (B, T, D).
    """

    def __init__(self, encoder: WhisperEncoderTorch, all_layers: bool):
        super().__init__()
        self.encoder = encoder
        self.all_layers = all_layers
        n_mels = int(encoder.conv1.in_channels)
        self.register_buffer("filters", torch.from_numpy(whisper_mel_filters(n_mels)), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT, periodic=True), persistent=False)

    def log_mel(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n_mels, F) log-mel (zero beyond each clip's frames) and the (B,) frame counts."""
        wav = wav.float()
        n = lengths.to(torch.int64).unsqueeze(1)
        padded = n + HOP  # the clip plus faster-whisper's 160 zeros
        half = N_FFT // 2
        pos = torch.arange(wav.shape[1] + HOP + 2 * half, device=wav.device).unsqueeze(0) - half
        idx = pos.abs()  # left reflection
        idx = torch.where(idx >= padded, 2 * (padded - 1) - idx, idx)  # right reflection, per clip
        inside = (idx >= 0) & (idx < n)
        signal = torch.gather(wav, 1, idx.clamp(0, wav.shape[1] - 1).expand(wav.shape[0], -1)) * inside.to(wav.dtype)
        frames = signal.unfold(1, N_FFT, HOP)[:, :-1] * self.window  # (B, F, N_FFT), the last frame dropped
        power = torch.fft.rfft(frames, n=N_FFT).abs() ** 2
        mel = torch.log10(torch.clamp(power @ self.filters.T, min=1e-10))  # (B, F, n_mels)
        count = mel_frame_count(lengths.to(torch.int64))
        valid = (torch.arange(mel.shape[1], device=wav.device)[None, :] < count[:, None]).unsqueeze(-1)
        peak = torch.where(valid, mel, torch.full_like(mel, -1e30)).amax(dim=(1, 2), keepdim=True)
        mel = (torch.maximum(mel, peak - 8.0) + 4.0) / 4.0
        return (mel * valid.to(mel.dtype)).transpose(1, 2), count

    def _blocks(self, x: torch.Tensor, bias: torch.Tensor) -> list[torch.Tensor]:
        """The layers, with the additive attention `bias` (N, 1, T, T); x (N, T, D)."""
        hidden = [x]
        for block in self.encoder.blocks:
            b, t, d = x.shape
            q, k, v = block.qkv(block.attn_norm(x)).view(b, t, 3, block.heads, d // block.heads).permute(2, 0, 3, 1, 4)
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            x = x + block.attn_out(att.transpose(1, 2).reshape(b, t, d))
            x = x + block.ffn_out(F.gelu(block.ffn_in(block.ffn_norm(x))))
            hidden.append(x)
        hidden[-1] = self.encoder.norm(x)
        return hidden

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whisper's 30 s chunks without reshaping into chunks (which would tie the graph to one chunk count): the
        convolutions lose their taps across a chunk boundary, positions restart in each chunk, and attention is
        block-diagonal over chunks. One clip costs attention over its whole length, so segment long recordings."""
        mel, count = self.log_mel(wav, lengths)  # (B, n_mels, F), zero beyond each clip
        enc = self.encoder
        t = torch.arange(mel.shape[2], device=mel.device)
        w1, w2 = enc.conv1.weight, enc.conv2.weight  # (D, C, 3)
        prev = F.pad(mel, (1, 0))[:, :, :-1] * (t % CHUNK_FRAMES != 0).to(mel.dtype)
        nxt = F.pad(mel, (0, 1))[:, :, 1:] * (t % CHUNK_FRAMES != CHUNK_FRAMES - 1).to(mel.dtype)
        y = _taps(w1, prev, mel, nxt) + enc.conv1.bias[None, :, None]
        y = F.gelu(y) * (t[None, :] < count[:, None]).unsqueeze(1).to(y.dtype)
        even = y[:, :, 0::2]  # stride 2: output j reads y[2j-1], y[2j], y[2j+1]
        odd = F.pad(y, (0, 1))[:, :, 1::2]
        j = torch.arange(even.shape[2], device=mel.device)
        before = F.pad(odd, (1, 0))[:, :, :-1] * (j % (CHUNK_FRAMES // 2) != 0).to(y.dtype)
        x = F.gelu(_taps(w2, before, even, odd) + enc.conv2.bias[None, :, None]).transpose(1, 2)  # (B, T, D)
        x = x + enc.positions[j % (CHUNK_FRAMES // 2)]
        mask = 2 * j[None, :] < count[:, None]  # the frames of a clip: ceil(mel frames / 2)
        chunk = j // (CHUNK_FRAMES // 2)
        allowed = (chunk[:, None] == chunk[None, :])[None] & mask[:, None, :]
        bias = torch.where(allowed, 0.0, _MASKED).to(x.dtype).unsqueeze(1)  # (B, 1, T, T)
        hidden = self._blocks(x, bias)
        m = mask[:, :, None].to(x.dtype)
        if self.all_layers:
            return torch.stack([h * m for h in hidden], dim=1), mask
        return hidden[-1] * m, mask


def _taps(weight: torch.Tensor, left: torch.Tensor, centre: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """A kernel-3 convolution written out: weight (O, C, 3) applied to the three shifted (B, C, T) inputs."""
    return (torch.einsum("oc,bct->bot", weight[:, :, 0], left) + torch.einsum("oc,bct->bot", weight[:, :, 1], centre)
            + torch.einsum("oc,bct->bot", weight[:, :, 2], right))
