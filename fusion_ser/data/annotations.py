"""Annotator-level soft labels: the manifest's `annotations` column (one categorical vote per annotator, names
joined by ";", e.g. "anger;anger;neutral;happiness") as targets over a model's classes, with SAIL's annotator
dropout (Interspeech 2025).

A row's target is the share of its votes for each of the model's classes; votes for other names (other, or a class
the run does not train) are dropped and the rest renormalised. A row with no vote among the classes has no target
(zero mass; the soft losses ignore it). With annotator dropout p, each epoch drops each vote with probability p,
drawn from (seed, epoch, utt_id) alone, so a resumed run, every DDP rank and every row order see the same targets;
at least one vote always stays (when all would go, one drawn uniformly is kept), so a row keeps a target.
"""

from __future__ import annotations

import zlib
from typing import Iterable, Optional, Sequence

import numpy as np

from fusion_ser.schema import ANNOTATIONS_COLUMN, ANNOTATION_SEPARATOR

__all__ = ["ANNOTATIONS_COLUMN", "parse_votes", "format_votes", "vote_matrix", "annotator_targets"]


def parse_votes(value: object) -> list[str]:
    """The votes of one `annotations` cell: names split on ";" and stripped ("" or NaN: none)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [v.strip() for v in str(value).split(ANNOTATION_SEPARATOR) if v.strip()]


def format_votes(votes: Iterable[Optional[str]]) -> str:
    """An `annotations` cell from votes (None or empty ones left out)."""
    return ANNOTATION_SEPARATOR.join(v for v in votes if v)


def vote_matrix(cells: Sequence[object], classes: Sequence[str]) -> list[np.ndarray]:
    """Per row, the class index of each of its votes for one of `classes` (other votes dropped)."""
    index = {c: i for i, c in enumerate(classes)}
    return [np.array([index[v] for v in parse_votes(c) if v in index], dtype=np.int64) for c in cells]


def _utt_key(utt_id: str) -> int:
    return zlib.crc32(str(utt_id).encode("utf-8"))


def kept_votes(n: int, dropout: float, seed: int, epoch: int, utt_id: str) -> np.ndarray:
    """The mask of the n votes of `utt_id` that epoch `epoch` keeps under annotator dropout (at least one kept)."""
    if dropout <= 0 or n == 0:
        return np.ones(n, dtype=bool)
    rng = np.random.default_rng([seed, epoch, _utt_key(utt_id), 2])
    keep = rng.random(n) >= dropout
    if not keep.any():
        keep[int(rng.integers(n))] = True
    return keep


def annotator_targets(votes: Sequence[np.ndarray], utt_ids: Sequence[str], num_classes: int, *,
                      dropout: float = 0.0, seed: int = 0, epoch: int = 0) -> np.ndarray:
    """(N, K) float32 targets: each row's share of (kept) votes per class; a row without votes is all zero."""
    out = np.zeros((len(votes), num_classes), dtype=np.float32)
    for i, (v, utt) in enumerate(zip(votes, utt_ids)):
        if not len(v):
            continue
        kept = v[kept_votes(len(v), dropout, seed, epoch, utt)]
        out[i] = np.bincount(kept, minlength=num_classes)[:num_classes] / len(kept)
    return out
