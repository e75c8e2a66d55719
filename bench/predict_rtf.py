"""Real-time factor, peak memory and time per stage of `predict` (ASR + audio model + text model + fusion) on RAVDESS.

    python bench/predict_rtf.py --run demo_out/runs/late --n 48 --batch-size 8

First, end to end as a user runs it: `fusion-ser predict RUN <the clips> -o out.jsonl` in a fresh process, timed from
its start to its exit (Python start-up, imports, model loading, ASR, models, writing; the libraries' default threads),
`--cli-repeats` times. Then in-process, for the per-stage split. The run defaults to the demo's late-fusion model (run `fusion-ser demo -o demo_out` first); its audio model reads the
ASR's encoder frames (audio_encoder.window_seconds, one Whisper pass per clip; `--no-share` encodes twice). RAVDESS clips are 16 kHz
FLAC, about 3.5 s each. A warm-up call on two clips (model loading, first-call allocations) is timed separately.
Peak memory: the process's peak resident set size (getrusage ru_maxrss: Python, torch, CTranslate2 together) and
the peak of Python-level allocations during the measured call (tracemalloc; native tensors are not in it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import resource
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd

RAVDESS = Path("/work/shared/data/ravdess")


def cli_end_to_end(run: str, paths: list[str], batch_size: int, device: str, k: int) -> None:
    """`fusion-ser predict` in a new process on `paths`: wall time from spawn to exit, and what the CLI printed."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(Path(sys.executable).with_name("fusion-ser")), "predict", run, *paths, "-o", f"{tmp}/out.jsonl",
               "--batch-size", str(batch_size), "--device", device]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise SystemExit(f"fusion-ser predict failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        audio_s = sum(json.loads(line)["duration"] for line in Path(f"{tmp}/out.jsonl").read_text().splitlines())
    print(f"end to end, CLI run {k}: {len(paths)} files, {audio_s:.1f} s of audio in {wall:.2f} s from process start "
          f"to exit: {audio_s / wall:.1f}x real time")
    for line in done.stdout.splitlines():
        if line.startswith(("Audio:", "Time per stage")):
            print(f"  {line}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="demo_out/runs/late", help="run dir to predict with (the demo's fused model)")
    ap.add_argument("--data", default=str(RAVDESS), help="RAVDESS folder with manifest.csv")
    ap.add_argument("--n", type=int, default=48, help="clips to predict (a seeded sample)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--beam-size", type=int, default=None,
                    help="ASR beam (default: predict's own transcriber, beam 5); 1 = greedy decoding")
    ap.add_argument("--threads", type=int, default=0, help="torch and ASR CPU threads (0: the libraries' defaults)")
    ap.add_argument("--asr-threads", type=int, default=None, help="ASR CPU threads (default: --threads)")
    ap.add_argument("--no-share", action="store_true",
                    help="the audio model encodes every clip itself even where it could take the ASR's encoder frames")
    ap.add_argument("--cli-repeats", type=int, default=2, help="end-to-end CLI runs (0: none)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from fusion_ser.predict import load

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    manifest = pd.read_csv(Path(args.data) / "manifest.csv")
    clips = manifest.sample(n=min(args.n, len(manifest)), random_state=args.seed).reset_index(drop=True)
    paths = [str(Path(args.data) / p) for p in clips["path"]]

    for k in range(args.cli_repeats):
        cli_end_to_end(args.run, paths, args.batch_size, args.device, k + 1)

    t0, c0 = time.perf_counter(), time.process_time()
    transcriber = None
    asr_threads = args.threads if args.asr_threads is None else args.asr_threads
    if args.beam_size is not None or asr_threads:
        from fusion_ser.transcribe import get_transcriber

        options = {"beam_size": args.beam_size} if args.beam_size is not None else {}
        transcriber = get_transcriber("faster-whisper", device=args.device, cpu_threads=asr_threads, **options)
    predictor = load(args.run, device=args.device, transcriber=transcriber)
    if args.no_share and predictor.needs_text:
        from fusion_ser.shared_pass import SharedPass

        predictor._shared = SharedPass(predictor.transcriber(), None)  # no encoder takes the ASR's frames
    load_s, load_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    predictor.predict(paths[:2], batch_size=args.batch_size)
    warm_s = time.perf_counter() - t0
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    served_before = predictor._sharing().served if predictor.needs_text else 0
    tracemalloc.start()
    t0, c0 = time.perf_counter(), time.process_time()
    results = predictor.predict(paths, batch_size=args.batch_size)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    audio_s = float(sum(r["duration"] for r in results if "error" not in r))
    stages = predictor.last_timings
    staged = sum(stages.values())
    print(f"run: {args.run} (kind {predictor.info.kind}, modality {predictor.info.modality}), device {args.device}")
    print(f"clips: {len(results)} RAVDESS clips, {audio_s:.1f} s of audio, batch size {args.batch_size}, "
          f"errors {sum('error' in r for r in results)}")
    print(f"load run: {load_s:.2f} s ({load_cpu:.2f} CPU s); warm-up on 2 clips: {warm_s:.2f} s; ASR beam "
          f"{predictor.transcriber().options.get('beam_size') if predictor.needs_text else '-'}")
    print(f"predict wall time: {wall:.2f} s; real-time factor {wall / audio_s:.3f} "
          f"({audio_s / wall:.1f}x faster than real time); CPU time {cpu:.2f} s ({audio_s / cpu:.1f}x real time "
          f"per CPU-second); with the run's loading: {audio_s / (wall + load_s):.1f}x wall")
    if predictor.needs_text:
        shared = predictor._sharing()
        print(f"Whisper encoder passes shared by the ASR and the audio model: {shared.served - served_before} of {len(results)} clips "
              f"({len(shared.encoders)} sharing encoder(s){', --no-share' if args.no_share else ''})")
    print("time per stage:")
    for stage, sec in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"  {stage:14s} {sec:7.2f} s  {100 * sec / wall:5.1f}%  RTF {sec / audio_s:.3f}")
    print(f"  {'(other)':14s} {wall - staged:7.2f} s  {100 * (wall - staged) / wall:5.1f}%   (ASR runs on its own thread "
          "beside the models, so the stages overlap and (other) can be negative)")
    print(f"peak RSS: {rss_peak:.0f} MB (at start {rss0:.0f} MB, after loading + warm-up {rss_loaded:.0f} MB); "
          f"peak Python allocations during predict (tracemalloc): {py_peak / 2**20:.1f} MB")
    if "label" in results[0]:
        labels = predictor.info.labels
        shared = clips["label"].isin(labels).to_numpy()
        pred = np.array([r.get("label", "") for r in results])
        if shared.any():
            acc = float((pred[shared] == clips["label"].to_numpy()[shared]).mean())
            print(f"accuracy on the {int(shared.sum())} clips whose RAVDESS label is one of {labels}: {acc:.3f} "
                  f"(cross-corpus: TTS-trained model, RAVDESS's two fixed sentences carry no emotion in the words)")
        counts = pd.Series(pred).value_counts().to_dict()
        print(f"predicted labels: {counts}")


if __name__ == "__main__":
    main()
