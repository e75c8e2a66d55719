"""LoRA on the packaged Whisper tiny.en (`audio_encoder.finetune: lora`) against the frozen offline default, RAVDESS.

The same speaker-independent folds as bench/ravdess_audio.py (fold k test, k+1 dev). LoRA re-encodes every clip
with gradients each epoch (nothing can be cached), about 0.13 CPU-s per 3.5 s clip per step on one thread, so a
4-fold run with the default's 60 epochs does not fit a 2-core CPU: this bench trains the folds given by --folds,
each system on the same fold, and prints dev and test macro-F1 per fold and their means, with CPU and wall time.

  default  configs/audio_whisper_tiny.yaml as it is (frozen, cached frames of all layers, 60 epochs, refit, EMA)
  lora     the same config with audio_encoder.finetune=lora (SAIL: r 16 on the feed-forward layers of the upper
           half; the layers' frames come from the adapted copy, concatenated as the default), optim.lr_encoder
           --lr-encoder, --epochs epochs, no refit (the refit would double the cost), selection on dev

    python bench/ravdess_lora.py [--data /work/shared/data/ravdess] [--out /tmp/ravdess_lora] [--folds 0]
                                 [--epochs 6] [--lr-encoder 1e-4] [--systems default,lora] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from fusion_ser.config import load_config
from fusion_ser.training.job import train_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ravdess_folds import ravdess_manifest  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "audio_whisper_tiny.yaml"


def system_overrides(name: str, epochs: int, lr_encoder: float) -> list[str]:
    """The overrides of one system on top of the offline default config."""
    if name == "default":
        return []
    return ["audio_encoder.finetune=lora", f"optim.lr_encoder={lr_encoder}", f"train.epochs={epochs}",
            "train.refit_on_dev=false", "train.cache_features=false"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/shared/data/ravdess")
    ap.add_argument("--out", default="/tmp/ravdess_lora")
    ap.add_argument("--cache", default=None, help="feature cache of the default (e.g. bench/ravdess_audio.py's)")
    ap.add_argument("--folds", default="0")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr-encoder", type=float, default=1e-4)
    ap.add_argument("--systems", default="default,lora")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = ravdess_manifest(Path(args.data), out)
    cache = args.cache or str(out / "cache")
    folds = [int(f) for f in args.folds.split(",")]
    results: dict[str, list[dict]] = {}
    for name in [s.strip() for s in args.systems.split(",") if s.strip()]:
        for fold in folds:
            cfg = load_config(CONFIG, [f"train.cache_dir={cache}", f"data.fold={fold}",
                                       *system_overrides(name, args.epochs, args.lr_encoder)])
            cpu, wall = time.process_time(), time.perf_counter()
            run = train_run(cfg, manifest, out / f"{name}_fold{fold}")
            metrics = run.read_metrics()
            row = {"fold": fold, "dev": metrics["dev"]["macro_f1"], "test": metrics["test"]["macro_f1"],
                   "best_epoch": metrics["best_epoch"], "cpu_s": time.process_time() - cpu,
                   "wall_s": time.perf_counter() - wall}
            results.setdefault(name, []).append(row)
            print(f"{name:8s} fold {fold}: dev macro-F1 {row['dev']:.3f}  test {row['test']:.3f}  best epoch "
                  f"{row['best_epoch']}  CPU {row['cpu_s']:.0f} s  wall {row['wall_s']:.0f} s", flush=True)
    print(f"\n{'system':8s} {'folds':8s} {'dev F1':7s} {'test F1':8s}")
    for name, rows in results.items():
        dev = sum(r["dev"] for r in rows) / len(rows)
        test = sum(r["test"] for r in rows) / len(rows)
        print(f"{name:8s} {args.folds:8s} {dev:.3f}   {test:.3f}")
    (out / "lora_figures.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
