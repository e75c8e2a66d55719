"""Whisper tiny.en encoder on RAVDESS: real-time factor (CTranslate2 last layer; PyTorch all layers), feature-cache
timing, and the plain reference recipe.

Usage: python bench/encoder_speed.py [--data /work/shared/data/ravdess] [--clips 100] [--repeats 2] [--cache-dir DIR]
       [--skip-cache]

Speed: CTranslate2's last layer (compute types default and int8) against the all-layers copy on ONNX Runtime
(audio_encoder.runtime auto/onnxruntime, float32), on PyTorch (runtime=torch) and with audio_encoder.quantize=int8, on
the same clips, log-mel included, per CPU-second and per wall second.

Reference recipe (issue 3): frozen Whisper tiny.en frames, mean+std over frames, standardized, class-balanced
logistic regression; 4 speaker-independent folds, actors sorted by name and dealt round-robin; fold k is test,
fold k+1 is dev, the rest train. The regression has no dev-selected hyper-parameter, so it is fit twice: on the
train folds only, and on train+dev (all folds but the test fold). The issue reports 0.684 macro-F1 for this recipe.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, recall_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fusion_ser.config import AudioEncoderConfig
from fusion_ser.data.audio import load_audio
from fusion_ser.encoders.audio import build_audio_encoder
from fusion_ser.data.feature_cache import FeatureCache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/work/shared/data/ravdess")
    ap.add_argument("--clips", type=int, default=100)
    ap.add_argument("--compute-type", default="default")
    ap.add_argument("--threads", type=int, default=1, help="CTranslate2 threads per call (0: torch's count)")
    ap.add_argument("--repeats", type=int, default=2, help="timing repeats per path (the best is printed)")
    ap.add_argument("--cache-dir", default=None, help="keep the feature cache here (default: a temp dir)")
    ap.add_argument("--skip-cache", action="store_true", help="only the speed figures (no cache fill or recipe)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    root = Path(args.data)
    df = pd.read_csv(root / "manifest.csv")
    df["path"] = [str(root / p) for p in df["path"]]
    df["utt_id"] = [Path(p).stem for p in df["path"]]
    encoder = build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", compute_type=args.compute_type,
                                                    threads=args.threads, layers="last"))
    print(f"model: {encoder.model_path}  compute_type: {args.compute_type}  threads: {args.threads}  "
          f"output_dim: {encoder.output_dim}  load average: {os.getloadavg()[0]:.1f}")

    sample = df.sample(n=min(args.clips, len(df)), random_state=0)
    wavs = [load_audio(p) for p in sample["path"]]
    audio_s = sum(len(w) for w in wavs) / 16000
    t0 = time.perf_counter()
    mels = [encoder.log_mel(w) for w in wavs]
    t1 = time.perf_counter()
    for m in mels:
        encoder.encode_mel(m)
    t2 = time.perf_counter()
    print(f"RTF on {len(wavs)} clips ({audio_s:.1f} s audio): log-mel {audio_s / (t1 - t0):.0f}x, "
          f"encoder {audio_s / (t2 - t1):.0f}x, total {audio_s / (t2 - t0):.0f}x real time")

    # every path on the same clips, log-mel included, best of --repeats; CPU time (process time) is the figure that
    # holds on a shared machine, wall time is printed beside it
    paths = {f"CTranslate2 last layer, compute_type {ct}": build_audio_encoder(AudioEncoderConfig(
        type="ct2_whisper", compute_type=ct, threads=args.threads, layers="last")) for ct in ("default", "int8")}
    layer_paths = {"all layers, ONNX Runtime float32 (default)": dict(runtime="onnxruntime"),
                   "all layers, PyTorch float32": dict(runtime="torch"),
                   "all layers, PyTorch quantize int8": dict(quantize="int8")}
    paths.update({name: build_audio_encoder(AudioEncoderConfig(type="ct2_whisper", layers="concat", **opts))
                  for name, opts in layer_paths.items()})
    speed: dict[str, tuple[float, float]] = {}
    for name, enc in paths.items():
        run = enc.hidden_states if enc.stack_layers else enc.encode_waveform
        run(wavs[0])  # load outside the timing
        best = (float("inf"), float("inf"))
        for _ in range(args.repeats):
            c, w = time.process_time(), time.perf_counter()
            for wav in wavs:
                run(wav)
            best = min(best, (time.process_time() - c, time.perf_counter() - w))
        speed[name] = (audio_s / best[0], audio_s / best[1])
    print(f"\nreal-time factor, log-mel included ({torch.get_num_threads()} torch threads, CTranslate2 threads "
          f"{args.threads}; {len(wavs)} clips, best of {args.repeats}):")
    for name, (cpu, wall) in speed.items():
        print(f"  {name:44s} {cpu:6.0f}x per CPU-second  {wall:6.0f}x wall")
    names = list(speed)
    for layers in names[2:]:
        for last in names[:2]:
            print(f"  {layers} vs {last}: {100 * speed[layers][0] / speed[last][0]:.0f} % of its speed (CPU)")
    print("  (the last-layer feature cache uses compute_type default: float32 on a CPU without fast float16)")
    ref = paths["all layers, PyTorch float32"]
    for name in ("all layers, ONNX Runtime float32 (default)", "all layers, PyTorch quantize int8"):
        errs = [float(np.linalg.norm(paths[name].hidden_states(w).numpy() - r) / np.linalg.norm(r))
                for w, r in ((w, ref.hidden_states(w).numpy()) for w in wavs[:10])]
        print(f"  {name}: relative error against PyTorch float32 (10 clips, all layers) at most {max(errs):.1e}")

    if args.skip_cache:
        return
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(args.cache_dir or tmp)
        items = df[["utt_id", "path"]].to_dict("records")
        t0 = time.perf_counter()
        report = cache.ensure(encoder, items)
        t1 = time.perf_counter()
        feats = [cache.get(encoder, it).float().numpy() for it in items]
        t2 = time.perf_counter()
        total_audio = sum(f.shape[0] for f in feats) / 50
        print(f"cache ensure of {len(items)} clips (load+encode+write what is missing): {t1 - t0:.1f} s "
              f"({total_audio / (t1 - t0):.0f}x real time; computed {report.computed}, reused {report.reused}, "
              f"failed {len(report.failed)}); reading all back: {t2 - t1:.2f} s")
        t3 = time.perf_counter()
        again = cache.ensure(encoder, items)
        print(f"second ensure (all reused): {time.perf_counter() - t3:.2f} s, reused {again.reused}")

    x = np.stack([np.concatenate([f.mean(axis=0), f.std(axis=0)]) for f in feats])
    y = df["label"].to_numpy()
    actors = sorted(df["speaker"].unique())
    fold_of = {a: i % 4 for i, a in enumerate(actors)}
    fold = df["speaker"].map(fold_of).to_numpy()
    for fit_on in ("train", "train+dev"):
        f1s, uars, preds = [], [], np.empty(len(df), dtype=object)
        for k in range(4):
            test, dev = fold == k, fold == (k + 1) % 4
            train = ~test if fit_on == "train+dev" else ~test & ~dev
            clf = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000))
            clf.fit(x[train], y[train])
            p = clf.predict(x[test])
            preds[test] = p
            f1s.append(f1_score(y[test], p, average="macro"))
            uars.append(recall_score(y[test], p, average="macro"))
        print(f"reference recipe, regression fit on {fit_on:9s}: macro-F1 per fold {np.round(f1s, 3).tolist()}  "
              f"mean {np.mean(f1s):.3f} (pooled {f1_score(y, preds, average='macro'):.3f}), UAR {np.mean(uars):.3f}")
    print("issue 3 reports 0.684 macro-F1 for this recipe")



if __name__ == "__main__":
    main()
