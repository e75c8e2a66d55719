"""Late fusion of an audio run and a text run on RAVDESS, where the text carries no emotion (two fixed sentences).

The fused run (`fuse` defaults: logistic regression on the log-posteriors, form auto) must not fall below the audio
run alone by more than 0.01 macro-F1: it should learn to ignore the uninformative text. Prints audio, text and fused
test macro-F1 per fold, and for reference the full-matrix (TalTech) logistic regression, which a dev set of six
actors (360 rows for 136 parameters) is too small to fit without losing accuracy. Finished runs in OUT are reused.

Folds: actors sorted by name, dealt round-robin (Actor_01 -> fold 0, Actor_02 -> fold 1, ...); fold k is test,
fold k+1 dev, the rest train. Audio: configs/audio_whisper_tiny.yaml (frozen CTranslate2 Whisper tiny.en, cached);
text: configs/text_minilm_lora.yaml with the MiniLM frozen (cached) on the manifest's transcripts.

    python bench/ravdess_fusion.py [--data /work/shared/data/ravdess] [--out /tmp/ravdess_fusion] [--folds 0 1 2 3]
                                   [--cache-dir DIR] [--attention]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from fusion_ser.config import Config, load_config
from fusion_ser.fusion.ensemble import ensemble_runs
from fusion_ser.fusion.late import late_fuse
from fusion_ser.rundir import RunDir
from fusion_ser.training.job import train_run

from ravdess_folds import N_FOLDS, ravdess_manifest

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TOLERANCE = 0.01


def trained(cfg: Config, manifest: Path, out: Path) -> RunDir:
    """The finished run in `out` (reused), or a new one trained with the one trainer."""
    run = RunDir(out)
    return run if run.is_complete() else train_run(cfg, manifest, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/shared/data/ravdess")
    ap.add_argument("--out", default="/tmp/ravdess_fusion")
    ap.add_argument("--folds", type=int, nargs="+", default=list(range(N_FOLDS)))
    ap.add_argument("--cache-dir", default=None, help="Feature cache (default: OUT/cache); reuse another bench's cache.")
    ap.add_argument("--attention", action="store_true",
                    help="Also train configs/attention_fusion.yaml (~7 min a fold on 2 CPU cores) and ensemble it with "
                    "the late fusion (mean of posteriors).")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = ravdess_manifest(Path(args.data), out)
    cache = args.cache_dir or str(out / "cache")
    start = time.perf_counter()
    rows = []
    for k in args.folds:
        common = [f"data.fold={k}", f"train.cache_dir={cache}"]
        audio_cfg = load_config(CONFIGS / "audio_whisper_tiny.yaml", common)
        text_cfg = load_config(CONFIGS / "text_minilm_lora.yaml",
                               [*common, "text_encoder.finetune=frozen", "train.cache_features=true", "train.epochs=10"])
        audio = trained(audio_cfg, manifest, out / f"fold_{k}" / "audio")
        text = trained(text_cfg, manifest, out / f"fold_{k}" / "text")
        fused = late_fuse([audio.path, text.path], out / f"fold_{k}" / "fused", force=True)
        full = late_fuse([audio.path, text.path], out / f"fold_{k}" / "fused_full", form="full", force=True)
        row = {
            "fold": k,
            "audio": audio.read_metrics()["test"]["macro_f1"],
            "text": text.read_metrics()["test"]["macro_f1"],
            "fused": fused.metrics["test"]["macro_f1"],
            "fused_form": fused.info.extra["options"]["form"],
            "fused_dev_cv": fused.metrics["dev"]["macro_f1"],
            "full_lr": full.metrics["test"]["macro_f1"],
            "full_lr_dev_cv": full.metrics["dev"]["macro_f1"],
            "cv_grouped_by_speaker": fused.grouped_by_speaker,
        }
        rows.append(row)
        print(f"fold {k}: test macro-F1  audio {row['audio']:.3f}  text {row['text']:.3f}  "
              f"fused {row['fused']:.3f} (lr, form {row['fused_form']})  full-matrix lr {row['full_lr']:.3f}  | "
              f"dev, {fused.n_folds}-fold CV inside dev{' by speaker' if fused.grouped_by_speaker else ''}: "
              f"fused {row['fused_dev_cv']:.3f}, full-matrix {row['full_lr_dev_cv']:.3f}", flush=True)
        if args.attention:
            both_cfg = load_config(CONFIGS / "attention_fusion.yaml", common)
            both = trained(both_cfg, manifest, out / f"fold_{k}" / "both")
            ens = ensemble_runs([fused.path, both.path], out / f"fold_{k}" / "ensemble", method="mean", force=True)
            row["attention"] = both.read_metrics()["test"]["macro_f1"]
            row["ensemble"] = ens.metrics["test"]["macro_f1"]
            print(f"fold {k}: test macro-F1  attention fusion {row['attention']:.3f}  "
                  f"ensemble(late fusion, attention fusion) {row['ensemble']:.3f}", flush=True)
    wall = time.perf_counter() - start
    table = pd.DataFrame(rows)
    mean = table[["audio", "text", "fused", "full_lr"]].mean()
    print(f"mean over folds {args.folds}: audio {mean['audio']:.3f}  text {mean['text']:.3f}  fused {mean['fused']:.3f}  "
          f"(full-matrix lr {mean['full_lr']:.3f})")
    margin = mean["fused"] - mean["audio"]
    verdict = "PASS" if margin >= -TOLERANCE else "FAIL"
    if args.attention:
        print(f"mean over folds {args.folds}: attention fusion {table['attention'].mean():.3f}  "
              f"ensemble {table['ensemble'].mean():.3f}")
    print(f"fused - audio = {margin:+.3f} macro-F1 (must be >= -{TOLERANCE}): {verdict}")
    print(f"wall time: {wall:.0f} s")
    (out / "figures.json").write_text(json.dumps({"per_fold": rows, "mean": mean.to_dict(), "margin": margin,
                                                  "verdict": verdict, "wall_s": wall}, indent=2, default=float))
    if verdict == "FAIL":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
