"""Metrics of the MSP-Podcast challenges: macro/micro F1 for categories, concordance correlation for attributes.

`compute_metrics` turns a run-dir prediction frame into the full set of figures that metrics.json, reports and
comparisons use. A row labelled with a class the run does not know (one that never occurred in its train split)
is scored as an error (no prediction of the run can match it) and counted in `n_unknown_class`; rows with no
ground truth (unlabelled test sets, `other`/`no_agreement` rows) are not scored and are counted by reason.
`headline_metrics`, `primary_metric` and `higher_is_better` are the one definition of which figures are
reported, which one ranks runs, and which way each is better.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from fusion_ser.schema import NON_CLASS_LABELS
from fusion_ser.errors import FusionSerError
from fusion_ser.rundir import RunInfo

log = logging.getLogger(__name__)

RANGES = ("low", "mid", "high")  # bottom 25 %, middle 50 %, top 25 % of the ground truth
NO_LABEL = "no label"  # reasons a row is not scored (compute_metrics' "unscored")
NON_CLASS = "other/no_agreement"
NO_ATTRIBUTE = "no attribute value"
UNKNOWN_CLASS = "class unknown to the run"  # with scoring unknown=ignore (cross-corpus evaluation runs)


class MetricsError(FusionSerError):
    """A prediction frame that cannot be scored (missing columns, predictions outside the run's classes)."""


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: list | None = None) -> float:
    """Unweighted mean of per-class F1 (the Task 1 metric)."""
    return float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Lin's concordance correlation coefficient with population (biased) moments (the Task 2 metric)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(), y.var()
    cov = ((x - mx) * (y - my)).mean()
    denom = vx + vy + (mx - my) ** 2
    return float(2 * cov / denom) if denom > 0 else 0.0


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    sx, sy = x.std(), y.std()
    if sx == 0 or sy == 0:
        return 0.0
    return float(((x - x.mean()) * (y - y.mean())).mean() / (sx * sy))


