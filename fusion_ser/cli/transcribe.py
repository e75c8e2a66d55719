"""`fusion-ser transcribe`: fill a manifest's text column with Whisper transcripts (cached, resumable).

Under torchrun every rank transcribes its share on its own GPU (cuda:LOCAL_RANK) into the one cache; rank 0 writes
the manifest and prints the summary of all ranks.
"""

from __future__ import annotations

import click
import pandas as pd
import torch
from tqdm import tqdm

from fusion_ser.cli.common import handle_errors
from fusion_ser.data.manifest import read_manifest, write_manifest
from fusion_ser.training import distributed as D
from fusion_ser.transcribe import BACKENDS, TranscriptCache, get_transcriber, transcribe_frame
from fusion_ser.transcribe.faster import COMPUTE_TYPES
from fusion_ser.transcribe.runner import TranscribeSummary, rows_to_transcribe


@click.command(name="transcribe")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="Manifest CSV to write (may be the input).")
@click.option("--backend", type=click.Choice(BACKENDS), default="faster-whisper", help="Speech recognizer.")
@click.option("--model", default=None,
              help="Model name or local directory; default: the packaged Whisper tiny.en (faster-whisper).")
@click.option("--beam-size", type=click.IntRange(min=1), default=5, help="Beam width of the decoder.")
@click.option("--language", default=None, help="Language code (e.g. en); default: detect (English-only models: en).")
@click.option("--vad/--no-vad", default=False, help="Voice-activity filter before decoding (faster-whisper).")
@click.option("--compute-type", type=click.Choice(COMPUTE_TYPES), default="auto",
              help="CTranslate2 compute type; auto = int8 on CPU, float16 on CUDA (faster-whisper).")
@click.option("--device", default="auto", help="auto | cpu | cuda | cuda:N.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, help="Clips decoded together.")
@click.option("--overwrite", is_flag=True, help="Replace existing (human) transcripts too.")
@click.option("--column", default="text", show_default=True,
              help="Column the transcripts go to; e.g. asr_text keeps the human `text` beside Whisper's, so a config "
                   "can train on one and test on the other (data.text_columns).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Transcript cache folder; default: ~/.cache/fusion-ser/transcripts.")
@handle_errors
def command(manifest: str, output: str, backend: str, model: str | None, beam_size: int, language: str | None,
            vad: bool, compute_type: str, device: str, batch_size: int, overwrite: bool, column: str,
            cache_dir: str | None) -> None:
    """Fill the text column (or --column) of MANIFEST with transcripts; human transcripts are kept unless --overwrite."""
    df = read_manifest(manifest)
    options = {"device": device, "beam_size": beam_size, "language": language, "batch_size": batch_size}
    if backend == "faster-whisper":
        options.update(vad=vad, compute_type=compute_type)
    elif backend == "openai-whisper":
        options.pop("batch_size")
    dist = D.init_distributed()
    try:
        summary = _transcribe(df, output, backend, model, options, overwrite, batch_size, cache_dir, dist, column)
    finally:
        D.cleanup(dist)
    if dist.is_main:
        _print_summary(output, len(df), summary)


def _rank_device(device: str, dist: D.DistInfo) -> str:
    """Under torchrun, 'auto' and 'cuda' mean this rank's GPU (cuda:LOCAL_RANK) when CUDA is present."""
    if dist.enabled and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{dist.local_rank}"
    return device


def _transcribe(df: pd.DataFrame, output: str, backend: str, model: str | None, options: dict, overwrite: bool,
                batch_size: int, cache_dir: str | None, dist: D.DistInfo, column: str = "text") -> TranscribeSummary:
    """Transcribe this rank's share (all rows in a single process); rank 0 writes the manifest."""
    options["device"] = _rank_device(options["device"], dist)
    cache = TranscriptCache(cache_dir)
    todo = len(rows_to_transcribe(df, overwrite, column))
    mine = len(D.shard(range(todo), dist))
    transcriber = get_transcriber(backend, model, **options) if todo else None
    with tqdm(total=mine, unit="clip", desc="transcribe", disable=mine == 0 or not dist.is_main) as bar:
        totals = {"audio": 0.0, "compute": 0.0}

        def progress(n: int, audio_s: float, compute_s: float) -> None:
            totals["audio"] += audio_s
            totals["compute"] += compute_s
            bar.update(n)
            if totals["audio"]:
                bar.set_postfix(rtf=f"{totals['compute'] / totals['audio']:.3f}")

        if transcriber is not None:
            df, summary = transcribe_frame(df, transcriber, cache, overwrite=overwrite, batch_size=batch_size,
                                           progress=progress, dist=dist, column=column)
        else:
            summary = TranscribeSummary(kept=len(df))
    cache.close()
    if dist.is_main:
        write_manifest(df, output)
    return summary


def _print_summary(output: str, rows: int, summary: TranscribeSummary) -> None:
    click.echo(f"Wrote {output}: {rows} rows")
    click.echo(f"  transcribed {summary.transcribed}, cached {summary.cached}, kept {summary.kept}, "
               f"failed {summary.failed}")
    rtf = f"real-time factor {summary.rtf:.3f}" if summary.audio_seconds else "nothing decoded"
    click.echo(f"  audio {summary.audio_seconds / 3600:.3f} h decoded, {rtf}")
    if summary.failures:
        click.echo(f"  {summary.failed} clip(s) failed and were left without text:")
        for utt, reason in summary.failures[:20]:
            click.echo(f"    {utt}: {reason}")
        if summary.failed > 20:
            click.echo(f"    ... and {summary.failed - 20} more (run with -v for all)")
    if summary.shares:
        click.echo(f"  {len(summary.shares)} ranks; clips per rank: {', '.join(map(str, summary.shares))}")
