"""Any CSV corpus: a column mapping (manifest column -> CSV column), a label mapping and a split mapping.

ROOT is the CSV file (or a folder with `file` naming it); relative audio paths are taken from `audio_root`
(default: the CSV's folder). Columns left unmapped are empty; unmapped `utt_id` comes from the audio file name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from fusion_ser.schema import ATTRIBUTES
from fusion_ser.data.corpora.common import CorpusError, gender_name, make_frame
from fusion_ser.data.manifest import ManifestError
from fusion_ser.schema import REQUIRED_COLUMNS, SPLITS

log = logging.getLogger(__name__)

MAPPABLE = REQUIRED_COLUMNS + ["fold", "conversation", "turn"]


@dataclass
class CsvCorpusConfig:
    """Options of the generic CSV adapter: column, label and split maps, the CSV inside a folder, the audio root."""

    file: Optional[str] = None  # the CSV inside ROOT when ROOT is a folder
    columns: dict[str, str] = field(default_factory=dict)  # manifest column -> CSV column
    label_map: dict[str, str] = field(default_factory=dict)  # CSV label value -> manifest label
    split_map: dict[str, str] = field(default_factory=dict)  # CSV split value -> train/dev/test
    audio_root: Optional[str] = None  # base of relative audio paths (default: the CSV's folder)
    lowercase_labels: bool = True  # unmapped labels are lower-cased
    sep: str = ","


def _csv_path(root: Path, cfg: CsvCorpusConfig) -> Path:
    if root.is_file():
        return root
    if root.is_dir() and cfg.file:
        if (root / cfg.file).is_file():
            return root / cfg.file
        raise CorpusError(f"'{root / cfg.file}' does not exist")
    raise CorpusError(f"'{root}' is not a CSV file; pass the CSV as the root, or a folder and the option file=NAME.csv",
                      options=("sets",))


def prepare(root: Path, cfg: CsvCorpusConfig) -> pd.DataFrame:
    """Map the columns and values of a user CSV onto the manifest contract."""
    path = _csv_path(root, cfg)
    try:
        src = pd.read_csv(path, dtype=str, keep_default_na=False, sep=cfg.sep)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise CorpusError(f"{path}: not a readable UTF-8 CSV ({e})") from None
    unknown_targets = sorted(set(cfg.columns) - set(MAPPABLE))
    if unknown_targets:
        raise CorpusError(f"column map {unknown_targets[0]}=...: not a manifest column; use one of {MAPPABLE}",
                          options=("cols",))
    columns = dict(cfg.columns)
    for col in MAPPABLE:  # a CSV that already uses manifest names needs no mapping
        if col not in columns and col in src.columns:
            columns[col] = col
    absent = sorted(f"{k}={v}" for k, v in columns.items() if v not in src.columns)
    if absent:
        raise CorpusError(
            f"{path}: column mapping {absent} names columns the CSV does not have; it has {list(src.columns)}"
        )
    if "path" not in columns and "text" not in columns:
        raise CorpusError(f"{path}: map an audio column (path=COLUMN) or a text column (text=COLUMN)",
                          options=("cols",))
    base = Path(cfg.audio_root).expanduser() if cfg.audio_root else path.parent
    out = pd.DataFrame(index=src.index)
    for col, source in columns.items():
        out[col] = src[source].str.strip() if col != "text" else src[source]
    if "path" in out.columns:
        out["path"] = out["path"].map(lambda p: "" if not p else str(p if Path(p).is_absolute() else base / p))
    if "utt_id" not in out.columns:
        if "path" not in out.columns:
            raise CorpusError(f"{path}: map an utterance id (utt_id=COLUMN) for a text-only CSV", options=("cols",))
        out["utt_id"] = out["path"].map(lambda p: Path(p).stem)
    if "label" in out.columns:
        raw = out["label"]
        mapped = raw.map(lambda v: cfg.label_map.get(v, v.lower() if cfg.lowercase_labels else v))
        out["label"] = mapped
    if "split" in out.columns:
        lookup = {**{s: s for s in SPLITS}, **{k: v for k, v in cfg.split_map.items()}}
        lowered = {k.lower(): v for k, v in lookup.items()}
        out["split"] = out["split"].map(lambda v: lookup.get(v, lowered.get(v.lower(), v)))
    if "gender" in out.columns:
        out["gender"] = out["gender"].map(gender_name)
    problems = []
    for col in [c for c in ATTRIBUTES + ["fold", "turn"] if c in out.columns]:
        values = pd.to_numeric(out[col].replace("", np.nan), errors="coerce")
        for i in np.flatnonzero((values.isna() & (out[col] != "")).to_numpy()):
            problems.append(f"line {i + 2}: {col} column '{columns[col]}' value {out[col].iloc[i]!r} is not a number")
    if problems:
        raise ManifestError(str(path), problems)
    for col in src.columns:  # unmapped CSV columns travel along as extra columns
        if col not in columns.values() and col not in out.columns:
            out[col] = src[col]
    return make_frame(out.to_dict("records"), "csv")