def range_masks(truth: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks of the bottom 25 % (<= q25), top 25 % (>= q75, not bottom) and the middle of the ground truth."""
    truth = np.asarray(truth, dtype=np.float64)
    q25, q75 = np.quantile(truth, [0.25, 0.75])
    low = truth <= q25
    high = (truth >= q75) & ~low
    return {"low": low, "mid": ~low & ~high, "high": high}


def scoring_policy(info: RunInfo) -> tuple[Optional[list[str]], str]:
    """(the classes macro-F1 and UAR average over, how rows labelled with a class the run does not know count) from
    run.json `extra.scoring` (an evaluation run on another corpus); (None: every class seen, "error") otherwise."""
    scoring = (info.extra or {}).get("scoring") or {}
    average = scoring.get("average")
    return (list(average) if average is not None else None), str(scoring.get("unknown", "error"))


def scored_classes(df: pd.DataFrame, info: RunInfo) -> list[str]:
    """info.labels, then (sorted) the labels of the truth that are classes the run does not know: the class list
    a categorical frame is scored over. `other`/`no_agreement` are not classes (unless the run has them)."""
    if scoring_policy(info)[1] == "ignore":
        return list(info.labels)
    truth = _truth(df)
    extra = set(truth) - set(info.labels) - set(NON_CLASS_LABELS) - {""}
    return list(info.labels) + sorted(extra)


def _truth(df: pd.DataFrame) -> pd.Series:
    """The label column as stripped strings, "" where missing ("nan": pandas' spelling of a missing value cast to str)."""
    truth = df["label"] if "label" in df.columns else pd.Series([""] * len(df), index=df.index)
    truth = truth.astype(object).where(truth.notna(), "").astype(str).str.strip()
    return truth.where(truth != "nan", "")


def unscored_reasons(df: pd.DataFrame, info: RunInfo) -> dict[str, int]:
    """Rows of a categorical frame that are not scored, by reason (no label; other/no_agreement), non-zero only."""
    truth = _truth(df)
    non_class = truth.isin(NON_CLASS_LABELS) & ~truth.isin(info.labels)
    counts = {NO_LABEL: int((truth == "").sum()), NON_CLASS: int(non_class.sum())}
    if scoring_policy(info)[1] == "ignore":
        counts[UNKNOWN_CLASS] = int((~truth.isin(info.labels) & (truth != "") & ~non_class).sum())
    return {k: n for k, n in counts.items() if n}


def categorical_arrays(df: pd.DataFrame, info: RunInfo, source: str = "predictions") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class indices (truth, prediction) of the scored rows, and that row mask.

    Indices are into `scored_classes(df, info)`: a truth label the run does not know gets an index past
    info.labels, so the row counts as an error; rows without a label or with other/no_agreement are not scored."""
    labels = list(info.labels)
    if not labels:
        raise MetricsError(f"{source}: run.json lists no labels for a categorical run; rewrite it with the class order of prob_<class>")
    if "pred" in df.columns:
        pred = df["pred"].astype(object).where(df["pred"].notna(), "").astype(str)
    else:
        prob_cols = [f"prob_{c}" for c in labels]
        missing = [c for c in prob_cols if c not in df.columns]
        if missing:
            raise MetricsError(f"{source}: neither a 'pred' column nor all of {missing}; rewrite the predictions with predict_frame")
        pred = pd.Series(np.asarray(labels, dtype=object)[df[prob_cols].to_numpy().argmax(axis=1)], index=df.index)
    truth = _truth(df)
    index = {c: i for i, c in enumerate(scored_classes(df, info))}
    known = truth.isin(index if scoring_policy(info)[1] == "error" else labels).to_numpy()
    bad = sorted(set(pred[known]) - set(labels))
    if bad:
        raise MetricsError(f"{source}: predicted classes {bad[:5]} are not among the run's classes {labels}; "
                           "the run.json labels and the predictions disagree")
    y = truth[known].map(index).to_numpy(dtype=np.int64)
    p = pred[known].map(index).to_numpy(dtype=np.int64)
    return y, p, known


def attribute_arrays(df: pd.DataFrame, attribute: str, source: str = "predictions") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground truth and prediction of one attribute on the rows where both are known, and that row mask."""
    col = f"{attribute}_pred"
    if col not in df.columns:
        raise MetricsError(f"{source}: no '{col}' column; the run.json attributes and the predictions disagree")
    truth = pd.to_numeric(df[attribute], errors="coerce") if attribute in df.columns else pd.Series(np.nan, index=df.index)
    pred = pd.to_numeric(df[col], errors="coerce")
    known = (truth.notna() & pred.notna()).to_numpy()
    return truth[known].to_numpy(np.float64), pred[known].to_numpy(np.float64), known


def categorical_metrics(y: np.ndarray, p: np.ndarray, labels: list[str], average: Optional[list[str]] = None) -> dict:
    """All class metrics from class-index arrays: F1 (macro, micro, support-weighted as MELD reports), UAR, accuracy, per-class P/R/F1, confusion.

    As the challenge scorer (sklearn's default), macro-F1 averages the classes that occur in the truth or the
    predictions, and UAR the classes that occur in the truth; with `average` (class names, e.g. the classes a run
    shares with another corpus) both average over those classes only. Per-class figures cover every class.
    Computed from one confusion matrix with numpy (sklearn's definitions with zero_division=0; tests compare), so
    the per-epoch dev evaluation costs little."""
    k = len(labels)
    y, p = np.asarray(y, dtype=np.int64), np.asarray(p, dtype=np.int64)
    conf = np.bincount(y * k + p, minlength=k * k).reshape(k, k) if k else np.zeros((0, 0), dtype=np.int64)
    tp = np.diagonal(conf).astype(np.float64)
    support, predicted = conf.sum(axis=1).astype(np.float64), conf.sum(axis=0).astype(np.float64)
    prec = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    rec = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros(k), where=(support + predicted) > 0)
    if average is None:
        over = np.flatnonzero((support + predicted) > 0)
        in_truth = np.flatnonzero(support > 0)
    else:
        over = np.asarray([labels.index(c) for c in average if c in labels], dtype=np.int64)
        in_truth = over[support[over] > 0]
    extra = {} if average is None else {"averaged_classes": [c for c in average if c in labels]}
    n = int(len(y))
    return {
        "n": n,
        "macro_f1": float(f1[over].mean()) if len(over) else 0.0,
        "micro_f1": float(tp.sum() / n) if n else 0.0,
        "weighted_f1": float((f1 * support).sum() / support.sum()) if support.sum() > 0 else 0.0,
        "uar": float(rec[in_truth].mean()) if len(in_truth) else 0.0,
        **extra,
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "labels": list(labels),
        "per_class_precision": {c: float(v) for c, v in zip(labels, prec)},
        "per_class_recall": {c: float(v) for c, v in zip(labels, rec)},
        "per_class_f1": {c: float(v) for c, v in zip(labels, f1)},
        "support": {c: int(v) for c, v in zip(labels, support)},
        "confusion_matrix": conf.tolist(),
    }


def attribute_metrics(truth: np.ndarray, pred: np.ndarray, attribute: str) -> dict:
    """CCC, Pearson r, MSE and MSE by ground-truth range of one attribute."""
    out = {
        f"n_{attribute}": int(len(truth)),
        f"ccc_{attribute}": ccc(truth, pred),
        f"pearson_{attribute}": pearson(truth, pred),
        f"mse_{attribute}": float(np.mean((truth - pred) ** 2)),
    }
    for name, mask in range_masks(truth).items():
        out[f"mse_{attribute}_{name}"] = float(np.mean((truth[mask] - pred[mask]) ** 2)) if mask.any() else float("nan")
        out[f"n_{attribute}_{name}"] = int(mask.sum())
    return out


def compute_metrics(df: pd.DataFrame, info: RunInfo, *, source: str = "predictions") -> dict:
    """Every figure of a run-dir prediction frame; `n` rows scored, `n_skipped` rows not scored (with no ground
    truth) and `unscored` their count by reason; `n_unknown_class` scored rows whose label is not a class of the
    run (errors by construction) and `unknown_classes` their count per label.

    A multitask frame has both sets of figures: the class figures as they are, the attribute figures with their
    counts under `attributes` (n, n_skipped, unscored), and `multitask_score` (MULTITASK_SCORE).
    `source` (e.g. the predictions file) names the frame in error messages."""
    if info.task == "categorical":
        return categorical_figures(df, info, source)
    if info.task == "attributes":
        return attribute_figures(df, info, source)
    if info.task == "multitask":
        classes = categorical_figures(df, info, source)
        attrs = attribute_figures(df, info, source)
        counts = {k: attrs.pop(k) for k in ("n", "n_skipped", "unscored") if k in attrs}
        out = {**classes, **attrs, "attributes": counts}
        if "macro_f1" in out and "ccc_mean" in out:
            out["multitask_score"] = float(multitask_score(out["macro_f1"], out["ccc_mean"]))
        return out
    raise MetricsError(f"{source}: run.json task '{info.task}' is not one of ['categorical', 'attributes', 'multitask']")


MULTITASK_SCORE = "the mean of macro-F1 (Task 1) and mean CCC (Task 2)"


def multitask_score(macro, ccc_mean):
    """How a multitask run is selected and ranked: (macro-F1 + mean CCC) / 2, the two challenge metrics with equal
    weight (both near [0, 1]; an epoch must trade one track for the other to lose). Floats or arrays (resamples)."""
    return (macro + ccc_mean) / 2.0


def categorical_figures(df: pd.DataFrame, info: RunInfo, source: str = "predictions") -> dict:
    """The class figures of compute_metrics (of a categorical or multitask frame)."""
    y, p, known = categorical_arrays(df, info, source)
    skipped = int((~known).sum())
    unscored = {"unscored": unscored_reasons(df, info)} if skipped else {}
    if skipped:
        log.info("%d of %d rows have no ground truth (%s) and are not scored", skipped, len(df), unscored["unscored"])
    if len(y) == 0:
        return {"n": 0, "n_skipped": skipped, **unscored}
    classes = scored_classes(df, info)
    out = {**categorical_metrics(y, p, classes, scoring_policy(info)[0]), "n_skipped": skipped, **unscored}
    k = len(info.labels)
    out["n_unknown_class"] = int((y >= k).sum())
    if out["n_unknown_class"]:
        out["unknown_classes"] = {c: int((y == i).sum()) for i, c in enumerate(classes) if i >= k}
        log.info("%s: %d row(s) are labelled with classes the run does not know (%s); they count as errors",
                 source, out["n_unknown_class"], out["unknown_classes"])
    return out


def attribute_figures(df: pd.DataFrame, info: RunInfo, source: str = "predictions") -> dict:
    """The attribute figures of compute_metrics (of an attributes or multitask frame)."""
    if not info.attributes:
        raise MetricsError(f"{source}: run.json lists no attributes for a {info.task} run; rewrite it with the "
                           "predicted attributes")
    out: dict = {}
    any_known = np.zeros(len(df), dtype=bool)
    cccs = []
    for a in info.attributes:
        truth, pred, known = attribute_arrays(df, a, source)
        any_known |= known
        if len(truth) == 0:
            continue
        out.update(attribute_metrics(truth, pred, a))
        cccs.append(out[f"ccc_{a}"])
    if cccs:
        out["ccc_mean"] = float(np.mean(cccs))
    out["n"] = int(any_known.sum())
    out["n_skipped"] = int((~any_known).sum())
    if out["n_skipped"]:
        out["unscored"] = {NO_ATTRIBUTE: out["n_skipped"]}
    return out


def headline_metrics(task: str, attributes: Sequence[str] = ()) -> list[str]:
    """The figures a leaderboard reports for a task (and that get confidence intervals): macro-F1, micro-F1, UAR
    and accuracy of a categorical run; the CCC of each attribute (in `attributes` order) and their mean; all of
    those and multitask_score for a multitask run."""
    classes = ["macro_f1", "micro_f1", "uar", "accuracy"]
    attrs = [f"ccc_{a}" for a in attributes] + ["ccc_mean"]
    if task == "multitask":
        return classes + attrs + ["multitask_score"]
    return classes if task == "categorical" else attrs


def primary_metric(task: str) -> str:
    """The figure runs of a task are ranked (and by default selected) by: macro-F1 (Task 1), mean CCC (Task 2), or
    multitask_score for a multitask run."""
    return {"categorical": "macro_f1", "multitask": "multitask_score"}.get(task, "ccc_mean")


def higher_is_better(metric: str) -> bool:
    """Direction of a figure: losses and errors ('mse...', '...loss') go down, everything else (F1, UAR, CCC) up."""
    return not (metric.startswith("mse") or metric.endswith("loss"))


def headline_keys(info: RunInfo) -> list[str]:
    """headline_metrics of a run (its task and attributes)."""
    return headline_metrics(info.task, info.attributes)


def primary_key(info: RunInfo) -> str:
    """primary_metric of a run's task."""
    return primary_metric(info.task)


METRIC_LABELS = {"macro_f1": "macro-F1", "micro_f1": "micro-F1", "weighted_f1": "weighted-F1", "uar": "UAR",
                 "accuracy": "accuracy", "ccc_mean": "mean CCC", "multitask_score": "multitask score"}


def metric_label(key: str) -> str:
    """How reports name a figure: macro-F1, UAR, mean CCC, CCC valence, ..."""
    return METRIC_LABELS.get(key, key.replace("ccc_", "CCC "))
