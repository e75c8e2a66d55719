"""What every model returns: class logits or attribute values, the loss when the batch has targets, records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch


MIX_KEY = "mix"  # a training batch's mixup draw (training/mixup.py): (lambda, permutation), applied by `mix_rows`


def mix_rows(x: torch.Tensor, mix: Optional[tuple[float, torch.Tensor]]) -> torch.Tensor:
    """lambda * x + (1 - lambda) * x[perm] (mixup of a batch with a permutation of itself); x itself without a draw."""
    if mix is None:
        return x
    lam, perm = mix
    return lam * x + (1.0 - lam) * x[perm.to(x.device)]


@dataclass
class ModelOutput:
    """What every model returns: class logits or attribute values (manifest scale), the loss, and extra records."""

    logits: Optional[torch.Tensor] = None  # (B, K) categorical
    attributes: Optional[torch.Tensor] = None  # (B, A) attributes, on the manifest scale
    loss: Optional[torch.Tensor] = None  # when the batch carries targets
    records: dict[str, Any] = field(default_factory=dict)  # e.g. the pooled embedding

    @classmethod
    def from_head(cls, task: str, out: torch.Tensor, pooled: torch.Tensor, criterion: Any,
                  batch: dict[str, Any]) -> "ModelOutput":
        """Wrap a head's output for `task`, with the pooled embedding and the loss when the batch has targets."""
        result = cls(records={"embedding": pooled.detach()})
        if task == "attributes":
            result.attributes = out
        else:
            result.logits = out
        if criterion.has_targets(batch):
            result.loss = criterion(out, batch)
        return result
