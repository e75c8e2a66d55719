"""Late fusion of trained runs on their dev predictions (`fusion-ser fuse`).

Categorical: multinomial logistic regression on the members' concatenated log-posteriors (TalTech, Odyssey 2024),
with optional class-prior correction towards a balanced test set and fitting on a class-balanced dev subset.
Attributes: per-attribute interpolation weights tuned on dev (simplex grid, CCC) or ridge regression.
The dev figures are out-of-fold (k-fold inside dev); test is predicted by the combiner fitted on all of dev.
"""

from __future__ import annotations

import itertools
import logging
from functools import partial
from pathlib import Path
from typing import Optional, Union

import numpy as np

from fusion_ser.schema import has_attributes, has_classes
from fusion_ser.evaluation.metrics import ccc
from fusion_ser.fusion.combiners import (
    LOG_EPS,
    Combiner,
    LogisticCombiner,
    MeanProbs,
    RidgeAttributes,
    WeightedAttributes,
    stack_features,
)
from fusion_ser.fusion.members import FusionError, open_members
from fusion_ser.fusion.runs import CombinedRun, Fitter, build_combined_run
from fusion_ser.rundir import RunDir

log = logging.getLogger(__name__)

CATEGORICAL_METHODS = ["lr", "mean"]
ATTRIBUTE_METHODS = ["interp", "ridge", "mean"]
PRIOR_CHOICES = ["none", "divide", "weight"]
FORMS = ["auto", "full", "weights"]
ROWS_PER_PARAMETER = 20  # form=auto fits the full matrix only with this many labelled dev rows per parameter


def class_priors(y: np.ndarray, n_classes: int) -> list[float]:
    """Relative frequency of each class among the labelled rows (y >= 0), floored so no class has prior 0."""
    counts = np.bincount(y[y >= 0], minlength=n_classes).astype(np.float64)
    counts = np.maximum(counts, 0.5)
    return (counts / counts.sum()).tolist()


def balanced_subset(y: np.ndarray, seed: int) -> np.ndarray:
    """Indices of a class-balanced subset of the labelled rows: every present class cut to the rarest one's count."""
    rng = np.random.default_rng(seed)
    classes = np.unique(y[y >= 0])
    n = min(int((y == c).sum()) for c in classes)
    picked = [rng.choice(np.flatnonzero(y == c), size=n, replace=False) for c in classes]
    return np.sort(np.concatenate(picked))


def lr_parameters(n_classes: int, n_members: int) -> int:
    """Parameters of the full logistic regression on M members' K log-posteriors: K * (M * K + 1)."""
    return n_classes * (n_members * n_classes + 1)


def resolve_form(form: str, n_rows: int, n_classes: int, n_members: int) -> str:
    """'auto': the full matrix when dev has >= ROWS_PER_PARAMETER labelled rows per parameter, else member weights.

    Decided from the sizes alone (never from scores), so the choice cannot leak into the dev figures.
    """
    if form != "auto":
        return form
    return "full" if n_rows >= ROWS_PER_PARAMETER * lr_parameters(n_classes, n_members) else "weights"


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    labels: list[str],
    *,
    features: str = "log",
    form: str = "full",
    C: float = 1.0,
    prior: str = "none",
    balanced: bool = False,
    seed: int = 0,
) -> LogisticCombiner:
    """Multinomial logistic regression from member posteriors x (M, N, K) to classes y (N,), -1 rows ignored.

    form="full": a (K, M*K) matrix + class biases (TalTech); form="weights": one weight per member and no bias,
    softmax(sum_m w_m log p_m), which keeps the members' own class balance (robust on a small dev set).
    prior="divide" divides the fused posteriors by the dev class priors (balanced test set); "weight" fits with
    balanced class weights; balanced=True fits on a class-balanced subset of dev.
    """
    k = len(labels)
    rows = np.flatnonzero(y >= 0)
    if balanced:
        rows = rows[balanced_subset(y[rows], seed)]
    present = np.unique(y[rows])
    if len(present) < 2:
        raise FusionError(f"dev holds {len(present)} class(es) with labels among {labels}; logistic fusion needs at least two")
    priors = class_priors(y[rows], k) if prior == "divide" else None
    if form == "weights":
        if features != "log":
            raise FusionError("member-weight logistic fusion works on log-posteriors only")
        w = fit_member_weights(x[:, rows], y[rows], balanced_weights=prior == "weight")
        coef = np.zeros((k, x.shape[0] * k))
        for m, wm in enumerate(w):
            coef[np.arange(k), m * k + np.arange(k)] = wm
        return LogisticCombiner(labels, x.shape[0], coef, np.zeros(k), features, priors)
    from sklearn.linear_model import LogisticRegression

    feats = stack_features(x[:, rows], features)
    lr = LogisticRegression(C=C, class_weight="balanced" if prior == "weight" else None, max_iter=2000, random_state=seed)
    lr.fit(feats, y[rows])
    coef = np.zeros((k, feats.shape[1]))
    intercept = np.full(k, -30.0)  # a class absent from the fitted rows gets (almost) zero posterior
    if len(lr.classes_) == 2:
        coef[lr.classes_[1]] = lr.coef_[0]
        intercept[lr.classes_[0]], intercept[lr.classes_[1]] = 0.0, lr.intercept_[0]
    else:
        coef[lr.classes_] = lr.coef_
        intercept[lr.classes_] = lr.intercept_
    return LogisticCombiner(labels, x.shape[0], coef, intercept, features, priors)


