"""`fusion-ser ensemble RUN... -o RUN`: mean, majority vote, stacking or an MLP meta-classifier over runs of any kind."""

from __future__ import annotations

import click

from fusion_ser.cli.common import handle_errors
from fusion_ser.cli.fuse import summary_lines


@click.command("ensemble")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False), help="Folder of the ensembled run.")
@click.option(
    "--method",
    type=click.Choice(["mean", "vote", "stacking", "mlp", "soup"]),
    default="mean",
    help="mean of posteriors (or attribute values); majority vote, ties by mean posterior; stacking: LR (ridge) "
         "fitted on dev; mlp: a small MLP on the members' log-posteriors (attribute values) fitted on dev; soup: "
         "the mean of the weights of trained runs of one architecture, one model (one forward pass).",
)
@click.option("--attribute-method", type=click.Choice(["mean", "stacking", "mlp"]), default=None,
              help="Multitask runs: how their attribute predictions are combined (--method combines their "
                   "posteriors); default: --method where it applies to attributes, else mean.")
@click.option("--folds", default=5, type=int, help="Folds of the cross-validation inside dev (stacking).")
@click.option("--C", "C", default=1.0, type=float, help="Inverse L2 strength of the stacking logistic regression.")
@click.option("--alpha", default=None, type=float,
              help="L2 strength of the stacking ridge regression (attributes; default 1) and of the MLP's weights "
                   "(default 100).")
@click.option("--hidden", default=32, type=click.IntRange(1), help="Hidden units of the MLP (mlp).")
@click.option("--seed", default=0, type=int, help="Seed of the dev folds.")
@click.option("--force", is_flag=True, help="Overwrite a non-empty output folder.")
@handle_errors
def command(runs, output, method, attribute_method, folds, C, alpha, hidden, seed, force) -> None:
    """Ensemble trained, fused or ensembled runs into a new run dir."""
    from fusion_ser.fusion.ensemble import ensemble_runs

    result = ensemble_runs(list(runs), output, method=method, attribute_method=attribute_method, folds=folds, C=C, alpha=alpha, hidden=hidden,
                           seed=seed, force=force)
    click.echo("\n".join(summary_lines(result, "ensembled run")))
