"""Speed and word error rate of `fusion-ser transcribe` against a plain faster-whisper loop, on the same RAVDESS clips.

Both sides use the packaged Whisper tiny.en, CPU, int8, beam 5, language "en", 2 threads. The CLI runs as a new
process on a manifest of the clips with an empty transcript cache, so its wall time includes start-up and model load;
the plain loop (`WhisperModel(...).transcribe(clip)` per clip, faster-whisper's defaults otherwise) is timed with its
model load, audio decoding excluded. The CLI runs before and after the loop and its mean is reported, so contention on
a shared machine hits both sides alike. RAVDESS speaks two fixed sentences (the manifest's `text` column).

    python bench/transcribe_rtf.py [--clips 200] [--threads 2] [--batch-size 8] [--window-seconds 10]
                                   [--batch-sizes 1 8]   # also: the library transcriber alone, per batch size
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jiwer
import pandas as pd

from fusion_ser.data.audio import load_audio
from fusion_ser.packaged import packaged_model_path
from fusion_ser.transcribe import get_transcriber

ROOT = Path(__file__).resolve().parents[1]


def norm(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


def wer(refs: list[str], hyps: list[str]) -> float:
    return jiwer.wer([norm(t) for t in refs], [norm(t) or "<empty>" for t in hyps])


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_cli(rows: pd.DataFrame, work: Path, tag: str, threads: int, batch_size: int) -> tuple[float, float, list[str]]:
    """Wall and CPU time of `fusion-ser transcribe` on the clips (fresh process, empty cache) and its transcripts."""
    manifest = work / f"in_{tag}.csv"
    rows.assign(text="").to_csv(manifest, index=False)
    out = work / f"out_{tag}.csv"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "fusion_ser.cli.main", "transcribe", str(manifest), "-o", str(out), "--beam-size",
           "5", "--language", "en", "--compute-type", "int8", "--device", "cpu", "--batch-size", str(batch_size),
           "--cache-dir", str(work / f"cache_{tag}")]
    start, cpu = time.perf_counter(), children_cpu()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the CLI failed: {done.stdout[-1000:]} {done.stderr[-2000:]}")
    wall, cpu = time.perf_counter() - start, children_cpu() - cpu
    texts = pd.read_csv(out, keep_default_na=False).set_index("utt_id").loc[rows["utt_id"], "text"]
    return wall, cpu, [str(t) for t in texts]


def run_plain(audios: list, threads: int) -> tuple[float, float, list[str]]:
    """Wall and CPU time (model load included) and transcripts of a plain faster-whisper loop."""
    from faster_whisper import WhisperModel

    start, cpu = time.perf_counter(), time.process_time()
    model = WhisperModel(packaged_model_path("whisper"), device="cpu", compute_type="int8", cpu_threads=threads)
    texts = []
    for a in audios:
        segments, _ = model.transcribe(a, beam_size=5, language="en")
        texts.append(" ".join(s.text for s in segments))
    return time.perf_counter() - start, time.process_time() - cpu, texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "ravdess"))
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8, help="the CLI's --batch-size")
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=[], help="also time the library transcriber")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    man = pd.read_csv(Path(args.data) / "manifest.csv")
    rows = man.sample(n=min(args.clips, len(man)), random_state=args.seed).reset_index(drop=True)
    rows["utt_id"] = [Path(p).stem for p in rows["path"]]
    rows["split"] = "test"
    refs = rows["text"].astype(str).tolist()
    rows["path"] = [str((Path(args.data) / p).resolve()) for p in rows["path"]]
    audios = [load_audio(p) for p in rows["path"]]
    seconds = sum(len(a) for a in audios) / 16000
    print(f"RAVDESS: {len(audios)} clips, {seconds:.1f} s of audio ({seconds / len(audios):.2f} s per clip); "
          f"tiny.en int8 beam 5 language en, {args.threads} threads")
    with tempfile.TemporaryDirectory() as tmp:
        cli_a, cpu_a, texts_cli = run_cli(rows, Path(tmp), "a", args.threads, args.batch_size)
        plain, plain_cpu, texts_plain = run_plain(audios, args.threads)
        cli_b, cpu_b, _ = run_cli(rows, Path(tmp), "b", args.threads, args.batch_size)
    cli, cli_cpu = (cli_a + cli_b) / 2, (cpu_a + cpu_b) / 2
    w_cli, w_plain = wer(refs, texts_cli), wer(refs, texts_plain)
    print(f"plain faster-whisper loop (model load included): {plain:7.1f} s, {seconds / plain:6.1f}x real time, "
          f"WER {w_plain:.3f}; CPU {plain_cpu:.1f} s")
    print(f"fusion-ser transcribe CLI (start-up, load, empty cache): {cli:7.1f} s ({cli_a:.1f} / {cli_b:.1f}), "
          f"{seconds / cli:6.1f}x real time, WER {w_cli:.3f}; CPU {cli_cpu:.1f} s")
    verdict = "meets" if plain / cli >= 3 and w_cli <= w_plain + 0.01 else "does NOT meet"
    print(f"speed-up {plain / cli:.2f}x in wall time ({plain_cpu / cli_cpu:.2f}x in CPU time) at WER {w_cli:.3f} vs {w_plain:.3f}: {verdict} the goal (>= 3x, WER <= plain "
          "+ 0.01)")
    print(f"example: '{refs[0]}' -> CLI '{texts_cli[0]}', plain '{texts_plain[0].strip()}'")
    for bs in args.batch_sizes:
        tr = get_transcriber(device="cpu", beam_size=5, compute_type="int8", batch_size=bs, cpu_threads=args.threads,
                             language="en")
        tr.transcribe(audios[0])  # warm-up
        start = time.perf_counter()
        texts = []
        for i in range(0, len(audios), bs):
            texts += tr.transcribe_batch(audios[i:i + bs])
        wall = time.perf_counter() - start
        print(f"library transcriber batch {bs}: RTF {wall / seconds:.4f} ({seconds / wall:.1f}x real time), "
              f"WER {wer(refs, texts):.3f}")


if __name__ == "__main__":
    main()