def fit_member_weights(x: np.ndarray, y: np.ndarray, *, balanced_weights: bool = False) -> np.ndarray:
    """Weights w (M,) minimising the cross-entropy of softmax(sum_m w_m log p_m) on rows y (N,), by L-BFGS."""
    from scipy.optimize import minimize

    logs = np.log(np.clip(x, LOG_EPS, 1.0))  # (M, N, K)
    n, k = logs.shape[1], logs.shape[2]
    onehot = np.eye(k)[y]
    if balanced_weights:
        counts = np.bincount(y, minlength=k).astype(np.float64)
        sw = (n / (np.count_nonzero(counts) * np.maximum(counts, 1.0)))[y]
    else:
        sw = np.ones(n)
    sw = sw / sw.sum()

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = np.tensordot(w, logs, axes=1)
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        loss = -float((sw * (logp * onehot).sum(axis=1)).sum())
        grad_z = (np.exp(logp) - onehot) * sw[:, None]
        return loss, np.einsum("nk,mnk->m", grad_z, logs)

    result = minimize(objective, np.ones(logs.shape[0]), jac=True, method="L-BFGS-B")
    return result.x


def fit_mean(x: np.ndarray, y: np.ndarray, labels: list[str], *, prior: str = "none") -> MeanProbs:
    """Mean of the member posteriors; with prior="divide" corrected by the dev class priors."""
    priors = class_priors(y, len(labels)) if prior == "divide" else None
    return MeanProbs(labels, x.shape[0], prior=priors)


def simplex_grid(n_members: int, step: float) -> np.ndarray:
    """All weight vectors of n_members non-negative weights summing to 1 on a grid of the given step."""
    n = int(round(1.0 / step))
    if n < 1 or abs(n * step - 1.0) > 1e-9:
        raise FusionError(f"the grid step {step} must divide 1 (e.g. 0.05, 0.1, 0.25)")
    points = []
    for bars in itertools.combinations(range(n + n_members - 1), n_members - 1):
        edges = (-1, *bars, n + n_members - 1)
        points.append([edges[i + 1] - edges[i] - 1 for i in range(n_members)])
    return np.asarray(points, dtype=np.float64) / n


def fit_interpolation(x: np.ndarray, y: np.ndarray, attributes: list[str], *, step: float = 0.05) -> WeightedAttributes:
    """Per attribute, the simplex weights of the members whose weighted sum has the highest CCC on the known rows."""
    grid = simplex_grid(x.shape[0], step)
    weights = np.zeros((len(attributes), x.shape[0]))
    for a, name in enumerate(attributes):
        rows = np.flatnonzero(np.isfinite(y[:, a]))
        if len(rows) < 2:
            raise FusionError(f"dev has {len(rows)} rows with a known {name}; interpolation needs at least two")
        candidates = grid @ x[:, rows, a]  # (G, n)
        scores = [ccc(y[rows, a], c) for c in candidates]
        weights[a] = grid[int(np.argmax(scores))]
    return WeightedAttributes(attributes, x.shape[0], weights)


def fit_ridge(x: np.ndarray, y: np.ndarray, attributes: list[str], *, alpha: float = 1.0) -> RidgeAttributes:
    """Per attribute, ridge regression from the members' predictions of that attribute to its truth."""
    from sklearn.linear_model import Ridge

    coef = np.zeros((len(attributes), x.shape[0]))
    intercept = np.zeros(len(attributes))
    for a, name in enumerate(attributes):
        rows = np.flatnonzero(np.isfinite(y[:, a]))
        if len(rows) < 2:
            raise FusionError(f"dev has {len(rows)} rows with a known {name}; ridge stacking needs at least two")
        model = Ridge(alpha=alpha).fit(x[:, rows, a].T, y[rows, a])
        coef[a], intercept[a] = model.coef_, model.intercept_
    return RidgeAttributes(attributes, x.shape[0], coef, intercept)


