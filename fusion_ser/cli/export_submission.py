"""`fusion-ser export-submission RUN -o FILE.csv`: a run's predictions in the MSP-Podcast challenge format."""

from __future__ import annotations

from pathlib import Path

import click

from fusion_ser.cli.common import handle_errors


@click.command("export-submission")
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.option("--split", default="test", show_default=True, help="Split whose predictions are exported.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="CSV to write: FileName,EmoClass (categorical) or FileName,EmoAct,EmoVal,EmoDom (attributes, 1-7).")
@click.option("--track", type=click.Choice(["categorical", "attributes"]), default=None,
              help="Task 1 (categorical) or Task 2 (attributes); needed for a multitask run, which holds both. "
                   "Default: the run's task.")
@click.option("--allow-partial", is_flag=True, default=False,
              help="Write the submission even when rows of the split in the run's manifest have no prediction.")
@handle_errors
def command(run: Path, split: str, output: Path, allow_partial: bool, track: str | None) -> None:
    """Write RUN's predictions on SPLIT as an MSP-Podcast challenge submission CSV.

    Every row of SPLIT in the run's manifest must have a prediction, unless --allow-partial.
    """
    from fusion_ser.evaluation.submission import coverage, export_submission

    path, n = export_submission(run, output, split, allow_partial=allow_partial, track=track)
    click.echo(f"wrote {n} rows to {path}")
    cov = coverage(run, split)
    if cov.note:
        click.echo(f"Warning: {cov.note}")
    elif cov.missing:
        click.echo(f"Warning: partial submission: {cov.describe(split)}")
