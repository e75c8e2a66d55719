"""`fusion-ser export-onnx RUN -o model.onnx`: a trained run's model as one ONNX graph plus a JSON of how to call it."""

from __future__ import annotations

from pathlib import Path

import click

from fusion_ser.cli.common import handle_errors


@click.command("export-onnx")
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="The .onnx file to write, or a folder that receives model.onnx; <name>.onnx.json is written "
                   "beside it (and <name>_tokenizer/ for a text model).")
@click.option("--force", is_flag=True, default=False, help="Replace an existing ONNX file.")
@click.option("--no-check", "no_check", is_flag=True, default=False,
              help="Skip running the graph with onnxruntime against the run's own model before writing the JSON.")
@handle_errors
def command(run: Path, output: Path, force: bool, no_check: bool) -> None:
    """Export RUN's model (encoder, pooling and head) as one ONNX graph with dynamic batch and length axes.

    Audio models take wav (B, S) float32 at 16 kHz and wav_lengths (B,) int64; text models take input_ids and
    attention_mask from the tokenizer saved beside the graph. Fused and ensembled runs cannot be exported (export
    their member runs).
    """
    from fusion_ser.export import export_onnx

    result = export_onnx(run, output, force=force, check=not no_check)
    meta = result.meta
    inputs = ", ".join(f"{i['name']} {i['dtype']} ({', '.join(map(str, i['shape']))})" for i in meta["inputs"])
    outputs = ", ".join(f"{o['name']} ({', '.join(map(str, o['shape']))})" for o in meta["outputs"])
    click.echo(f"wrote {result.onnx_path} and {result.meta_path}")
    click.echo(f"  inputs:  {inputs}")
    click.echo(f"  outputs: {outputs}")
    if result.max_abs_diff is not None:
        click.echo(f"  checked with onnxruntime: largest difference to the run's model {result.max_abs_diff:.2g}")
    else:
        click.echo("  not checked (onnxruntime is not installed, or --no-check)")
