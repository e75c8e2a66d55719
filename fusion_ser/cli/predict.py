"""`fusion-ser predict RUN AUDIO_OR_DIR... -o OUT.jsonl|csv`: emotion predictions for audio files with any run."""

from __future__ import annotations

import json
from pathlib import Path

import click

from fusion_ser.cli.common import handle_errors
from fusion_ser.errors import FusionSerError
from fusion_ser.rundir import attr_pred_columns, prob_columns


def audio_extensions() -> set[str]:
    """File extensions (lower case, with the dot) of the formats soundfile can read."""
    import soundfile as sf

    exts = {f".{f.lower()}" for f in sf.available_formats()}
    return exts | {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".opus"}


def collect_inputs(items: tuple[str, ...]) -> list[Path]:
    """Files named directly, plus every audio file under the folders named (recursively), sorted, no duplicates."""
    exts = audio_extensions()
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in exts))
        elif p.exists():
            files.append(p)
        else:
            raise FusionSerError(f"input '{item}' does not exist; give audio files or folders holding them")
    seen, out = set(), []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def flat_rows(result: dict) -> list[dict]:
    """CSV rows of one result: the whole file (segment "all"), then each segment."""
    def row(values: dict, start, end, segment) -> dict:
        r = {"input": result["input"], "segment": segment, "start": start, "end": end}
        if "label" in values:
            r["label"] = values["label"]
            r.update(dict(zip(prob_columns(list(values["probs"])), values["probs"].values())))
        attributes = values.get("attributes", {})
        r.update(dict(zip(attr_pred_columns(list(attributes)), attributes.values())))
        r["transcript"] = values.get("transcript")
        return r

    rows = [row(result, 0.0, result["duration"], "all")]
    rows.extend(row(s, s["start"], s["end"], k) for k, s in enumerate(result.get("segments", [])))
    return rows


def write_output(results: list[dict], out: Path) -> None:
    """JSON lines (one object per file, segments nested) or CSV (one row per file and per segment)."""
    import pandas as pd

    out.parent.mkdir(parents=True, exist_ok=True)
    good = [r for r in results if "error" not in r]
    if out.suffix.lower() == ".csv":
        pd.DataFrame([row for r in good for row in flat_rows(r)]).to_csv(out, index=False)
    else:
        with open(out, "w") as f:
            for r in good:
                f.write(json.dumps(r) + "\n")


@click.command("predict")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.argument("inputs", nargs=-1, required=True, metavar="AUDIO_OR_DIR...")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write predictions: .jsonl (one object per file, segments nested) or .csv (a row per file and segment).")
@click.option("--segment-length", type=float, default=None,
              help="Split each file into windows of this many seconds (a prediction per window plus the whole file). Default: no splitting.")
@click.option("--hop", type=float, default=None, help="Seconds between window starts (default: the segment length, no overlap).")
@click.option("--segment-method", type=click.Choice(["window", "energy"]), default="window",
              help="window: fixed windows; energy: speech regions found by energy, cut to --segment-length.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, help="Clips per model batch.")
@click.option("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N.")
@handle_errors
def command(run: str, inputs: tuple[str, ...], output: str, segment_length, hop, segment_method: str,
            batch_size: int, device: str) -> None:
    """Predict emotion for audio files (folders are searched recursively) with a trained, fused or ensembled RUN.

    Files that cannot be read are reported and skipped; the others are predicted.
    """
    from tqdm import tqdm

    from fusion_ser.predict import load
    from fusion_ser.segment import SegmentConfig

    out = Path(output)
    if out.suffix.lower() not in (".jsonl", ".json", ".csv"):
        raise FusionSerError(f"-o {output}: use a .jsonl or .csv file name")
    segment = None
    if segment_length is not None or segment_method == "energy":
        segment = SegmentConfig(method=segment_method, length=segment_length or 8.0, hop=hop).validate()
    elif hop is not None:
        raise FusionSerError("--hop needs --segment-length")
    files = collect_inputs(inputs)
    if not files:
        raise FusionSerError(f"no audio files found in {', '.join(inputs)} (looked for {', '.join(sorted(audio_extensions())[:8])}, ...)")
    predictor = load(run, device=device)
    with tqdm(total=len(files), unit="file", desc="predict") as bar:
        results = predictor.predict(files, batch_size=batch_size, segment=segment, on_error="skip",
                                    progress=bar.update)
    stage_seconds = predictor.last_timings
    failed = [r for r in results if "error" in r]
    good = [r for r in results if "error" not in r]
    write_output(results, out)
    click.echo(f"Predicted {len(good)} of {len(files)} file(s) with {run} -> {out}")
    if failed:
        click.echo(f"Skipped {len(failed)} file(s) that could not be used:")
        for r in failed:
            click.echo(f"  {r['error']}")
    if good:
        labels = [r["label"] for r in good if "label" in r]
        if labels:
            counts = {c: labels.count(c) for c in sorted(set(labels))}
            click.echo("Labels: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
        audio_s = sum(r["duration"] for r in good)
        busy = sum(stage_seconds.values())
        click.echo(f"Audio: {audio_s:.1f} s in {len(good)} file(s); compute {busy:.1f} s "
                   f"(real-time factor {busy / max(audio_s, 1e-9):.3f})")
        click.echo("Time per stage: " + ", ".join(f"{k} {v:.2f} s" for k, v in stage_seconds.items()))
    else:
        raise FusionSerError(f"none of the {len(files)} file(s) could be used; see the list above")
