"""Does every step hold at MSP-Podcast scale? Time and peak memory of each step at growing corpus sizes.

A synthetic corpus in the MSP-Podcast release layout (Audios/*.wav, Labels/labels_consensus.csv) is built at each
size: ~50 short base clips (noise + sines, 1.5-4 s, 16 kHz) reused through hard links under distinct file names, so
every code path sees distinct utterances (the caches key a file by its resolved path, size and mtime; a symlink
would resolve to its target and collide). One speaker per 50 turns; speaker-independent splits of 70 / 20 / 10 %
of the rows (Train / Development / Test1). Each step runs in a fresh Python subprocess (this script re-invoked
with --step NAME --n N --root R), which reports the step's seconds and its own peak RSS (ru_maxrss, everything
included). Timed steps:

  prepare         fusion-ser prepare msp-podcast ROOT -o manifest.csv --set transcripts=false
  prepare_check   the same with --check-audio (decodes every clip)
  read_manifest   fusion_ser.data.manifest.read_manifest(manifest.csv) with validation
  tcache_get      TranscriptCache.get for every row (the cache is filled first, untimed, with fake transcripts)
  fcache_ensure   FeatureCache.ensure over every row of a full cache (all reused; filled first, untimed)
  fcache_get      FeatureCache.get for every row
  load_epoch      load_run_data (read + screen) + EmotionDataset(train, raw audio) + BucketBatchSampler +
                  DataLoader(collate), batch 32, one epoch, no model
  fuse            fusion-ser fuse a b c -o late --method lr --form full (dev = 20 % of the rows)
  ensemble        fusion-ser ensemble a b c -o ens --method mean
  compare         fusion-ser compare a b c late ens --baseline a -o table.md --n-boot 1000
  export          fusion-ser export-submission late --split test -o sub.csv

The feature cache is filled with FeatureCache.ensure through a frozen fbank encoder when its cache_id() is not None;
it is None (the fbank encoder always trains), so a tiny frozen Encoder defined here (4 statistics per 100 ms) is
used. The transcript cache is filled with TranscriptCache.put, its SQLite connection set to synchronous=OFF for the
untimed fill only (a separate process, reopened with defaults, does the timed look-ups).

The table gives seconds and peak RSS (MB) per step and size, and the growth exponents: the least-squares slope of
log(wall seconds), of log(CPU seconds) and of log(peak RSS - bare-import baseline) against log(size). A step is
flagged when its time exponent is > 1.1 (marked `wall?` instead when only the wall time grows that fast and its
CPU time does not: waiting on a busy machine or on I/O, not computing), or (fuse, compare) when its peak RSS at the
largest size is over 2 GB.

Timings on a shared machine are noisy: each child runs with one OMP/MKL/OpenBLAS thread (--threads), and each
timed step runs up to three times (--repeat; once when it takes over 10 s), keeping the fastest.

`fuse` uses --form full at every size (the default --form auto switches from member weights to the full matrix
at 4,000 labelled dev rows, which would mix two algorithms in one exponent); --fuse-form auto restores it.

Usage:
  python bench/scale.py                     # sizes 10000 30000 100000
  python bench/scale.py --quick             # sizes 2000 6000 20000
  python bench/scale.py --sizes 5000 15000 50000 --root /tmp/scale --keep
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

DEFAULT_SIZES = [10000, 30000, 100000]
QUICK_SIZES = [2000, 6000, 20000]
N_BASE_CLIPS = 50
TURNS_PER_SPEAKER = 50
DEV_SHARE, TEST_SHARE = 0.20, 0.10
BATCH_SIZE = 32
TRANSCRIBER_ID = "bench-scale-fake-transcriber"
TINY_CACHE_ID = "bench-scale-tiny-stats-v1"
# MSP-Podcast-like class shares of the consensus codes (every class present in every split)
CODE_SHARES = {"N": 0.33, "H": 0.20, "A": 0.10, "S": 0.10, "C": 0.08, "U": 0.07, "D": 0.06, "F": 0.06}
MEMBER_STRENGTH = {"a": 1.0, "b": 1.4, "c": 1.8}  # how clearly each synthetic member run sees the true class

TIMED = ["prepare", "prepare_check", "read_manifest", "tcache_get", "fcache_ensure", "fcache_get", "load_epoch",
         "fuse", "ensemble", "compare", "export"]
SETUP = ["gen", "tcache_fill", "fcache_fill", "make_runs"]
ORDER = ["gen", "prepare", "prepare_check", "read_manifest", "tcache_fill", "tcache_get", "fcache_fill",
         "fcache_ensure", "fcache_get", "load_epoch", "make_runs", "fuse", "ensemble", "compare", "export"]
# steps that depend on another's output: when that one failed they are skipped
NEEDS = {"prepare": "gen", "prepare_check": "gen", "read_manifest": "prepare", "tcache_fill": "prepare",
         "tcache_get": "tcache_fill", "fcache_fill": "prepare", "fcache_ensure": "fcache_fill",
         "fcache_get": "fcache_fill", "load_epoch": "prepare", "make_runs": "prepare", "fuse": "make_runs",
         "ensemble": "make_runs", "compare": "ensemble", "export": "fuse"}
TIME_EXPONENT_LIMIT = 1.1
MEMORY_LIMIT_MB = 2048.0
MEMORY_CHECKED = ("fuse", "compare")
CHILD_TIMEOUT_S = 3600
LONG_STEP_S = 10.0  # a timed step that took longer is not repeated
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# ---------------------------------------------------------------- child side: one step per process


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (ru_maxrss is in KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _baseline_imports() -> None:
    """Every child imports what the baseline measures, so the baseline is a floor of every step's RSS."""
    import fusion_ser.cli.main  # noqa: F401
    import pandas  # noqa: F401
    import torch  # noqa: F401


