"""`fusion-ser predict RUN AUDIO_OR_DIR... -o OUT.jsonl|csv`: emotion predictions for audio files with any run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import click

from fusion_ser.cli.common import handle_errors
from fusion_ser.errors import FusionSerError
from fusion_ser.rundir import attr_pred_columns, prob_columns


def audio_extensions() -> set[str]:
    """File extensions (lower case, with the dot) of the formats soundfile can read."""
    import soundfile as sf

    exts = {f".{f.lower()}" for f in sf.available_formats()}
    return exts | {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".opus"}


def collect_inputs(items: tuple[str, ...]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files named directly, plus every audio file under the folders named (recursively), sorted, no duplicates;
    and the entries with an audio extension under those folders that cannot be used (a directory named x.wav,
    a broken link), with the reason, so that they are reported rather than passed over."""
    exts = audio_extensions()
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = len(files)
            for q in sorted(p.rglob("*")):
                if q.suffix.lower() not in exts:
                    continue
                if q.is_file():
                    files.append(q)
                elif q.is_dir():
                    skipped.append((q, "it is a directory, not an audio file"))
                elif q.is_symlink():
                    skipped.append((q, "it is a broken link (its target does not exist)"))
                else:
                    skipped.append((q, "it is not a regular file"))
            if len(files) == found and p.suffix.lower() in exts:
                skipped.append((p, "it is a directory, not an audio file (and no audio file is inside it)"))
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
    return out, skipped


def input_options(func: Callable) -> Callable:
    """The options predict and embed share: segmentation, batch size, device."""
    for option in reversed([
        click.option("--segment-length", type=float, default=None,
                     help="Split each file into windows of this many seconds (a result per window plus the whole file). "
                          "Default: no splitting (files longer than the model sees whole are split automatically)."),
        click.option("--hop", type=float, default=None,
                     help="Seconds between window starts (default: the segment length, no overlap)."),
        click.option("--segment-method", type=click.Choice(["window", "energy"]), default="window",
                     help="window: fixed windows; energy: speech regions found by energy, cut to --segment-length."),
        click.option("--batch-size", type=click.IntRange(min=1), default=8, help="Clips per model batch."),
        click.option("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N."),
    ]):
        func = option(func)
    return func


def segment_config(segment_length: Optional[float], hop: Optional[float], segment_method: str) -> Any:
    """The SegmentConfig the options ask for, or None (whole files)."""
    from fusion_ser.segment import SegmentConfig

    if segment_length is not None or segment_method == "energy":
        return SegmentConfig(method=segment_method, length=segment_length or 8.0, hop=hop).validate()
    if hop is not None:
        raise FusionSerError("--hop needs --segment-length")
    return None


def usable_inputs(inputs: tuple[str, ...]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """collect_inputs, with an error naming what was looked for when no audio file is found."""
    files, not_files = collect_inputs(inputs)
    if not files:
        unusable = "; ".join(f"'{path}': {reason}" for path, reason in not_files[:5])
        raise FusionSerError(f"no audio files found in {', '.join(inputs)} (looked for "
                             f"{', '.join(sorted(audio_extensions())[:8])}, ...)"
                             + (f"; {len(not_files)} entr(ies) with an audio name cannot be used: {unusable}"
                                if not_files else ""))
    return files, not_files


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
@input_options
@handle_errors
def command(run: str, inputs: tuple[str, ...], output: str, segment_length, hop, segment_method: str,
            batch_size: int, device: str) -> None:
    """Predict emotion for audio files (folders are searched recursively) with a trained, fused or ensembled RUN.

    Files that cannot be read are reported and skipped; the others are predicted.
    """
    from tqdm import tqdm

    from fusion_ser.predict import load

    out = Path(output)
    if out.suffix.lower() not in (".jsonl", ".json", ".csv"):
        raise FusionSerError(f"-o {output}: use a .jsonl or .csv file name")
    segment = segment_config(segment_length, hop, segment_method)
    files, not_files = usable_inputs(inputs)
    t0 = time.perf_counter()
    predictor = load(run, device=device)
    with tqdm(total=len(files), unit="file", desc="predict") as bar:
        results = predictor.predict(files, batch_size=batch_size, segment=segment, on_error="skip",
                                    progress=bar.update)
    wall = time.perf_counter() - t0
    stage_seconds = predictor.last_timings
    failed = [r for r in results if "error" in r]
    good = [r for r in results if "error" not in r]
    if good:  # nothing usable: an error below, and no empty output file left behind
        write_output(results, out)
    click.echo(f"Predicted {len(good)} of {len(files)} file(s) with {run}" + (f" -> {out}" if good else ""))
    if failed or not_files:
        click.echo(f"Skipped {len(failed) + len(not_files)} file(s) that could not be used:")
        for r in failed:
            click.echo(f"  {r['error']}")
        for path, reason in not_files:
            click.echo(f"  '{path}': {reason}")
    auto = [r for r in good if r.get("auto_segmented")]
    if auto:
        click.echo(f"Segmented {len(auto)} file(s) automatically: longer than the {predictor.max_seconds:g} s the "
                   "run's models see whole (data.max_eval_seconds); each was predicted in windows of at most "
                   f"{predictor.max_seconds:g} s and its whole-file result is their duration-weighted mean")
    split_notes = [r for r in good if r.get("note") and not r.get("auto_segmented")]
    if split_notes:
        click.echo(f"In {len(split_notes)} file(s), segments longer than {predictor.max_seconds:g} s were split to "
                   "that length (data.max_eval_seconds of the run's models)")
    if good:
        labels = [r["label"] for r in good if "label" in r]
        if labels:
            counts = {c: labels.count(c) for c in sorted(set(labels))}
            click.echo("Labels: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
        audio_s = sum(r["duration"] for r in good)
        click.echo(f"Audio: {audio_s:.1f} s in {len(good)} file(s); loaded and predicted in {wall:.1f} s "
                   f"(real-time factor {wall / max(audio_s, 1e-9):.3f}, {audio_s / max(wall, 1e-9):.1f}x real time)")
        click.echo("Time per stage (the ASR runs beside the models, so they overlap): "
                   + ", ".join(f"{k} {v:.2f} s" for k, v in stage_seconds.items()))
    else:
        raise FusionSerError(f"none of the {len(files)} file(s) could be used; see the list above")
