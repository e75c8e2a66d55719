"""What `predict` returns per clip or segment: the label with class probabilities, attribute values, or both (a
multitask run), read from a prediction-frame row; the duration-weighted whole-file values of segments; and one
input's result assembled from its units' rows."""

from __future__ import annotations

import numpy as np

from fusion_ser.errors import FusionSerError
from fusion_ser.schema import has_attributes, has_classes
from fusion_ser.rundir import RunInfo, attr_pred_columns, prob_columns
from fusion_ser.segment import aggregate


class PredictError(FusionSerError):
    """An input or run that prediction cannot use."""


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


def _parts(res: dict, units: list, rows: dict) -> list:
    """The units that have a row; none: `res` gets the error."""
    parts = [u for u in units if u.uid in rows]
    if not parts:
        res["error"] = f"{res['input']}: no usable audio for the model (every segment was unreadable or silent)"
    return parts


def assemble_values(info: RunInfo, run: str, res: dict, units: list, rows: dict[str, dict], segmented: bool) -> bool:
    """Fill one input's result from its units' prediction rows (whole-file aggregate when segmented); False when no
    unit has a row. Non-finite outputs of run `run` are an error."""
    parts = _parts(res, units, rows)
    values = [{"start": u.start, "end": u.end, "transcript": u.text, **row_values(info, rows.pop(u.uid))}
              for u in parts]
    for v in values:
        if not np.isfinite(numbers(v)).all():
            raise PredictError(f"{res['input']}: run '{run}' gave non-finite outputs ({numbers(v)}); its "
                               "weights are damaged or its training diverged: train the run again")
    if segmented and parts:
        res.update(aggregate_values(info, values))
        res["transcript"] = " ".join(v["transcript"] for v in values if v["transcript"])
        res["segments"] = values
        res["skipped_segments"] = len(units) - len(parts)
    elif parts:
        res.update({k: values[0][k] for k in values[0] if k not in ("start", "end")})
    return bool(parts)


def assemble_embeddings(res: dict, units: list, rows: dict, segmented: bool) -> bool:
    """One input's embeddings; segmented: per segment, and their duration-weighted mean for the whole input."""
    parts = _parts(res, units, rows)
    values = [{"start": u.start, "end": u.end, "transcript": u.text, "embeddings": rows.pop(u.uid)} for u in parts]
    if segmented and parts:
        res.update(embeddings=aggregate_embeddings(values), segments=values, skipped_segments=len(units) - len(parts))
    elif parts:
        res.update(embeddings=values[0]["embeddings"], transcript=values[0]["transcript"])
    return bool(parts)
