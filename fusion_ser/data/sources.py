"""Training on several corpora (data.manifests): their manifests read, labels renamed, concatenated with a `corpus`
column, and the record of what a run was trained on (each manifest's path, sha256 and corpus name).

Each source's audio paths resolve against its own folder (as `read_manifest` does). Utt_ids that occur in more
than one corpus are made unique by prefixing every row of those corpora with "<corpus>/" (logged with examples), so
feature caches, predictions and speakers stay keyed one way. The combined frame is written into the run directory
as its manifest (`run/manifest.csv`), so everything that reads a run's manifest (speakers, fusion, reports) works.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import pandas as pd

from fusion_ser.config import ConfigError, DataConfig, ManifestSource
from fusion_ser.data.manifest import read_manifest
from fusion_ser.schema import CORPUS_COLUMN
from fusion_ser.errors import FusionSerError
from fusion_ser.files import atomic_path
from fusion_ser.rundir import file_hash

log = logging.getLogger(__name__)

COMBINED_MANIFEST = "manifest.csv"  # the combined rows inside a run directory trained on data.manifests


class SourcesError(FusionSerError):
    """A list of corpora that cannot be combined (missing manifest, duplicate corpus names, bad label map)."""


def corpus_name(source: ManifestSource) -> str:
    """The source's corpus name: `corpus`, else its manifest's file stem (its folder's name for manifest.csv)."""
    if source.corpus:
        return str(source.corpus)
    p = Path(source.path)
    return p.parent.name if p.stem == "manifest" and p.parent.name else p.stem


def _label_map(source: ManifestSource, i: int) -> dict[str, str]:
    bad = {k: v for k, v in (source.label_map or {}).items() if not isinstance(k, str) or not isinstance(v, (str, type(None)))}
    if bad:
        raise ConfigError(f"data.manifests[{i}].label_map must map label names to label names, e.g. {{calm: neutral}}; "
                          f"got {bad}", options=("data.manifests",))
    return {k.strip(): (v or "").strip() for k, v in (source.label_map or {}).items()}


def combine_manifests(sources: list[ManifestSource]) -> pd.DataFrame:
    """The rows of every source with its label map applied and its corpus name in the `corpus` column."""
    if not sources:
        raise SourcesError("data.manifests is empty; list at least one {path: ..., corpus: ...}", options=("data.manifests",))
    frames, names = [], []
    for i, src in enumerate(sources):
        if not src.path:
            raise ConfigError(f"data.manifests[{i}] has no path; give {{path: corpus.csv, corpus: name}}",
                              options=("data.manifests",))
        name = corpus_name(src)
        if name in names:
            raise SourcesError(f"data.manifests: corpus name '{name}' is given twice (entries {names.index(name)} and {i}); "
                               "give each manifest its own `corpus` name", options=("data.manifests",))
        names.append(name)
        df = read_manifest(src.path)
        mapping = _label_map(src, i)
        if mapping:
            df["label"] = df["label"].map(lambda x: mapping.get(x, x))
            log.info("%s: labels mapped %s", name, mapping)
        df[CORPUS_COLUMN] = name
        frames.append(df)
    combined = pd.concat(frames, ignore_index=True)
    utt = combined["utt_id"].astype(str)
    clash_ids = set(utt[utt.duplicated(keep=False)])
    within = [n for n, f in zip(names, frames) if f["utt_id"].astype(str).duplicated().any()]
    if within:
        raise SourcesError(f"data.manifests: corpus {within[0]} repeats utt_ids within its own manifest; each row of a "
                           "manifest needs its own utt_id", options=("data.manifests",))
    if clash_ids:
        clashing = sorted(set(combined.loc[utt.isin(clash_ids), CORPUS_COLUMN]))
        hit = combined[CORPUS_COLUMN].isin(clashing)
        combined.loc[hit, "utt_id"] = combined.loc[hit, CORPUS_COLUMN] + "/" + combined.loc[hit, "utt_id"].astype(str)
        log.warning("data.manifests: %d utt_id(s) occur in more than one corpus (e.g. %s); the rows of %s are "
                    "named <corpus>/<utt_id>", len(clash_ids), sorted(clash_ids)[:3], clashing)
    return combined


def write_combined(df: pd.DataFrame, path: str | Path) -> Path:
    """Write the combined rows (absolute audio paths) as a manifest CSV, atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(p) as tmp:
        df.to_csv(tmp, index=False, encoding="utf-8")
    return p


def sources_provenance(sources: list[ManifestSource]) -> list[dict]:
    """What a multi-corpus run was trained on: each manifest's resolved path, sha256, corpus name and label map."""
    out = []
    for src in sources:
        p = Path(src.path).resolve()
        out.append({"path": str(p), "sha256": file_hash(p) if p.is_file() else None, "corpus": corpus_name(src),
                    "label_map": dict(src.label_map or {})})
    return out


def sources_changes(recorded: Optional[list], sources: list[ManifestSource]) -> list[str]:
    """How the corpora of a resume differ from those the run started on (paths, order, names, maps, content)."""
    now = sources_provenance(sources)
    recorded = list(recorded or [])
    if len(recorded) != len(now):
        return [f"data.manifests lists {len(now)} corpora now but the run was started on {len(recorded)}"]
    for was, is_ in zip(recorded, now):
        for key in ("path", "corpus", "label_map", "sha256"):
            if was.get(key) != is_[key]:
                what = "was edited since the run started" if key == "sha256" else f"{key} {was.get(key)!r} -> {is_[key]!r}"
                return [f"manifest '{is_['path']}' ({is_['corpus']}): {what}"]
    return []


def uses_sources(data: DataConfig) -> bool:
    """True when the config trains on data.manifests (several corpora) rather than data.manifest."""
    return bool(data.manifests)
