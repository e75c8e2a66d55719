"""`fusion-ser demo`: the whole flow, offline on CPU, on a generated emotional speech corpus."""

from __future__ import annotations

import time

import click

from fusion_ser.cli.common import handle_errors


@click.command("demo")
@click.option("-o", "--output", "out_dir", default="demo_out", type=click.Path(file_okay=False),
              help="Folder for the corpus, the runs and the reports.")
@click.option("--size", type=click.Choice(["small", "full"]), default="full",
              help="full: 384 clips, a few minutes; small: 48 clips and one epoch, a quick smoke run.")
@click.option("--seed", type=int, default=0, help="Seed of the corpus and of every model.")
@handle_errors
def command(out_dir: str, size: str, seed: int) -> None:
    """Generate a small emotional speech corpus with TTS, transcribe it, train audio, text and fused models,
    compare them and write a report: everything fusion-ser does, offline."""
    from tqdm import tqdm

    from fusion_ser.demo.pipeline import STAGES, run_demo

    t0 = time.perf_counter()
    bar = tqdm(total=len(STAGES), unit="step", desc="demo", bar_format="{desc}{n}/{total} steps |{bar}| {elapsed}")
    finished: set[str] = set()

    def progress(stage: str, done: int, total: int) -> None:
        bar.set_description(f"demo: {stage} {done}/{total}" if total > 1 else f"demo: {stage}")
        if done >= total and stage not in finished and stage in STAGES:
            finished.add(stage)
            bar.update(1)

    try:
        summary = run_demo(out_dir, size=size, seed=seed, progress=progress)
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    click.echo(f"\nDemo finished in {wall / 60:.1f} min ({summary.n_clips} clips). Test {summary.metric}:")
    for name, score in summary.test_scores.items():
        mark = "  <- best" if name == summary.best else ""
        click.echo(f"  {name:6s} {score:.3f}  {summary.runs[name]}{mark}")
    click.echo(f"Whisper tiny.en word error rate on the corpus: {summary.asr_wer:.1%}")
    click.echo("Time per step, wall (CPU) s: " + ", ".join(
        f"{k} {v:.0f} ({summary.stage_cpu_seconds.get(k, 0.0):.0f})" for k, v in summary.stage_seconds.items()))
    click.echo("\nWhere everything is:")
    click.echo(f"  corpus + manifest      {summary.corpus_manifest}")
    click.echo(f"  manifest with ASR text {summary.manifest}")
    click.echo(f"  runs                   {summary.out_dir}/runs/{{audio,text,late,both}}  (each with report.md)")
    click.echo(f"  comparison             {summary.comparison}")
    click.echo(f"  demo report            {summary.report}")
    runs = summary.runs
    click.echo("\nTry a model on audio:")
    click.echo(f"  fusion-ser predict {runs['late']} {summary.out_dir}/corpus/wav -o predictions.jsonl")
    click.echo("\nOn your own corpus:")
    click.echo("  fusion-ser prepare csv my_corpus.csv -o data/my.csv        # or msp-podcast, ravdess, iemocap, ...")
    click.echo("  fusion-ser transcribe data/my.csv -o data/my_text.csv")
    click.echo("  fusion-ser train -c configs/audio_whisper_tiny.yaml --manifest data/my_text.csv -o runs/audio")
    click.echo("  fusion-ser train -c configs/text_minilm_lora.yaml --modality text --manifest data/my_text.csv -o runs/text")
    click.echo("  fusion-ser fuse runs/audio runs/text -o runs/late")
    click.echo("  fusion-ser train -c configs/attention_fusion.yaml --modality both --manifest data/my_text.csv -o runs/both")
    click.echo("  fusion-ser compare runs/audio runs/text runs/late runs/both --baseline runs/audio -o reports/table.md")
