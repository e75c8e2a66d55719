"""Combiners of member runs' predictions and the run directories that hold them.

A combiner (mean, vote, logistic regression, interpolation, ridge) is plain numbers in `model/combiner.json`
applied with numpy, so a fused or ensembled run reloads without pickles and combines whatever prediction frames
its members produce: their dev/test predictions, or predictions on new audio made by `fusion_ser.predict`.
"""

from __future__ import annotations

import json
import logging
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import pandas as pd
import yaml

from fusion_ser.errors import FusionSerError
from fusion_ser.rundir import RunDir, RunDirError, RunInfo, attr_pred_columns, file_hash, prob_columns

log = logging.getLogger(__name__)

COMBINER_FILE = "combiner.json"
LOG_EPS = 1e-6  # floor of posteriors before the log: a member's hard 0 must not become -inf


class FusionError(FusionSerError):
    """Member runs that cannot be combined, or a fused/ensembled run that cannot be written or read."""


# ----------------------------------------------------------------------------------------------------------------
# Combiners: fitted numbers + a numpy forward pass


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
        x = member_array(frames, self.task, self.labels, self.attributes)
        return output_frame(frames[0], self.task, self.labels, self.attributes, self.apply(x))

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
    except (KeyError, TypeError, ValueError) as e:
        raise FusionError(f"combiner spec is malformed ({type(e).__name__}: {e}); re-run fuse/ensemble to rewrite it") from None
    raise FusionError(f"combiner method '{method}' is unknown; re-run fuse/ensemble to rewrite the run")


def load_combiner(run_dir: Union[str, Path]) -> Combiner:
    """The fitted combiner of a fused or ensembled run (members: `RunInfo.members` of its run.json)."""
    rd = RunDir(run_dir)
    info = rd.read_info()
    if info.kind not in ("fusion", "ensemble"):
        raise FusionError(f"run '{rd.path}' is a '{info.kind}' run, not a fusion or ensemble; it has no combiner")
    path = rd.model_dir / COMBINER_FILE
    if not path.is_file():
        raise FusionError(f"run '{rd.path}' has no {COMBINER_FILE} in model/; re-run fuse/ensemble to rebuild it")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FusionError(f"'{path}' is not valid JSON ({e}); re-run fuse/ensemble to rebuild it") from None
    combiner = combiner_from_spec(spec)
    if len(info.members) != combiner.n_members:
        raise FusionError(f"run '{rd.path}': run.json lists {len(info.members)} members "
                          f"but {COMBINER_FILE} expects {combiner.n_members}")
    return combiner


# ----------------------------------------------------------------------------------------------------------------
# Member prediction frames: alignment and arrays


def align_frames(frames: list[pd.DataFrame], names: list[str], split: str = "") -> list[pd.DataFrame]:
    """Put every frame in the first frame's utt_id order; members must cover exactly the same utterances."""
    where = f" {split}" if split else ""
    ids = []
    for frame, name in zip(frames, names):
        if "utt_id" not in frame.columns:
            raise FusionError(f"{name}: its{where} predictions have no utt_id column")
        u = frame["utt_id"].astype(str)
        dup = u[u.duplicated()]
        if len(dup):
            raise FusionError(f"{name}: its{where} predictions repeat utt_id '{dup.iloc[0]}' ({len(dup)} duplicates)")
        ids.append(u)
    first = set(ids[0])
    for u, name in zip(ids[1:], names[1:]):
        other = set(u)
        if other != first:
            raise FusionError(
                f"members do not cover the same{where} utterances: {names[0]} has {len(first)}, {name} has {len(other)} "
                f"({len(first - other)} only in {names[0]}, {len(other - first)} only in {name}); "
                "combine runs that predicted the same manifest"
            )
    order = ids[0].tolist()
    out = []
    for frame, u in zip(frames, ids):
        f = frame.copy()
        f["utt_id"] = u.to_numpy()
        out.append(f.set_index("utt_id").loc[order].reset_index())
    return out


def member_array(frames: list[pd.DataFrame], task: str, labels: list[str], attributes: list[str]) -> np.ndarray:
    """(M, N, K) posteriors in `labels` order or (M, N, A) attribute predictions of aligned frames."""
    cols = prob_columns(labels) if task == "categorical" else attr_pred_columns(attributes)
    arrays = []
    for i, f in enumerate(frames):
        missing = [c for c in cols if c not in f.columns]
        if missing:
            raise FusionError(f"member {i + 1}: predictions lack columns {missing}")
        a = f[cols].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(a).all(axis=1)
        if bad.any():
            first = f["utt_id"].iloc[int(np.argmax(bad))]
            raise FusionError(f"member {i + 1}: {int(bad.sum())} prediction rows hold missing or non-finite values "
                              f"(first: utt_id '{first}')")
        arrays.append(a)
    return np.stack(arrays)


