"""Ensembles of runs of any kind (`fusion-ser ensemble`): mean of posteriors, majority vote, stacking.

Majority vote breaks ties by the mean posterior (Sheffield-MINI, Interspeech 2025). Stacking fits logistic
regression on the members' dev posteriors (ridge for attributes) with the same no-leak rule as `fuse`: dev
figures are out-of-fold, test comes from the stacker fitted on all of dev.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Optional, Union

from fusion_ser.fusion.combiners import Combiner, MajorityVote, MeanProbs, WeightedAttributes
from fusion_ser.fusion.members import FusionError, open_members
from fusion_ser.fusion.runs import CombinedRun, Fitter, build_combined_run
from fusion_ser.fusion.late import fit_logistic, fit_ridge

CATEGORICAL_METHODS = ["mean", "vote", "stacking"]
ATTRIBUTE_METHODS = ["mean", "stacking"]


def ensemble_runs(
    runs: list[Union[str, Path]],
    out_dir: Union[str, Path],
    *,
    method: str = "mean",
    folds: int = 5,
    C: float = 1.0,
    alpha: float = 1.0,
    seed: int = 0,
    force: bool = False,
) -> CombinedRun:
    """Ensemble trained, fused or ensembled runs into a new run dir (kind "ensemble")."""
    info = open_members(runs)[0].info
    allowed = CATEGORICAL_METHODS if info.task == "categorical" else ATTRIBUTE_METHODS
    if method not in allowed:
        raise FusionError(f"method '{method}' does not apply to {info.task} runs; choose one of {allowed}")
    labels, attributes, m = list(info.labels), list(info.attributes), len(runs)
    fitter: Optional[Fitter] = None
    fixed: Optional[Combiner] = None
    if method == "stacking" and info.task == "categorical":
        fitter = partial(fit_logistic, labels=labels, features="prob", C=C, seed=seed)
    elif method == "stacking":
        fitter = partial(fit_ridge, attributes=attributes, alpha=alpha)
    elif method == "vote":
        fixed = MajorityVote(labels, m)
    elif info.task == "categorical":
        fixed = MeanProbs(labels, m)
    else:
        fixed = WeightedAttributes(attributes, m)
    options = {"folds": folds, "C": C, "alpha": alpha, "seed": seed}
    return build_combined_run(
        runs, out_dir, kind="ensemble", method=method, fitter=fitter, fixed=fixed, n_folds=folds, seed=seed,
        options=options, force=force
    )