def late_fuse(
    runs: list[Union[str, Path]],
    out_dir: Union[str, Path],
    *,
    method: str = "auto",
    attribute_method: str = "auto",
    form: str = "auto",
    prior: str = "none",
    balanced: bool = False,
    folds: int = 5,
    C: float = 1.0,
    alpha: float = 1.0,
    grid_step: float = 0.05,
    seed: int = 0,
    force: bool = False,
) -> CombinedRun:
    """Fuse trained runs on their dev predictions into a new run dir (kind "fusion").

    method: auto (lr for categorical, interp for attributes); lr | mean for categorical runs; interp | ridge | mean
    for attribute runs. Multitask runs fuse their class posteriors by `method` (auto | lr | mean) and their
    attributes by `attribute_method` (auto | interp | ridge | mean). form (lr): full | weights | auto (full only
    when dev is large enough, see resolve_form).
    """
    info = open_members(runs)[0].info
    task = info.task
    if form not in FORMS:
        raise FusionError(f"form '{form}' is not one of {FORMS}")
    if prior not in PRIOR_CHOICES:
        raise FusionError(f"prior '{prior}' is not one of {PRIOR_CHOICES}")
    if not has_classes(task) and (prior != "none" or balanced):
        raise FusionError("prior correction and fitting on a balanced subset apply to categorical runs only")
    methods = {}
    if has_classes(task):
        methods["categorical"] = _method(method, CATEGORICAL_METHODS, task, "method")
    if has_attributes(task):
        methods["attributes"] = _method(method if task == "attributes" else attribute_method, ATTRIBUTE_METHODS, task,
                                        "method" if task == "attributes" else "attribute_method")
    if methods.get("categorical") == "mean" and (prior == "weight" or balanced):
        raise FusionError("the mean method learns no weights: use prior 'divide' or 'none', without a balanced subset")
    labels, attributes, m = list(info.labels), list(info.attributes), len(runs)
    if methods.get("categorical") == "lr":
        form = resolve_form(form, _labelled_dev_rows(runs[0], labels), len(labels), m)
    options = {"form": form if methods.get("categorical") == "lr" else None, "prior": prior,
               "balanced_subset": balanced, "folds": folds, "C": C, "alpha": alpha, "grid_step": grid_step,
               "seed": seed, **({"attribute_method": methods["attributes"]} if task == "multitask" else {})}
    parts: dict[str, tuple[Optional[Fitter], Optional[Combiner]]] = {}
    if "categorical" in methods:
        if methods["categorical"] == "lr":
            parts["categorical"] = (partial(fit_logistic, labels=labels, features="log", form=form, C=C, prior=prior,
                                            balanced=balanced, seed=seed), None)
        elif prior == "divide":
            parts["categorical"] = (partial(fit_mean, labels=labels, prior=prior), None)
        else:
            parts["categorical"] = (None, MeanProbs(labels, m))
    if "attributes" in methods:
        parts["attributes"] = {
            "interp": (partial(fit_interpolation, attributes=attributes, step=grid_step), None),
            "ridge": (partial(fit_ridge, attributes=attributes, alpha=alpha), None),
        }.get(methods["attributes"], (None, WeightedAttributes(attributes, m)))
    single = parts.get(task, (None, None))
    return build_combined_run(
        runs, out_dir, kind="fusion", method=methods.get("categorical", methods.get("attributes")), fitter=single[0],
        fixed=single[1], parts=parts if task == "multitask" else None, n_folds=folds, seed=seed, options=options,
        force=force
    )


def _method(method: str, allowed: list[str], task: str, option: str) -> str:
    """`method` of one head, checked against the head's methods (auto: the first)."""
    if method == "auto":
        return allowed[0]
    if method not in allowed:
        head = ("" if task != "multitask" else
                ("the class posteriors of " if allowed is CATEGORICAL_METHODS else "the attributes of "))
        raise FusionError(f"{option.replace('_', ' ')} '{method}' does not apply to {head}{task} runs; "
                          f"choose one of {allowed}", options=(option,))
    return method


def _labelled_dev_rows(run: Union[str, Path], labels: list[str]) -> int:
    """Rows of a member's dev predictions whose label is one of the classes (0 when it has none)."""
    rd = RunDir(run)
    if "dev" not in rd.splits():
        return 0
    dev = rd.read_predictions("dev")
    return int(dev["label"].isin(labels).sum()) if "label" in dev.columns else 0
