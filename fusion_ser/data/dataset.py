"""The training/evaluation dataset over a manifest frame and the collate function that builds the batch dict.

Audio is read with `load_audio` (or replaced by cached frozen-encoder features); in training only, each clip is
speed-perturbed by one factor of data.speed_perturb and long clips are randomly cropped, both drawn from
(seed, epoch, row) alone so that a resumed run sees the same augmentation.
Clips that cannot be read are screened out before training with a summary, and any that still fail at load time
are logged and dropped from their batch with a count, never crashing a long job.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from fusion_ser.config import Config
from fusion_ser.data.audio import AudioError, audio_duration, load_audio
from fusion_ser.data.augment import speed_perturb
from fusion_ser.data.context import CONTEXT_COLUMN
from fusion_ser.data.annotations import annotator_targets, vote_matrix
from fusion_ser.schema import ANNOTATIONS_COLUMN, SOFT_PREFIX, has_attributes
from fusion_ser.data.feature_cache import FeatureCache
from fusion_ser.data.frame_store import FrameMemory, PooledStore
from fusion_ser.encoders.base import Encoder, pad_frames

AUXILIARY_KEY = "auxiliary"  # the batch's values of multitask.auxiliary's column (list of str), for its head

logger = logging.getLogger(__name__)


@dataclass
class ScreenReport:
    """Rows dropped before training and why (utt_id -> reason)."""

    dropped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: how many clips were dropped, with a few examples."""
        if not self.dropped:
            return "all clips readable"
        examples = "; ".join(f"{u}: {r}" for u, r in list(self.dropped.items())[:3])
        return f"{len(self.dropped)} clip(s) skipped as unreadable or unusable (e.g. {examples})"


def screen_audio(df: pd.DataFrame, min_seconds: float) -> tuple[pd.DataFrame, np.ndarray, ScreenReport]:
    """Read every clip's header once: returns the usable rows, their durations (s), and what was dropped
    (unreadable, truncated or too short clips, as load_audio would refuse them)."""
    report = ScreenReport()
    durations = []
    keep = np.ones(len(df), dtype=bool)
    for i, (utt, path) in enumerate(zip(df["utt_id"], df["path"])):
        try:
            d = audio_duration(path, reject_truncated=True)
        except AudioError as e:
            keep[i] = False
            report.dropped[str(utt)] = str(e)
            continue
        if d < min_seconds:
            keep[i] = False
            report.dropped[str(utt)] = f"audio file '{path}': too short ({d:.3f} s < {min_seconds} s)"
            continue
        durations.append(d)
    if report.dropped:
        logger.warning(report.summary())
    return df[keep].reset_index(drop=True), np.asarray(durations, dtype=np.float64), report


def soft_label_matrix(df: pd.DataFrame, labels: list[str]) -> Optional[np.ndarray]:
    """(N, K) annotator distributions from p_<label> columns (missing columns/values -> 0), or None if there are none."""
    cols = [f"{SOFT_PREFIX}{c}" for c in labels]
    if not any(c in df.columns for c in cols):
        return None
    out = np.zeros((len(df), len(labels)), dtype=np.float32)
    for j, c in enumerate(cols):
        if c in df.columns:
            out[:, j] = pd.to_numeric(df[c], errors="coerce").fillna(0.0).to_numpy(np.float32)
    return out


@dataclass
class CachedInput:
    """A frozen encoder whose outputs the dataset reads from a FeatureCache instead of running the backbone.

    With `memory`, frames read once stay in RAM (within its budget); with `pooled` (audio whose pooling has no
    parameters and nothing per-frame to learn), items carry the pooled vector ("pooled_audio") instead of frames.
    """

    modality: str  # audio | text
    encoder: Encoder
    cache: FeatureCache
    memory: Optional[FrameMemory] = None
    pooled: Optional[PooledStore] = None

    def frames(self, item: dict[str, Any]) -> torch.Tensor:
        """The cached frames of one item, from memory when held there."""
        if self.memory is not None:
            return self.memory.get(self.cache, self.encoder, item)
        return self.cache.get(self.encoder, item)


