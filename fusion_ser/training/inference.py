"""Inference with the trainer's own hooks: a `Runner` runs a model on batches in every stage (train, dev, test,
predict), and the functions below turn its outputs into run-dir prediction frames.

`predict_frame` predicts the rows of a manifest-like frame (paths or cached features); `predict_arrays` predicts
waveforms held in memory, so prediction on new audio needs no temporary files.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from fusion_ser.config import Config
from fusion_ser.data.audio import AudioError, waveform
from fusion_ser.data.context import with_context
from fusion_ser.schema import has_attributes, has_classes
from fusion_ser.data.dataset import CachedInput, EmotionDataset, collate, screen_audio
from fusion_ser.data.sampler import BucketBatchSampler
from fusion_ser.device import autocast, resolve_device, resolve_precision, to_device
from fusion_ser.errors import FusionSerError
from fusion_ser.models.output import ModelOutput, readout
from fusion_ser.training.domain import FrameMoments, accumulate_arrays, fit_domains, standardizer
from fusion_ser.rundir import output_columns, outputs_prediction_frame

logger = logging.getLogger(__name__)

STAGES = ("train", "dev", "test", "predict")


class InferenceError(FusionSerError):
    """A model or batch that inference cannot use."""


class Runner:
    """Runs one model on batches through the hooks every stage shares (SpeechBrain's compute_forward /
    compute_objectives): subclass and override a hook to change training, evaluation and prediction alike."""

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype):
        self.module = model  # the bare model (unwrapped)
        self.model = model  # what the train stage calls (the Trainer puts the DDP wrapper here)
        self.device = device
        self.dtype = dtype

    def compute_forward(self, batch: dict[str, Any], stage: str) -> ModelOutput:
        """Run the model on a batch (stage: train | dev | test | predict) under the run's precision."""
        net = self.model if stage == "train" else self.module
        with autocast(self.device, self.dtype):
            return net(batch)

    def compute_objectives(self, output: ModelOutput, batch: dict[str, Any], stage: str) -> torch.Tensor:
        """The loss to minimise (train) or report (dev, test); by default the model's own, whose criterion holds
        the train split's class weights."""
        if output.loss is None:
            raise InferenceError("the model returned no loss for a batch with targets; its forward must set "
                                 "ModelOutput.loss")
        return output.loss

    def evaluate_batch(self, batch: dict[str, Any], stage: str) -> ModelOutput:
        """Forward pass of an evaluation stage; the loss (when the batch has targets) goes through the hook."""
        out = self.compute_forward(batch, stage)
        if out.loss is not None:
            out.loss = self.compute_objectives(out, batch, stage)
        return out


def as_runner(model: Union[nn.Module, Runner], cfg: Config, device: Optional[torch.device] = None) -> Runner:
    """A Runner for a model (on `device`, default train.device, at train.precision), or the Runner given."""
    if isinstance(model, Runner):
        return model
    device = device or resolve_device(cfg.train.device)
    base = getattr(model, "module", model)
    base.to(device)
    return Runner(base, device, resolve_precision(device, cfg.train.precision))


POOLED_EVAL_BATCH = 512  # rows per evaluation batch of pooled vectors (no padding: one matmul serves many rows)


def eval_loader(dataset: EmotionDataset, cfg: Config) -> DataLoader:
    """Batches sorted by length (least padding), in a fixed order; rows served as pooled vectors in large batches."""
    size = max(cfg.train.batch_size, POOLED_EVAL_BATCH) if dataset.pooled_only else cfg.train.batch_size
    sampler = BucketBatchSampler(dataset.lengths(), size, shuffle=False)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.train.num_workers)


@torch.no_grad()
def run_inference(runner: Runner, loader: DataLoader, stage: str, task: str,
                  width: int) -> tuple[list[str], np.ndarray, float, int]:
    """Outputs (probabilities (N, K), attribute values (N, A) or both (multitask), of width `width`) for every row the loader yields,
    the mean loss over rows with targets, and the count of rows skipped as unreadable."""
    model = runner.module
    was_training = model.training
    model.eval()
    utt_ids: list[str] = []
    outputs: list[np.ndarray] = []
    loss_sum, loss_n, skipped = 0.0, 0, 0
    for batch in loader:
        skipped += batch["skipped"]
        if not batch["size"]:
            continue
        batch = to_device(batch, runner.device)
        out = runner.evaluate_batch(batch, stage)
        outputs.append(readout(out, task).cpu().numpy())
        utt_ids.extend(batch["utt_id"])
        if out.loss is not None:
            loss_sum += float(out.loss) * batch["size"]
            loss_n += batch["size"]
    model.train(was_training)
    stacked = np.concatenate(outputs) if outputs else np.zeros((0, width), dtype=np.float32)
    return utt_ids, stacked, (loss_sum / loss_n if loss_n else float("nan")), skipped


