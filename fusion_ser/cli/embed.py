"""`fusion-ser embed RUN AUDIO_OR_DIR... -o OUT`: the pooled embeddings of a run's model(s) for audio files."""

from __future__ import annotations

import re
from pathlib import Path

import click

from fusion_ser.cli.common import handle_errors
from fusion_ser.cli.predict import input_options, segment_config, usable_inputs
from fusion_ser.errors import FusionSerError


def file_stem(model: str) -> str:
    """A file name for a model's embeddings (member names of nested runs hold '/')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "__", model)


def write_embeddings(results: list[dict], out: Path) -> dict[str, tuple[int, int]]:
    """OUT/index.csv (row, input, segment, start, end) and OUT/<model>.npy (rows x dims) per model, or one Parquet
    file when OUT ends in .parquet; rows: each file ("all"), then its segments. Returns model -> shape."""
    import numpy as np
    import pandas as pd

    index, vectors = [], {}
    for r in (r for r in results if "error" not in r):
        entries = [("all", 0.0, r["duration"], r["embeddings"])]
        entries += [(k, s["start"], s["end"], s["embeddings"]) for k, s in enumerate(r.get("segments", []))]
        for segment, start, end, by_model in entries:
            index.append({"row": len(index), "input": r["input"], "segment": segment, "start": start, "end": end})
            for model, vec in by_model.items():
                vectors.setdefault(model, []).append(vec)
    if any(len(v) != len(index) for v in vectors.values()):
        raise FusionSerError("some models gave no embedding for some segments (unusable audio for one member); "
                             "embed the member runs one by one")
    frame = pd.DataFrame(index)
    if out.suffix.lower() == ".parquet":
        for model, rows in vectors.items():
            frame[model] = [np.asarray(v, dtype=np.float32) for v in rows]
        try:
            frame.to_parquet(out, index=False)
        except ImportError as e:
            raise FusionSerError(f"writing Parquet needs pyarrow ({e}): `pip install pyarrow`, or give a folder "
                                 "for .npy files", options=("output",)) from None
    else:
        out.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out / "index.csv", index=False)
        for model, rows in vectors.items():
            np.save(out / f"{file_stem(model)}.npy", np.stack(rows).astype(np.float32))
    return {model: (len(rows), len(rows[0])) for model, rows in vectors.items()}


@click.command("embed")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.argument("inputs", nargs=-1, required=True, metavar="AUDIO_OR_DIR...")
@click.option("-o", "--output", required=True, type=click.Path(),
              help="A folder (index.csv + one <model>.npy per model) or a .parquet file.")
@input_options
@handle_errors
def command(run: str, inputs: tuple[str, ...], output: str, segment_length, hop, segment_method: str,
            batch_size: int, device: str) -> None:
    """Pooled embeddings (the head's input) of a trained RUN's model, or of every member of a fused or ensembled RUN,
    for audio files (folders are searched recursively); bad files are reported and skipped."""
    from tqdm import tqdm

    from fusion_ser.predict import load

    segment = segment_config(segment_length, hop, segment_method)
    files, not_files = usable_inputs(inputs)
    predictor = load(run, device=device)
    with tqdm(total=len(files), unit="file", desc="embed") as bar:
        results = predictor.embed(files, batch_size=batch_size, segment=segment, on_error="skip", progress=bar.update)
    good = [r for r in results if "error" not in r]
    if not good:
        raise FusionSerError(f"none of the {len(files)} file(s) could be used: "
                             + "; ".join(r["error"] for r in results[:5]))
    out = Path(output)
    shapes = write_embeddings(results, out)
    click.echo(f"Embedded {len(good)} of {len(files)} file(s) with {run} -> {out}")
    for model, (rows, dims) in shapes.items():
        click.echo(f"  {model}: {rows} row(s) x {dims} dims")
    skipped = [(r["input"], r["error"]) for r in results if "error" in r] + [(str(p), why) for p, why in not_files]
    if skipped:
        click.echo(f"Skipped {len(skipped)} input(s):")
        for name, why in skipped:
            click.echo(f"  {name}: {why}")