class EmotionDataset(Dataset):
    """Rows of a manifest frame as batch items (audio, text, targets); `set_epoch` selects the training crops."""

    def __init__(
        self,
        df: pd.DataFrame,
        cfg: Config,
        labels: list[str],
        *,
        training: bool,
        durations: Optional[np.ndarray] = None,
        cached: Optional[list[CachedInput]] = None,
        waveforms: Optional[Sequence[np.ndarray]] = None,
    ):
        self.df = df.reset_index(drop=True)
        self.rows = self.df.to_dict("records")  # row access without pandas indexing on every item
        self.waveforms = waveforms  # in-memory audio (row i: waveforms[i], mono at cfg.data.sample_rate) instead of paths
        self.cfg = cfg
        self.labels = list(labels)
        self.training = training
        self.seed = cfg.seed
        self.epoch = 0
        self._speeds: tuple[int, np.ndarray] = (-1, np.zeros(0, dtype=np.int64))  # (epoch, factor index per row)
        self.needs_audio = cfg.modality in ("audio", "both")
        self.needs_text = cfg.modality in ("text", "both")
        # the previous turns of each row (data/context.py), added to the frame before rows were selected
        self.context = cfg.text_encoder.context_turns > 0 and self.needs_text and CONTEXT_COLUMN in self.df.columns
        self.cached = {c.modality: c for c in (cached or [])}
        if durations is None and self.needs_audio:
            if waveforms is not None:
                durations = np.array([len(w) / cfg.data.sample_rate for w in waveforms], dtype=np.float64)
            else:
                durations = np.array([audio_duration(p) for p in self.df["path"]], dtype=np.float64)
        self.durations = durations
        index = {c: i for i, c in enumerate(self.labels)}
        self.label_idx = self.df["label"].map(lambda x: index.get(str(x), -1)).to_numpy(np.int64)
        self.soft = soft_label_matrix(self.df, self.labels) if cfg.loss.type in ("soft_ce", "kl") else None
        self.votes = None  # data.soft_labels annotators: each row's votes (class indices), targets per epoch
        if cfg.data.soft_labels == "annotators" and ANNOTATIONS_COLUMN in self.df.columns:
            self.soft, self.votes = None, vote_matrix(self.df[ANNOTATIONS_COLUMN].tolist(), self.labels)
        column = cfg.multitask.auxiliary  # the auxiliary head's targets (training; absent columns: none)
        self.auxiliary = (self.df[column].astype(object).where(self.df[column].notna(), "").astype(str).tolist()
                          if column is not None and column in self.df.columns else None)
        attrs = list(cfg.data.attributes)
        self.attributes = (
            self.df[attrs].apply(pd.to_numeric, errors="coerce").to_numpy(np.float32)
            if has_attributes(cfg.task) else None
        )

    def __len__(self) -> int:
        return len(self.df)

    @property
    def pooled_only(self) -> bool:
        """True when items carry the audio's pooled vector and nothing else to encode (an audio model over a
        parameter-free pooling): batches then hold no padding, whatever their size."""
        audio = self.cached.get("audio")
        return self.cfg.modality == "audio" and audio is not None and audio.pooled is not None

    def set_epoch(self, epoch: int) -> None:
        """Training crops are a function of (seed, epoch, row): call once per epoch."""
        self.epoch = int(epoch)

    def lengths(self) -> np.ndarray:
        """Per-row length used for bucketing: seconds of audio (capped like the crops), or characters of text."""
        if self.needs_audio:
            cap = self.cfg.data.max_train_seconds if self.training else self.cfg.data.max_eval_seconds
            return np.minimum(self.durations, cap)
        return self.df["text"].astype(str).str.len().to_numpy(np.float64)

    def _rng(self, idx: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, idx])

    def vote_target(self, idx: int) -> np.ndarray:
        """A row's annotator distribution over the classes (training: after this epoch's annotator dropout); a
        class row without votes: its one-hot label; other rows without votes: zeros (no target)."""
        votes, k = self.votes[idx], len(self.labels)
        if not len(votes):
            return np.eye(k, dtype=np.float32)[self.label_idx[idx]] if self.label_idx[idx] >= 0 else np.zeros(k, np.float32)
        dropout = self.cfg.data.annotator_dropout if self.training else 0.0
        return annotator_targets([votes], [self.rows[idx]["utt_id"]], k, dropout=dropout, seed=self.seed,
                                 epoch=self.epoch)[0]

    def speed_factor(self, idx: int) -> float:
        """The speed-perturbation factor of a row in this epoch: one of data.speed_perturb in training, else 1.0.

        Every row's factor of an epoch is drawn at once from (seed, epoch) (a generator per row cost more than the
        rest of a pooled-vector item), so it stays a function of (seed, epoch, row) for resume and DDP."""
        factors = self.cfg.data.speed_perturb
        if not self.training or not factors:
            return 1.0
        if self._speeds[0] != self.epoch:
            draws = np.random.default_rng([self.seed, self.epoch, 1]).integers(len(factors), size=len(self))
            self._speeds = (self.epoch, draws)
        return float(factors[int(self._speeds[1][idx])])

    def _crop(self, n: int, max_n: int, idx: int) -> tuple[int, int]:
        """(start, stop) of a random window in training, of the first max_n in evaluation."""
        if n <= max_n:
            return 0, n
        start = int(self._rng(idx).integers(0, n - max_n + 1)) if self.training else 0
        return start, start + max_n

    def _audio(self, idx: int, row: dict[str, Any]) -> dict[str, Any]:
        seconds = self.cfg.data.max_train_seconds if self.training else self.cfg.data.max_eval_seconds
        cached = self.cached.get("audio")
        speed = self.speed_factor(idx)
        if cached is not None:
            key = {"utt_id": row["utt_id"], "path": row["path"]}
            if speed != 1.0:
                key["speed"] = speed
            dur = float(self.durations[idx]) / speed if self.durations is not None else 0.0
            if cached.pooled is not None:  # the whole clip's vector, or the vector of the crop's frames
                vector, t = cached.pooled.get(key)
                start, stop = self._crop(t, max(1, int(math.ceil(t * seconds / dur))) if dur > 0 else t, idx)
                if (start, stop) == (0, t):
                    return {"pooled_audio": vector}
                return {"pooled_audio": cached.pooled.pool(cached.frames(key)[..., start:stop, :])}
            feats = cached.frames(key)
            t = feats.shape[-2]
            max_t = max(1, int(math.ceil(t * seconds / dur))) if dur > 0 else t
            start, stop = self._crop(t, max_t, idx)
            return {"cached_audio": feats[..., start:stop, :]}
        if self.waveforms is not None:
            wav = self.waveforms[idx]
        else:
            wav = load_audio(row["path"], sample_rate=self.cfg.data.sample_rate, min_seconds=self.cfg.data.min_seconds)
        if speed != 1.0:
            wav = speed_perturb(wav, speed, self.cfg.data.sample_rate)
        start, stop = self._crop(len(wav), int(seconds * self.cfg.data.sample_rate), idx)
        return {"wav": wav[start:stop]}

    def __getitem__(self, idx: int) -> Optional[dict[str, Any]]:
        row = self.rows[idx]
        item: dict[str, Any] = {"index": idx, "utt_id": str(row["utt_id"]), "text": str(row.get("text", "") or "")}
        if self.needs_audio:
            try:
                item.update(self._audio(idx, row))
            except AudioError as e:
                logger.warning("skipping '%s': %s", item["utt_id"], e)
                return None
        if self.context:
            item["context"] = str(row[CONTEXT_COLUMN] or "")
        cached_text = self.cached.get("text")
        if self.needs_text and cached_text is not None:
            key = {"utt_id": item["utt_id"], "text": item["text"], "context": item.get("context", "")}
            item["cached_text"] = cached_text.frames(key)
        item["label"] = int(self.label_idx[idx])
        if self.soft is not None:
            item["soft_label"] = self.soft[idx]
        elif self.votes is not None:
            item["soft_label"] = self.vote_target(idx)
        if self.attributes is not None:
            item["attributes"] = self.attributes[idx]
        if self.auxiliary is not None:
            item[AUXILIARY_KEY] = self.auxiliary[idx]
        return item