class Paths:
    """Where one size's corpus, manifests, caches and runs live."""

    def __init__(self, root: str | Path, n: int):
        self.dir = Path(root).resolve() / f"n{n}"
        self.corpus = self.dir / "corpus"
        self.audios = self.corpus / "Audios"
        self.labels = self.corpus / "Labels" / "labels_consensus.csv"
        self.base = self.dir / "base_clips"
        self.manifest = self.dir / "manifest.csv"
        self.manifest_checked = self.dir / "manifest_checked.csv"
        self.tcache = self.dir / "transcript_cache"
        self.fcache = self.dir / "feature_cache"
        self.runs = self.dir / "runs"


class Timing(NamedTuple):
    """Wall seconds and CPU seconds (user + system, this process) of a timed block, or a point in time."""

    wall: float
    cpu: float


def now() -> Timing:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return Timing(time.perf_counter(), r.ru_utime + r.ru_stime)


def since(start: Timing) -> Timing:
    end = now()
    return Timing(end.wall - start.wall, end.cpu - start.cpu)


def timing(t: Timing, **extra) -> dict:
    """A timed step's result: wall and CPU seconds, and its extra figures."""
    return {"seconds": t.wall, "cpu": t.cpu, "extra": extra}


def _cli(args: list[str]) -> tuple["Timing", str]:
    """Run one fusion-ser command in this process (click's CliRunner); returns (its timing, output)."""
    from click.testing import CliRunner

    from fusion_ser.cli.main import COMMANDS, main

    import importlib

    importlib.import_module(COMMANDS[args[0]])  # the command's module loads before the clock starts
    runner = CliRunner()
    t = now()
    result = runner.invoke(main, args, catch_exceptions=False)
    seconds = since(t)
    if result.exit_code != 0:
        raise RuntimeError(f"fusion-ser {' '.join(args)} exited with {result.exit_code}:\n{result.output}")
    return seconds, result.output


