"""The `prepare` step as a library call: corpus on disk -> validated manifest (+ rejected clips), with a summary.

`prepare_manifest` runs the corpus adapter, applies a label map, validates the rows, optionally decodes every clip
(bad ones go to `<manifest>.rejected.csv` with their reason and leave the manifest), and writes the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pandas as pd
import yaml

from fusion_ser.data.audio import audio_durations
from fusion_ser.data.corpora import CorpusError, get_corpus, prepare_corpus
from fusion_ser.data.manifest import KNOWN_LABELS, check_manifest_audio, summarize, validate_manifest, write_manifest


@dataclass
class Prepared:
    """What `prepare_manifest` wrote: the manifest, the rejected clips (checked: how many were decoded), a summary."""

    manifest: Path
    frame: pd.DataFrame
    rejected: pd.DataFrame
    rejected_path: Optional[Path]
    checked: int
    summary: dict


def rejected_path(manifest: Path) -> Path:
    """Where the audio check writes the bad files: `<manifest>.rejected.csv`."""
    return manifest.with_name(manifest.name + ".rejected.csv")


def adapter_options(corpus: str, sets: dict[str, str], columns: dict[str, str], label_map: dict[str, str],
                    split_map: dict[str, str]) -> dict:
    """The adapter's options: KEY=VALUE settings (values parsed as YAML), plus the csv adapter's column, label and
    split maps. Column and split maps belong to the csv corpus only."""
    options: dict = {k: yaml.safe_load(v) if v else None for k, v in sets.items()}
    if corpus == "csv":
        given = {"columns": columns, "label_map": label_map, "split_map": split_map}
        options.update({k: v for k, v in given.items() if v})
    elif columns or split_map:
        raise CorpusError(f"column and split maps are options of the csv corpus, not of '{corpus}'")
    return options


def prepare_manifest(corpus: str, root: Path, output: Path, *, options: dict, label_map: dict[str, str],
                     extra_labels: set[str], folds: Optional[int] = None, seed: int = 0, check_audio: bool = False,
                     min_seconds: float = 0.1, progress: Optional[Callable[[int, int], object]] = None) -> Prepared:
    """Build, validate and write the manifest of `corpus` at `root`; see the module docstring.

    `progress(n, total)` is called as clips are decoded by the audio check.
    """
    spec = get_corpus(corpus)
    df = prepare_corpus(spec.name, root, options, folds=folds, seed=seed)
    if label_map and spec.name != "csv":
        df["label"] = df["label"].replace(label_map)
    known = set(KNOWN_LABELS) | set(extra_labels) | set(label_map.values())
    validate_manifest(df, f"{spec.name} corpus at {root}", labels=known, attribute_range=spec.attribute_range,
                      check_files=not check_audio)
    rejected, where, checked = pd.DataFrame(), None, 0
    if check_audio:
        checked = int((df["path"] != "").sum())
        tick = (lambda n: progress(n, checked)) if progress is not None else None
        df, rejected = check_manifest_audio(df, progress=tick, min_seconds=min_seconds)
        output.parent.mkdir(parents=True, exist_ok=True)
        where = rejected_path(output)
        rejected.to_csv(where, index=False)
    write_manifest(df, output)
    durations = audio_durations(df["path"])
    summary = summarize(df, durations if (df["path"] != "").any() else None)
    return Prepared(output, df, rejected, where, checked, summary)
