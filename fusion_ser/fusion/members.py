"""The member runs of a fused or ensembled run: loading them, and aligning their prediction frames row by row.

A member is any finished run dir (trained, fused or ensembled). Members must predict the same task and classes
(or attributes) on the same utterances; `align_frames` puts their frames in one row order and `member_array`
stacks them into the (members, rows, classes | attributes) array the combiners work on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pandas as pd

from fusion_ser.schema import has_attributes, has_classes
from fusion_ser.errors import FusionSerError
from fusion_ser.rundir import RunDir, RunDirError, RunInfo, attr_pred_columns, prob_columns, read_run_config

log = logging.getLogger(__name__)


class FusionError(FusionSerError):
    """Member runs that cannot be combined, or a fused/ensembled run that cannot be written or read."""


@dataclass
class Member:
    """One member run: where it is, what it predicts, its config.yaml as written (values and provenance block)."""

    path: Path
    name: str
    info: RunInfo
    config: dict  # the config values, without the provenance block
    provenance: dict = field(default_factory=dict)
    manifest: Optional[str] = None  # the manifest the run was made from (RunDir.manifest)


def open_members(paths: list[Union[str, Path]]) -> list[Member]:
    """Load member runs and check they are finished and predict the same task, classes and attributes."""
    if len(paths) < 2:
        raise FusionError(f"give at least two member runs to combine (got {len(paths)})")
    members = []
    for p in paths:
        rd = RunDir(Path(p).resolve())
        try:
            info = rd.require_complete()
            values, provenance = read_run_config(rd.config_path)
            manifest = rd.manifest()
        except RunDirError as e:
            raise FusionError(str(e)) from None
        members.append(Member(rd.path, rd.path.name, info, values, provenance, manifest))
    names = [m.name for m in members]
    if len(set(names)) < len(names):
        for m in members:
            m.name = str(m.path)
    if len({str(m.path) for m in members}) < len(members):
        raise FusionError("the same member run is given twice: " + ", ".join(str(m.path) for m in members))
    first = members[0]
    for m in members[1:]:
        if m.info.task != first.info.task:
            raise FusionError(f"runs {first.name} ({first.info.task}) and {m.name} ({m.info.task}) predict different tasks")
        if has_classes(first.info.task) and set(m.info.labels) != set(first.info.labels):
            raise FusionError(f"runs {first.name} {first.info.labels} and {m.name} {m.info.labels} predict different classes")
        if has_attributes(first.info.task) and set(m.info.attributes) != set(first.info.attributes):
            raise FusionError(
                f"runs {first.name} {first.info.attributes} and {m.name} {m.info.attributes} predict different attributes"
            )
    return members


def speakers_of(members: list[Member], utt_ids: list[str]) -> Optional[np.ndarray]:
    """Speaker of each utterance from the manifest a member was made from (its config.yaml), when known."""
    for m in members:
        if not m.manifest or not Path(m.manifest).is_file():
            continue
        from fusion_ser.data.manifest import read_manifest

        try:
            df = read_manifest(m.manifest, validate=False)
        except FusionSerError as e:
            log.warning("cannot read manifest %s of %s (%s); dev folds are not grouped by speaker", m.manifest, m.name, e)
            continue
        spk = dict(zip(df["utt_id"].astype(str), df["speaker"].astype(str)))
        found = [spk.get(u, "") for u in utt_ids]
        if all(s and s != "nan" for s in found):
            return np.asarray(found, dtype=object)
        log.warning("manifest %s lacks speakers for some dev utterances; dev folds are not grouped by speaker", m.manifest)
    return None


def align_frames(frames: list[pd.DataFrame], names: list[str], split: str = "") -> list[pd.DataFrame]:
    """Put every frame in the first frame's utt_id order; members must cover exactly the same utterances."""
    where = f" {split}" if split else ""
    ids = []
    for frame, name in zip(frames, names):
        if "utt_id" not in frame.columns:
            raise FusionError(f"{name}: its{where} predictions have no utt_id column")
        u = frame["utt_id"].astype(str)
        dup = u[u.duplicated()]
        if len(dup):
            raise FusionError(f"{name}: its{where} predictions repeat utt_id '{dup.iloc[0]}' ({len(dup)} duplicates)")
        ids.append(u)
    first = set(ids[0])
    for u, name in zip(ids[1:], names[1:]):
        other = set(u)
        if other != first:
            raise FusionError(
                f"members do not cover the same{where} utterances: {names[0]} has {len(first)}, {name} has {len(other)} "
                f"({len(first - other)} only in {names[0]}, {len(other - first)} only in {name}); "
                "combine runs that predicted the same manifest"
            )
    order = ids[0].tolist()
    out = []
    for frame, u in zip(frames, ids):
        f = frame.copy()
        f["utt_id"] = u.to_numpy()
        out.append(f.set_index("utt_id").loc[order].reset_index())
    return out


def member_array(frames: list[pd.DataFrame], task: str, labels: list[str], attributes: list[str]) -> np.ndarray:
    """(M, N, K) posteriors in `labels` order or (M, N, A) attribute predictions of aligned frames."""
    cols = prob_columns(labels) if task == "categorical" else attr_pred_columns(attributes)
    arrays = []
    for i, f in enumerate(frames):
        missing = [c for c in cols if c not in f.columns]
        if missing:
            raise FusionError(f"member {i + 1}: predictions lack columns {missing}")
        a = f[cols].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(a).all(axis=1)
        if bad.any():
            first = f["utt_id"].iloc[int(np.argmax(bad))]
            raise FusionError(f"member {i + 1}: {int(bad.sum())} prediction rows hold missing or non-finite values "
                              f"(first: utt_id '{first}')")
        arrays.append(a)
    return np.stack(arrays)


def truth_arrays(frame: pd.DataFrame, task: str, labels: list[str], attributes: list[str]) -> np.ndarray:
    """Class index per row (-1 when unknown / not a class) or (N, A) attribute truth (NaN when unknown)."""
    if task == "categorical":
        if "label" not in frame.columns:
            return np.full(len(frame), -1, dtype=np.int64)
        index = {c: i for i, c in enumerate(labels)}
        return np.array([index.get(v, -1) if isinstance(v, str) else -1 for v in frame["label"]], dtype=np.int64)
    cols = [frame[a] if a in frame.columns else pd.Series(np.nan, index=frame.index) for a in attributes]
    return np.stack([pd.to_numeric(c, errors="coerce").to_numpy(np.float64) for c in cols], axis=1)
