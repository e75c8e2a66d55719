"""Seed ensembles on the RAVDESS 4-fold protocol: mean, vote, stacking, the MLP meta-classifier and the weight soup.

Trains the offline default audio model (configs/audio_whisper_tiny.yaml) with several seeds on the same folds and
feature cache (bench/ravdess_folds.py), then combines the seeds of each fold with every `fusion-ser ensemble` method.
Printed per method: test macro-F1 over the 4 folds (mean, std, per fold), pooled UAR, the dev macro-F1 (out-of-fold
inside dev for the methods that fit on dev), and the time the combination took. Choices are to be made on dev.

    python bench/ravdess_ensembles.py [--data /work/shared/data/ravdess] [--out /tmp/ravdess_ens] [--seeds 0,1,2]
                                      [--cache /tmp/ravdess_bench/cache] [--methods mean,vote,stacking,mlp,soup]
                                      [key=value ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, recall_score

from fusion_ser.config import load_config
from fusion_ser.fusion.ensemble import ensemble_runs
from fusion_ser.rundir import RunDir
from fusion_ser.training.job import train_cv

from ravdess_folds import N_FOLDS, ravdess_manifest

ROOT = Path(__file__).resolve().parent.parent


def scores(run: Path) -> dict[str, float]:
    """Test macro-F1 / UAR and dev macro-F1 of one run from its prediction files."""
    rd = RunDir(run)
    test, dev = rd.read_predictions("test"), rd.read_predictions("dev")
    dev = dev[dev["label"].notna()]
    return {"test_f1": f1_score(test["label"], test["pred"], average="macro"),
            "test_uar": recall_score(test["label"], test["pred"], average="macro"),
            "dev_f1": f1_score(dev["label"], dev["pred"], average="macro")}


def row(name: str, per_fold: list[dict], seconds: float) -> str:
    f1 = [s["test_f1"] for s in per_fold]
    return (f"{name:34s} {np.mean(f1):.3f} ± {np.std(f1):.3f} [{' '.join(f'{x:.2f}' for x in f1)}]  "
            f"{np.mean([s['test_uar'] for s in per_fold]):.3f}  {np.mean([s['dev_f1'] for s in per_fold]):.3f}"
            f"   {seconds:7.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/shared/data/ravdess")
    ap.add_argument("--out", default="/tmp/ravdess_ens")
    ap.add_argument("--cache", default="/tmp/ravdess_bench/cache", help="feature cache (shared with ravdess_audio.py)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "audio_whisper_tiny.yaml"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default="mean,vote,stacking,mlp,soup")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = ravdess_manifest(Path(args.data), out)
    seeds = [int(s) for s in args.seeds.split(",")]
    seed_runs, train_s = [], 0.0
    for seed in seeds:
        cfg = load_config(args.config, [f"train.cache_dir={args.cache}", *args.overrides, f"seed={seed}"])
        start = time.perf_counter()
        train_cv(cfg, manifest, out / f"seed{seed}")  # finished folds of an earlier call are kept
        train_s += time.perf_counter() - start
        seed_runs.append(out / f"seed{seed}")
    print(f"config: {args.config} {' '.join(args.overrides)}; seeds {seeds}; training (cache fill included, folds "
          f"already trained reused) {train_s:.0f} s")
    print(f"\n{'model':34s} {'test macro-F1 (4 folds)':27s} {'UAR':5s}  {'dev F1':6s}  combine")
    for seed, runs in zip(seeds, seed_runs):
        print(row(f"seed {seed} alone", [scores(runs / f"fold_{k}") for k in range(N_FOLDS)], 0.0))
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        per_fold, start = [], time.perf_counter()
        for k in range(N_FOLDS):
            res = ensemble_runs([r / f"fold_{k}" for r in seed_runs], out / f"{method}_fold_{k}", method=method,
                                folds=4, force=True)
            per_fold.append(scores(res.path))
        note = " (dev out-of-fold)" if method in ("stacking", "mlp") else ""
        print(row(f"ensemble --method {method}{note}", per_fold, time.perf_counter() - start))
    pooled = pd.concat([RunDir(r / f"fold_{k}").read_predictions("test") for r in seed_runs for k in range(N_FOLDS)])
    print(f"\n{len(pooled)} test predictions over {len(seeds)} seeds x {N_FOLDS} folds; the dev F1 of a member is its "
          "dev-selected model's")


if __name__ == "__main__":
    main()
