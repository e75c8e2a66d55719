"""Real-time factor (and word error rate) of the default transcription on RAVDESS clips.

Default: packaged Whisper tiny.en through faster-whisper, CPU, int8, beam 5. Audio decoding is not timed.

    python bench/transcribe_rtf.py [--clips 100] [--batch-sizes 1 8] [--beam-size 5] [--compute-type auto]
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import jiwer
import pandas as pd

from fusion_ser.data.audio import load_audio
from fusion_ser.transcribe import get_transcriber

ROOT = Path(__file__).resolve().parents[1]


def norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ravdess"))
    ap.add_argument("--clips", type=int, default=100)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--beam-size", type=int, default=5)
    ap.add_argument("--compute-type", default="auto")
    ap.add_argument("--cpu-threads", type=int, default=0, help="CTranslate2 threads (0: its default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    man = pd.read_csv(Path(args.data) / "manifest.csv")
    rows = man.sample(n=min(args.clips, len(man)), random_state=args.seed)
    audios = [load_audio(Path(args.data) / p) for p in rows["path"]]
    seconds = sum(len(a) for a in audios) / 16000
    print(f"RAVDESS: {len(audios)} clips, {seconds:.1f} s of audio ({seconds / len(audios):.2f} s per clip)")
    for bs in args.batch_sizes:
        t0 = time.perf_counter()
        tr = get_transcriber(device="cpu", beam_size=args.beam_size, compute_type=args.compute_type, batch_size=bs,
                             cpu_threads=args.cpu_threads)
        load_s = time.perf_counter() - t0
        tr.transcribe(audios[0])  # warm-up
        t0 = time.perf_counter()
        texts = []
        for i in range(0, len(audios), bs):
            texts += tr.transcribe_batch(audios[i:i + bs])
        wall = time.perf_counter() - t0
        wer = jiwer.wer([norm(t) for t in rows["text"]], [norm(t) or "<empty>" for t in texts])
        print(f"faster-whisper tiny.en {tr.compute_type} beam {args.beam_size} batch {bs}: RTF {wall / seconds:.4f} "
              f"({seconds / wall:.1f}x real time, {wall / len(audios):.3f} s per clip), WER {wer:.3f}, "
              f"model load {load_s:.1f} s")
    print(f"example: '{rows['text'].iloc[0]}' -> '{texts[0]}'")


if __name__ == "__main__":
    main()
