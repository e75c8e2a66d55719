"""Audio loading speed: files/s and seconds of audio per second with `load_audio` on RAVDESS.

Usage: python bench/audio_loading.py [--root ../shared/data/ravdess] [--subset 200]
1. every file of the corpus (16 kHz FLAC: decode only);
2. a subset re-encoded at 8 kHz mono and at 48 kHz stereo WAV (decode + soxr resampling to 16 kHz),
   with the soxr share measured separately;
3. header-only durations (`audio_duration`), what `prepare` uses for its summary.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from fusion_ser.data.audio import audio_duration, load_audio
from fusion_ser.data.corpora import prepare_corpus

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ravdess"


def _time_loads(paths: list[str]) -> tuple[float, float]:
    start = time.perf_counter()
    seconds = sum(len(load_audio(p)) for p in paths) / 16000
    return time.perf_counter() - start, seconds


def _report(name: str, n: int, elapsed: float, seconds: float) -> None:
    print(f"{name:<38} {n:>5} files  {elapsed:7.2f} s  {n / elapsed:8.1f} files/s  "
          f"{seconds / elapsed:9.1f} s audio/s  ({seconds / 3600:.3f} h)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--subset", type=int, default=200)
    args = parser.parse_args()
    paths = prepare_corpus("ravdess", args.root)["path"].tolist()
    print(f"corpus: {args.root} ({len(paths)} files)")

    for p in paths[:20]:  # warm the page cache so the first timing is not a disk benchmark
        load_audio(p)
    elapsed, seconds = _time_loads(paths)
    _report("decode 16 kHz FLAC (all)", len(paths), elapsed, seconds)

    subset = paths[:: max(1, len(paths) // args.subset)][: args.subset]
    with tempfile.TemporaryDirectory() as tmp:
        low, high = [], []
        for i, p in enumerate(subset):
            x = load_audio(p)
            low.append(str(Path(tmp) / f"l{i}.wav"))
            sf.write(low[-1], soxr.resample(x, 16000, 8000), 8000)
            high.append(str(Path(tmp) / f"h{i}.wav"))
            y = soxr.resample(x, 16000, 48000)
            sf.write(high[-1], np.stack([y, 0.5 * y], axis=1), 48000)
        elapsed, seconds = _time_loads(low)
        _report("decode 8 kHz WAV + soxr -> 16 kHz", len(low), elapsed, seconds)
        raw = [sf.read(p, dtype="float32")[0] for p in low]
        start = time.perf_counter()
        for x in raw:
            soxr.resample(x, 8000, 16000, quality="HQ")
        t_soxr = time.perf_counter() - start
        print(f"{'  of which soxr 8k->16k alone':<38} {len(raw):>5} files  {t_soxr:7.2f} s  "
              f"{sum(len(x) for x in raw) / 8000 / t_soxr:9.1f} s audio/s")
        elapsed, seconds = _time_loads(high)
        _report("decode 48 kHz stereo WAV + mix + soxr", len(high), elapsed, seconds)

    start = time.perf_counter()
    total = sum(audio_duration(p) for p in paths)
    elapsed = time.perf_counter() - start
    _report("header durations only (audio_duration)", len(paths), elapsed, total)


if __name__ == "__main__":
    main()
