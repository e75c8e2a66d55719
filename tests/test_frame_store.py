"""Fast reads of the feature cache: pooled vectors instead of frames for parameter-free pooling (same model outputs as
the frame path, vectors equal to numpy's mean/std of the cached frames, computed once, a damaged file recomputed),
frames held in memory (identical batches to disk reads, within the budget), and exact resume on the pooled path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fusion_ser.config import load_config
from fusion_ser.data.dataset import CachedInput, EmotionDataset, collate
from fusion_ser.data.feature_cache import FeatureCache
from fusion_ser.data import frame_store
from fusion_ser.data.frame_store import FrameMemory
from fusion_ser.data.manifest import read_manifest
from fusion_ser.models.factory import build_model
from fusion_ser.training.inference import eval_loader
from fusion_ser.training.job import feature_caches, train_run
from tests.test_trainer import FitSpy, make_corpus

LABELS = ["anger", "happiness", "sadness"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return make_corpus(tmp_path_factory.mktemp("frame_store_corpus"), n_speakers=4, per_class=2)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One feature cache for the module (Whisper frames are encoded once)."""
    return tmp_path_factory.mktemp("frame_store_cache")


def whisper_cfg(cache_dir: Path, *extra: str):
    """The offline default's shape (all Whisper layers side by side, mean+std, standardised pooled vector)."""
    return load_config(None, ["audio_encoder.type=ct2_whisper", "audio_encoder.layers=concat", "pooling.type=mean_std",
                              "head.standardize_pooled=true", "head.hidden_dim=32", "head.dropout=0.3",
                              "train.epochs=3", "train.batch_size=4", "optim.lr_head=0.003", "optim.warmup_ratio=0.0",
                              "train.report=false", f"train.cache_dir={cache_dir}", *extra])


def frames_and_rows(cfg, corpus: Path):
    df = read_manifest(corpus)
    df["path"] = [str(corpus.parent / p) for p in df["path"]]
    model = build_model(cfg, LABELS, train_labels=df["label"].tolist())
    cached = feature_caches(model, cfg)
    items = [{"utt_id": r.utt_id, "path": r.path} for r in df.itertuples()]
    items += [dict(it, speed=s) for s in cfg.data.speed_perturb if s != 1.0 for it in items]
    assert not cached[0].cache.ensure(cached[0].encoder, items).failed
    return model, cached, df


def outputs(model, dataset: EmotionDataset, epoch: int = 0) -> tuple[np.ndarray, list[str]]:
    dataset.set_epoch(epoch)
    model.eval()
    logits, ids = [], []
    with torch.no_grad():
        for batch in eval_loader(dataset, dataset.cfg):
            logits.append(model(batch).logits.numpy())
            ids += batch["utt_id"]
    return np.concatenate(logits), ids


def test_pooled_vectors_give_the_frame_paths_outputs(corpus, cache) -> None:
    cfg = whisper_cfg(cache, "data.speed_perturb=[0.9, 1.0, 1.1]", "data.max_train_seconds=0.6")
    model, cached, df = frames_and_rows(cfg, corpus)
    assert cached[0].pooled is not None
    plain = [dataclasses.replace(cached[0], pooled=None, memory=None)]
    for training in (False, True):  # training: speed copies and random crops of the clips over 0.6 s
        ds_pooled = EmotionDataset(df, cfg, LABELS, training=training, cached=cached)
        ds_frames = EmotionDataset(df, cfg, LABELS, training=training, cached=plain)
        assert "pooled_audio" in ds_pooled[0] and "cached_audio" in ds_frames[0]
        for epoch in (1, 2):
            a, ids_a = outputs(model, ds_pooled, epoch)
            b, ids_b = outputs(model, ds_frames, epoch)
            assert ids_a == ids_b
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # the vector of a whole clip is numpy's mean and std over its frames, every layer side by side
    store = cached[0].pooled
    row = df.iloc[0]
    frames = cached[0].cache.get(cached[0].encoder, {"utt_id": row.utt_id, "path": row.path}).float().numpy()
    stack = frames.transpose(1, 0, 2).reshape(frames.shape[1], -1)  # (T, L*D)
    vector, t = store.get({"utt_id": row.utt_id, "path": row.path})
    assert t == frames.shape[1]
    std = np.sqrt(np.maximum(stack.var(0), 1e-5))  # the pooling's variance floor
    np.testing.assert_allclose(vector.numpy(), np.concatenate([stack.mean(0), std]), rtol=1e-4, atol=1e-4)