def step_gen(p: Paths, n: int) -> dict:
    """Write the base clips, hard-link them into Audios/ under n distinct names, write labels_consensus.csv."""
    import csv

    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)
    p.base.mkdir(parents=True, exist_ok=True)
    p.audios.mkdir(parents=True, exist_ok=True)
    p.labels.parent.mkdir(parents=True, exist_ok=True)
    base = []
    for i in range(N_BASE_CLIPS):
        seconds = rng.uniform(1.5, 4.0)
        t = np.arange(int(seconds * 16000)) / 16000.0
        wav = 0.05 * rng.standard_normal(len(t))
        for _ in range(3):
            wav += rng.uniform(0.02, 0.2) * np.sin(2 * np.pi * rng.uniform(80, 3000) * t + rng.uniform(0, 6.3))
        wav *= 0.8 / max(1e-6, np.abs(wav).max())
        path = p.base / f"base_{i:02d}.wav"
        sf.write(str(path), wav.astype(np.float32), 16000, subtype="PCM_16")
        base.append(path)
    n_speakers = math.ceil(n / TURNS_PER_SPEAKER)
    codes = list(CODE_SHARES)
    shares = np.array(list(CODE_SHARES.values()))
    emo = rng.choice(codes, size=n, p=shares / shares.sum())
    attrs = np.round(rng.uniform(1.0, 7.0, size=(n, 3)), 1)
    train_end, dev_end = 1.0 - DEV_SHARE - TEST_SHARE, 1.0 - TEST_SHARE
    t0 = now()
    with open(p.labels, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"])
        for i in range(n):
            spk = i // TURNS_PER_SPEAKER
            where = (spk + 0.5) / n_speakers  # splits by speaker (speaker-independent), ~70 / 20 / 10 % of rows
            split = "Train" if where < train_end else "Development" if where < dev_end else "Test1"
            name = f"MSP-PODCAST_{spk + 1:04d}_{i:06d}.wav"
            os.link(base[i % N_BASE_CLIPS], p.audios / name)
            w.writerow([name, emo[i], attrs[i, 0], attrs[i, 1], attrs[i, 2], spk + 1,
                        "Female" if spk % 2 else "Male", split])
    return {"extra": {"link_s": round(since(t0).wall, 2), "speakers": n_speakers}}


def step_prepare(p: Paths, n: int, check: bool = False) -> dict:
    out = p.manifest_checked if check else p.manifest
    args = ["prepare", "msp-podcast", str(p.corpus), "-o", str(out), "--set", "transcripts=false"]
    if check:
        args.append("--check-audio")
    import fusion_ser.data.prepare  # noqa: F401

    seconds, output = _cli(args)
    rows = sum(1 for _ in open(out, encoding="utf-8")) - 1
    if rows != n:
        raise RuntimeError(f"prepare wrote {rows} rows, expected {n}:\n{output}")
    return timing(seconds)


def step_prepare_check(p: Paths, n: int) -> dict:
    return step_prepare(p, n, check=True)


def step_read_manifest(p: Paths, n: int) -> dict:
    from fusion_ser.data.manifest import read_manifest

    t = now()
    df = read_manifest(p.manifest)
    seconds = since(t)
    assert len(df) == n, len(df)
    return timing(seconds)


def _manifest_paths(p: Paths) -> tuple[list[str], list[str]]:
    from fusion_ser.data.manifest import read_manifest

    df = read_manifest(p.manifest, validate=False)
    return df["utt_id"].tolist(), df["path"].tolist()


def step_tcache_fill(p: Paths, n: int) -> dict:
    from fusion_ser.transcribe.cache import TranscriptCache

    ids, paths = _manifest_paths(p)
    cache = TranscriptCache(p.tcache)
    # put() commits per clip (its contract); without fsync per commit the untimed fill takes seconds, not minutes
    cache.conn.execute("PRAGMA synchronous=OFF")
    t = now()
    for u, path in zip(ids, paths):
        cache.put(TRANSCRIBER_ID, path, f"fake transcript of {u}", 1.0)
    seconds = since(t)
    assert len(cache) == n, len(cache)
    cache.close()
    return {"extra": {"fill_s": round(seconds.wall, 2)}}


def step_tcache_get(p: Paths, n: int) -> dict:
    from fusion_ser.transcribe.cache import TranscriptCache

    ids, paths = _manifest_paths(p)
    cache = TranscriptCache(p.tcache)
    t = now()
    found = sum(cache.get(TRANSCRIBER_ID, path) is not None for path in paths)
    seconds = since(t)
    cache.close()
    if found != n:
        raise RuntimeError(f"transcript cache found {found} of {n} rows")
    return timing(seconds)


def _cache_encoder():
    """A frozen fbank encoder when it is cacheable; else a tiny frozen encoder defined here (4 stats per 100 ms)."""
    import numpy as np
    import torch

    from fusion_ser.config import AudioEncoderConfig
    from fusion_ser.encoders.audio import build_audio_encoder
    from fusion_ser.encoders.base import Encoder, EncoderOutput

    fbank = build_audio_encoder(AudioEncoderConfig(type="fbank", finetune="frozen", n_mels=40, hidden_dim=16))
    if fbank.cache_id() is not None:
        return fbank.eval(), "fbank"

    class TinyStatsEncoder(Encoder):
        """Per 100 ms block: mean, std, peak and log energy of the waveform; nothing trains."""

        modality = "audio"

        @property
        def output_dim(self) -> int:
            return 4

        def cache_id(self) -> str:
            return TINY_CACHE_ID

        def encode_for_cache(self, sample: dict) -> torch.Tensor:
            wav = np.asarray(sample["wav"], dtype=np.float32)
            block = 1600
            n = max(block, len(wav) // block * block)
            wav = np.pad(wav, (0, max(0, n - len(wav))))[:n].reshape(-1, block)
            stats = [wav.mean(1), wav.std(1), np.abs(wav).max(1), np.log(np.maximum((wav ** 2).mean(1), 1e-8))]
            return torch.from_numpy(np.stack(stats, axis=1))

        def forward(self, batch: dict) -> EncoderOutput:
            return EncoderOutput(batch["cached_audio"], batch["cached_audio_mask"])

    return TinyStatsEncoder(), "tiny (fbank frozen has cache_id() None)"


def _cache_items(p: Paths) -> list[dict]:
    ids, paths = _manifest_paths(p)
    return [{"utt_id": u, "path": path} for u, path in zip(ids, paths)]


def step_fcache_fill(p: Paths, n: int) -> dict:
    from fusion_ser.data.feature_cache import FeatureCache

    encoder, which = _cache_encoder()
    items = _cache_items(p)
    t = now()
    report = FeatureCache(p.fcache).ensure(encoder, items)
    seconds = since(t)
    if report.computed != n or report.failed:
        raise RuntimeError(f"feature cache fill: computed {report.computed} of {n}, failed {report.failed[:3]}")
    return {"extra": {"fill_s": round(seconds.wall, 2), "encoder": which}}


def step_fcache_ensure(p: Paths, n: int) -> dict:
    from fusion_ser.data.feature_cache import FeatureCache

    encoder, _ = _cache_encoder()
    items = _cache_items(p)
    cache = FeatureCache(p.fcache)
    t = now()
    report = cache.ensure(encoder, items)
    seconds = since(t)
    if report.reused != n:
        raise RuntimeError(f"feature cache ensure reused {report.reused} of {n} (computed {report.computed})")
    return timing(seconds)


def step_fcache_get(p: Paths, n: int) -> dict:
    from fusion_ser.data.feature_cache import FeatureCache

    encoder, _ = _cache_encoder()
    items = _cache_items(p)
    cache = FeatureCache(p.fcache)
    t = now()
    frames = 0
    for item in items:
        frames += int(cache.get(encoder, item).shape[-2])
    seconds = since(t)
    return timing(seconds, frames=frames)


def step_load_epoch(p: Paths, n: int) -> dict:
    """The train loader of training/trainer.py (bucketing on, batch 32) over raw audio, one epoch, no model."""
    from torch.utils.data import DataLoader

    from fusion_ser.config import Config
    from fusion_ser.data.dataset import EmotionDataset, collate
    from fusion_ser.data.sampler import BucketBatchSampler
    from fusion_ser.data.selection import load_run_data

    cfg = Config(task="categorical", modality="audio")
    cfg.train.batch_size = BATCH_SIZE
    cfg.train.bucketing = True
    t = now()
    data = load_run_data(cfg, p.manifest)
    select_s = since(t)
    train_set = EmotionDataset(data.train, cfg, data.labels, training=True, durations=data.durations["train"])
    sampler = BucketBatchSampler(train_set.lengths(), cfg.train.batch_size, shuffle=True, seed=cfg.seed)
    loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.train.num_workers)
    sampler.set_epoch(1)
    train_set.set_epoch(1)
    rss_start = peak_rss_mb()
    rss_early = None
    n_batches, n_items, padded, real = 0, 0, 0, 0
    early = max(1, len(sampler) // 10)
    for batch in loader:
        n_batches += 1
        n_items += batch["size"]
        if batch["size"]:
            padded += int(batch["wav"].numel())
            real += int(batch["wav_lengths"].sum())
        if n_batches == early:
            rss_early = peak_rss_mb()
    seconds = since(t)
    if n_items != len(data.train):
        raise RuntimeError(f"one epoch yielded {n_items} items, the train split has {len(data.train)}")
    return timing(seconds, **{
        "select_s": round(select_s.wall, 2), "epoch_s": round(seconds.wall - select_s.wall, 2), "batches": n_batches,
        "train_rows": len(data.train), "padding": round(1 - real / max(1, padded), 3),
        "rss_before_epoch_mb": round(rss_start, 1), "rss_after_10pct_mb": round(rss_early or 0.0, 1),
        "rss_end_mb": round(peak_rss_mb(), 1)})


def step_make_runs(p: Paths, n: int) -> dict:
    """Three finished categorical member runs (a, b, c) on the manifest's dev and test rows, noisy posteriors."""
    import dataclasses

    import numpy as np
    import pandas as pd
    import yaml

    from fusion_ser.config import Config
    from fusion_ser.data.manifest import read_manifest
    from fusion_ser.schema import CATEGORICAL_LABELS
    from fusion_ser.rundir import RunDir, RunInfo

    labels = list(CATEGORICAL_LABELS)
    df = read_manifest(p.manifest, validate=False)
    index = {c: i for i, c in enumerate(labels)}
    if p.runs.exists():
        shutil.rmtree(p.runs)
    p.runs.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, strength in MEMBER_STRENGTH.items():
        rd = RunDir(p.runs / name)
        rd.path.mkdir()
        cfg = dataclasses.asdict(Config(task="categorical", modality="audio"))
        cfg["_run"] = {"manifest": str(p.manifest)}
        rd.config_path.write_text(yaml.safe_dump(cfg))
        for split in ("dev", "test"):
            rows = df[df["split"] == split]
            y = rows["label"].map(index).to_numpy()
            logits = strength * np.eye(len(labels))[y] + rng.normal(0.0, 1.0, (len(rows), len(labels)))
            probs = np.exp(logits - logits.max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
            frame = pd.DataFrame({"utt_id": rows["utt_id"].to_numpy(), "label": rows["label"].to_numpy()})
            frame["pred"] = np.asarray(labels, dtype=object)[probs.argmax(1)]
            for j, c in enumerate(labels):
                frame[f"prob_{c}"] = probs[:, j]
            rd.write_predictions(split, frame)
        rd.write_info(RunInfo(kind="model", task="categorical", labels=labels, modality="audio", complete=True))
    return {"extra": {"dev_rows": int((df["split"] == "dev").sum()), "test_rows": int((df["split"] == "test").sum())}}


def _warm_fusion() -> None:
    import sklearn.linear_model  # noqa: F401
    import sklearn.model_selection  # noqa: F401

    import fusion_ser.evaluation.report  # noqa: F401
    import fusion_ser.fusion.ensemble  # noqa: F401
    import fusion_ser.fusion.late  # noqa: F401


def step_fuse(p: Paths, n: int, form: str = "full") -> dict:
    _warm_fusion()
    r = p.runs
    shutil.rmtree(r / "late", ignore_errors=True)  # a repeated try writes the run again (untimed removal)
    seconds, _ = _cli(["fuse", str(r / "a"), str(r / "b"), str(r / "c"), "-o", str(r / "late"), "--method", "lr",
                       "--form", form])
    return timing(seconds)


def step_ensemble(p: Paths, n: int) -> dict:
    _warm_fusion()
    r = p.runs
    shutil.rmtree(r / "ens", ignore_errors=True)
    seconds, _ = _cli(["ensemble", str(r / "a"), str(r / "b"), str(r / "c"), "-o", str(r / "ens"), "--method", "mean"])
    return timing(seconds)


def step_compare(p: Paths, n: int) -> dict:
    import fusion_ser.evaluation.compare  # noqa: F401

    r = p.runs
    runs = [str(r / x) for x in ("a", "b", "c", "late", "ens")]
    seconds, _ = _cli(["compare", *runs, "--baseline", str(r / "a"), "-o", str(r / "table.md"), "--n-boot", "1000"])
    return timing(seconds)


def step_export(p: Paths, n: int) -> dict:
    import fusion_ser.evaluation.submission  # noqa: F401

    r = p.runs
    seconds, _ = _cli(["export-submission", str(r / "late"), "--split", "test", "-o", str(r / "sub.csv")])
    return timing(seconds)


def run_step(name: str, n: int, root: str, fuse_form: str) -> None:
    """Child entry point: import the baseline modules, run one step, print its result as one JSON line."""
    if name == "baseline":
        _baseline_imports()
        print("RESULT " + json.dumps({"step": name, "peak_mb": peak_rss_mb()}))
        return
    _baseline_imports()
    p = Paths(root, n)
    t = now()
    if name == "fuse":
        out = step_fuse(p, n, fuse_form)
    else:
        out = globals()[f"step_{name}"](p, n)
    whole = since(t)
    out.setdefault("seconds", whole.wall)
    out.setdefault("cpu", whole.cpu)
    print("RESULT " + json.dumps({"step": name, "n": n, "seconds": out["seconds"], "cpu": out["cpu"],
                                  "peak_mb": peak_rss_mb(), "extra": out.get("extra", {})}))


# ---------------------------------------------------------------- parent side: sizes, children, table


def child(step: str, n: int, root: Path, fuse_form: str, threads: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--step", step, "--n", str(n), "--root", str(root),
           "--fuse-form", fuse_form]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
    if threads > 0:
        env.update({v: str(threads) for v in THREAD_VARS})
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"step": step, "n": n, "error": f"timed out after {CHILD_TIMEOUT_S} s"}
    wall = time.perf_counter() - t
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT "):])
            res["wall_s"] = wall
            return res
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
    return {"step": step, "n": n, "error": f"exit {proc.returncode}: " + "\n    ".join(tail)}


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(ys) against log(xs); NaN with fewer than two usable points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y is not None and y > 0]
    if len(pts) < 2:
        return float("nan")
    mx = sum(a for a, _ in pts) / len(pts)
    my = sum(b for _, b in pts) / len(pts)
    sxx = sum((a - mx) ** 2 for a, _ in pts)
    return sum((a - mx) * (b - my) for a, b in pts) / sxx if sxx > 0 else float("nan")


def table(results: dict, sizes: list[int], baseline_mb: float) -> tuple[str, list[str], list[str]]:
    """The step x size table (seconds, peak MB), the exponents, the flagged steps and the wall-only ones."""
    head = (f"{'step':<14}" + "".join(f"{f'n={n}':>20}" for n in sizes)
            + f"{'t-exp':>8}{'cpu-exp':>8}{'m-exp':>8}  flag")
    sub = f"{'':<14}" + "".join(f"{'s':>10}{'MB':>10}" for _ in sizes)
    lines = [head, sub, "-" * len(head)]
    flags, noisy = [], []
    for step in TIMED:
        cells, secs, cpus, mems = "", [], [], []
        for n in sizes:
            r = results.get((step, n))
            if r is None or "error" in r:
                cells += f"{'FAILED' if r else '-':>20}"
                secs.append(None)
                cpus.append(None)
                mems.append(None)
                continue
            cells += f"{r['seconds']:>10.2f}{r['peak_mb']:>10.0f}"
            secs.append(r["seconds"])
            cpus.append(r.get("cpu"))
            mems.append(r["peak_mb"] - baseline_mb)
        te, ce, me = slope(sizes, secs), slope(sizes, cpus), slope(sizes, mems)
        why = []
        mark = "ok"
        if te == te and te > TIME_EXPONENT_LIMIT:
            if ce == ce and ce <= TIME_EXPONENT_LIMIT:
                noisy.append(f"{step}: wall-time exponent {te:.2f} > {TIME_EXPONENT_LIMIT}, CPU-time exponent "
                             f"{ce:.2f} within it (waiting, not computing: a busy machine or I/O)")
                mark = "wall?"
            else:
                why.append(f"time exponent {te:.2f} > {TIME_EXPONENT_LIMIT} (CPU {ce:.2f})")
        last = results.get((step, sizes[-1]))
        if step in MEMORY_CHECKED and last and "error" not in last and last["peak_mb"] > MEMORY_LIMIT_MB:
            why.append(f"peak {last['peak_mb']:.0f} MB > {MEMORY_LIMIT_MB:.0f} MB at n={sizes[-1]}")
        if any(results.get((step, n)) and "error" in results[(step, n)] for n in sizes):
            why.append("failed")
        if why:
            flags.append(f"{step}: " + "; ".join(why))
            mark = "FLAG"
        fmt = lambda v: f"{v:>8.2f}" if v == v else f"{'n/a':>8}"  # noqa: E731
        lines.append(f"{step:<14}{cells}{fmt(te)}{fmt(ce)}{fmt(me)}  {mark}")
    return "\n".join(lines), flags, noisy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="corpus sizes (turns)")
    ap.add_argument("--quick", action="store_true", help=f"sizes {' '.join(map(str, QUICK_SIZES))}")
    ap.add_argument("--root", default=None, help="work folder (default: a temp dir under /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep each size's corpus, caches and runs")
    ap.add_argument("--fuse-form", default="full", choices=["full", "weights", "auto"],
                    help="--form of the fuse step (full: one algorithm at every size)")
    ap.add_argument("--threads", type=int, default=1,
                    help="OMP/MKL/OpenBLAS threads of each child (0: library defaults); 1 keeps timings steady on a "
                         "shared machine")
    ap.add_argument("--repeat", type=int, default=3,
                    help=f"run each timed step up to this many times (a fresh process each; once only when it takes "
                         f"over {LONG_STEP_S:g} s) and keep the fastest; peak RSS is the largest of the tries")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.step:
        run_step(args.step, args.n, args.root, args.fuse_form)
        return

    sizes = sorted(args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES))
    made_root = args.root is None
    root = Path(args.root or tempfile.mkdtemp(prefix="fusion_ser_scale_", dir="/tmp")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    print(f"sizes {sizes}; work folder {root}; fuse --form {args.fuse_form}; child threads "
          f"{args.threads or 'default'}; repeat {args.repeat}", flush=True)
    base = child("baseline", 0, root, args.fuse_form, args.threads)
    if "error" in base:
        sys.exit(f"baseline child failed: {base['error']}")
    baseline_mb = base["peak_mb"]
    print(f"bare-import baseline (import fusion_ser.cli.main, torch, pandas): peak RSS {baseline_mb:.0f} MB", flush=True)
    results: dict = {}
    t_all = time.perf_counter()
    for n in sizes:
        work = Paths(root, n).dir
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        for step in ORDER:
            dep = NEEDS.get(step)
            if dep and "error" in results.get((dep, n), {"error": "not run"}):
                results[(step, n)] = {"step": step, "n": n, "error": f"skipped: {dep} failed"}
                print(f"  n={n:<7} {step:<14} skipped ({dep} failed)", flush=True)
                continue
            tries = []
            for _ in range(args.repeat if step in TIMED else 1):
                tries.append(child(step, n, root, args.fuse_form, args.threads))
                if "error" in tries[-1] or tries[-1]["seconds"] > LONG_STEP_S:
                    break  # a failure repeats itself; a long step is already steady
            ok = [t for t in tries if "error" not in t]
            r = min(ok, key=lambda t: t["seconds"]) if ok else tries[0]
            if ok:
                r["peak_mb"] = max(t["peak_mb"] for t in ok)
            results[(step, n)] = r
            if "error" in r:
                print(f"  n={n:<7} {step:<14} FAILED {r['error']}", flush=True)
                continue
            kind = "setup" if step in SETUP else "timed"
            extra = " ".join(f"{k}={v}" for k, v in r.get("extra", {}).items())
            runs = f" best of {len(ok)}" if len(ok) > 1 else ""
            print(f"  n={n:<7} {step:<14} {kind} {r['seconds']:8.2f} s  peak {r['peak_mb']:6.0f} MB  "
                  f"(child wall {r['wall_s']:.1f} s{runs}) {extra}", flush=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text, flags, noisy = table(results, sizes, baseline_mb)
    print()
    print(f"Wall seconds of the step and peak RSS of its child process (MB, imports included); bare-import baseline "
          f"{baseline_mb:.0f} MB.\nExponents: least-squares slope vs log(size) of log(wall s) [t-exp], log(CPU s) "
          "[cpu-exp], log(peak MB - baseline) [m-exp].")
    print(text)
    print()
    print("flags: " + ("none" if not flags else "\n  " + "\n  ".join(flags)))
    if noisy:
        print("wall time only: " + "\n  " + "\n  ".join(noisy))
    print(f"total wall {time.perf_counter() - t_all:.0f} s")
    if made_root and not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