def truth_arrays(frame: pd.DataFrame, task: str, labels: list[str], attributes: list[str]) -> np.ndarray:
    """Class index per row (-1 when unknown / not a class) or (N, A) attribute truth (NaN when unknown)."""
    if task == "categorical":
        if "label" not in frame.columns:
            return np.full(len(frame), -1, dtype=np.int64)
        index = {c: i for i, c in enumerate(labels)}
        return np.array([index.get(v, -1) if isinstance(v, str) else -1 for v in frame["label"]], dtype=np.int64)
    cols = [frame[a] if a in frame.columns else pd.Series(np.nan, index=frame.index) for a in attributes]
    return np.stack([pd.to_numeric(c, errors="coerce").to_numpy(np.float64) for c in cols], axis=1)


def output_frame(first: pd.DataFrame, task: str, labels: list[str], attributes: list[str], out: CombinedOutput) -> pd.DataFrame:
    """A prediction-format frame: utt_id, truth columns when the members carry them, pred/prob_ or <attr>_pred."""
    df = pd.DataFrame({"utt_id": first["utt_id"].astype(str).to_numpy()})
    if task == "categorical":
        if "label" in first.columns:
            df["label"] = first["label"].to_numpy()
        df["pred"] = np.asarray(labels, dtype=object)[out.pred]
        for j, c in enumerate(prob_columns(labels)):
            df[c] = out.probs[:, j]
    else:
        for a in attributes:
            if a in first.columns:
                df[a] = first[a].to_numpy()
        for j, c in enumerate(attr_pred_columns(attributes)):
            df[c] = out.values[:, j]
    return df


# ----------------------------------------------------------------------------------------------------------------
# Fitting with cross-validation inside dev, and writing the combined run


Fitter = Callable[[np.ndarray, np.ndarray], Combiner]


@dataclass
class Member:
    """One member run: where it is, what it predicts, its config.yaml as written."""

    path: Path
    name: str
    info: RunInfo
    config: dict

    @property
    def manifest(self) -> Optional[str]:
        return (self.config.get("_run") or {}).get("manifest")


@dataclass
class CombinedRun:
    """What fuse/ensemble produced: the run, how dev was scored, and each member's figures on the same rows."""

    path: Path
    info: RunInfo
    method: str
    metrics: dict  # split -> metrics of the combined run (dev: out-of-fold when fitted)
    member_metrics: dict  # member name -> split -> metrics
    n_folds: int = 0  # 0: nothing fitted on dev, dev figures are direct
    grouped_by_speaker: bool = False
    splits: list[str] = field(default_factory=list)


def open_members(paths: list[Union[str, Path]]) -> list[Member]:
    """Load member runs and check they are finished and predict the same task, classes and attributes."""
    if len(paths) < 2:
        raise FusionError(f"give at least two member runs to combine (got {len(paths)})")
    members = []
    for p in paths:
        rd = RunDir(Path(p).resolve())
        try:
            info = rd.require_complete()
        except RunDirError as e:
            raise FusionError(str(e)) from None
        config = yaml.safe_load(rd.config_path.read_text()) if rd.config_path.is_file() else {}
        members.append(Member(rd.path, rd.path.name, info, config or {}))
    names = [m.name for m in members]
    if len(set(names)) < len(names):
        for m in members:
            m.name = str(m.path)
    if len({str(m.path) for m in members}) < len(members):
        raise FusionError("the same member run is given twice: " + ", ".join(str(m.path) for m in members))
    first = members[0]
    for m in members[1:]:
        if m.info.task != first.info.task:
            raise FusionError(f"runs {first.name} ({first.info.task}) and {m.name} ({m.info.task}) predict different tasks")
        if first.info.task == "categorical" and set(m.info.labels) != set(first.info.labels):
            raise FusionError(f"runs {first.name} {first.info.labels} and {m.name} {m.info.labels} predict different classes")
        if first.info.task == "attributes" and set(m.info.attributes) != set(first.info.attributes):
            raise FusionError(
                f"runs {first.name} {first.info.attributes} and {m.name} {m.info.attributes} predict different attributes"
            )
    return members


