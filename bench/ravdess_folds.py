"""The RAVDESS protocol shared by the benches: actors sorted by name and dealt round-robin into folds.

Actor_01 -> fold 0, Actor_02 -> fold 1, ...; with `data.fold=k`, fold k is test and fold k+1 is dev.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fusion_ser.data.manifest import write_manifest

N_FOLDS = 4


def ravdess_manifest(data: Path, out: Path, n_folds: int = N_FOLDS) -> Path:
    """Manifest of ../shared/data/ravdess with the round-robin `fold` column (split is set per fold by apply_fold)."""
    src = pd.read_csv(data / "manifest.csv")
    fold_of = {a: i % n_folds for i, a in enumerate(sorted(src["speaker"].unique()))}
    df = pd.DataFrame({
        "utt_id": [Path(p).stem for p in src["path"]],
        "path": [str((data / p).resolve()) for p in src["path"]],
        "split": "train",
        "speaker": src["speaker"],
        "gender": src["gender"],
        "label": src["label"],
        "text": src["text"],
        "fold": src["speaker"].map(fold_of),
    })
    path = out / "ravdess_folds.csv"
    write_manifest(df, path)
    return path
