"""4-fold speaker-independent macro-F1 on RAVDESS with the offline default audio model, its variants, and wall times.

Folds: actors sorted by name and dealt round-robin (Actor_01 -> fold 0, Actor_02 -> fold 1, ...); fold k is
test, fold k+1 dev, the rest train. Printed, all on the same folds and the same feature cache:
  - the trained model (configs/audio_whisper_tiny.yaml) on the last layer or on all layers weighted or side by side
    (audio_encoder.layers), with and without speed perturbation (data.speed_perturb), the refit on
    train+dev (train.refit_on_dev) and the moving average of the weights (optim.ema_decay);
  - the plain recipe (frozen Whisper tiny.en, mean+std over frames, standardised, class-balanced logistic
    regression), fit on train only (12 actors) and on train+dev (18 actors, how the 0.684 reference was fit);
  - the quoted references: openSMILE eGeMAPSv02 + linear SVM 0.503, plain recipe 0.684.

    python bench/ravdess_audio.py [--data /work/shared/data/ravdess] [--out /tmp/ravdess_bench] [--keep] [--threads 1]
                                  [--variants base,...,layers_speed_refit_ema] [key=value ...]
Training time is printed as wall seconds, CPU seconds of the whole train_cv (process time: the figure to compare on a
shared machine) and CPU seconds of the train stage alone (the trainer's per-epoch train_cpu_seconds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, recall_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fusion_ser.config import Config, load_config
from fusion_ser.data.audio import audio_duration
from fusion_ser.data.folds import apply_fold
from fusion_ser.data.manifest import read_manifest
from fusion_ser.encoders.audio import build_audio_encoder
from fusion_ser.rundir import RunDir
from fusion_ser.data.feature_cache import FeatureCache
from fusion_ser.training.job import train_cv

from ravdess_folds import ravdess_manifest

REFERENCES = {"openSMILE eGeMAPSv02 + linear SVM (quoted)": 0.503,
              "plain recipe, Whisper tiny.en mean+std + LR (quoted)": 0.684}
SPEEDS = "[0.9, 1.0, 1.1]"
EMA = "0.995"
# name -> (description, (layers: "last" | "weighted" | "concat", speed perturbation, refit on train+dev, weight EMA))
VARIANTS = {
    "base": ("last layer, no speed perturbation, no refit", ("last", False, False, False)),
    "speed": ("last layer + speed perturbation 0.9/1.0/1.1", ("last", True, False, False)),
    "refit": ("last layer + refit on train+dev", ("last", False, True, False)),
    "speed_refit": ("last layer + speed perturbation + refit", ("last", True, True, False)),
    "speed_refit_ema": ("last layer + speed perturbation + refit + EMA", ("last", True, True, True)),
    "layers": ("layers weighted, no speed perturbation, no refit", ("weighted", False, False, False)),
    "layers_speed_refit_ema": ("layers weighted + speed perturbation + refit + EMA", ("weighted", True, True, True)),
    "concat_speed_refit_ema": ("layers concatenated + speed perturbation + refit + EMA", ("concat", True, True, True)),
}


def variant_overrides(settings: tuple[str, bool, bool, bool]) -> list[str]:
    layers, speed, refit, ema = settings
    return [f"audio_encoder.layers={layers}",
            f"data.speed_perturb={SPEEDS if speed else '[]'}", f"train.refit_on_dev={str(refit).lower()}",
            f"optim.ema_decay={EMA if ema else '0.0'}"]


def fill_cache(cfg: Config, df: pd.DataFrame, speeds: list[float], all_layers: bool
               ) -> tuple[FeatureCache, object, float, int]:
    """Frames of every clip and speed-perturbed copies of every clip (each is a train clip in some fold)."""
    stacked = cfg.audio_encoder.layers if cfg.audio_encoder.layers != "last" else "weighted"
    last = {"layers": "last", "quantize": "none"}  # audio_encoder.quantize applies to the all-layers copy only
    encoder = build_audio_encoder(dataclasses.replace(cfg.audio_encoder, **({"layers": stacked} if all_layers else last)))
    cache = FeatureCache(cfg.train.cache_dir, sample_rate=cfg.data.sample_rate, min_seconds=cfg.data.min_seconds,
                         max_seconds=cfg.data.max_eval_seconds)
    items = [{"utt_id": r.utt_id, "path": r.path} for r in df.itertuples()]
    items += [dict(it, speed=s) for s in speeds if s != 1.0 for it in items[: len(df)]]
    start = time.perf_counter()
    report = cache.ensure(encoder, items)
    return cache, encoder, time.perf_counter() - start, report.computed


def pooled_statistics(df: pd.DataFrame, cache: FeatureCache, encoder) -> np.ndarray:
    """Mean and std over frames of every clip, of each cached layer side by side ((T, D) or (L+1, T, D) frames)."""
    rows = []
    for r in df.itertuples():
        f = cache.get(encoder, {"utt_id": r.utt_id, "path": r.path}).float().numpy()
        rows.append(np.concatenate([f.mean(-2).ravel(), f.std(-2).ravel()]))
    return np.stack(rows)


def plain_recipe(df: pd.DataFrame, feats: np.ndarray, n_folds: int, seed: int) -> dict[str, list[float]]:
    """Standardised mean+std vectors + class-balanced LR, fit on train only and on train+dev, scored on test."""
    out: dict[str, list[float]] = {"train": [], "train+dev": []}
    for k in range(n_folds):
        split = apply_fold(df, k)["split"].to_numpy()
        test = split == "test"
        for name, fit_rows in (("train", split == "train"), ("train+dev", split != "test")):
            clf = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=5000,
                                                                     random_state=seed))
            clf.fit(feats[fit_rows], df["label"].to_numpy()[fit_rows])
            out[name].append(f1_score(df["label"].to_numpy()[test], clf.predict(feats[test]), average="macro"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/shared/data/ravdess")
    ap.add_argument("--out", default="/tmp/ravdess_bench")
    ap.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs" / "audio_whisper_tiny.yaml"))
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}")
    ap.add_argument("--keep", action="store_true",
                    help="reuse finished (and resume unfinished) folds of earlier runs; wall times add up over runs")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds of the config's own variant (the others: seed "
                    "0); more than one adds the mean ensemble of their posteriors (`fusion-ser ensemble --method mean`)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the figures of a shared CPU)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = ravdess_manifest(Path(args.data), out)
    cfg = load_config(args.config, [f"train.cache_dir={out / 'cache'}", *args.overrides])
    df = read_manifest(manifest)
    n_folds = int(df["fold"].max()) + 1
    print(f"config: {args.config} {' '.join(args.overrides)}  (its own data.speed_perturb={cfg.data.speed_perturb}, "
          f"train.refit_on_dev={cfg.train.refit_on_dev})")

    keys = [v.strip() for v in args.variants.split(",") if v.strip()]
    audio_min = float(sum(audio_duration(p) for p in df["path"])) / 60
    cache_s, encoders = {}, {}
    for layers in sorted({VARIANTS[k][1][0] != "last" for k in keys} | {False}):  # the plain recipe: last layer
        cache, encoder, cache_s[layers], computed = fill_cache(cfg, df, [0.9, 1.0, 1.1], layers)
        where = f"all layers, runtime {cfg.audio_encoder.runtime}" if layers else "last layer, CTranslate2"
        print(f"feature cache ({where}): {computed} entries "
              f"computed in {cache_s[layers]:.0f} s ({len(df)} clips, {audio_min:.1f} min of audio, plain + speed "
              "0.9/1.1 copies; 0 computed = already cached)")
        encoders[layers] = (cache, encoder)

    start = time.perf_counter()
    plain = plain_recipe(df, pooled_statistics(df, *encoders[False]), n_folds, cfg.seed)
    if True in encoders:  # the same recipe on every layer's statistics side by side: what a head must beat there
        stacked = plain_recipe(df, pooled_statistics(df, *encoders[True]), n_folds, cfg.seed)
        plain.update({f"{k}, all layers": v for k, v in stacked.items()})
    plain_s = time.perf_counter() - start

    figures: dict[str, dict] = {}
    own = variant_overrides((cfg.audio_encoder.layers, bool(cfg.data.speed_perturb), cfg.train.refit_on_dev,
                             cfg.optim.ema_decay > 0))
    for key in keys:
        name, settings = VARIANTS[key]
        overrides = variant_overrides(settings)
        seeds = [int(s) for s in args.seeds.split(",")] if overrides == own else [0]
        all_runs = []
        for seed in seeds:
            runs = out / (f"runs_{key}" if seed == 0 else f"runs_{key}_seed{seed}")
            if runs.exists() and not args.keep:
                shutil.rmtree(runs)
            vcfg = load_config(args.config, [f"train.cache_dir={out / 'cache'}", *args.overrides, *overrides,
                                             f"seed={seed}"])
            start, cpu_start = time.perf_counter(), time.process_time()
            summary = train_cv(vcfg, manifest, runs)
            # training time (wall, and CPU of this process) summed over the invocations that trained its folds
            time_file = runs / "bench_time_s.json"
            spent = json.loads(time_file.read_text()) if time_file.is_file() else {"wall": 0.0, "cpu": 0.0}
            spent = {"wall": spent["wall"] + time.perf_counter() - start,
                     "cpu": spent["cpu"] + time.process_time() - cpu_start}
            time_file.write_text(json.dumps(spent))
            all_runs.append(runs)
            figures[f"{key}/seed{seed}"] = variant_figures(f"{name}, seed {seed}", summary, runs, n_folds, spent)
        if len(seeds) > 1:
            spent = {k: sum(figures[f"{key}/seed{s}"][f"{k}_s"] for s in seeds) for k in ("wall", "cpu", "loop_cpu")}
            figures[f"{key}/ensemble"] = ensemble_figures(f"{name}, mean of {len(seeds)} seeds", all_runs,
                                                          out / f"ens_{key}", n_folds, spent)

    print(f"\n{'model':58s} {'test macro-F1 (4 folds)':26s} {'dev F1':7s} {'UAR':6s} {'pooled F1':9s} "
          "training: wall / CPU s (train_cv) / CPU s of the train stage")
    for key, f in figures.items():
        tag = " *" if variant_overrides(VARIANTS[key.split("/")[0]][1]) == own else ""
        print(f"{f['name'] + tag:58s} {f['mean']:.3f} ± {f['std']:.3f} {fmt_folds(f['per_fold']):11s} "
              f"{f['dev_mean']:.3f}   {f['uar_mean']:.3f}  {f['pooled_f1']:.3f}     {f['wall_s']:.0f} s / "
              f"{f['cpu_s']:.0f} s / {f['loop_cpu_s']:.0f} s ({f['epochs']} epochs; best epochs {f['best_epochs']})")
    for name, scores in plain.items():
        print(f"{'plain recipe (mean+std, std., balanced LR) fit on ' + name:58s} {np.mean(scores):.3f} ± "
              f"{np.std(scores):.3f} {fmt_folds(scores):11s} {'':7s} {'':6s} {'':9s} {plain_s:.0f} s (both)")
    for name, ref in REFERENCES.items():
        print(f"{'reference ' + name:58s} {ref:.3f}")
    print("* = the config's own setting; dev F1 is always the dev-selected model's (never in-sample)")
    for key, f in figures.items():
        verdict = " and ".join(f"{'beats' if f['mean'] > r else 'does NOT beat'} {r:.3f}" for r in REFERENCES.values())
        print(f"{f['name']}: {verdict}")
    (out / "figures.json").write_text(json.dumps({"variants": figures, "plain": plain,
                                                  "cache_s": {str(k): v for k, v in cache_s.items()},
                                                  "plain_s": plain_s}, indent=2, default=float))


def loop_cpu(runs: Path, n_folds: int) -> tuple[float, int]:
    """CPU seconds of the train stage (the trainer's train_cpu_seconds, train + refit logs) and the epoch count."""
    logs = [pd.read_csv(p) for k in range(n_folds) for p in sorted((runs / f"fold_{k}").glob("*train_log.csv"))]
    return float(sum(log["train_cpu_seconds"].sum() for log in logs)), int(sum(len(log) for log in logs))


def variant_figures(name: str, summary: dict, runs: Path, n_folds: int, spent: dict) -> dict:
    """Test/dev figures of one cross-validated variant from its cv summary and test predictions."""
    per_fold = [m["test"]["macro_f1"] for m in summary["per_fold"]]
    preds = pd.concat([RunDir(runs / f"fold_{k}").read_predictions("test") for k in range(n_folds)])
    cpu, epochs = loop_cpu(runs, n_folds)
    return {"name": name, "per_fold": per_fold, "mean": float(np.mean(per_fold)), "std": float(np.std(per_fold)),
            "dev_mean": summary["dev"]["macro_f1"]["mean"], "uar_mean": summary["test"]["uar"]["mean"],
            "wall_s": spent["wall"], "cpu_s": spent["cpu"], "loop_cpu_s": cpu, "epochs": epochs,
            "pooled_f1": f1_score(preds["label"], preds["pred"], average="macro"),
            "pooled_uar": recall_score(preds["label"], preds["pred"], average="macro"),
            "best_epochs": [m["best_epoch"] for m in summary["per_fold"]]}


def ensemble_figures(name: str, runs: list[Path], out: Path, n_folds: int, spent: dict) -> dict:
    """Per fold, the mean-posterior ensemble of the seeds' runs (the `fusion-ser ensemble` code path)."""
    from fusion_ser.fusion.ensemble import ensemble_runs

    per_fold, dev, uar, preds = [], [], [], []
    for k in range(n_folds):
        ens = ensemble_runs([r / f"fold_{k}" for r in runs], out / f"fold_{k}", method="mean", force=True)
        run = RunDir(getattr(ens, "path", out / f"fold_{k}"))
        test, dev_pred = run.read_predictions("test"), run.read_predictions("dev")
        per_fold.append(f1_score(test["label"], test["pred"], average="macro"))
        uar.append(recall_score(test["label"], test["pred"], average="macro"))
        dev.append(f1_score(dev_pred["label"], dev_pred["pred"], average="macro"))
        preds.append(test)
    pooled = pd.concat(preds)
    return {"name": name, "per_fold": per_fold, "mean": float(np.mean(per_fold)), "std": float(np.std(per_fold)),
            "dev_mean": float(np.mean(dev)), "uar_mean": float(np.mean(uar)), "wall_s": spent["wall"],
            "cpu_s": spent["cpu"], "loop_cpu_s": spent["loop_cpu"], "epochs": 0,
            "pooled_f1": f1_score(pooled["label"], pooled["pred"], average="macro"),
            "pooled_uar": recall_score(pooled["label"], pooled["pred"], average="macro"), "best_epochs": []}


def fmt_folds(scores: list[float]) -> str:
    return "[" + " ".join(f"{s:.2f}" for s in scores) + "]"


if __name__ == "__main__":
    main()
