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
@handle_errors
def command(run: Path, split: str, output: Path) -> None:
    """Write RUN's predictions on SPLIT as an MSP-Podcast challenge submission CSV."""
    from fusion_ser.evaluation.submission import export_submission

    path, n = export_submission(run, output, split)
    click.echo(f"wrote {n} rows to {path}")
