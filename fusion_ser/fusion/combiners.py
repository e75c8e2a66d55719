"""Combiners: fitted numbers and a numpy forward pass that turn M member runs' predictions into one.

A combiner (mean, vote, logistic regression, interpolation, ridge, MLP; for multitask members a pair of them,
one per head) is plain numbers in `model/combiner.json`
applied with numpy, so a fused or ensembled run reloads without pickles and combines whatever prediction frames
its members produce: their dev/test predictions, or predictions on new audio made by `fusion_ser.predict`.
Fitting them lives in `fusion.late` / `fusion.ensemble`, writing the run that holds them in `fusion.runs`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pandas as pd

from fusion_ser.fusion.members import FusionError, align_frames, member_array
from fusion_ser.rundir import prediction_frame

__all__ = [
    "COMBINER_FILE", "LOG_EPS", "CombinedOutput", "Combiner", "FusionError", "LogisticCombiner", "MajorityVote",
    "MeanProbs", "MLPCombiner", "MultitaskCombiner", "RidgeAttributes", "WeightedAttributes", "combiner_from_spec", "output_frame", "softmax",
    "stack_features",
]

COMBINER_FILE = "combiner.json"
LOG_EPS = 1e-6  # floor of posteriors before the log: a member's hard 0 must not become -inf


class Combiner(ABC):
    """Turns the prediction frames of M member runs into one prediction frame of the same format."""

    method: str = ""

    def __init__(self, task: str, labels: list[str], attributes: list[str], n_members: int):
        self.task = task
        self.labels = list(labels)
        self.attributes = list(attributes)
        self.n_members = n_members

    @abstractmethod
    def params(self) -> dict:
        """The fitted numbers, JSON-serialisable (lists of floats)."""

    def spec(self) -> dict:
        """Everything load_combiner needs to rebuild this combiner."""
        return {
            "method": self.method,
            "task": self.task,
            "labels": self.labels,
            "attributes": self.attributes,
            "n_members": self.n_members,
            "params": self.params(),
        }

    def save(self, directory: Union[str, Path]) -> Path:
        """Write the combiner as JSON into `directory` (a run's model/ folder)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        path = d / COMBINER_FILE
        path.write_text(json.dumps(self.spec(), indent=2))
        return path

    def combine(self, member_frames: list[pd.DataFrame], names: Optional[list[str]] = None) -> pd.DataFrame:
        """Combine prediction-format frames (one per member, in member order) into one frame on the same rows."""
        if len(member_frames) != self.n_members:
            raise FusionError(f"this combiner was fitted on {self.n_members} member runs "
                              f"but got {len(member_frames)} prediction frames")
        frames = align_frames(member_frames, names or [f"member {i + 1}" for i in range(len(member_frames))])
        return output_frame(frames[0], self.task, self.labels, self.attributes, self.apply(self.inputs(frames)))

    def inputs(self, frames: list[pd.DataFrame]) -> np.ndarray:
        """What `apply` reads from aligned member frames: their posteriors or attribute predictions."""
        return member_array(frames, self.task, self.labels, self.attributes)

    @abstractmethod
    def apply(self, x: np.ndarray) -> "CombinedOutput":
        """x: (M, N, K) member posteriors or (M, N, A) member attribute predictions."""


@dataclass
class CombinedOutput:
    """Combined predictions of N rows: posteriors (N, K) and class indices (N,), or attribute values (N, A)."""

    probs: Optional[np.ndarray] = None
    pred: Optional[np.ndarray] = None
    values: Optional[np.ndarray] = None


def _renormalise(p: np.ndarray) -> np.ndarray:
    s = p.sum(axis=1, keepdims=True)
    return p / np.where(s > 0, s, 1.0)


def _prior_corrected(probs: np.ndarray, prior: Optional[list[float]]) -> np.ndarray:
    """Divide posteriors by the dev class priors and renormalise: a posterior for a class-balanced test set."""
    if prior is None:
        return probs
    return _renormalise(probs / np.maximum(np.asarray(prior, dtype=np.float64), LOG_EPS))


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class MeanProbs(Combiner):
    """Weighted mean of the members' posteriors (equal weights by default), optionally prior-corrected."""

    method = "mean"

    def __init__(self, labels: list[str], n_members: int, weights: Optional[list[float]] = None,
                 prior: Optional[list[float]] = None):
        super().__init__("categorical", labels, [], n_members)
        self.weights = list(weights) if weights is not None else [1.0 / n_members] * n_members
        self.prior = list(prior) if prior is not None else None

    def params(self) -> dict:
        return {"weights": self.weights, "prior": self.prior}

    def apply(self, x: np.ndarray) -> CombinedOutput:
        probs = _prior_corrected(np.tensordot(np.asarray(self.weights), x, axes=1), self.prior)
        return CombinedOutput(probs=probs, pred=probs.argmax(axis=1))


class MajorityVote(Combiner):
    """Each member votes its top class; ties go to the tied class with the highest mean posterior.

    The prob_<class> columns of the output hold the mean posterior; `pred` holds the vote.
    """

    method = "vote"

    def __init__(self, labels: list[str], n_members: int):
        super().__init__("categorical", labels, [], n_members)

    def params(self) -> dict:
        return {}

    def apply(self, x: np.ndarray) -> CombinedOutput:
        m, n, k = x.shape
        votes = np.zeros((n, k))
        np.add.at(votes, (np.arange(n)[None, :].repeat(m, 0), x.argmax(axis=2)), 1.0)
        mean = x.mean(axis=0)
        tied = votes == votes.max(axis=1, keepdims=True)
        pred = np.where(tied, mean, -np.inf).argmax(axis=1)
        return CombinedOutput(probs=mean, pred=pred)


class LogisticCombiner(Combiner):
    """Multinomial logistic regression on the members' concatenated log-posteriors (or posteriors)."""

    method = "logistic"

    def __init__(
        self,
        labels: list[str],
        n_members: int,
        coef: np.ndarray,
        intercept: np.ndarray,
        features: str = "log",
        prior: Optional[list[float]] = None,
    ):
        super().__init__("categorical", labels, [], n_members)
        self.coef = np.asarray(coef, dtype=np.float64)  # (K, M*K)
        self.intercept = np.asarray(intercept, dtype=np.float64)  # (K,)
        self.features = features
        self.prior = list(prior) if prior is not None else None

    def params(self) -> dict:
        return {"coef": self.coef.tolist(), "intercept": self.intercept.tolist(), "features": self.features, "prior": self.prior}

    def apply(self, x: np.ndarray) -> CombinedOutput:
        feats = stack_features(x, self.features)
        probs = _prior_corrected(softmax(feats @ self.coef.T + self.intercept), self.prior)
        return CombinedOutput(probs=probs, pred=probs.argmax(axis=1))


class WeightedAttributes(Combiner):
    """Per-attribute weighted sum of the members' predictions (weights (A, M); the mean when equal)."""

    method = "weighted"

    def __init__(self, attributes: list[str], n_members: int, weights: Optional[np.ndarray] = None):
        super().__init__("attributes", [], attributes, n_members)
        if weights is None:
            weights = np.full((len(attributes), n_members), 1.0 / n_members)
        self.weights = np.asarray(weights, dtype=np.float64)

    def params(self) -> dict:
        return {"weights": self.weights.tolist()}

    def apply(self, x: np.ndarray) -> CombinedOutput:
        return CombinedOutput(values=np.einsum("am,mna->na", self.weights, x))


class RidgeAttributes(Combiner):
    """Per-attribute linear regression on the members' predictions of that attribute (coef (A, M), intercept (A,))."""

    method = "ridge"

    def __init__(self, attributes: list[str], n_members: int, coef: np.ndarray, intercept: np.ndarray):
        super().__init__("attributes", [], attributes, n_members)
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = np.asarray(intercept, dtype=np.float64)

    def params(self) -> dict:
        return {"coef": self.coef.tolist(), "intercept": self.intercept.tolist()}

    def apply(self, x: np.ndarray) -> CombinedOutput:
        return CombinedOutput(values=np.einsum("am,mna->na", self.coef, x) + self.intercept)


class MLPCombiner(Combiner):
    """A one-hidden-layer ReLU MLP on the members' stacked log-posteriors (softmax over classes) or on their
    attribute predictions (linear outputs): MEDUSA's meta-classifier, applied with numpy."""

    method = "mlp"

    def __init__(self, task: str, labels: list[str], attributes: list[str], n_members: int,
                 layers: list[tuple[np.ndarray, np.ndarray]]):
        super().__init__(task, labels, attributes, n_members)
        self.layers = [(np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64)) for w, b in layers]

    def params(self) -> dict:
        return {"layers": [{"weight": w.tolist(), "bias": b.tolist()} for w, b in self.layers]}

    def features(self, x: np.ndarray) -> np.ndarray:
        """(M, N, K|A) member outputs -> (N, M*K|M*A) network input."""
        return stack_features(x, "log" if self.task == "categorical" else "prob")

    def apply(self, x: np.ndarray) -> CombinedOutput:
        h = self.features(x)
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b  # w: (in, out), as sklearn's coefs_
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        if self.task == "categorical":
            probs = softmax(h)
            return CombinedOutput(probs=probs, pred=probs.argmax(axis=1))
        return CombinedOutput(values=h)


