"""Scripts the distributed tests run under torchrun (`python -m torch.distributed.run ... tests/ddp_probes.py MODE`).

Each rank writes what it did to OUT/rank<r>.json, so a test can check the shares were disjoint and the union whole:
- `cache CFG.json OUT`: `job.fill_caches` on a tiny corpus (every utterance each rank encoded and attempted);
- `transcribe MANIFEST CACHE OUT`: `transcribe_frame` with a cheap transcriber (the clips each rank decoded);
- `group DEVICE OUT`: the trainer's process group (`process_group_backend`) even in a world of one, its collectives
  and one DistributedDataParallel step on DEVICE (cpu or cuda).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusion_ser.training.distributed import DistInfo


def _write(out: Path, rank: int, record: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{rank}.json").write_text(json.dumps(record, indent=1, default=str))


def probe_cache(cfg_json: str, out: Path) -> None:
    """fill_caches under torchrun, with a cache that records which utterances this rank computed or attempted."""
    from fusion_ser.config import load_config
    from fusion_ser.data.feature_cache import FeatureCache
    from fusion_ser.data.selection import load_run_data
    from fusion_ser.device import resolve_device
    from fusion_ser.models.factory import build_model
    from fusion_ser.training import distributed as D
    from fusion_ser.training.job import feature_caches, fill_caches

    class RecordingCache(FeatureCache):
        attempts: list[str] = []

        def _compute(self, encoder: Any, item: dict, path: Path) -> np.ndarray:
            self.attempts.append(str(item["utt_id"]))
            return super()._compute(encoder, item, path)

    spec = json.loads(Path(cfg_json).read_text())
    dist = D.init_distributed()
    torch.set_num_threads(1)
    cfg = load_config(None, spec["overrides"])
    data = load_run_data(cfg, spec["manifest"])
    model = build_model(cfg, data.labels, train_labels=data.train["label"].tolist())
    cached = [dataclasses.replace(c, cache=RecordingCache(c.cache.root, sample_rate=c.cache.sample_rate,
                                                          min_seconds=c.cache.min_seconds,
                                                          max_seconds=c.cache.max_seconds))
              for c in feature_caches(model, cfg)]
    device = resolve_device(cfg.train.device)
    data = fill_caches(cached, data, dist, device=device)
    _write(out, dist.rank, {"attempts": RecordingCache.attempts, "device": str(next(cached[0].encoder.parameters()).device),
                            "rows": {s: sorted(getattr(data, s)["utt_id"].astype(str)) for s in ("train", "dev", "test")},
                            "dropped": sorted(data.screen.dropped)})
    D.cleanup(dist)


class LengthTranscriber:
    """Text = the clip's sample count; clips louder than 0.5 peak 'crash' the decoder (to test failures)."""

    backend = "length"

    def __init__(self) -> None:
        self.seen: list[int] = []

    def cache_id(self) -> str:
        return "length-v1"

    def transcribe_batch(self, audios: list[np.ndarray]) -> list[str]:
        if any(np.abs(a).max() > 0.5 for a in audios):
            raise RuntimeError("decoder blew up")
        self.seen += [len(a) for a in audios]
        return [f"n{len(a)}" for a in audios]


def probe_transcribe(manifest: str, cache_dir: str, out: Path) -> None:
    """transcribe_frame under torchrun: every rank's clips, texts and the summary it returns."""
    import pandas as pd

    from fusion_ser.training import distributed as D
    from fusion_ser.transcribe import TranscriptCache, transcribe_frame

    dist = D.init_distributed()
    tr = LengthTranscriber()
    df = pd.read_csv(manifest, keep_default_na=False)
    got, summary = transcribe_frame(df, tr, TranscriptCache(cache_dir), batch_size=2, dist=dist)
    _write(out, dist.rank, {"seen": tr.seen, "text": list(got["text"]), "summary": dataclasses.asdict(summary)})
    D.cleanup(dist)


class GroupInfo(DistInfo):
    """A DistInfo whose helpers take their collective path even in a world of one."""

    @property
    def enabled(self) -> bool:
        return True


def probe_group(device_name: str, out: Path) -> None:
    """The process group the trainer makes on this device, built even in a world of one (init_distributed skips
    it there), the distributed helpers' collectives and one step of the model they wrap; rank 0 records it."""
    import torch.distributed as dist

    from fusion_ser.training import distributed as D

    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    cuda = device_name == "cuda"
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend=D.process_group_backend(cuda))
    info = GroupInfo(rank=rank, world_size=world, local_rank=local)
    t = torch.full((3,), float(rank + 1), device=device)
    dist.all_reduce(t)  # a tensor on the device: nccl on CUDA
    sums = D.all_reduce_sum([1.0, float(rank)], info)  # CPU float64: gloo
    gathered = D.all_gather_object({"rank": rank}, info)
    told = D.broadcast_object({"from": rank}, info)
    D.barrier(info)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).to(device)
    wrapped = D.wrap_model(model, info, device)
    x = torch.randn(6, 4, device=device)
    loss = torch.nn.functional.cross_entropy(wrapped(x), torch.tensor([0, 1, 0, 1, 0, 1], device=device))
    loss.backward()
    if rank == 0:
        _write(out, rank, {"backend": str(dist.get_backend()), "all_reduce": t.tolist(), "sums": sums,
                           "gathered": gathered, "told": told, "wrapped": type(wrapped).__name__,
                           "loss": float(loss), "grad": float(model[0].weight.grad.abs().sum()), "world": world})
    dist.destroy_process_group()


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "cache":
        probe_cache(args[0], Path(args[1]))
    elif mode == "transcribe":
        probe_transcribe(args[0], args[1], Path(args[2]))
    elif mode == "group":
        probe_group(args[0], Path(args[1]))
    else:
        raise SystemExit(f"unknown probe '{mode}'")
