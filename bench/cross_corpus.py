"""Cross-corpus transfer of the offline default audio model, with and without domain standardisation, and with a
second training corpus: macro-F1 inside RAVDESS (dev actors) and on corpora it was not trained on.

Train: RAVDESS on the 6 classes it shares with EmoDB / EMOVO (anger, disgust, fear, happiness, neutral, sadness),
actors 1-20 train, 21-24 dev; configs/audio_whisper_tiny.yaml without speed perturbation and refit (a budget for
2 shared cores), every configuration on the same feature cache. Targets (fusion-ser test, shared classes):
  - shifted: the dev actors' clips through a telephone band, reverberation, noise and gain (bench/cross_corpus_data.py).
    Same speakers and sentences as dev: it measures the channel, not new people.
  - tts: the demo's TTS corpus (4 of the classes, synthetic speakers, other sentences), all 384 rows; for the runs
    trained on RAVDESS + TTS its test split only (its speakers are unseen there, its corpus is not).

    python bench/cross_corpus.py [--data /work/shared/data/ravdess] [--out /tmp/cross_corpus_bench] [--epochs 15]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import pandas as pd
import torch

from fusion_ser.config import ManifestSource, load_config
from fusion_ser.crosscorpus import evaluate_on_corpus
from fusion_ser.data.manifest import read_manifest, write_manifest
from fusion_ser.training.job import train_run

from cross_corpus_data import DEV_ACTORS, prepare, warm_cache

ROOT = Path(__file__).resolve().parents[1]
# name -> (head.standardize, train on RAVDESS + TTS)
VARIANTS = {"ravdess": ("none", False), "ravdess+speaker": ("speaker", False), "ravdess+corpus": ("corpus", False),
            "ravdess+tts": ("none", True), "ravdess+tts+speaker": ("speaker", True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/ravdess")
    ap.add_argument("--out", type=Path, default=Path("/tmp/cross_corpus_bench"))
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    t_all = time.perf_counter()
    m = prepare(args.data, args.out)
    warm_cache(list(m.values()), args.out / "features", ROOT / "configs/audio_whisper_tiny.yaml")
    shifted = read_manifest(m["shifted"])
    shifted_dev = args.out / "shifted_dev.csv"
    write_manifest(shifted[shifted["speaker"].isin(DEV_ACTORS)], shifted_dev)
    common = [f"train.epochs={args.epochs}", "data.speed_perturb=[]", "train.refit_on_dev=false",
              f"train.cache_dir={args.out / 'features'}", "audio_encoder.threads=1"]
    rows = []
    for name in args.variants.split(","):
        standardize, with_tts = VARIANTS[name]
        t0 = time.perf_counter()
        cfg = load_config(ROOT / "configs/audio_whisper_tiny.yaml", common + [f"head.standardize={standardize}"])
        manifest = m["ravdess"]
        if with_tts:
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, manifests=[
                ManifestSource(str(m["ravdess"]), "ravdess"), ManifestSource(str(m["tts"]), "tts")]))
            manifest = None
        out = args.out / "runs" / name
        run = train_run(cfg, manifest, out) if not (out / "run.json").is_file() else None
        metrics = pd.read_json(out / "metrics.json", typ="series")
        dev = metrics["dev"]
        row = {"variant": name, "ravdess dev": dev["by_corpus"]["ravdess"]["macro_f1"] if with_tts else dev["macro_f1"]}
        for target, path, split in (("shifted", shifted_dev, "all"), ("tts", m["tts"], "test" if with_tts else "all")):
            res = evaluate_on_corpus(out, path, args.out / "evals" / f"{name}_on_{target}", split=split, force=True,
                                     n_boot=200)
            ci = res.metrics["ci"]["macro_f1"]
            row[target] = res.metrics["macro_f1"]
            row[f"{target} 95% CI"] = f"[{ci['low']:.3f}, {ci['high']:.3f}]"
        row["wall s"] = round(time.perf_counter() - t0)
        rows.append(row)
        print(pd.DataFrame([row]).to_string(index=False, float_format="%.3f"), flush=True)
        del run
    table = pd.DataFrame(rows)
    print("\nmacro-F1 (shared classes; tts for the +tts runs: its test split, seen corpus)")
    print(table.to_string(index=False, float_format="%.3f"))
    base = table.set_index("variant")
    if "ravdess" in base.index:
        print("\nchange against the unadapted transfer (ravdess):")
        print((base[["ravdess dev", "shifted", "tts"]] - base.loc["ravdess", ["ravdess dev", "shifted", "tts"]])
              .to_string(float_format="%+.3f"))
    print(f"\nwall time {time.perf_counter() - t_all:.0f} s (2 shared CPU cores, 1 thread)")


if __name__ == "__main__":
    main()
