"""`fusion-ser fuse RUN... -o RUN`: late fusion of trained runs on their dev predictions."""

from __future__ import annotations

import click

from fusion_ser.cli.common import handle_errors
from fusion_ser.evaluation.metrics import headline_keys, higher_is_better, primary_key
from fusion_ser.fusion.runs import CombinedRun


def summary_lines(result: CombinedRun, title: str) -> list[str]:
    """A one-screen summary: members, method, and dev (CV) / test figures of the combined run vs each member."""
    keys = headline_keys(result.info)
    splits = [s for s in result.splits if s in result.metrics]
    dev_note = (
        f"dev figures of the {result.info.kind} run are out-of-fold ({result.n_folds}-fold CV inside dev"
        f"{', grouped by speaker' if result.grouped_by_speaker else ''})"
        if result.n_folds
        else "nothing was fitted on dev: dev figures are direct"
    )
    lines = [
        f"{title}: {result.path}",
        f"method: {result.method}   members: {len(result.info.members)}",
        *[f"  - {m}" for m in result.info.members],
        "options: " + ", ".join(f"{k}={v}" for k, v in result.info.extra.get("options", {}).items()),
        dev_note,
        "",
    ]
    header = ["run"] + [f"{s}:{k}" for s in splits for k in keys]
    rows = []
    for name, per_split in result.member_metrics.items():
        rows.append([name] + [_fmt(per_split.get(s, {}).get(k)) for s in splits for k in keys])
    rows.append([f"{result.path.name} ({result.method})"] + [_fmt(result.metrics[s].get(k)) for s in splits for k in keys])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        lines.append("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    if not splits:
        lines.append("(no split has ground truth: no figures)")
    key = primary_key(result.info)
    sign = 1.0 if higher_is_better(key) else -1.0  # compare sign * value: larger is better
    fused_dev = result.metrics.get("dev", {}).get(key)
    members_dev = [(m["dev"][key], name) for name, m in result.member_metrics.items()
                   if m.get("dev", {}).get(key) is not None]
    best = max(members_dev, key=lambda vn: sign * vn[0], default=None)
    if fused_dev is not None and best is not None and sign * fused_dev < sign * best[0]:
        lines.append(f"note: dev {key} of the {result.info.kind} run ({fused_dev:.4f}) is worse than that of {best[1]} "
                     f"({best[0]:.4f}); a member's dev figure is optimistic when its checkpoint was selected on dev")
    return lines


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


@click.command("fuse")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False), help="Folder of the fused run.")
@click.option(
    "--method",
    type=click.Choice(["auto", "lr", "mean", "interp", "ridge"]),
    default="auto",
    help="auto: lr (logistic regression on log-posteriors) for categorical runs, interp (per-attribute weights) for attributes.",
)
@click.option(
    "--attribute-method",
    type=click.Choice(["auto", "interp", "ridge", "mean"]),
    default="auto",
    help="Multitask runs: how their attribute predictions are fused (--method fuses their posteriors); auto: interp.",
)
@click.option(
    "--form",
    type=click.Choice(["auto", "full", "weights"]),
    default="auto",
    help="lr: full K x (members*K) matrix + biases (TalTech), or one weight per member; auto: full only when dev "
    "has >= 20 labelled rows per parameter.",
)
@click.option(
    "--prior",
    type=click.Choice(["none", "divide", "weight"]),
    default="none",
    help="Towards a balanced test set: divide fused posteriors by dev class priors, or fit with balanced class weights.",
)
@click.option("--balanced-subset", is_flag=True, help="Fit on a class-balanced subset of dev (each class cut to the rarest).")
@click.option("--folds", default=5, type=int, help="Folds of the cross-validation inside dev that gives the dev figures.")
@click.option("--C", "C", default=1.0, type=float, help="Inverse L2 strength of the logistic regression.")
@click.option("--alpha", default=1.0, type=float, help="L2 strength of the ridge regression (attributes).")
@click.option("--grid-step", default=0.05, type=float, help="Step of the weight grid of attribute interpolation.")
@click.option("--seed", default=0, type=int, help="Seed of the dev folds and of the balanced subset.")
@click.option("--force", is_flag=True, help="Overwrite a non-empty output folder.")
@handle_errors
def command(runs, output, method, attribute_method, form, prior, balanced_subset, folds, C, alpha, grid_step, seed, force) -> None:
    """Fuse trained runs on their dev predictions into a new run dir (evaluate, compare and predict work on it)."""
    from fusion_ser.fusion.late import late_fuse

    result = late_fuse(
        list(runs), output, method=method, attribute_method=attribute_method, form=form, prior=prior, balanced=balanced_subset, folds=folds, C=C,
        alpha=alpha, grid_step=grid_step, seed=seed, force=force,
    )
    click.echo("\n".join(summary_lines(result, "fused run")))
