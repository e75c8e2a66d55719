"""Domain adaptation of a loaded run at prediction time (head.standardize: speaker | corpus).

A model that standardises its frozen frames by domain needs the statistics of the domain it predicts. `predict`
has no speaker or corpus column, so the files predicted together are taken as one domain: `adapt_predictor`
encodes them once (no labels) and installs the mean and standard deviation of their frames into every such model
of the run (members of fused and ensembled runs included) before they are predicted; the audio is encoded twice.
With fewer than 2 usable files (one file alone) the models use the training statistics saved with them.
`fusion-ser test` calls `predict` once per speaker (or corpus) of the target manifest, so each group is adapted
to itself.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from fusion_ser.errors import FusionSerError
from fusion_ser.training.domain import standardizer

log = logging.getLogger(__name__)


def _model_predictors(predictor: Any) -> Iterator[Any]:
    """Every trained-model predictor of a run (a fused / ensembled run's members, recursively)."""
    members = getattr(predictor, "members", None)
    if members is None:
        yield predictor
        return
    for m in members:
        yield from _model_predictors(m)


def _standardizing(predictor: Any) -> Iterator[Any]:
    """The model predictors whose config standardises by domain (the others' weights are not read here)."""
    return (p for p in _model_predictors(predictor) if p.cfg.head.standardize != "none")


def domain_mode(predictor: Any) -> Optional[str]:
    """speaker | corpus when some model of the run standardises by domain (speaker wins), else None."""
    modes = {norm.mode for p in _standardizing(predictor) if (norm := standardizer(p.model)) is not None}
    return "speaker" if "speaker" in modes else modes.pop() if modes else None


def _batches(predictor: Any, inputs: Sequence[Any], batch_size: int) -> Iterator[list[Optional[np.ndarray]]]:
    for start in range(0, len(inputs), max(1, batch_size)):
        batch = []
        for i, item in enumerate(inputs[start:start + batch_size], start):
            try:
                batch.append(predictor._load(item, str(item) if not isinstance(item, np.ndarray) else f"array[{i}]"))
            except FusionSerError as e:
                log.info("input %d is left out of the domain statistics: %s", i, e)
                batch.append(None)
        yield batch


def adapt_predictor(predictor: Any, inputs: Sequence[Any], *, batch_size: int = 8) -> int:
    """Install the statistics of `inputs` (one domain) into every model of the run that standardises by domain;
    the number of inputs used (0: no such model). Fewer than 2 usable inputs: the training statistics."""
    from fusion_ser.training.inference import adapt_arrays

    used = 0
    for p in _standardizing(predictor):
        if standardizer(p.model) is not None:
            used = max(used, adapt_arrays(p.model, _batches(p, inputs, batch_size), p.cfg, p.device))
    return used
