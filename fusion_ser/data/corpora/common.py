"""Helpers every corpus adapter shares: the adapter error, directory checks, building a contract frame."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fusion_ser.data.manifest import normalize_manifest
from fusion_ser.schema import REQUIRED_COLUMNS
from fusion_ser.errors import FusionSerError


class CorpusError(FusionSerError):
    """A corpus directory that does not have the layout its adapter expects."""


def require_dir(path: Path, what: str) -> Path:
    """Return `path` if it is a directory, else raise naming it and what was expected there."""
    if not path.is_dir():
        raise CorpusError(f"'{path}' is not a directory; expected {what}")
    return path


def gender_name(value: object) -> str:
    """Normalise a gender code (M/F/Male/female/...) to male/female, anything else to ""."""
    v = str(value).strip().lower()
    if v in {"m", "male", "man"}:
        return "male"
    if v in {"f", "female", "woman"}:
        return "female"
    return ""


def make_frame(rows: list[dict], corpus: str) -> pd.DataFrame:
    """Turn adapter rows into a manifest frame; raise when the corpus yielded no rows at all."""
    if not rows:
        raise CorpusError(f"no utterances found for corpus '{corpus}'; check ROOT and the expected layout")
    df = pd.DataFrame(rows)
    for col in REQUIRED_COLUMNS:
        if col not in df.columns:
            df[col] = ""
    return normalize_manifest(df)