def speakers_of(members: list[Member], utt_ids: list[str]) -> Optional[np.ndarray]:
    """Speaker of each utterance from the manifest a member recorded in config.yaml `_run.manifest`, when known."""
    for m in members:
        if not m.manifest or not Path(m.manifest).is_file():
            continue
        from fusion_ser.data.manifest import read_manifest

        try:
            df = read_manifest(m.manifest, validate=False)
        except FusionSerError as e:
            log.warning("cannot read manifest %s of %s (%s); dev folds are not grouped by speaker", m.manifest, m.name, e)
            continue
        spk = dict(zip(df["utt_id"].astype(str), df["speaker"].astype(str)))
        found = [spk.get(u, "") for u in utt_ids]
        if all(s and s != "nan" for s in found):
            return np.asarray(found, dtype=object)
        log.warning("manifest %s lacks speakers for some dev utterances; dev folds are not grouped by speaker", m.manifest)
    return None


def dev_folds(
    task: str, y: np.ndarray, groups: Optional[np.ndarray], n_folds: int, seed: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], bool]:
    """Folds over the dev rows with known truth: stratified (categorical), grouped by speaker when speakers are known.

    Returns (train, held-out) row-index pairs into the full dev frame, and whether they are speaker-grouped.
    """
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    known = np.flatnonzero(y >= 0) if task == "categorical" else np.flatnonzero(np.isfinite(y).any(axis=1))
    if n_folds < 2:
        raise FusionError(f"--folds must be at least 2 (got {n_folds}): dev figures come from cross-validation inside dev")
    if len(known) < 2 * n_folds:
        raise FusionError(f"dev has {len(known)} rows with known truth, too few for {n_folds}-fold cross-validation; lower --folds")
    yk = y[known] if task == "categorical" else None
    g = groups[known] if groups is not None else None
    grouped = g is not None and len(set(g)) >= n_folds
    if g is not None and not grouped:
        log.warning("dev has %d speakers, fewer than %d folds; folds are not grouped by speaker", len(set(g)), n_folds)
    if task == "categorical":
        splitter = (StratifiedGroupKFold if grouped else StratifiedKFold)(n_folds, shuffle=True, random_state=seed)
    else:
        splitter = (GroupKFold if grouped else KFold)(n_folds, shuffle=True, random_state=seed)
    try:
        split = list(splitter.split(np.zeros((len(known), 1)), yk, g if grouped else None))
    except ValueError as e:
        counts = dict(zip(*np.unique(yk, return_counts=True))) if yk is not None else {}
        raise FusionError(f"cannot cut dev into {n_folds} cross-validation folds ({e}); dev rows per class index: "
                          f"{counts}. Lower --folds or use --method mean") from None
    return [(known[tr], known[te]) for tr, te in split], grouped


def cross_fit(fit: Fitter, x: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]],
              full: Combiner) -> CombinedOutput:
    """Out-of-fold predictions: each held-out part by a combiner fitted on the rest; rows outside all folds
    (unknown truth, never fitted on) by the combiner fitted on all of dev."""
    out = full.apply(x)
    for tr, te in folds:
        part = fit(x[:, tr], y[tr]).apply(x[:, te])
        if out.probs is not None:
            out.probs[te] = part.probs
            out.pred[te] = part.pred
        else:
            out.values[te] = part.values
    return out


def _check_out_dir(out: Path, members: list[Member], force: bool) -> None:
    """Refuse an output that is a member, a file, or a non-empty folder (unless --force on an earlier run dir)."""
    if any(out == m.path for m in members):
        raise FusionError(f"output '{out}' is one of the member runs; choose a new folder with -o")
    if out.exists() and not out.is_dir():
        raise FusionError(f"output '{out}' exists and is not a folder; choose another path with -o")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise FusionError(f"output folder '{out}' is not empty; choose a new folder or pass --force to overwrite it")
        if not (out / "run.json").is_file():
            raise FusionError(f"output folder '{out}' is not empty and is not a run directory; --force only replaces runs")


