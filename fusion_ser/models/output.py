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


def readout(out: "ModelOutput", task: str) -> torch.Tensor:
    """What a run writes per row: class probabilities (N, K), attribute values (N, A), or for multitask both side
    by side (N, K + A), probabilities first (rundir.output_columns' order)."""
    if task == "attributes":
        return out.attributes.float()
    probs = torch.softmax(out.logits.float(), dim=-1)
    return torch.cat([probs, out.attributes.float()], dim=-1) if task == "multitask" else probs


@dataclass
class ModelOutput:
    """What every model returns: class logits or attribute values (manifest scale), the loss, and extra records."""

    logits: Optional[torch.Tensor] = None  # (B, K) categorical (and multitask)
    attributes: Optional[torch.Tensor] = None  # (B, A) attributes (and multitask), on the manifest scale
    loss: Optional[torch.Tensor] = None  # when the batch carries targets
    records: dict[str, Any] = field(default_factory=dict)  # e.g. the pooled embedding

    @classmethod
    def from_head(cls, task: str, out: Any, pooled: torch.Tensor, criterion: Any,
                  batch: dict[str, Any]) -> "ModelOutput":
        """Wrap a head's output for `task` (a multitask head gives (logits, values)), with the pooled embedding and
        the loss when the batch has targets."""
        result = cls(records={"embedding": pooled.detach()})
        if task == "multitask":
            result.logits, result.attributes = out
        elif task == "attributes":
            result.attributes = out
        else:
            result.logits = out
        if criterion.has_targets(batch):
            result.loss = criterion(out, batch)
        return result
