"""Uncertainty of the headline figures: bootstrap 95 % intervals and paired tests of a run against a baseline.

Everything is vectorised over resamples: a resample is a row of utterance weights (how often each utterance was
drawn), so a batch of confusion matrices, or of the sums behind CCC, is one matrix product; a thousand resamples
of 20,000 utterances take about a second. Resampling is by utterance, or by speaker (all utterances of a
drawn speaker enter together) when speakers are given.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Optional

import numpy as np
import pandas as pd

from fusion_ser.errors import FusionSerError
from fusion_ser.schema import has_attributes, has_classes
from fusion_ser.evaluation.metrics import (attribute_arrays, categorical_arrays, headline_keys, multitask_score,
                                           scored_classes, scoring_policy)
from fusion_ser.rundir import RunInfo

CHUNK = 256  # resamples evaluated at once (bounds memory on large test sets)


class ResamplingError(FusionSerError):
    """Inputs that cannot be resampled together (different utterances or ground truth, missing speakers)."""


@dataclass
class ScoreData:
    """The arrays a run's headline figures are computed from: one entry per scored utterance."""

    info: RunInfo
    utt_ids: np.ndarray
    y: Optional[np.ndarray] = None  # categorical: true class index (n,)
    p: Optional[np.ndarray] = None  # categorical: predicted class index (n,)
    scored: Optional[np.ndarray] = None  # categorical: (n,) bool, the rows with a class truth (multitask: not all)
    truth: Optional[np.ndarray] = None  # attributes: (n, A), 0 where unknown
    pred: Optional[np.ndarray] = None  # attributes: (n, A), 0 where unknown
    known: Optional[np.ndarray] = None  # attributes: (n, A) bool
    classes: Optional[list[str]] = None  # categorical: the classes y indexes (info.labels, then unknown truth labels)

    @property
    def n(self) -> int:
        return len(self.utt_ids)

    @property
    def n_classes(self) -> int:
        return len(self.classes) if self.classes is not None else len(self.info.labels)

    def subset(self, utt_ids: np.ndarray) -> "ScoreData":
        """The same run restricted to (and ordered as) the given utterances, all of which it must hold."""
        pos = pd.Series(np.arange(self.n), index=self.utt_ids)
        idx = pos.reindex(utt_ids).to_numpy()
        if np.isnan(idx.astype(float)).any():
            raise ResamplingError("some requested utterances have no scored prediction in this run")
        idx = idx.astype(np.int64)
        take = {k: (None if v is None else v[idx]) for k, v in
                dict(y=self.y, p=self.p, scored=self.scored, truth=self.truth, pred=self.pred,
                     known=self.known).items()}
        return replace(self, utt_ids=np.asarray(utt_ids, dtype=object), **take)

    def figures(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Headline figures under each row of utterance weights (B, n); a row of ones gives the point estimate."""
        out: dict[str, np.ndarray] = {}
        if has_classes(self.info.task):
            out.update(_class_figures(weights @ self.onehot(), self.n_classes, self.averaged()))
        if has_attributes(self.info.task):
            attrs = self.info.attributes
            out.update(_attribute_figures(attrs, [weights @ _moments(self.truth[:, j], self.pred[:, j],
                                                                      self.known[:, j]) for j in range(len(attrs))]))
        return _with_multitask_score(self.info.task, out)

    def onehot(self, p: Optional[np.ndarray] = None) -> np.ndarray:
        """(n, K*K) cell indicators of (truth, prediction `p`, default the run's own), zero on unscored rows."""
        return _pair_onehot(self.y, self.p if p is None else p, self.n_classes, self.scored)

    def averaged(self) -> Optional[np.ndarray]:
        """(K,) bool: the classes macro-F1 and UAR average over (an evaluation run's shared classes), or None."""
        average, _ = scoring_policy(self.info)
        return None if average is None else np.isin(self.classes or self.info.labels, average)

    def as_task(self, task: str) -> "ScoreData":
        """A multitask run seen as a run of one of its parts (categorical or attributes): that part's rows and
        arrays, so it can be compared with a single-task run."""
        if task == self.info.task:
            return self
        if self.info.task != "multitask" or task not in ("categorical", "attributes"):
            raise ResamplingError(f"a {self.info.task} run cannot be scored as a {task} run")
        rows = self.scored if task == "categorical" else self.known.any(axis=1)
        labels = list(self.info.labels) if task == "categorical" else []
        attributes = list(self.info.attributes) if task == "attributes" else []
        info = replace(self.info, task=task, labels=labels, attributes=attributes)
        view = replace(self, info=info)
        view = view.subset(self.utt_ids[rows])
        if task == "categorical":
            return replace(view, truth=None, pred=None, known=None)
        return replace(view, y=None, p=None, scored=None, classes=None)


def score_data(df: pd.DataFrame, info: RunInfo, *, source: str = "predictions") -> ScoreData:
    """Collect the scored rows of a prediction frame (known truth) into arrays for resampling; `source` names it in errors."""
    utt = df["utt_id"].astype(str).to_numpy(dtype=object)
    dup = pd.Series(utt).duplicated()
    if dup.any():
        raise ResamplingError(f"{source}: {int(dup.sum())} utt_id(s) occur twice (e.g. '{utt[dup.to_numpy()][0]}'); "
                              "each utterance must have one prediction")
    rows = np.zeros(len(df), dtype=bool)
    parts: dict = {}
    if has_classes(info.task):
        y, p, scored = categorical_arrays(df, info, source)
        full_y, full_p = np.zeros(len(df), dtype=np.int64), np.zeros(len(df), dtype=np.int64)
        full_y[scored], full_p[scored] = y, p
        parts.update(y=full_y, p=full_p, scored=scored, classes=scored_classes(df, info))
        rows |= scored
    if has_attributes(info.task):
        n_attr = len(info.attributes)
        truth = np.zeros((len(df), n_attr))
        pred = np.zeros((len(df), n_attr))
        known = np.zeros((len(df), n_attr), dtype=bool)
        for j, a in enumerate(info.attributes):
            t, q, k = attribute_arrays(df, a, source)
            truth[k, j], pred[k, j], known[:, j] = t, q, k
        parts.update(truth=truth, pred=pred, known=known)
        rows |= known.any(axis=1)
    take = {k: (v if k == "classes" else v[rows]) for k, v in parts.items()}
    return ScoreData(info, utt[rows], **take)


def _pair_onehot(y: np.ndarray, p: np.ndarray, k: int, scored: Optional[np.ndarray] = None) -> np.ndarray:
    """(n, K*K) indicator of each utterance's (truth, prediction) cell, so weights @ it is a flat confusion matrix;
    rows outside `scored` (no class truth) are zero."""
    out = np.zeros((len(y), k * k))
    rows = np.arange(len(y)) if scored is None else np.flatnonzero(scored)
    out[rows, y[rows] * k + p[rows]] = 1.0
    return out


def _with_multitask_score(task: str, figures: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A multitask run's figures with multitask_score (metrics.multitask_score) added."""
    if task == "multitask":
        figures["multitask_score"] = multitask_score(figures["macro_f1"], figures["ccc_mean"])
    return figures


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def _class_figures(flat_conf: np.ndarray, k: int, over: Optional[np.ndarray] = None) -> dict[str, np.ndarray]:
    """Macro/micro F1, UAR and accuracy of a batch of flat confusion matrices (B, K*K), as `categorical_metrics`;
    `over` (K,) bool: the classes macro-F1 and UAR average over (default: those seen, as sklearn)."""
    conf = flat_conf.reshape(-1, k, k)
    tp = np.diagonal(conf, axis1=1, axis2=2)
    support = conf.sum(axis=2)
    predicted = conf.sum(axis=1)
    total = conf.sum(axis=(1, 2))
    f1 = _safe_div(2 * tp, support + predicted)
    recall = _safe_div(tp, support)
    acc = _safe_div(tp.sum(axis=1), total)
    if over is not None:
        m = over.astype(np.float64)
        return {"macro_f1": (f1 * m).sum(axis=1) / max(m.sum(), 1.0), "micro_f1": acc,
                "uar": _safe_div((recall * m).sum(axis=1), ((support > 0) * m).sum(axis=1)), "accuracy": acc}
    seen = ((support + predicted) > 0).sum(axis=1)  # classes in truth or predictions (sklearn's default labels)
    return {"macro_f1": _safe_div(f1.sum(axis=1), seen), "micro_f1": acc,
            "uar": _safe_div(recall.sum(axis=1), (support > 0).sum(axis=1)), "accuracy": acc}


def _moments(x: np.ndarray, y: np.ndarray, known: np.ndarray) -> np.ndarray:
    """(n, 6) per-utterance terms [1, x, y, x^2, y^2, xy] (zero where unknown): weights @ them are weighted sums."""
    k = known.astype(np.float64)
    x, y = np.where(known, x, 0.0), np.where(known, y, 0.0)
    return np.stack([k, x, y, x * x, y * y, x * y], axis=1)


def _ccc_from_sums(sums: np.ndarray) -> np.ndarray:
    """CCC with population moments from weighted sums (B, 6) of [1, x, y, x^2, y^2, xy]."""
    sw = sums[:, 0]
    mx, my = _safe_div(sums[:, 1], sw), _safe_div(sums[:, 2], sw)
    vx = _safe_div(sums[:, 3], sw) - mx**2
    vy = _safe_div(sums[:, 4], sw) - my**2
    cov = _safe_div(sums[:, 5], sw) - mx * my
    return _safe_div(2 * cov, vx + vy + (mx - my) ** 2)


def _attribute_figures(attributes: list[str], sums: list[np.ndarray]) -> dict[str, np.ndarray]:
    """CCC per attribute and their mean from each attribute's weighted sums (B, 6)."""
    out = {f"ccc_{a}": _ccc_from_sums(m) for a, m in zip(attributes, sums)}
    out["ccc_mean"] = np.mean([out[f"ccc_{a}"] for a in attributes], axis=0)
    return out


def _counts(draws: np.ndarray, size: int) -> np.ndarray:
    """How often each of `size` items occurs in each row of draws (B, m) -> (B, size)."""
    b = draws.shape[0]
    flat = draws + size * np.arange(b)[:, None]
    return np.bincount(flat.ravel(), minlength=b * size).reshape(b, size).astype(np.float64)


def _weight_chunks(n: int, n_boot: int, seed: int, groups: Optional[np.ndarray]):
    """Yield (B, n) bootstrap weight chunks: utterances, or whole groups (speakers), drawn with replacement."""
    rng = np.random.default_rng([seed, 0])  # own stream: never the stream of data drawn with default_rng(seed)
    n_groups = int(groups.max()) + 1 if groups is not None else n
    done = 0
    while done < n_boot:
        b = min(CHUNK, n_boot - done)
        counts = _counts(rng.integers(0, n_groups, size=(b, n_groups)), n_groups)
        yield counts if groups is None else counts[:, groups]
        done += b


def _groups(data: ScoreData, speakers: Optional[Mapping[str, str]]) -> Optional[np.ndarray]:
    if speakers is None:
        return None
    spk = pd.Series(data.utt_ids).map(lambda u: speakers.get(u))
    missing = spk.isna() | (spk.astype(str) == "")
    if missing.any():
        raise ResamplingError(f"{int(missing.sum())} of {data.n} utterances (e.g. '{data.utt_ids[missing.to_numpy()][0]}') "
                              "have no speaker; give a manifest with a speaker column or resample by utterance")
    return pd.factorize(spk.astype(str))[0]


def bootstrap_ci(data: ScoreData, *, n_boot: int = 1000, seed: int = 0, speakers: Optional[Mapping[str, str]] = None,
                 level: float = 0.95) -> dict[str, dict[str, float]]:
    """Point estimate and percentile bootstrap interval of every headline figure: {key: {value, low, high}}."""
    if data.n == 0:
        return {}
    groups = _groups(data, speakers)
    point = data.figures(np.ones((1, data.n)))
    samples: dict[str, list] = {k: [] for k in point}
    for w in _weight_chunks(data.n, n_boot, seed, groups):
        for k, v in data.figures(w).items():
            samples[k].append(v)
    tail = (1 - level) / 2 * 100
    out = {}
    for k in headline_keys(data.info):
        s = np.concatenate(samples[k])
        lo, hi = np.percentile(s, [tail, 100 - tail])
        out[k] = {"value": float(point[k][0]), "low": float(lo), "high": float(hi)}
    return out


def shared_task(base_task: str, run_task: str) -> Optional[str]:
    """The task two runs are compared on: their task, or the single task when one of them is multitask (it is
    seen as that part); None when they share none."""
    if base_task == run_task:
        return base_task
    pair = {base_task, run_task}
    return (pair - {"multitask"}).pop() if "multitask" in pair else None


def align(base: ScoreData, run: ScoreData, *, base_name: str = "baseline", run_name: str = "run") -> tuple[ScoreData, ScoreData]:
    """Both runs on the baseline's utterance order; they must score the same utterances with the same truth. A
    multitask run against a single-task one is compared on that task (ScoreData.as_task)."""
    task = shared_task(base.info.task, run.info.task)
    if task is None:
        raise ResamplingError(f"'{run_name}' is a {run.info.task} run but '{base_name}' is {base.info.task}; compare runs of one task")
    base, run = base.as_task(task), run.as_task(task)
    if has_classes(task) and list(base.info.labels) != list(run.info.labels):
        raise ResamplingError(f"'{run_name}' has classes {run.info.labels} but '{base_name}' has {base.info.labels}")
    if has_attributes(task) and list(base.info.attributes) != list(run.info.attributes):
        raise ResamplingError(f"'{run_name}' predicts {run.info.attributes} but '{base_name}' predicts {base.info.attributes}")
    if set(base.utt_ids) != set(run.utt_ids):
        raise ResamplingError(f"'{run_name}' scores {run.n} utterances and '{base_name}' {base.n}, "
                              f"{len(set(base.utt_ids) & set(run.utt_ids))} in common; restrict both to the common ones first")
    run = run.subset(base.utt_ids)
    same = True
    if has_classes(task):
        same = ((base.classes or base.info.labels) == (run.classes or run.info.labels)
                and np.array_equal(base.scored, run.scored) and np.array_equal(base.y[base.scored], run.y[run.scored]))
    if has_attributes(task):
        both = base.known & run.known
        same = same and np.array_equal(base.known, run.known) and np.allclose(base.truth[both], run.truth[both])
    if not same:
        raise ResamplingError(f"'{run_name}' and '{base_name}' disagree on the ground truth of some utterances; "
                              "were they evaluated against the same manifest?")
    return base, run


def paired_test(base: ScoreData, run: ScoreData, *, n_boot: int = 1000, n_perm: int = 1000, seed: int = 0,
                speakers: Optional[Mapping[str, str]] = None, level: float = 0.95) -> dict[str, dict[str, float]]:
    """Difference run - baseline of each headline figure with a paired bootstrap interval and a two-sided
    approximate-randomisation p-value (each utterance's two predictions swapped at random)."""
    base, run = align(base, run)
    keys = headline_keys(base.info)
    ones = np.ones((1, base.n))
    fb, fr = base.figures(ones), run.figures(ones)
    delta = {k: float(fr[k][0] - fb[k][0]) for k in keys}
    groups = _groups(base, speakers)
    diffs: dict[str, list] = {k: [] for k in keys}
    for w in _weight_chunks(base.n, n_boot, seed, groups):
        sb, sr = base.figures(w), run.figures(w)
        for k in keys:
            diffs[k].append(sr[k] - sb[k])
    extreme = {k: 0 for k in keys}
    rng = np.random.default_rng([seed, 1])
    done = 0
    while done < n_perm:
        b = min(CHUNK, n_perm - done)
        swap = rng.random((b, base.n)) < 0.5
        pr, pb = _swapped_figures(base, run, swap)
        for k in keys:
            extreme[k] += int((np.abs(pr[k] - pb[k]) >= abs(delta[k]) - 1e-12).sum())
        done += b
    tail = (1 - level) / 2 * 100
    out = {}
    for k in keys:
        lo, hi = np.percentile(np.concatenate(diffs[k]), [tail, 100 - tail])
        out[k] = {"delta": delta[k], "low": float(lo), "high": float(hi), "p_value": (extreme[k] + 1) / (n_perm + 1)}
    return out


def _swapped_figures(base: ScoreData, run: ScoreData, swap: np.ndarray) -> tuple[dict, dict]:
    """Figures of the two runs after exchanging their predictions on the utterances where swap (B, n) is True."""
    s = swap.astype(np.float64)
    task = base.info.task
    out_run: dict[str, np.ndarray] = {}
    out_base: dict[str, np.ndarray] = {}
    if has_classes(task):
        k, over = base.n_classes, base.averaged()
        ob, orun = base.onehot(), run.onehot()
        moved = s @ (ob - orun)
        out_run.update(_class_figures(orun.sum(axis=0) + moved, k, over))
        out_base.update(_class_figures(ob.sum(axis=0) - moved, k, over))
    if has_attributes(task):
        fr, fb = _swapped_attributes(base, run, s)
        out_run.update(fr)
        out_base.update(fb)
    return _with_multitask_score(task, out_run), _with_multitask_score(task, out_base)


def _swapped_attributes(base: ScoreData, run: ScoreData, s: np.ndarray) -> tuple[dict, dict]:
    """The attribute figures of _swapped_figures."""
    known = base.known & run.known
    attrs = base.info.attributes
    sums_run, sums_base = [], []
    for j in range(len(attrs)):
        mr = _moments(base.truth[:, j], run.pred[:, j], known[:, j])
        mb = _moments(base.truth[:, j], base.pred[:, j], known[:, j])
        moved = s @ (mb - mr)  # what swapping moves from one run's sums to the other's
        sums_run.append(mr.sum(axis=0) + moved)
        sums_base.append(mb.sum(axis=0) - moved)
    return _attribute_figures(attrs, sums_run), _attribute_figures(attrs, sums_base)