def test_pooled_vectors_are_stored_once_and_a_damaged_file_is_recomputed(corpus, cache, tmp_path, monkeypatch) -> None:
    cfg = whisper_cfg(cache)
    model, cached, df = frames_and_rows(cfg, corpus)
    item = {"utt_id": df.iloc[0].utt_id, "path": df.iloc[0].path}
    key = cached[0].cache.item_key(item)
    files = [cached[0].pooled.directory / key[:2] / f"{key}.npy"]
    files[0].unlink(missing_ok=True)
    frame_store._PROCESS_VECTORS.clear()  # vectors of earlier tests in this process
    first, _ = cached[0].pooled.get(item)
    assert files[0].is_file()
    reads: list[str] = []
    real_get = FeatureCache.get
    monkeypatch.setattr(FeatureCache, "get", lambda self, enc, it: reads.append(it["utt_id"]) or real_get(self, enc, it))
    again, _ = frames_and_rows(cfg, corpus)[1][0].pooled.get(item)  # another run of this process: from memory
    assert reads == [] and torch.equal(first, again)
    frame_store._PROCESS_VECTORS.clear()  # as in a new process
    _, fresh, _ = frames_and_rows(cfg, corpus)  # another run on the same cache: the vector comes from its file
    again, _ = fresh[0].pooled.get(item)
    assert reads == [] and torch.equal(first, again)
    files[0].write_bytes(files[0].read_bytes()[:40])  # truncated
    frame_store._PROCESS_VECTORS.clear()
    _, fresh, _ = frames_and_rows(cfg, corpus)
    rebuilt, _ = fresh[0].pooled.get(item)
    assert reads == [item["utt_id"]] and torch.equal(first, rebuilt)
    # a pooling with parameters, frame standardisation or trained layer weights never take the pooled path
    for extra in ("pooling.type=attentive_stats", "head.standardize_frames=true", "audio_encoder.layers=weighted"):
        other = build_model(whisper_cfg(cache, extra), LABELS, train_labels=LABELS)
        assert other.frame_pooler() is None, extra


def test_frames_in_memory_give_the_batches_of_disk_reads(corpus, cache, tmp_path, monkeypatch) -> None:
    cfg = whisper_cfg(cache, "pooling.type=attentive_stats", "data.speed_perturb=[0.9, 1.0, 1.1]",
                      "data.max_train_seconds=0.6")
    model, cached, df = frames_and_rows(cfg, corpus)
    assert cached[0].pooled is None and cached[0].memory is not None
    disk = [dataclasses.replace(cached[0], memory=None)]
    reads: list[str] = []
    real_get = FeatureCache.get
    monkeypatch.setattr(FeatureCache, "get", lambda self, enc, it: reads.append(it["utt_id"]) or real_get(self, enc, it))
    ds_memory = EmotionDataset(df, cfg, LABELS, training=True, cached=cached)
    ds_disk = EmotionDataset(df, cfg, LABELS, training=True, cached=disk)
    for epoch in (1, 2, 3):
        ds_memory.set_epoch(epoch)
        ds_disk.set_epoch(epoch)
        order = np.random.default_rng(epoch).permutation(len(df))
        a, b = collate([ds_memory[i] for i in order]), collate([ds_disk[i] for i in order])
        assert torch.equal(a["cached_audio"], b["cached_audio"]) and torch.equal(a["cached_audio_mask"],
                                                                                   b["cached_audio_mask"])
    memory = cached[0].memory
    keys = {(u, s) for u in df["utt_id"] for s in (0.9, 1.0, 1.1)}
    assert len(memory) <= len(keys) and memory.used > 0
    assert len(reads) == 3 * len(df) + len(memory)  # disk: every read; memory: each clip and copy once
    tiny = FrameMemory(budget=memory.used // len(memory) // 2)  # smaller than any entry: nothing is held
    frames = tiny.get(cached[0].cache, cached[0].encoder, {"utt_id": df.iloc[0].utt_id, "path": df.iloc[0].path})
    assert len(tiny) == 0 and tiny.used == 0 and frames.shape[-1] == 384


def test_pooled_training_matches_the_frame_path_and_resumes_exactly(corpus, cache, tmp_path, monkeypatch) -> None:
    cfg = whisper_cfg(cache, "data.speed_perturb=[0.9, 1.0, 1.1]", "train.refit_on_dev=true",
                      "optim.ema_decay=0.9", "train.selection_metric=loss")
    full = train_run(cfg, corpus, tmp_path / "full")
    fits: list = []
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, corpus, tmp_path / "r", trainer_cls=FitSpy.make(fits, ("main", 2)))
    # train.checkpoint_seconds (30 s): these epochs take less, so the checkpoint is epoch 1's and epoch 2 trains again
    assert len(pd.read_csv(tmp_path / "r" / "train_log.csv")) == 1
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, corpus, tmp_path / "r", trainer_cls=FitSpy.make(fits, ("refit", 1)))
    resumed = train_run(cfg, corpus, tmp_path / "r")
    assert full.read_metrics() == resumed.read_metrics()
    for split in ("dev", "test"):
        pd.testing.assert_frame_equal(full.read_predictions(split), resumed.read_predictions(split))
    from fusion_ser.models.unimodal import UnimodalModel

    monkeypatch.setattr(UnimodalModel, "frame_pooler", lambda self: None)  # the frame path, batch by batch
    frames = train_run(cfg, corpus, tmp_path / "frames")
    for split in ("dev", "test"):
        a, b = full.read_predictions(split), frames.read_predictions(split)
        probs = [c for c in a.columns if c.startswith("prob_")]
        np.testing.assert_allclose(a[probs].to_numpy(), b[probs].to_numpy(), atol=1e-4)
