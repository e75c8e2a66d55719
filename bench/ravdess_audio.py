"""4-fold speaker-independent macro-F1 on RAVDESS with the offline default audio model, and the wall time.

Folds: actors sorted by name and dealt round-robin (Actor_01 -> fold 0, Actor_02 -> fold 1, ...); fold k is
test, fold k+1 dev, the rest train. References on exactly these folds: openSMILE eGeMAPSv02 + class-balanced
linear SVM 0.503 macro-F1; frozen Whisper tiny.en mean+std + standardised class-balanced LR 0.684.

    python bench/ravdess_audio.py [--data /work/shared/data/ravdess] [--out /tmp/ravdess_bench] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, recall_score

from fusion_ser.config import load_config
from fusion_ser.data.manifest import write_manifest
from fusion_ser.rundir import RunDir
from fusion_ser.training.trainer import train_cv

REFERENCES = {"openSMILE eGeMAPSv02 + linear SVM": 0.503, "plain recipe (Whisper tiny.en mean+std + LR)": 0.684}


def ravdess_manifest(data: Path, out: Path, n_folds: int = 4) -> Path:
    """The corpus manifest with the round-robin actor folds (split is reassigned per fold by apply_fold)."""
    src = pd.read_csv(data / "manifest.csv")
    actors = sorted(src["speaker"].unique())
    fold_of = {a: i % n_folds for i, a in enumerate(actors)}
    df = pd.DataFrame({
        "utt_id": [Path(p).stem for p in src["path"]],
        "path": [str((data / p).resolve()) for p in src["path"]],
        "split": "train",
        "speaker": src["speaker"],
        "gender": src["gender"],
        "label": src["label"],
        "text": src["text"],
        "fold": src["speaker"].map(fold_of),
    })
    path = out / "ravdess_folds.csv"
    write_manifest(df, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/shared/data/ravdess")
    ap.add_argument("--out", default="/tmp/ravdess_bench")
    ap.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs" / "audio_whisper_tiny.yaml"))
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = ravdess_manifest(Path(args.data), out)
    cfg = load_config(args.config, [f"train.cache_dir={out / 'cache'}", *args.overrides])
    runs = out / "runs"
    start = time.perf_counter()
    summary = train_cv(cfg, manifest, runs)
    wall = time.perf_counter() - start

    print(f"config: {args.config} {' '.join(args.overrides)}")
    per_fold = [m["test"]["macro_f1"] for m in summary["per_fold"]]
    preds = pd.concat([RunDir(runs / f"fold_{k}").read_predictions("test") for k in range(summary["folds"])])
    for k, m in enumerate(summary["per_fold"]):
        print(f"fold {k}: test macro-F1 {m['test']['macro_f1']:.3f}  UAR {m['test']['uar']:.3f}  "
              f"dev macro-F1 {m['dev']['macro_f1']:.3f}  best epoch {m['best_epoch']}")
    print(f"mean test macro-F1 over folds: {np.mean(per_fold):.3f} ± {np.std(per_fold):.3f}")
    print(f"mean test UAR over folds:      {summary['test']['uar']['mean']:.3f}")
    print(f"pooled test macro-F1 (1440):   {f1_score(preds['label'], preds['pred'], average='macro'):.3f}  "
          f"UAR {recall_score(preds['label'], preds['pred'], average='macro'):.3f}")
    for name, ref in REFERENCES.items():
        print(f"reference {name}: {ref:.3f}  -> {'beaten' if np.mean(per_fold) > ref else 'NOT beaten'}")
    print(f"wall time (feature cache + 4 folds of training): {wall:.0f} s")
    (out / "figures.json").write_text(json.dumps({"per_fold": per_fold, "mean": float(np.mean(per_fold)),
                                                  "wall_s": wall}, indent=2))


if __name__ == "__main__":
    main()
