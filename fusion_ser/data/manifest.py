"""Reading, validating, writing and summarising manifests (the CSV contract of docs/architecture.md).

Validation collects every problem (missing columns, duplicate utt_id, unknown split, unknown labels, attributes
off the declared scale, bad soft labels, missing audio) and reports the first ones with their CSV line and a count.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from fusion_ser.schema import ATTRIBUTES, CATEGORICAL_LABELS
from fusion_ser.data.audio import check_audio
from fusion_ser.schema import (ANNOTATION_SEPARATOR, ANNOTATIONS_COLUMN, NON_CLASS_LABELS, REQUIRED_COLUMNS,
                                    SOFT_PREFIX, SPLITS)
from fusion_ser.errors import FusionSerError
from fusion_ser.files import atomic_path

log = logging.getLogger(__name__)

# Columns a manifest must have; the other contract columns are filled with empty values when absent.
CORE_COLUMNS = ["utt_id", "path", "split", "label"]
STRING_COLUMNS = ["utt_id", "path", "split", "speaker", "gender", "label", "text"]
# The 8 MSP-Podcast classes, the two kept non-class labels, and the other labels the built-in adapters produce.
CORPUS_LABELS = ["calm", "boredom", "frustration", "excitement"]
KNOWN_LABELS = CATEGORICAL_LABELS + NON_CLASS_LABELS + CORPUS_LABELS
MAX_REPORTED = 20
LABEL_NAME = r"[a-z][a-z_]*"


class ManifestError(FusionSerError):
    """A manifest that does not follow the contract; `problems` lists every finding."""

    def __init__(self, source: str, problems: Sequence[str], options: Sequence[str] = ()) -> None:
        self.source = source
        self.problems = list(problems)
        shown = "\n  ".join(self.problems[:MAX_REPORTED])
        more = len(self.problems) - MAX_REPORTED
        tail = f"\n  ... and {more} more" if more > 0 else ""
        n = len(self.problems)
        super().__init__(f"manifest '{source}' has {n} problem{'s' if n != 1 else ''}:\n  {shown}{tail}",
                         options=options)


def soft_label_columns(df: pd.DataFrame) -> list[str]:
    """The `p_<label>` soft-label columns, in file order."""
    return [c for c in df.columns if c.startswith(SOFT_PREFIX)]


def _line(i: int) -> str:
    return f"line {i + 2}"  # line 1 is the header


def _numeric_problems(df: pd.DataFrame, col: str) -> tuple[pd.Series, list[str]]:
    """Parse a column as float (empty -> NaN); list the rows whose value is not a number."""
    raw = df[col]
    values = pd.to_numeric(raw.replace("", np.nan), errors="coerce")
    bad = values.isna() & raw.notna() & (raw.astype(str).str.strip() != "")
    rows = np.flatnonzero(bad.to_numpy())
    problems = [f"{_line(i)}: column '{col}' value {raw.iloc[i]!r} is not a number" for i in rows]
    return values.astype(float), problems


def _conversation_problems(df: pd.DataFrame, where: Callable[[int], str]) -> list[str]:
    """conversation / turn: a turn must be a number, a row with a conversation needs one, and no two rows of one
    conversation (within a split) may share it."""
    if "turn" not in df.columns:
        return [] if "conversation" not in df.columns else ["column 'conversation' without a 'turn' column; add the "
                                                             "turn number of each row within its conversation"]
    problems = []
    df = df.assign(turn=df["turn"].astype(object))  # an adapter's frame holds Int64 turns, a read CSV strings
    turn, bad = _numeric_problems(df, "turn")
    problems += bad
    conv = df["conversation"].fillna("").astype(str).str.strip() if "conversation" in df.columns else None
    if conv is None:
        return problems + ["column 'turn' without a 'conversation' column; add the conversation id of each row"]
    no_turn = (conv != "") & (df["turn"].fillna("").astype(str).str.strip() == "")
    for i in np.flatnonzero(no_turn.to_numpy()):
        problems.append(f"{where(i)}: conversation '{conv.iloc[i]}' without a turn number")
    split = df["split"].fillna("").astype(str)
    keyed = pd.DataFrame({"split": split, "conv": conv, "turn": turn})
    keyed = keyed[(keyed["conv"] != "") & keyed["turn"].notna()]
    dup = keyed[keyed.duplicated(["split", "conv", "turn"], keep=False)]
    for (s, c, t), rows in dup.groupby(["split", "conv", "turn"], sort=False).groups.items():
        lines = ", ".join(str(r + 2) for r in rows)
        problems.append(f"lines {lines}: turn {t:g} appears more than once in conversation '{c}' (split {s}); "
                        "turns must be unique within a conversation")
    return problems


def _annotation_problems(df: pd.DataFrame, where: Callable[[int], str]) -> list[str]:
    """The `annotations` column: each non-empty cell a ";"-separated list of lower-case label names."""
    if ANNOTATIONS_COLUMN not in df.columns:
        return []
    problems = []
    for i, cell in enumerate(df[ANNOTATIONS_COLUMN].fillna("").astype(str)):
        votes = cell.split(ANNOTATION_SEPARATOR) if cell.strip() else []
        bad = [v for v in votes if not re.fullmatch(LABEL_NAME, v.strip())]
        if bad:
            problems.append(f"{where(i)}: annotations {cell!r}: vote(s) {bad[:3]} are not lower-case label names; "
                            f"write one vote per annotator joined by '{ANNOTATION_SEPARATOR}', e.g. "
                            "'anger;anger;neutral'")
    return problems


def validate_manifest(
    df: pd.DataFrame,
    source: str,
    *,
    labels: Optional[Iterable[str]] = None,
    attribute_range: Optional[Sequence[float]] = None,
    check_files: bool = False,
) -> None:
    """Raise ManifestError listing every contract violation of `df` (read from `source`, rows in file order).

    `labels`: the label set (None: any lower-case name; `prepare` passes KNOWN_LABELS); `attribute_range`:
    (low, high) of the corpus scale, None to skip that check; `check_files`: every non-empty `path` must exist.
    """
    problems: list[str] = []
    missing = [c for c in CORE_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(source, [f"missing column(s) {missing}; a manifest needs at least {CORE_COLUMNS}"])
    df = df.reset_index(drop=True)

    utt = df["utt_id"].fillna("").astype(str)

    def where(i: int) -> str:
        return f"{_line(i)} (utt_id '{utt.iloc[i]}')"

    for i in np.flatnonzero((utt.str.strip() == "").to_numpy()):
        problems.append(f"{_line(i)}: empty utt_id")
    dup = utt[(utt != "") & utt.duplicated(keep=False)]
    for uid, rows in dup.groupby(dup, sort=False).groups.items():
        lines = ", ".join(str(r + 2) for r in rows)
        problems.append(f"lines {lines}: duplicate utt_id '{uid}'")

    split = df["split"].fillna("").astype(str)
    for i in np.flatnonzero((~split.isin(SPLITS)).to_numpy()):
        problems.append(f"{where(i)}: unknown split '{split.iloc[i]}' (use one of {SPLITS})")

    label = df["label"].fillna("").astype(str)
    if labels is None:
        unknown = (label != "") & ~label.str.fullmatch(LABEL_NAME)
        rule = rule_long = "a lower-case emotion name (letters and underscores)"
    else:
        known = sorted(set(labels))
        unknown = (label != "") & ~label.isin(known)
        rule, rule_long = "in the label set", f"in the label set {known}"
    if unknown.any():
        problems.append(
            f"{int(unknown.sum())} row(s) have labels that are not {rule_long}: {sorted(set(label[unknown]))[:10]}; "
            "map them to lower-case emotion names (a label map CODE=name) or declare the label set"
        )
    for i in np.flatnonzero(unknown.to_numpy()):
        problems.append(f"{where(i)}: label '{label.iloc[i]}' is not {rule}")

    for col in [c for c in ATTRIBUTES if c in df.columns]:
        values, bad = _numeric_problems(df, col)
        problems += bad
        if attribute_range is not None:
            low, high = float(attribute_range[0]), float(attribute_range[1])
            off = values.notna() & ((values < low) | (values > high))
            for i in np.flatnonzero(off.to_numpy()):
                problems.append(
                    f"{where(i)}: {col} {values.iloc[i]:g} is outside the scale [{low:g}, {high:g}]"
                )
    for col in soft_label_columns(df):
        values, bad = _numeric_problems(df, col)
        problems += bad
        off = values.notna() & ((values < 0) | (values > 1))
        for i in np.flatnonzero(off.to_numpy()):
            problems.append(f"{where(i)}: soft label {col} {values.iloc[i]:g} is outside [0, 1]")

    problems += _conversation_problems(df, where)
    problems += _annotation_problems(df, where)
    if "fold" in df.columns:
        folds = df["fold"].replace("", np.nan)
        parsed = pd.to_numeric(folds, errors="coerce")
        bad = (folds.notna() & parsed.isna()) | (parsed.notna() & ((parsed % 1 != 0) | (parsed < 0)))
        for i in np.flatnonzero(bad.to_numpy()):
            problems.append(f"{where(i)}: fold {df['fold'].iloc[i]!r} is not a non-negative integer")

    path = df["path"].fillna("").astype(str)
    text = df["text"].fillna("").astype(str) if "text" in df.columns else pd.Series([""] * len(df))
    for i in np.flatnonzero(((path == "") & (text == "")).to_numpy()):
        problems.append(f"{where(i)}: neither an audio path nor a text")
    if check_files:
        for i in np.flatnonzero((path != "").to_numpy()):
            if os.path.isdir(path.iloc[i]):
                problems.append(f"{where(i)}: audio path '{path.iloc[i]}' is a directory, not an audio file")
            elif not os.path.isfile(path.iloc[i]):
                problems.append(f"{where(i)}: audio file '{path.iloc[i]}' does not exist")

    if problems:
        raise ManifestError(source, problems, options=("maps", "labels") if unknown.any() else ())


def _resolve_paths(paths: pd.Series, base: Path) -> pd.Series:
    def resolve(p: str) -> str:
        if not p:
            return ""
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (base / q).resolve())

    return paths.map(resolve)


def normalize_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """Give a frame the contract's dtypes: strings with "" for missing, attributes/soft labels float, fold Int64."""
    out = df.copy()
    for col in REQUIRED_COLUMNS:
        if col not in out.columns:
            out[col] = np.nan if col in ATTRIBUTES else ""
    for col in STRING_COLUMNS:
        out[col] = out[col].fillna("").astype(str)
    for col in ATTRIBUTES + soft_label_columns(out):
        out[col] = pd.to_numeric(out[col].replace("", np.nan), errors="coerce").astype(float)
    if "fold" in out.columns:
        fold = pd.to_numeric(out["fold"].replace("", np.nan), errors="coerce").astype(float)
        out["fold"] = fold.where(fold % 1 == 0).astype("Int64")
    if ANNOTATIONS_COLUMN in out.columns:
        out[ANNOTATIONS_COLUMN] = out[ANNOTATIONS_COLUMN].fillna("").astype(str).str.strip()
    if "conversation" in out.columns:
        out["conversation"] = out["conversation"].fillna("").astype(str).str.strip()
    if "turn" in out.columns:  # whole turn numbers stay integers in the CSV
        turn = pd.to_numeric(out["turn"].replace("", np.nan), errors="coerce").astype(float)
        out["turn"] = turn.astype("Int64") if bool((turn.dropna() % 1 == 0).all()) else turn
    front = REQUIRED_COLUMNS + (["fold"] if "fold" in out.columns else []) + soft_label_columns(out)
    return out[front + [c for c in out.columns if c not in front]]


