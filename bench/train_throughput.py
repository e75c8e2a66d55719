"""Training throughput: utterances/s and padded-frame fraction with length-bucketed vs random batches (a tiny
random WavLM fine-tuned on RAVDESS), and the epoch time of a frozen encoder with and without the feature cache.

    python bench/train_throughput.py [--data /work/shared/data/ravdess] [--out /tmp/throughput_bench]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fusion_ser.config import load_config
from fusion_ser.data.manifest import write_manifest
from fusion_ser.data.sampler import BucketBatchSampler
from fusion_ser.training.job import train_run


def subset_manifest(data: Path, out: Path, train_actors: int, dev_actors: int) -> tuple[Path, np.ndarray]:
    """First `train_actors` actors as train, the next `dev_actors` as dev; returns the CSV and train durations."""
    src = pd.read_csv(data / "manifest.csv")
    actors = sorted(src["speaker"].unique())
    split = {a: "train" for a in actors[:train_actors]} | {a: "dev" for a in actors[train_actors:train_actors + dev_actors]}
    src = src[src["speaker"].isin(split)]
    df = pd.DataFrame({"utt_id": [Path(p).stem for p in src["path"]], "path": [str(data / p) for p in src["path"]],
                       "split": src["speaker"].map(split), "speaker": src["speaker"], "gender": src["gender"],
                       "label": src["label"], "text": src["text"]})
    path = out / f"subset_{train_actors}_{dev_actors}.csv"
    write_manifest(df, path)
    return path, src.loc[src["speaker"].map(split) == "train", "duration_s"].to_numpy()


def padded_fraction(durations: np.ndarray, batch_size: int, bucketing: bool, seed: int = 0) -> float:
    """Share of the padded batch tensors that is padding, over one epoch of the trainer's batches."""
    lengths = durations if bucketing else np.zeros_like(durations)
    sampler = BucketBatchSampler(lengths, batch_size, shuffle=True, seed=seed)
    sampler.set_epoch(1)
    real = padded = 0.0
    for batch in sampler:
        d = durations[batch]
        real += d.sum()
        padded += d.max() * len(d)
    return 1.0 - real / padded


def tiny_wavlm(directory: Path) -> str:
    """A random WavLM (hidden 32, 2 layers, the standard 320x CNN front end) saved with save_pretrained."""
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    torch.manual_seed(0)
    cfg = WavLMConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                      mask_time_prob=0.0, layerdrop=0.0, num_buckets=32, max_bucket_distance=64)
    WavLMModel(cfg).save_pretrained(directory)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True,
                             return_attention_mask=True).save_pretrained(directory)
    return str(directory)


def epoch_figures(run: Path, n_train: int) -> dict:
    """Train-stage figures of the last epoch (after warm-up): wall s, utt/s, and utt per CPU-second (robust on a
    shared machine)."""
    last = pd.read_csv(run / "train_log.csv").iloc[-1]
    cpu = float(last["train_cpu_seconds"])
    return {"utt_per_s": float(last["train_utt_per_s"]), "seconds": float(last["train_seconds"]),
            "cpu_seconds": cpu, "utt_per_cpu_s": n_train / cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/shared/data/ravdess")
    ap.add_argument("--out", default="/tmp/throughput_bench")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2, help="epochs per run; figures are from the last one")
    args = ap.parse_args()
    data, out = Path(args.data), Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    bs = args.batch_size

    manifest, durations = subset_manifest(data, out, train_actors=8, dev_actors=2)
    print(f"tiny WavLM (hidden 32, 2 layers) fine-tuned, {len(durations)} RAVDESS train clips "
          f"({durations.mean():.2f} s mean, {durations.min():.2f}-{durations.max():.2f} s), batch {bs}, "
          f"figures of epoch {args.epochs}")
    model = tiny_wavlm(out / "tiny_wavlm")
    for bucketing in (True, False):
        cfg = load_config(None, ["audio_encoder.type=hf", f"audio_encoder.name_or_path={model}",
                                 "audio_encoder.finetune=full", f"train.epochs={args.epochs}", f"train.batch_size={bs}",
                                 f"train.bucketing={str(bucketing).lower()}", "train.cache_features=false",
                                 "train.report=false"])
        run = out / f"wavlm_bucket_{bucketing}"
        train_run(cfg, manifest, run)
        fig = epoch_figures(run, len(durations))
        name = "bucketed" if bucketing else "random  "
        print(f"  {name}: {fig['utt_per_s']:6.1f} utt/s wall, {fig['utt_per_cpu_s']:6.1f} utt per CPU-second, epoch "
              f"{fig['seconds']:5.1f} s wall / {fig['cpu_seconds']:5.1f} s CPU, padded-frame fraction "
              f"{padded_fraction(durations, bs, bucketing):.3f}")

    manifest, durations = subset_manifest(data, out, train_actors=2, dev_actors=1)
    print(f"frozen Whisper tiny.en (CTranslate2) + attentive stats head, {len(durations)} train clips, batch {bs}")
    base = ["audio_encoder.type=ct2_whisper", "audio_encoder.finetune=frozen", "audio_encoder.layers=last", f"train.batch_size={bs}",
            f"train.cache_dir={out / 'cache'}", "train.report=false"]
    cfg = load_config(None, base + [f"train.epochs={args.epochs}", "train.cache_features=false"])
    train_run(cfg, manifest, out / "frozen_nocache")
    fig = epoch_figures(out / "frozen_nocache", len(durations))
    print(f"  without cache: epoch {fig['seconds']:6.1f} s wall / {fig['cpu_seconds']:6.1f} s CPU")
    cfg = load_config(None, base + [f"train.epochs={args.epochs}", "train.cache_features=true"])
    t, c = time.perf_counter(), time.process_time()
    train_run(cfg, manifest, out / "frozen_cache")
    total, total_cpu = time.perf_counter() - t, time.process_time() - c
    fig = epoch_figures(out / "frozen_cache", len(durations))
    print(f"  with cache:    epoch {fig['seconds']:6.1f} s wall / {fig['cpu_seconds']:6.1f} s CPU (after a one-off "
          f"fill; the whole {args.epochs}-epoch run incl. filling the cache and dev/test prediction: {total:.1f} s wall / "
          f"{total_cpu:.1f} s CPU)")


if __name__ == "__main__":
    main()
