"""`fusion-ser compare RUN... --baseline RUN -o REPORT`: a leaderboard with intervals and paired tests."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from fusion_ser.cli.common import handle_errors


@click.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--baseline", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run every other run is tested against (it joins the table even if not listed).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Report file; its suffix picks the format unless --format is given.")
@click.option("--format", "fmt", type=click.Choice(["md", "html", "csv", "json"]), default=None,
              help="Report format. Default: from the output suffix (md when it has none).")
@click.option("--split", default="test", show_default=True, help="Split whose predictions are compared.")
@click.option("--intersect", is_flag=True, help="Compare on the utterances common to all runs instead of refusing.")
@click.option("--n-boot", type=click.IntRange(min=10), default=1000, show_default=True, help="Bootstrap resamples.")
@click.option("--n-perm", type=click.IntRange(min=10), default=1000, show_default=True, help="Permutations of the paired test.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of bootstrap and permutations.")
@click.option("--by-speaker", is_flag=True, help="Bootstrap speakers instead of utterances (needs a speaker column).")
@click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Manifest with utt_id and speaker. Default: the one recorded in the baseline's config.yaml.")
@handle_errors
def command(runs: tuple[Path, ...], baseline: Path, output: Path, fmt: Optional[str], split: str, intersect: bool,
            n_boot: int, n_perm: int, seed: int, by_speaker: bool, manifest: Optional[Path]) -> None:
    """Rank RUNS (and the baseline) on one split with 95 % intervals and paired tests against the baseline."""
    from fusion_ser.evaluation.compare import compare_runs, write_comparison
    from fusion_ser.evaluation.metrics import primary_metric

    comp = compare_runs(list(runs), baseline, split=split, intersect=intersect, n_boot=n_boot, n_perm=n_perm,
                        seed=seed, by_speaker=by_speaker, manifest=manifest)
    path = write_comparison(comp, output, fmt)
    key = primary_metric(comp.task)
    click.echo(f"{split}: {comp.n} utterances; ranked by {key}")
    for _, row in comp.table.iterrows():
        delta = "baseline" if row["baseline"] else f"{row[f'delta_{key}']:+.4f} (p={row[f'p_{key}']:.3f})"
        click.echo(f"  {row['rank']:>2}. {row['run']:<24} {row[key]:.4f} [{row[f'{key}_low']:.4f}, {row[f'{key}_high']:.4f}]  {delta}")
    click.echo(f"wrote {path}")
