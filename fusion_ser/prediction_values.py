"""What `predict` returns per clip or segment: the label with class probabilities, attribute values, or both (a
multitask run), read from a prediction-frame row; and the duration-weighted whole-file values of segments."""

from __future__ import annotations

import numpy as np

from fusion_ser.schema import has_attributes, has_classes
from fusion_ser.rundir import RunInfo, attr_pred_columns, prob_columns
from fusion_ser.segment import aggregate


def row_values(info: RunInfo, row: dict) -> dict:
    """{"label", "probs"} and/or {"attributes"} of one prediction-frame row of a run."""
    out: dict = {}
    if has_classes(info.task):
        out["label"] = str(row["pred"])
        out["probs"] = {c: float(row[col]) for c, col in zip(info.labels, prob_columns(info.labels))}
    if has_attributes(info.task):
        out["attributes"] = {a: float(row[col]) for a, col in zip(info.attributes, attr_pred_columns(info.attributes))}
    return out


def numbers(values: dict) -> list[float]:
    """Every number of a row's values (probabilities and attribute values), to check they are finite."""
    return list((values.get("probs") or {}).values()) + list((values.get("attributes") or {}).values())


def aggregate_values(info: RunInfo, values: list[dict]) -> dict:
    """Whole-file values: the duration-weighted mean of the segments' probabilities and / or attribute values."""
    out: dict = {}
    if has_classes(info.task):
        probs = aggregate([{"start": v["start"], "end": v["end"], **v["probs"]} for v in values], list(info.labels))
        out.update({"label": max(probs, key=probs.get), "probs": probs})
    if has_attributes(info.task):
        flat = [{"start": v["start"], "end": v["end"], **v["attributes"]} for v in values]
        out["attributes"] = aggregate(flat, list(info.attributes))
    return out


def aggregate_embeddings(values: list[dict]) -> dict:
    """Whole-file embeddings: per model name the segments share, the duration-weighted mean, float32."""
    weights = np.array([max(v["end"] - v["start"], 1e-9) for v in values])
    weights = weights / weights.sum()
    names = set.intersection(*(set(v["embeddings"]) for v in values))
    return {n: np.tensordot(weights, np.stack([v["embeddings"][n] for v in values]), axes=1).astype(np.float32)
            for n in sorted(names)}
