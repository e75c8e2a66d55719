"""A trainer that stops after epoch 2 as a crash would, for the resume tests."""

from __future__ import annotations

from fusion_ser.training.trainer import Trainer


class Interrupted(Exception):
    """Raised where a killed process would have stopped."""


class StopAfterTwo(Trainer):
    def on_epoch_end(self, epoch, row):
        if epoch == 2:
            raise Interrupted()
