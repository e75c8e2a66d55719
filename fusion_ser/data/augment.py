"""Training-time audio augmentation: Kaldi-style speed perturbation (tempo and pitch change together)."""

from __future__ import annotations

import numpy as np
import soxr

from fusion_ser.schema import SAMPLE_RATE


def speed_perturb(wav: np.ndarray, factor: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The clip played `factor` times faster: read as if sampled at factor*rate, resampled back to the rate.

    Its length becomes len(wav)/factor (0.9 -> 11 % longer and lower, 1.1 -> shorter and higher), as sox `speed`.
    """
    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    if factor == 1.0:
        return np.asarray(wav, dtype=np.float32)
    out = soxr.resample(np.asarray(wav, dtype=np.float32), sample_rate * factor, sample_rate, quality="HQ")
    return out.astype(np.float32, copy=False)