def collate(items: list[Optional[dict[str, Any]]]) -> dict[str, Any]:
    """Batch dict of docs/architecture.md from dataset items; items that failed to load (None) are dropped."""
    kept = [it for it in items if it is not None]
    batch: dict[str, Any] = {"skipped": len(items) - len(kept), "size": len(kept)}
    if not kept:
        return batch
    batch["index"] = torch.tensor([it["index"] for it in kept], dtype=torch.long)
    batch["utt_id"] = [it["utt_id"] for it in kept]
    batch["text"] = [it["text"] for it in kept]
    if "context" in kept[0]:
        batch["context"] = [it["context"] for it in kept]
    if "wav" in kept[0]:
        lengths = torch.tensor([len(it["wav"]) for it in kept], dtype=torch.long)
        wav = torch.zeros((len(kept), int(lengths.max())), dtype=torch.float32)
        for i, it in enumerate(kept):
            wav[i, : len(it["wav"])] = torch.from_numpy(np.asarray(it["wav"], dtype=np.float32))
        batch["wav"], batch["wav_lengths"] = wav, lengths
    for key in ("cached_audio", "cached_text"):
        if key in kept[0]:
            padded = pad_frames([it[key] for it in kept], dtype=torch.float32)
            batch[key], batch[f"{key}_mask"] = padded.features, padded.mask
    if "pooled_audio" in kept[0]:
        batch["pooled_audio"] = torch.stack([it["pooled_audio"] for it in kept])
    batch["label"] = torch.tensor([it["label"] for it in kept], dtype=torch.long)
    if "soft_label" in kept[0]:
        batch["soft_label"] = torch.from_numpy(np.stack([it["soft_label"] for it in kept]))
    if "attributes" in kept[0]:
        batch["attributes"] = torch.from_numpy(np.stack([it["attributes"] for it in kept]))
    if AUXILIARY_KEY in kept[0]:
        batch[AUXILIARY_KEY] = [it[AUXILIARY_KEY] for it in kept]
    return batch