def encoding_problems(path: Path) -> list[str]:
    """One problem per line of a text file that is not UTF-8, naming the line and the (byte) column of its first bad
    byte; pandas' own error gives a position inside a read buffer, which names no line."""
    problems = []
    for number, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append(f"line {number}, column {e.start + 1}: byte {line[e.start:e.start + 1]!r} is not UTF-8 "
                            f"({e.reason})")
    if problems:
        problems[0] += (f"; save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 {path.name}`, or choose UTF-8 "
                        "when exporting from a spreadsheet)")
    return problems or ["not a readable UTF-8 CSV"]


def read_manifest(
    path: str | Path,
    *,
    validate: bool = True,
    check_files: bool = False,
    labels: Optional[Iterable[str]] = None,
    attribute_range: Optional[Sequence[float]] = None,
) -> pd.DataFrame:
    """Read a manifest CSV: paths resolved to absolute strings, strings "" when missing, attributes NaN.

    With `validate`, contract violations raise ManifestError naming the CSV lines (see validate_manifest).
    """
    p = Path(path)
    if not p.is_file():
        raise ManifestError(str(p), ["file does not exist; create it with `fusion-ser prepare`"])
    try:
        raw = pd.read_csv(p, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError:
        raise ManifestError(str(p), encoding_problems(p)) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ManifestError(str(p), [f"not a readable UTF-8 CSV: {e}"]) from None
    raw.columns = [c.strip() for c in raw.columns]
    if "path" in raw.columns:
        raw["path"] = _resolve_paths(raw["path"].astype(str).str.strip(), p.resolve().parent)
    if validate:
        validate_manifest(raw, str(p), labels=labels, attribute_range=attribute_range, check_files=check_files)
    elif any(c not in raw.columns for c in CORE_COLUMNS):
        raise ManifestError(str(p), [f"missing column(s) {[c for c in CORE_COLUMNS if c not in raw.columns]}"])
    df = normalize_manifest(raw)
    log.info("read manifest %s: %d rows", p, len(df))
    return df


def write_manifest(df: pd.DataFrame, path: str | Path) -> None:
    """Write a manifest CSV in contract column order (missing contract columns empty), atomically."""
    out = normalize_manifest(df)
    p = Path(path)
    with atomic_path(p) as tmp:  # an existing file keeps its mode; a new one gets 0666 & ~umask
        out.to_csv(tmp, index=False, encoding="utf-8")
    log.info("wrote manifest %s: %d rows", p, len(out))


def summarize(df: pd.DataFrame, durations: Optional[Sequence[float]] = None) -> dict:
    """Counts for a one-screen summary: rows per split and per label (and per split x label), speakers, hours.

    `durations` (seconds, one per row, NaN where unknown) gives `hours`; without it `hours` is None.
    """
    split = df["split"].fillna("").astype(str)
    label = df["label"].fillna("").astype(str).replace("", "(none)")
    by_split = {s: int((split == s).sum()) for s in SPLITS if (split == s).any()}
    for s in sorted(set(split) - set(SPLITS)):
        by_split[s] = int((split == s).sum())
    counts = label.value_counts()
    by_label = {str(k): int(v) for k, v in counts.sort_index().items()}
    table = pd.crosstab(label, split)
    by_split_label = {s: {str(k): int(v) for k, v in table[s].items() if v} for s in by_split}
    speakers = df["speaker"].fillna("").astype(str) if "speaker" in df.columns else pd.Series([], dtype=str)
    hours = None
    if durations is not None:
        d = np.asarray(durations, dtype=float)
        hours = float(np.nansum(d) / 3600.0)
    attrs = {c: int(df[c].notna().sum()) for c in ATTRIBUTES if c in df.columns and df[c].notna().any()}
    return {
        "rows": int(len(df)),
        "splits": by_split,
        "labels": by_label,
        "split_labels": by_split_label,
        "speakers": int(speakers[speakers != ""].nunique()),
        "hours": hours,
        "with_audio": int((df["path"].fillna("").astype(str) != "").sum()),
        "with_text": int((df["text"].fillna("").astype(str) != "").sum()) if "text" in df.columns else 0,
        "attributes": attrs,
        "soft_labels": soft_label_columns(df),
        "folds": int(df["fold"].nunique()) if "fold" in df.columns else 0,
    }


def check_manifest_audio(
    df: pd.DataFrame, progress: Optional[Callable[[int], object]] = None, min_seconds: float = 0.1
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decode every row's audio; return (rows that passed, rejected rows as utt_id/path/reason).

    Text-only rows (empty path) always pass. `progress` is called with 1 per decoded file.
    """
    has_audio = (df["path"].fillna("").astype(str) != "").to_numpy()
    ok, rejected = check_audio(df.loc[has_audio, "path"], progress=progress, min_seconds=min_seconds)
    keep = np.ones(len(df), dtype=bool)
    keep[np.flatnonzero(has_audio)] = ok
    bad = df.loc[~keep, ["utt_id", "path"]].reset_index(drop=True)
    bad["reason"] = [reason for _, reason in rejected]
    return df[keep].reset_index(drop=True), bad
