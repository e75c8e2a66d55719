"""Frame standardisation by domain (head.standardize: speaker | corpus): each clip's frames are standardised with the
per-dimension mean and standard deviation of the frames of its own speaker or corpus, so a frozen encoder's
channel and speaker offsets are removed the same way in training and on a new corpus.

The statistics of a domain come from the unlabelled frames of the rows being processed together (training/domain.py
computes them: a split's rows grouped by speaker or corpus; in `predict`, the files predicted together). The
training set's overall statistics are buffers saved with the model: the fallback for a clip without a domain (one
file on its own, an empty speaker) and what `head.standardize_frames` alone uses.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

MIN_DOMAIN_CLIPS = 2  # a domain with fewer clips uses the training statistics (one clip's own statistics erase it)


class DomainStandardizer(nn.Module):
    """Per-dimension frame standardisation with the statistics of each clip's domain (by utt_id), else the
    training set's (the `mean` / `std` buffers, saved with the model)."""

    def __init__(self, dim: int, mode: str):
        super().__init__()
        self.mode = mode  # speaker | corpus
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self._row: dict[str, int] = {}  # utt_id -> domain index
        self._means: list[torch.Tensor] = []
        self._stds: list[torch.Tensor] = []
        self._current: Optional[int] = None  # the domain of rows not in _row (predict: the files given together)

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Install the training set's mean and standard deviation of each feature dimension (the fallback)."""
        self.mean.copy_(mean.to(self.mean))
        self.std.copy_(std.clamp(min=1e-5).to(self.std))

    def add_domain(self, mean: torch.Tensor, std: torch.Tensor, utt_ids: Sequence[str] = ()) -> int:
        """Statistics of one domain for the rows `utt_ids` (a later call for the same utt_id wins); its index."""
        self._means.append(mean.detach().float().cpu())
        self._stds.append(std.detach().float().clamp(min=1e-5).cpu())
        k = len(self._means) - 1
        self._row.update({str(u): k for u in utt_ids})
        return k

    def set_current(self, mean: Optional[torch.Tensor], std: Optional[torch.Tensor] = None) -> None:
        """Statistics for every row without a domain of its own (None: the training statistics)."""
        self._current = None if mean is None else self.add_domain(mean, std)

    def clear_domains(self) -> None:
        self._row, self._means, self._stds, self._current = {}, [], [], None

    def domain_of(self, utt_id: str) -> Optional[int]:
        """The domain index of a row, or None when it is standardised with the training statistics."""
        return self._row.get(str(utt_id), self._current)

    def forward(self, features: torch.Tensor, utt_ids: Optional[Sequence[str]] = None) -> torch.Tensor:
        mean = self.mean.to(features.dtype).expand(features.shape[0], -1)
        std = self.std.to(features.dtype).expand(features.shape[0], -1)
        if utt_ids is not None and self._means:
            index = [self.domain_of(u) for u in utt_ids]
            if any(i is not None for i in index):
                mean, std = mean.clone(), std.clone()
                for b, i in enumerate(index):
                    if i is not None:
                        mean[b] = self._means[i].to(features)
                        std[b] = self._stds[i].to(features)
        shape = (features.shape[0],) + (1,) * (features.dim() - 2) + (features.shape[-1],)
        return (features - mean.reshape(shape)) / std.reshape(shape)
