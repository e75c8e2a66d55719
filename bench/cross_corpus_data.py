"""The corpora of bench/cross_corpus.py: RAVDESS on its 6 classes shared with EmoDB/EMOVO, a domain-shifted copy of
it, and the demo's TTS corpus; plus a feature-cache warm-up so that every configuration reuses the same entries.

The shifted copy (telephone band 300-3400 Hz through 8 kHz, reverberation, babble-like noise at 10-20 dB SNR, a
random gain) is written as FLAC. It shares RAVDESS's speakers and sentences: it measures robustness to the
channel, not to new speakers or a new language. The TTS corpus (hibari-tts, synthetic speakers) is a different
speaker set, different sentences, a different recording chain: the unseen corpus of the two.

    python bench/cross_corpus_data.py [--data /work/shared/data/ravdess] [--out /tmp/cross_corpus_bench]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import soxr
from scipy.signal import butter, fftconvolve, sosfilt

from fusion_ser.data.audio import load_audio
from fusion_ser.data.manifest import read_manifest, write_manifest
from fusion_ser.schema import SAMPLE_RATE

SHARED = ["anger", "disgust", "fear", "happiness", "neutral", "sadness"]  # RAVDESS classes EmoDB and EMOVO share
DEV_ACTORS = {f"Actor_{i:02d}" for i in range(21, 25)}


def ravdess_shared(data: Path, out: Path) -> Path:
    """RAVDESS on the 6 shared classes (calm and surprise dropped): actors 1-20 train, 21-24 dev."""
    src = pd.read_csv(data / "manifest.csv")
    src = src[src["label"].isin(SHARED)].reset_index(drop=True)
    df = pd.DataFrame({"utt_id": [Path(p).stem for p in src["path"]],
                       "path": [str((data / p).resolve()) for p in src["path"]],
                       "split": np.where(src["speaker"].isin(DEV_ACTORS), "dev", "train"),
                       "speaker": src["speaker"], "gender": src["gender"], "label": src["label"], "text": src["text"]})
    path = out / "ravdess6.csv"
    write_manifest(df, path)
    return path


def shift(wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Telephone band + reverberation + noise + gain: a different channel for the same speech."""
    sos = butter(4, [300, 3400], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    x = soxr.resample(soxr.resample(sosfilt(sos, wav), SAMPLE_RATE, 8000), 8000, SAMPLE_RATE)
    rt60 = rng.uniform(0.3, 0.6)
    t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
    ir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
    ir[0] = 1.0
    x = fftconvolve(x, ir / np.sqrt((ir ** 2).sum()))[: len(x)]
    noise = sosfilt(butter(2, [200, 3000], btype="bandpass", fs=SAMPLE_RATE, output="sos"),
                    rng.standard_normal(len(x)))
    snr = rng.uniform(10, 20)
    p_sig, p_noise = float(np.mean(x ** 2)) + 1e-12, float(np.mean(noise ** 2)) + 1e-12
    x = x + noise * np.sqrt(p_sig / (p_noise * 10 ** (snr / 10)))
    x = x * 10 ** (rng.uniform(-12, 0) / 20) / (np.abs(x).max() + 1e-9) * 0.9
    return x.astype(np.float32)


def shifted_copy(manifest: Path, out: Path, seed: int = 0) -> Path:
    """The dev and train actors' clips through `shift`, as FLAC in out/shifted (written once, reused)."""
    df = read_manifest(manifest)
    folder = out / "shifted"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, r in enumerate(df.itertuples()):
        target = folder / f"{r.utt_id}.flac"
        if not target.is_file():
            wav = load_audio(r.path, sample_rate=SAMPLE_RATE)
            sf.write(target, shift(wav, np.random.default_rng([seed, i])), SAMPLE_RATE, subtype="PCM_16")
        paths.append(str(target))
    shifted = df.assign(path=paths, utt_id=[f"shift_{u}" for u in df["utt_id"]], split="test")
    path = out / "ravdess6_shifted.csv"
    write_manifest(shifted, path)
    return path


def tts_corpus(out: Path) -> Path:
    """The demo's TTS corpus (anger, happiness, neutral, sadness; 8 synthetic speakers), generated once."""
    from fusion_ser.demo.corpus import generate_corpus

    manifest = out / "tts" / "manifest.csv"
    if not manifest.is_file():
        generate_corpus(out / "tts", n_speakers=8, per_emotion=12, seed=0)
    return manifest


def warm_cache(manifests: list[Path], cache_dir: Path, config: Path) -> None:
    """Fill the feature cache of the config's (frozen) audio encoder for every clip of the manifests."""
    from fusion_ser.config import load_config
    from fusion_ser.data.feature_cache import FeatureCache
    from fusion_ser.encoders.audio import build_audio_encoder

    cfg = load_config(config)
    encoder = build_audio_encoder(cfg.audio_encoder)
    cache = FeatureCache(cache_dir, sample_rate=cfg.data.sample_rate, min_seconds=cfg.data.min_seconds,
                         max_seconds=cfg.data.max_eval_seconds)
    for m in manifests:
        df = read_manifest(m)
        t0 = time.perf_counter()
        report = cache.ensure(encoder, [{"utt_id": r.utt_id, "path": r.path} for r in df.itertuples()])
        print(f"cache {m.name}: {report.computed} computed, {report.reused} reused ({time.perf_counter() - t0:.0f} s)",
              flush=True)


def prepare(data: Path, out: Path) -> dict[str, Path]:
    """Every manifest of the bench (written once under `out`)."""
    out.mkdir(parents=True, exist_ok=True)
    ravdess = ravdess_shared(data, out)
    return {"ravdess": ravdess, "shifted": shifted_copy(ravdess, out), "tts": tts_corpus(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/ravdess")
    ap.add_argument("--out", type=Path, default=Path("/tmp/cross_corpus_bench"))
    ap.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "configs/audio_whisper_tiny.yaml")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    manifests = prepare(args.data, args.out)
    print(f"corpora ready ({time.perf_counter() - t0:.0f} s): {', '.join(f'{k}={v}' for k, v in manifests.items())}",
          flush=True)
    warm_cache(list(manifests.values()), args.out / "features", args.config)


if __name__ == "__main__":
    main()
