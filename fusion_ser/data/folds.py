"""Speaker-independent k-fold assignment balanced by utterance count, and turning a fold into splits."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from fusion_ser.errors import FusionSerError

log = logging.getLogger(__name__)


class FoldError(FusionSerError):
    """Folds that cannot be assigned or applied (too few speakers, missing fold column, fold out of range)."""


def assign_folds(df: pd.DataFrame, k: int, seed: int = 0) -> pd.Series:
    """Fold 0..k-1 per row; every speaker in exactly one fold, folds as equal in utterances as possible.

    Speakers are placed largest first (ties in a seeded random order) into the fold with the fewest utterances.
    """
    if k < 2:
        raise FoldError(f"the number of folds must be at least 2, got {k}", options=("folds",))
    if "speaker" not in df.columns:
        raise FoldError("the manifest has no 'speaker' column; speaker-independent folds need one")
    speaker = df["speaker"].fillna("").astype(str)
    empty = np.flatnonzero((speaker == "").to_numpy())
    if len(empty):
        rows = ", ".join(str(i) for i in empty[:10])
        raise FoldError(f"{len(empty)} row(s) have no speaker (rows {rows}); fill `speaker` to assign folds")
    sizes = speaker.value_counts()
    if len(sizes) < k:
        raise FoldError(
            f"{len(sizes)} speaker(s) cannot fill {k} speaker-independent folds; use {len(sizes)} folds or fewer",
            options=("folds",))
    rng = np.random.default_rng(seed)
    names = sizes.index.to_numpy()[rng.permutation(len(sizes))]
    counts = sizes.loc[names].to_numpy()
    order = np.argsort(-counts, kind="stable")
    load = np.zeros(k, dtype=np.int64)
    fold_of: dict[str, int] = {}
    for j in order:
        f = int(np.argmin(load))
        fold_of[names[j]] = f
        load[f] += counts[j]
    log.info("assigned %d speakers to %d folds with %s utterances", len(sizes), k, load.tolist())
    return speaker.map(fold_of).astype(int).rename("fold")


def apply_fold(df: pd.DataFrame, fold: int) -> pd.DataFrame:
    """Return a copy whose split is test for fold `fold`, dev for fold (fold+1) mod K, train for the rest."""
    if "fold" not in df.columns:
        raise FoldError("the manifest has no 'fold' column; prepare it with K folds", options=("folds",))
    folds = pd.to_numeric(df["fold"], errors="coerce")
    if folds.isna().any():
        raise FoldError(f"{int(folds.isna().sum())} row(s) have no fold; re-prepare the manifest with K folds",
                        options=("folds",))
    n_folds = int(folds.max()) + 1
    if n_folds < 3:
        raise FoldError(f"the manifest has {n_folds} fold(s); test, dev and train need at least 3 folds",
                        options=("folds",))
    if not 0 <= fold < n_folds:
        raise FoldError(f"data.fold={fold} is out of range: the manifest has folds 0..{n_folds - 1}")
    dev = (fold + 1) % n_folds
    out = df.copy()
    out["split"] = np.where(folds == fold, "test", np.where(folds == dev, "dev", "train"))
    return out
