"""Ensembles of runs of any kind (`fusion-ser ensemble`): mean of posteriors, majority vote, stacking, MLP.

Majority vote breaks ties by the mean posterior (Sheffield-MINI, Interspeech 2025). Stacking fits logistic
regression on the members' dev posteriors (ridge for attributes); `mlp` fits a small MLP meta-classifier on their
log-posteriors (MEDUSA, Interspeech 2025; a regressor for attributes). Both follow the no-leak rule of `fuse`: dev
figures are out-of-fold, test comes from the combiner fitted on all of dev. `soup` averages the weights of runs
of one architecture into one trained model (`fusion.soup`).
"""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path
from typing import Optional, Union

import numpy as np

from fusion_ser.schema import has_attributes, has_classes
from fusion_ser.fusion.combiners import Combiner, MajorityVote, MeanProbs, MLPCombiner, WeightedAttributes
from fusion_ser.fusion.members import FusionError, open_members
from fusion_ser.fusion.runs import CombinedRun, Fitter, build_combined_run
from fusion_ser.fusion.late import fit_logistic, fit_ridge

CATEGORICAL_METHODS = ["mean", "vote", "stacking", "mlp", "soup"]
ATTRIBUTE_METHODS = ["mean", "stacking", "mlp", "soup"]
ABSENT_LOGIT = -30.0  # output bias of a class absent from the fitted rows: (almost) zero posterior
# L2 defaults: ridge stacking 1.0; the MLP 100 with 32 hidden units, the best of hidden {8, 32, 64} x alpha {1, 10, 100}
# on RAVDESS dev (out-of-fold, bench/ravdess_ensembles.py). sklearn divides alpha by the rows fitted, so the penalty
# fades on a large dev set (MSP-Podcast's ~20k rows).
RIDGE_ALPHA, MLP_ALPHA, MLP_HIDDEN = 1.0, 100.0, 32


def fit_mlp(x: np.ndarray, y: np.ndarray, *, task: str, labels: list[str], attributes: list[str],
            hidden: int = MLP_HIDDEN, alpha: float = MLP_ALPHA, seed: int = 0) -> MLPCombiner:
    """An MLP (one ReLU layer of `hidden` units, L2 `alpha`, L-BFGS: deterministic for a seed) from member outputs
    x (M, N, K|A) to classes y (N,; -1 rows ignored) or attribute values y (N, A; rows with a NaN ignored)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    m = x.shape[0]
    empty = MLPCombiner(task, labels, attributes, m, [])
    rows = np.flatnonzero(y >= 0) if task == "categorical" else np.flatnonzero(np.isfinite(y).all(axis=1))
    feats = empty.features(x[:, rows])
    kwargs = dict(hidden_layer_sizes=(hidden,), alpha=alpha, solver="lbfgs", max_iter=1000, random_state=seed)
    with warnings.catch_warnings():  # L-BFGS stopping at max_iter is the regularised fit we ask for, not a fault
        warnings.simplefilter("ignore", ConvergenceWarning)
        net = (MLPRegressor if task != "categorical" else MLPClassifier)(**kwargs)
        if task == "categorical" and len(np.unique(y[rows])) < 2:
            raise FusionError(f"dev holds {len(np.unique(y[rows]))} class(es) with labels among {labels}; the MLP "
                              "needs at least two")
        net.fit(feats, y[rows])
    if task != "categorical":
        return MLPCombiner(task, labels, attributes, m, list(zip(net.coefs_, net.intercepts_)))
    k, classes = len(labels), net.classes_.astype(int)
    w_out, b_out = np.zeros((hidden, k)), np.full(k, ABSENT_LOGIT)
    if len(classes) == 2:  # sklearn's binary output is one logistic unit: the logit of classes[1] against classes[0]
        w_out[:, classes[1]], b_out[classes[1]], b_out[classes[0]] = net.coefs_[1][:, 0], net.intercepts_[1][0], 0.0
    else:
        w_out[:, classes], b_out[classes] = net.coefs_[1], net.intercepts_[1]
    return MLPCombiner(task, labels, attributes, m, [(net.coefs_[0], net.intercepts_[0]), (w_out, b_out)])


def ensemble_runs(
    runs: list[Union[str, Path]],
    out_dir: Union[str, Path],
    *,
    method: str = "mean",
    attribute_method: Optional[str] = None,
    folds: int = 5,
    C: float = 1.0,
    alpha: Optional[float] = None,
    hidden: int = MLP_HIDDEN,
    seed: int = 0,
    force: bool = False,
) -> CombinedRun:
    """Ensemble trained, fused or ensembled runs into a new run dir (kind "ensemble"); `alpha` None: the method's
    default L2 strength (RIDGE_ALPHA, MLP_ALPHA). Multitask runs combine their attributes by `attribute_method`
    (None: `method` where it applies to attributes, else mean); soup averages whole models of any task."""
    info = open_members(runs)[0].info
    allowed = CATEGORICAL_METHODS if has_classes(info.task) else ATTRIBUTE_METHODS
    if method not in allowed:
        raise FusionError(f"method '{method}' does not apply to {info.task} runs; choose one of {allowed}",
                          options=("method",))
    if method == "soup":
        from fusion_ser.fusion.soup import soup_runs

        return soup_runs(runs, out_dir, seed=seed, force=force)
    if attribute_method is None:
        attribute_method = method if method in ATTRIBUTE_METHODS else "mean"
    if info.task == "multitask" and attribute_method not in set(ATTRIBUTE_METHODS) - {"soup"}:
        raise FusionError(f"attribute method '{attribute_method}' does not apply to attributes; choose one of "
                          f"{[x for x in ATTRIBUTE_METHODS if x != 'soup']}", options=("attribute_method",))
    labels, attributes, m = list(info.labels), list(info.attributes), len(runs)
    mlp_alpha = MLP_ALPHA if alpha is None else alpha
    ridge_alpha = RIDGE_ALPHA if alpha is None else alpha
    parts: dict[str, tuple[Optional[Fitter], Optional[Combiner]]] = {}
    if has_classes(info.task):
        parts["categorical"] = {
            "mlp": (partial(fit_mlp, task="categorical", labels=labels, attributes=[], hidden=hidden,
                            alpha=mlp_alpha, seed=seed), None),
            "stacking": (partial(fit_logistic, labels=labels, features="prob", C=C, seed=seed), None),
            "vote": (None, MajorityVote(labels, m)),
        }.get(method, (None, MeanProbs(labels, m)))
    if has_attributes(info.task):
        chosen = method if info.task == "attributes" else attribute_method
        parts["attributes"] = {
            "mlp": (partial(fit_mlp, task="attributes", labels=[], attributes=attributes, hidden=hidden,
                            alpha=mlp_alpha, seed=seed), None),
            "stacking": (partial(fit_ridge, attributes=attributes, alpha=ridge_alpha), None),
        }.get(chosen, (None, WeightedAttributes(attributes, m)))
    alpha = {"mlp": mlp_alpha, "stacking": ridge_alpha if not has_classes(info.task) else alpha}.get(method, alpha)
    options = {"folds": folds, "C": C, "alpha": alpha, "seed": seed, **({"hidden": hidden} if method == "mlp" else {}),
               **({"attribute_method": attribute_method} if info.task == "multitask" else {})}
    single = parts.get(info.task, (None, None))
    return build_combined_run(
        runs, out_dir, kind="ensemble", method=method, fitter=single[0], fixed=single[1],
        parts=parts if info.task == "multitask" else None, n_folds=folds, seed=seed, options=options, force=force
    )