class MultitaskCombiner(Combiner):
    """The combiner of multitask members: one combiner for their posteriors and one for their attribute values."""

    method = "multitask"

    def __init__(self, classes: Combiner, attributes: Combiner):
        super().__init__("multitask", classes.labels, attributes.attributes, classes.n_members)
        self.parts = {"categorical": classes, "attributes": attributes}

    def params(self) -> dict:
        return {task: part.spec() for task, part in self.parts.items()}

    def inputs(self, frames: list[pd.DataFrame]) -> tuple[np.ndarray, np.ndarray]:
        return tuple(part.inputs(frames) for part in self.parts.values())

    def apply(self, x: tuple[np.ndarray, np.ndarray]) -> CombinedOutput:
        """x: ((M, N, K) posteriors, (M, N, A) attribute predictions)."""
        classes = self.parts["categorical"].apply(x[0])
        return CombinedOutput(probs=classes.probs, pred=classes.pred, values=self.parts["attributes"].apply(x[1]).values)


def stack_features(x: np.ndarray, features: str) -> np.ndarray:
    """(M, N, K) member posteriors -> (N, M*K) regression features: log-posteriors ('log') or posteriors ('prob')."""
    m, n, k = x.shape
    f = np.log(np.clip(x, LOG_EPS, 1.0)) if features == "log" else x
    return f.transpose(1, 0, 2).reshape(n, m * k)


