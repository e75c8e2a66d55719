"""`fusion-ser ensemble RUN... -o RUN`: mean, majority vote or stacking of runs of any kind."""

from __future__ import annotations

import click

from fusion_ser.cli.common import handle_errors
from fusion_ser.cli.fuse import summary_lines


@click.command("ensemble")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False), help="Folder of the ensembled run.")
@click.option(
    "--method",
    type=click.Choice(["mean", "vote", "stacking"]),
    default="mean",
    help="mean of posteriors (or attribute values); majority vote, ties by mean posterior; stacking: LR (ridge) fitted on dev.",
)
@click.option("--folds", default=5, type=int, help="Folds of the cross-validation inside dev (stacking).")
@click.option("--C", "C", default=1.0, type=float, help="Inverse L2 strength of the stacking logistic regression.")
@click.option("--alpha", default=1.0, type=float, help="L2 strength of the stacking ridge regression (attributes).")
@click.option("--seed", default=0, type=int, help="Seed of the dev folds.")
@click.option("--force", is_flag=True, help="Overwrite a non-empty output folder.")
@handle_errors
def command(runs, output, method, folds, C, alpha, seed, force) -> None:
    """Ensemble trained, fused or ensembled runs into a new run dir."""
    from fusion_ser.fusion.ensemble import ensemble_runs

    result = ensemble_runs(list(runs), output, method=method, folds=folds, C=C, alpha=alpha, seed=seed, force=force)
    click.echo("\n".join(summary_lines(result, "ensembled run")))
