"""Progress events of a training job, as typed records, and the callback protocol that receives them.

The trainer and the job emit these on rank 0 only; the CLI renders them (bars, one line per epoch), benches and
the demo read the figures. Library code never prints: a callback decides what a person sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Union


@dataclass(frozen=True)
class FoldStarted:
    """A fold of `train --cv` begins (fold counts from 0)."""

    fold: int
    folds: int


@dataclass(frozen=True)
class RunStarted:
    """The rows a run trains on are known; `resume` when an unfinished run continues from its checkpoint."""

    resume: bool
    n_train: int
    n_dev: int
    n_test: int
    skipped: str  # one line: the manifest rows not used, by split and reason (selection.DroppedRows.summary)


@dataclass(frozen=True)
class CacheStarted:
    """Frozen-encoder features are being computed (or found) for `items` utterances."""

    modality: str
    items: int


@dataclass(frozen=True)
class CacheProgress:
    """`n` more utterances of the feature cache are done."""

    n: int


@dataclass(frozen=True)
class RefitStarted:
    """The refit on train+dev begins (train.refit_on_dev) for the dev-selected number of epochs."""

    epochs: int
    n_train: int


@dataclass(frozen=True)
class EpochStarted:
    epoch: int
    epochs: int
    steps: int


@dataclass(frozen=True)
class StepDone:
    """Every train.log_every batches: the running mean loss and throughput of the epoch."""

    epoch: int
    step: int
    steps: int
    loss: float
    utt_per_s: float


@dataclass(frozen=True)
class EpochEnded:
    """An epoch is checkpointed. `dev` is the selection metric on dev; None in the refit, which has no dev set."""

    epoch: int
    epochs: int
    metric: str
    train_loss: float
    utt_per_s: float
    dev: Optional[float]
    best: bool
    best_epoch: int

    @property
    def refit(self) -> bool:
        return self.dev is None


Event = Union[FoldStarted, RunStarted, CacheStarted, CacheProgress, RefitStarted, EpochStarted, StepDone, EpochEnded]


class Callback(Protocol):
    """Receives every progress event of a training job (on rank 0)."""

    def __call__(self, event: Event) -> None: ...
