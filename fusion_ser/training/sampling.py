"""Class sampling of the train epochs (data.sampler) and the loss weights that go with each stage.

- `random` (default): every train row once per epoch, in length buckets; the loss as loss.type says.
- `balanced`: every class an equal share of each epoch (over-sampling small classes, under-sampling large ones, to
  the epoch's usual size); no-agreement rows kept by data.keep_no_agreement keep their natural share. The loss is
  unweighted: the sampler already balances, and class weights on top would correct twice.
- `staged` (MEDUSA, Interspeech 2025): the first data.staged_epochs epochs are random with the class weights
  w_c = (N / (K n_c))^0.5 (N, n_c: train rows with a class label), whatever loss.type is; afterwards balanced
  epochs in which data.no_agreement_quota of the rows are no-agreement rows (trained on their soft labels) and the
  classes share the rest equally, with the loss unweighted.

Every epoch keeps the size of the train set, so the learning-rate schedule's steps per epoch stay fixed. Which
rows an epoch holds is a function of (seed, epoch) alone (data/sampler.py), and the weights of an epoch of the
epoch number alone, so a resumed run and every DDP rank see exactly the epochs of an uninterrupted run. With
data.corpus_sampling balanced as well, the groups are (corpus, class): each corpus an equal share, and within a
corpus the shares above.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from fusion_ser.config import Config
from fusion_ser.data.sampler import BucketBatchSampler
from fusion_ser.schema import CORPUS_COLUMN, has_classes
from fusion_ser.models.losses import class_weights

logger = logging.getLogger(__name__)

NO_AGREEMENT = "no_agreement"


def staged_weights(train_labels: Sequence[str], classes: Sequence[str]) -> torch.Tensor:
    """MEDUSA's first-stage class weights (N / (K n_c))^0.5 over the train rows labelled with a class."""
    return class_weights(train_labels, classes, power=0.5)


def class_shares(row_labels: Sequence[str], classes: Sequence[str], quota: Optional[float]) -> dict[str, float]:
    """Each group's fraction of a balanced epoch: the classes present equally; no-agreement rows `quota` (None:
    their natural fraction of the rows)."""
    labels = np.asarray([str(x) for x in row_labels], dtype=object)
    present = [c for c in classes if (labels == c).any()]
    n_na = int((labels == NO_AGREEMENT).sum())
    na_share = 0.0 if not n_na else (n_na / len(labels) if quota is None else float(quota))
    shares = {c: (1.0 - na_share) / len(present) for c in present}
    if n_na:
        shares[NO_AGREEMENT] = na_share
    return shares


def sampling_groups(row_labels: Sequence[str], classes: Sequence[str], quota: Optional[float],
                    corpora: Optional[Sequence[str]] = None) -> tuple[list[str], dict[str, float]]:
    """The sampler's group of each row and each group's share: by class (`class_shares`), or with `corpora` by
    (corpus, class), each corpus an equal share split within it as `class_shares` says."""
    labels = [str(x) if str(x) in set(classes) else NO_AGREEMENT for x in row_labels]
    if corpora is None:
        return labels, class_shares(labels, classes, quota)
    corpora = [str(c) for c in corpora]
    names = sorted(set(corpora))
    groups = [f"{c}|{y}" for c, y in zip(corpora, labels)]
    shares = {}
    for name in names:
        inside = [y for c, y in zip(corpora, labels) if c == name]
        shares.update({f"{name}|{y}": s / len(names) for y, s in class_shares(inside, classes, quota).items()})
    return groups, shares


class SamplingPlan:
    """data.sampler for one fit: the train sampler, and the class weights each epoch's loss uses."""

    def __init__(self, cfg: Config, train_labels: Sequence[str], classes: Sequence[str],
                 corpora: Optional[Sequence[str]] = None):
        self.mode = cfg.data.sampler if has_classes(cfg.task) else "random"
        self.staged_epochs = cfg.data.staged_epochs
        self.labels = [str(x) for x in train_labels]
        self.classes = list(classes)
        self.corpora = corpora
        self.quota = cfg.data.no_agreement_quota if self.mode == "staged" else None
        if self.mode == "staged" and self.quota > 0 and NO_AGREEMENT not in self.labels:
            logger.warning("data.sampler=staged: no no-agreement rows among the train rows (they need "
                           "data.keep_no_agreement and soft labels), so the classes share the balanced epochs alone")
        self.weights = staged_weights(self.labels, self.classes) if self.mode == "staged" else None
        if cfg.data.sampler != "random" and not has_classes(cfg.task):
            logger.warning("data.sampler=%s balances classes; the attributes task samples at random", cfg.data.sampler)

    def sampler(self, lengths: np.ndarray, batch_size: int, seed: int, world_size: int,
                rank: int) -> BucketBatchSampler:
        """The train batch sampler: groups by corpus (data.corpus_sampling), by class, or both."""
        if self.mode == "random":
            groups, shares = (list(map(str, self.corpora)), None) if self.corpora is not None else (None, None)
        else:
            groups, shares = sampling_groups(self.labels, self.classes, self.quota, self.corpora)
        start = self.staged_epochs + 1 if self.mode == "staged" else 0
        return BucketBatchSampler(lengths, batch_size, shuffle=True, seed=seed, num_replicas=world_size, rank=rank,
                                  groups=groups, shares=shares, groups_from=start)

    def balanced(self, epoch: int) -> bool:
        """Whether `epoch` (from 1) draws classes equally."""
        return self.mode == "balanced" or (self.mode == "staged" and epoch > self.staged_epochs)

    def epoch_weights(self, epoch: int) -> Optional[torch.Tensor]:
        """The class weights of `epoch`'s loss when the plan sets them (staged: (N/(K n_c))^0.5, then none)."""
        return self.weights if self.mode == "staged" and epoch <= self.staged_epochs else None

    def start_epoch(self, epoch: int, model: nn.Module) -> None:
        """Install the epoch's class weighting in the model's criterion (random: as loss.type and the train rows)."""
        criterion = getattr(getattr(model, "module", model), "criterion", None)
        if self.mode == "random" or criterion is None:
            return
        criterion.use_class_weights(self.epoch_weights(epoch))


def train_corpora(cfg: Config, df) -> Optional[list[str]]:
    """Each train row's corpus when data.corpus_sampling balances corpora (and the rows carry one), else None."""
    if cfg.data.corpus_sampling == "balanced" and CORPUS_COLUMN in df.columns:
        return df[CORPUS_COLUMN].astype(str).tolist()
    return None