def combiner_from_spec(spec: dict) -> Combiner:
    """Rebuild a combiner from the dict written by Combiner.save."""
    try:
        method, p, m = spec["method"], spec["params"], int(spec["n_members"])
        labels, attributes = spec.get("labels", []), spec.get("attributes", [])
        if method == "mean":
            return MeanProbs(labels, m, p["weights"], p.get("prior"))
        if method == "vote":
            return MajorityVote(labels, m)
        if method == "logistic":
            return LogisticCombiner(labels, m, np.asarray(p["coef"]), np.asarray(p["intercept"]), p["features"], p.get("prior"))
        if method == "weighted":
            return WeightedAttributes(attributes, m, np.asarray(p["weights"]))
        if method == "ridge":
            return RidgeAttributes(attributes, m, np.asarray(p["coef"]), np.asarray(p["intercept"]))
        if method == "mlp":
            layers = [(np.asarray(layer["weight"]), np.asarray(layer["bias"])) for layer in p["layers"]]
            return MLPCombiner(spec["task"], labels, attributes, m, layers)
        if method == "multitask":
            return MultitaskCombiner(combiner_from_spec(p["categorical"]), combiner_from_spec(p["attributes"]))
    except (KeyError, TypeError, ValueError) as e:
        raise FusionError(f"combiner spec is malformed ({type(e).__name__}: {e}); re-run fuse/ensemble to rewrite it") from None
    raise FusionError(f"combiner method '{method}' is unknown; re-run fuse/ensemble to rewrite the run")


def output_frame(first: pd.DataFrame, task: str, labels: list[str], attributes: list[str], out: CombinedOutput) -> pd.DataFrame:
    """The combined predictions on the rows of `first` (an aligned member frame) in the run-dir prediction format,
    with the truth columns `first` carries values of."""
    return prediction_frame(first["utt_id"].astype(str).tolist(), task, labels, attributes,
                            probs=out.probs, pred=out.pred, values=out.values, truth=first)

