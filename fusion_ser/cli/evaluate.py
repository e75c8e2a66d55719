"""`fusion-ser evaluate RUN`: recompute a run's metrics with 95 % intervals; write metrics.json, report.md, plots."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from fusion_ser.cli.common import handle_errors


@click.command("evaluate")
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.option("--split", "splits", multiple=True,
              help="Split(s) to evaluate (repeatable), e.g. dev or test. Default: every split with predictions.")
@click.option("--n-boot", type=click.IntRange(min=10), default=1000, show_default=True, help="Bootstrap resamples for the 95 % intervals.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@click.option("--by-speaker", is_flag=True, help="Resample speakers instead of utterances (needs a speaker column).")
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Manifest with utt_id and speaker columns. Default: the one recorded in the run's config.yaml.")
@handle_errors
def command(run: Path, splits: tuple[str, ...], n_boot: int, seed: int, by_speaker: bool, manifest: Optional[Path]) -> None:
    """Recompute RUN's metrics from its predictions and write metrics.json, report.md and PNG figures into RUN."""
    from fusion_ser.evaluation.metrics import headline_keys
    from fusion_ser.evaluation.report import evaluate_run
    from fusion_ser.rundir import RunDir

    results = evaluate_run(run, list(splits) or None, n_boot=n_boot, seed=seed, by_speaker=by_speaker, manifest=manifest)
    info = RunDir(run).read_info()
    for split, m in results.items():
        reasons = ", ".join(f"{r}: {n}" for r, n in (m.get("unscored") or {}).items()) or "unknown truth"
        click.echo(f"{split}: {m['n']} scored, {m['n_skipped']} skipped ({reasons})")
        if m.get("n_unknown_class"):
            names = ", ".join(f"{c}: {n}" for c, n in m["unknown_classes"].items())
            click.echo(f"  {m['n_unknown_class']} scored row(s) have labels the run has no class for ({names}); "
                       "they count as errors")
        for key in headline_keys(info):
            ci = m.get("ci", {}).get(key)
            if ci is not None:
                click.echo(f"  {key:<14} {ci['value']:.4f}  [{ci['low']:.4f}, {ci['high']:.4f}]")
    click.echo(f"wrote {run / 'metrics.json'} and {run / 'report.md'}")