def _clear_run_dir(out: Path) -> RunDir:
    """Remove what an earlier run left in `out` (only called after _check_out_dir allowed it)."""
    for sub in ("model", "predictions", "checkpoints"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for pattern in ("run.json", "config.yaml", "metrics.json", "report.md", "train_log.csv", "*.png"):
        for p in out.glob(pattern):
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return RunDir(out)


def _union_modality(members: list[Member]) -> str:
    mods = {m.info.modality for m in members}
    if "both" in mods or {"audio", "text"} <= mods:
        return "both"
    return mods.pop() if len(mods) == 1 else "both"


def _write_config(rd: RunDir, members: list[Member], kind: str, method: str, options: dict, modality: str) -> None:
    config = {k: v for k, v in members[0].config.items() if k != "_run"}
    if config:
        config["modality"] = modality
    manifest = next((m.manifest for m in members if m.manifest), None)
    config["_run"] = {
        "manifest": manifest,
        "manifest_sha256": file_hash(manifest) if manifest and Path(manifest).is_file() else None,
        "kind": kind,
        "method": method,
        "members": [str(m.path) for m in members],
        "options": options,
    }
    rd.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def _write_report(rd: RunDir, seed: int) -> dict:
    """metrics.json (with bootstrap intervals) and report.md by the evaluation package, as for a trained run."""
    from fusion_ser.evaluation.report import evaluate_run

    return evaluate_run(rd.path, seed=seed, allow_incomplete=True)


def build_combined_run(
    member_paths: list[Union[str, Path]],
    out_dir: Union[str, Path],
    *,
    kind: str,
    method: str,
    fitter: Optional[Fitter] = None,
    fixed: Optional[Combiner] = None,
    n_folds: int = 5,
    seed: int = 0,
    options: Optional[dict] = None,
    force: bool = False,
) -> CombinedRun:
    """Combine member runs into a new run dir (kind fusion/ensemble) with the same layout as a trained run.

    `fitter(x, y)` learns a combiner from dev; its dev figures are out-of-fold (k-fold inside dev, by speaker when
    known) and every other split is predicted by the combiner fitted on all of dev. `fixed` is a combiner that
    learns nothing (mean, vote), applied as is.
    """
    from fusion_ser.evaluation.metrics import compute_metrics

    members = open_members(member_paths)
    out = Path(out_dir).resolve()
    _check_out_dir(out, members, force)
    names = [m.name for m in members]
    first = members[0].info
    task, labels, attributes = first.task, list(first.labels), list(first.attributes)
    rds = [RunDir(m.path) for m in members]
    common = set.intersection(*(set(rd.splits()) for rd in rds))
    if "dev" not in common:
        lacking = [m.name for m, rd in zip(members, rds) if "dev" not in rd.splits()]
        raise FusionError(f"runs {lacking} have no dev predictions (predictions/dev.csv); every member needs them")
    splits = ["dev"] + sorted(common - {"dev"})

    frames = {s: align_frames([rd.read_predictions(s) for rd in rds], names, s) for s in splits}
    x_dev = member_array(frames["dev"], task, labels, attributes)
    y_dev = truth_arrays(frames["dev"][0], task, labels, attributes)

    used_folds, grouped = 0, False
    if fitter is not None:
        dev_ids = frames["dev"][0]["utt_id"].tolist()
        folds, grouped = dev_folds(task, y_dev, speakers_of(members, dev_ids), n_folds, seed)
        combiner = fitter(x_dev, y_dev)
        dev_out = cross_fit(fitter, x_dev, y_dev, folds, combiner)
        used_folds = len(folds)
    else:
        if fixed is None:
            raise FusionError(f"method '{method}' has neither a fitter nor a fixed combiner")
        combiner = fixed
        dev_out = combiner.apply(x_dev)

    outputs = {"dev": output_frame(frames["dev"][0], task, labels, attributes, dev_out)}
    for s in splits[1:]:
        outputs[s] = combiner.combine(frames[s], names)

    rd = _clear_run_dir(out)
    modality = _union_modality(members)
    info = RunInfo(
        kind=kind,
        task=task,
        labels=labels,
        attributes=attributes,
        modality=modality,
        members=[str(m.path) for m in members],
        complete=False,
        extra={"method": method, "cv_folds": used_folds, "cv_grouped_by_speaker": grouped, "options": options or {}},
    )
    rd.write_info(info)
    _write_config(rd, members, kind, method, options or {}, modality)
    combiner.save(rd.model_dir)
    metrics, member_metrics = {}, {name: {} for name in names}
    for s, df in outputs.items():
        rd.write_predictions(s, df)
        m = compute_metrics(df, info)
        if m.get("n", 0) > 0:
            metrics[s] = m
            for mem, f in zip(members, frames[s]):
                member_metrics[mem.name][s] = compute_metrics(f, mem.info)
    rd.write_metrics(metrics)
    report = _write_report(rd, seed)
    metrics = {s: report.get(s, m) for s, m in metrics.items()}
    rd.mark_complete()
    info.complete = True
    log.info("wrote %s run %s (%s of %d members)", kind, rd.path, method, len(members))
    return CombinedRun(rd.path, info, method, metrics, member_metrics, used_folds, grouped, splits)
