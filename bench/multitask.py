"""Multi-task (one model, a categorical and an attribute head on one pooled embedding) against the two single-task
models, on RAVDESS written in the MSP-Podcast layout with attributes from the NRC VAD lexicon (bench/ravdess_msp.py).

Every system is the offline default (configs/audio_whisper_tiny.yaml: frozen Whisper tiny.en, all layers, mean+std,
speed perturbation, refit on train+dev, weight EMA) trained on the same 4 speaker-independent folds (fold k test,
k+1 dev, the rest train) and the same feature cache; only `task` changes:
  - categorical: macro-F1 selection (the config's own);
  - attributes: 1 - CCC summed over arousal/valence/dominance, mean-CCC selection;
  - multitask: multitask.weight_categorical * (weighted CE) + multitask.weight_attributes * sum of (1 - CCC)
    (defaults 1.5 / 0.4, MEDUSA's), selection on multitask_score.
Printed per system: test macro-F1 and mean CCC (and each attribute's CCC), mean ± std over the folds with the
per-fold values, dev figures (the dev-selected model's), wall time; then whether multitask is within 0.01 of each
single-task model on that model's own metric.

    python bench/multitask.py [--data /work/shared/data/ravdess] [--out /tmp/multitask_bench] [--cache DIR]
                              [--systems categorical,attributes,multitask] [--keep] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from fusion_ser.config import load_config
from fusion_ser.rundir import RunDir
from fusion_ser.training.job import train_run

from ravdess_msp import ravdess_rows, write_folds

ATTRIBUTES = ["arousal", "valence", "dominance"]
SYSTEMS = {
    "categorical": ["task=categorical", "train.selection_metric=macro_f1"],
    "attributes": ["task=attributes", "train.selection_metric=ccc_mean"],
    "multitask": ["task=multitask", "train.selection_metric=multitask_score"],
}
OWN_METRIC = {"categorical": "macro_f1", "attributes": "ccc_mean"}
MARGIN = 0.01


def run_system(name: str, config: str, overrides: list[str], manifests: list[Path], out: Path, keep: bool) -> dict:
    """Train (or, with --keep, reuse) one system's fold runs; its per-fold dev/test metrics and wall time."""
    runs = out / f"runs_{name}"
    if runs.exists() and not keep:
        shutil.rmtree(runs)
    wall_file = runs / "bench_wall_s.json"  # training time summed over the invocations that trained its folds
    wall = json.loads(wall_file.read_text()) if wall_file.is_file() else 0.0
    per_fold = []
    for k, manifest in enumerate(manifests):
        run = RunDir(runs / f"fold_{k}")
        if not run.is_complete():
            cfg = load_config(config, [*overrides, *SYSTEMS[name]])
            start = time.perf_counter()
            train_run(cfg, manifest, run.path)
            wall += time.perf_counter() - start
            runs.mkdir(parents=True, exist_ok=True)
            wall_file.write_text(json.dumps(wall))
        per_fold.append(run.read_metrics())
    return {"per_fold": per_fold, "wall_s": wall}


def values(result: dict, split: str, metric: str) -> list[float]:
    return [float(m[split][metric]) for m in result["per_fold"] if metric in m.get(split, {})]


def cell(vals: list[float], n_folds: int, folds: bool = True) -> str:
    if len(vals) != n_folds:
        return "—"
    text = f"{np.mean(vals):.3f} ± {np.std(vals):.3f}"
    return text + (" [" + " ".join(f"{v:.2f}" for v in vals) + "]" if folds else "")


def report(results: dict[str, dict], n_folds: int) -> dict:
    """Print the table and the verdicts; return the figures."""
    print(f"\n{'system':12s} {'test macro-F1 (folds)':31s} {'dev F1':7s} {'test mean CCC (folds)':31s} {'dev CCC':7s} "
          f"{'test CCC aro / val / dom':26s} wall")
    figures = {}
    for name, res in results.items():
        f = {f"{split}_{m}": values(res, split, m) for split in ("dev", "test")
             for m in ["macro_f1", "ccc_mean", *[f"ccc_{a}" for a in ATTRIBUTES]]}
        f["wall_s"] = res["wall_s"]
        f["best_epochs"] = [m.get("best_epoch") for m in res["per_fold"]]
        figures[name] = f
        dev_f1 = f"{np.mean(f['dev_macro_f1']):.3f}" if len(f["dev_macro_f1"]) == n_folds else "—"
        dev_ccc = f"{np.mean(f['dev_ccc_mean']):.3f}" if len(f["dev_ccc_mean"]) == n_folds else "—"
        attrs = " / ".join(f"{np.mean(f[f'test_ccc_{a}']):.3f}" if len(f[f"test_ccc_{a}"]) == n_folds else "—"
                           for a in ATTRIBUTES)
        print(f"{name:12s} {cell(f['test_macro_f1'], n_folds):31s} {dev_f1:7s} {cell(f['test_ccc_mean'], n_folds):31s} "
              f"{dev_ccc:7s} {attrs:26s} {f['wall_s']:.0f} s")
    if "multitask" in figures:
        for single, metric in OWN_METRIC.items():
            if single not in figures or len(figures[single][f"test_{metric}"]) != n_folds:
                continue
            mt, st = np.mean(figures["multitask"][f"test_{metric}"]), np.mean(figures[single][f"test_{metric}"])
            dev_mt = np.mean(figures["multitask"][f"dev_{metric}"])
            dev_st = np.mean(figures[single][f"dev_{metric}"])
            verdict = "within" if mt >= st - MARGIN else "NOT within"
            print(f"multitask vs {single} on {metric}: test {mt:.3f} vs {st:.3f} ({mt - st:+.3f}, {verdict} {MARGIN}); "
                  f"dev {dev_mt:.3f} vs {dev_st:.3f} ({dev_mt - dev_st:+.3f})")
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/shared/data/ravdess")
    ap.add_argument("--out", default="/tmp/multitask_bench")
    ap.add_argument("--cache", default=None, help="feature cache folder (default: OUT/cache)")
    ap.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs" / "audio_whisper_tiny.yaml"))
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {list(SYSTEMS)}")
    ap.add_argument("--keep", action="store_true", help="reuse finished (and resume unfinished) fold runs")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifests = write_folds(ravdess_rows(Path(args.data)), out)
    overrides = [f"train.cache_dir={args.cache or out / 'cache'}", "audio_encoder.threads=1", *args.overrides]
    print(f"config: {args.config} {' '.join(args.overrides)}; corpus: {len(manifests)} MSP-layout folds in {out}")
    results = {}
    for name in [s.strip() for s in args.systems.split(",") if s.strip()]:
        if name not in SYSTEMS:
            raise SystemExit(f"unknown system '{name}'; choose from {list(SYSTEMS)}")
        results[name] = run_system(name, args.config, overrides, manifests, out, args.keep)
    figures = report(results, len(manifests))
    print("dev figures are the dev-selected model's; test figures the refit's (train.refit_on_dev)")
    (out / "figures.json").write_text(json.dumps(figures, indent=2, default=float))


if __name__ == "__main__":
    main()