def non_finite_ids(utt_ids: Sequence[str], outputs: np.ndarray) -> list[str]:
    """The utt_ids whose output row (probabilities or attribute values) holds a NaN or an infinity."""
    if not len(outputs):
        return []
    bad = ~np.isfinite(np.asarray(outputs, dtype=np.float64)).all(axis=1)
    return [str(u) for u, b in zip(utt_ids, bad) if b]


def model_labels(runner: Runner, cfg: Config) -> list[str]:
    """The class order of a categorical or multitask model (its `labels`); [] for attributes."""
    labels = list(getattr(runner.module, "labels", []))
    if has_classes(cfg.task) and not labels:
        raise InferenceError("the model has no `labels` attribute; models must keep their class order as `labels`")
    return labels


def outputs_frame(dataset: EmotionDataset, cfg: Config, labels: list[str], utt_ids: list[str],
                  outputs: np.ndarray) -> pd.DataFrame:
    """The prediction frame of inference outputs, with the truth columns of the dataset's rows."""
    attributes = list(cfg.data.attributes) if has_attributes(cfg.task) else []
    return outputs_prediction_frame(utt_ids, cfg.task, labels, attributes, outputs, truth=dataset.df)


def _manifest_like(df: pd.DataFrame, cfg: Config, previous: Optional[Sequence[Sequence[str]]] = None) -> pd.DataFrame:
    """The frame a dataset reads: label and text columns, and each row's conversation context when the model uses
    one (the run's frames carry it; a manifest's conversations give it; `previous` lists the earlier turns)."""
    frame = df.reset_index(drop=True).copy()
    for col in ("label", "text"):
        if col not in frame.columns:
            frame[col] = ""
    frame["label"] = frame["label"].astype(str)
    frame["utt_id"] = frame["utt_id"].astype(str)
    if has_attributes(cfg.task):
        for a in cfg.data.attributes:
            if a not in frame.columns:
                frame[a] = np.nan
    if cfg.modality in ("text", "both") and cfg.text_encoder.context_turns > 0:
        frame = with_context(frame, cfg.text_encoder.context_turns, previous)
    return frame


def _predict(runner: Runner, dataset: EmotionDataset, cfg: Config, stage: str, n_rows: int) -> pd.DataFrame:
    labels = model_labels(runner, cfg)
    width = len(output_columns(cfg.task, labels, list(cfg.data.attributes)))
    if stage != "predict":  # head.standardize: the statistics of these rows' speakers/corpora (predict: Predictor.adapt)
        fit_domains(runner.module, dataset, cfg, runner.device)
    utt_ids, outputs, _, skipped = run_inference(runner, eval_loader(dataset, cfg), stage, cfg.task, width)
    skipped += n_rows - len(dataset)
    if skipped:
        logger.warning("%d of %d clips could not be read and have no prediction", skipped, n_rows)
    order = {u: i for i, u in enumerate(dataset.df["utt_id"])}
    pred = outputs_frame(dataset, cfg, labels, utt_ids, outputs)
    return pred.sort_values("utt_id", key=lambda s: s.map(order)).reset_index(drop=True)


def predict_frame(model: Union[nn.Module, Runner], df: pd.DataFrame, cfg: Config,
                  device: Optional[torch.device] = None, *, cached: Optional[list[CachedInput]] = None,
                  stage: str = "predict") -> pd.DataFrame:
    """Predict every row of a manifest-like frame (utt_id, path and/or text) in the run-dir prediction format,
    in the frame's row order. Rows whose audio cannot be read are logged and left out of the result."""
    runner = as_runner(model, cfg, device)
    frame = _manifest_like(df, cfg)
    n_rows = len(frame)
    durations = None
    if cfg.modality in ("audio", "both"):
        frame, durations, _ = screen_audio(frame, cfg.data.min_seconds)
    dataset = EmotionDataset(frame, cfg, model_labels(runner, cfg), training=False, durations=durations,
                             cached=cached)
    return _predict(runner, dataset, cfg, stage, n_rows)


def _array_dataset(runner: Runner, utt_ids: Sequence[str], cfg: Config, waveforms: Optional[Sequence[np.ndarray]],
                   texts: Optional[Sequence[str]], context: Optional[Sequence[Sequence[str]]] = None,
                   ) -> tuple[EmotionDataset, int]:
    """The dataset of in-memory inputs (unusable waveforms logged and left out) and the number of inputs given."""
    needs_audio = cfg.modality in ("audio", "both")
    if needs_audio and (waveforms is None or len(waveforms) != len(utt_ids)):
        raise InferenceError(f"a {cfg.modality} model needs one waveform per input ({len(utt_ids)} inputs)")
    frame = pd.DataFrame({"utt_id": [str(u) for u in utt_ids], "path": "",
                          "text": list(texts) if texts is not None else [""] * len(utt_ids)})
    frame = _manifest_like(frame, cfg, context)
    n_rows = len(frame)
    kept: Optional[list[np.ndarray]] = None
    if needs_audio:
        keep, kept = [], []
        for uid, wav in zip(frame["utt_id"], waveforms):
            try:
                kept.append(waveform(wav, uid, cfg.data.min_seconds, cfg.data.sample_rate))
                keep.append(True)
            except AudioError as e:
                logger.warning("skipping '%s': %s", uid, e)
                keep.append(False)
        frame = frame[np.asarray(keep, dtype=bool)].reset_index(drop=True)
    return EmotionDataset(frame, cfg, model_labels(runner, cfg), training=False, waveforms=kept), n_rows


def predict_arrays(model: Union[nn.Module, Runner], utt_ids: Sequence[str], cfg: Config, *,
                   waveforms: Optional[Sequence[np.ndarray]] = None, texts: Optional[Sequence[str]] = None,
                   device: Optional[torch.device] = None,
                   context: Optional[Sequence[Sequence[str]]] = None) -> pd.DataFrame:
    """Predict in-memory inputs: mono waveforms at cfg.data.sample_rate and/or transcripts, one per utt_id, in the
    prediction format and in the given order. Waveforms are checked like decoded files (data.audio); an unusable
    one (silent, too short, non-finite) is logged and left out of the result. `context`: per input, the earlier
    turns of its conversation (oldest first), used by models with text_encoder.context_turns > 0."""
    runner = as_runner(model, cfg, device)
    dataset, n_rows = _array_dataset(runner, utt_ids, cfg, waveforms, texts, context)
    return _predict(runner, dataset, cfg, "predict", n_rows)


@torch.no_grad()
def embed_arrays(model: Union[nn.Module, Runner], utt_ids: Sequence[str], cfg: Config, *,
                 waveforms: Optional[Sequence[np.ndarray]] = None, texts: Optional[Sequence[str]] = None,
                 device: Optional[torch.device] = None,
                 context: Optional[Sequence[Sequence[str]]] = None) -> dict[str, np.ndarray]:
    """utt_id -> the model's pooled embedding (the head's input, `ModelOutput.records["embedding"]`) of each usable
    in-memory input, as float32; inputs are checked as in `predict_arrays`."""
    runner = as_runner(model, cfg, device)
    dataset, _ = _array_dataset(runner, utt_ids, cfg, waveforms, texts, context)
    was_training = runner.module.training
    runner.module.eval()
    out: dict[str, np.ndarray] = {}
    for batch in eval_loader(dataset, cfg):
        if not batch["size"]:
            continue
        records = runner.evaluate_batch(to_device(batch, runner.device), "predict").records
        if "embedding" not in records:
            raise InferenceError(f"{type(runner.module).__name__} records no pooled embedding; its forward must set "
                                 "ModelOutput.records['embedding']")
        for uid, vec in zip(batch["utt_id"], records["embedding"].float().cpu().numpy()):
            out[str(uid)] = vec
    runner.module.train(was_training)
    return out


def adapt_arrays(model: Union[nn.Module, Runner], batches: Iterable[Sequence[Optional[np.ndarray]]], cfg: Config,
                 device: torch.device) -> int:
    """head.standardize in predict: the statistics of the frames of every waveform the batches hold (None: an input
    that could not be read), as one domain, installed for rows without a domain of their own (fewer than 2 usable
    inputs: the training statistics). Returns the number of inputs used."""
    runner = as_runner(model, cfg, device)
    norm = standardizer(runner.module)
    if norm is None:
        return 0
    moments = FrameMoments()
    for batch in batches:
        wavs = [w for w in batch if w is not None]
        if wavs:
            dataset, _ = _array_dataset(runner, [str(i) for i in range(len(wavs))], cfg, wavs, None)
            accumulate_arrays(runner.module, dataset, cfg, runner.device, moments)
    stats = moments.statistics("predict")
    norm.set_current(*stats) if stats is not None else norm.set_current(None)
    used = len(moments.clips.get("predict", []))
    logger.info("%s statistics from %d input(s)%s", norm.mode, used,
                "" if stats is not None else " (too few: the training statistics)")
    return used
