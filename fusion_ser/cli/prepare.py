"""`fusion-ser prepare CORPUS ROOT -o manifest.csv`: any corpus -> one validated manifest, with a summary."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import click
from tqdm import tqdm

from fusion_ser.cli.common import handle_errors
from fusion_ser.data.corpora import CORPORA, CorpusError, get_corpus
from fusion_ser.data.prepare import adapter_options, prepare_manifest


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    out = {}
    for item in values:
        if "=" not in item:
            raise CorpusError(f"{option} '{item}' must look like KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _print_summary(s: dict, output: Path) -> None:
    click.echo(f"Wrote {output}: {s['rows']} utterances, {s['speakers']} speakers"
               + (f", {s['hours']:.2f} h of audio" if s["hours"] is not None else ""))
    click.echo("  split   " + "  ".join(f"{k}: {v}" for k, v in s["splits"].items()))
    width = max((len(k) for k in s["labels"]), default=5)
    header = "  " + "label".ljust(width) + "".join(f"{k:>8}" for k in s["splits"]) + f"{'total':>8}"
    click.echo(header)
    for label, total in s["labels"].items():
        per = "".join(f"{s['split_labels'][sp].get(label, 0):>8}" for sp in s["splits"])
        click.echo("  " + label.ljust(width) + per + f"{total:>8}")
    extras = [f"with audio: {s['with_audio']}", f"with text: {s['with_text']}"]
    if s["attributes"]:
        extras.append("attributes: " + ", ".join(f"{k} {v}" for k, v in s["attributes"].items()))
    if s["soft_labels"]:
        extras.append(f"soft labels: {len(s['soft_labels'])} columns")
    if s["folds"]:
        extras.append(f"folds: {s['folds']}")
    click.echo("  " + "; ".join(extras))


CORPUS_HELP = "\b\nCorpora (and their --set options):\n" + "\n".join(
    f"  {name:<12} {c.description}\n  {'':<12} --set: {', '.join(f.name for f in dataclasses.fields(c.config_cls))}"
    for name, c in sorted(CORPORA.items())
)


@click.command(context_settings={"show_default": True}, epilog=CORPUS_HELP)
@click.argument("corpus", metavar="CORPUS")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Manifest CSV to write.")
@click.option("--check-audio", is_flag=True,
              help="Decode every file; write bad ones to <manifest>.rejected.csv and drop them.")
@click.option("--strict", is_flag=True, help="With --check-audio: exit non-zero when any file is rejected.")
@click.option("--folds", type=int, default=None, help="Add K speaker-independent folds (corpora without splits get 4).")
@click.option("--seed", type=int, default=0, help="Seed of the fold assignment.")
@click.option("--min-seconds", type=float, default=0.1, help="With --check-audio: shorter clips are rejected.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Adapter option, e.g. --set include_song=true.")
@click.option("--col", "cols", multiple=True, metavar="COLUMN=CSVCOL", help="csv: manifest column from a CSV column.")
@click.option("--map", "maps", multiple=True, metavar="VALUE=LABEL",
              help="Label mapping (csv: raw CSV values; other corpora: the adapter's labels).")
@click.option("--split-map", "split_maps", multiple=True, metavar="VALUE=SPLIT",
              help="csv: CSV split value -> train/dev/test.")
@click.option("--labels", default=None, help="Extra valid labels, comma-separated (beyond the known emotion names).")
@handle_errors
def command(corpus: str, root: Path, output: Path, check_audio: bool, strict: bool, folds: Optional[int], seed: int,
            min_seconds: float, sets: tuple, cols: tuple, maps: tuple, split_maps: tuple,
            labels: Optional[str]) -> None:
    """Turn CORPUS at ROOT into a manifest CSV and print a summary (rows per split and label, speakers, hours)."""
    spec = get_corpus(corpus)
    label_map = _pairs(maps, "--map")
    columns, split_map = _pairs(cols, "--col"), _pairs(split_maps, "--split-map")
    if spec.name != "csv" and (columns or split_map):
        raise CorpusError(f"--col and --split-map are options of the csv corpus, not of '{spec.name}'")
    options = adapter_options(spec.name, _pairs(sets, "--set"), columns, label_map, split_map)
    extra = {x.strip() for x in (labels or "").split(",") if x.strip()}
    with tqdm(desc="checking audio", unit="file", disable=not check_audio) as bar:
        def tick(n: int, total: int) -> None:
            bar.total = total
            bar.update(n)

        result = prepare_manifest(spec.name, root, output, options=options, label_map=label_map, extra_labels=extra,
                                  folds=folds, seed=seed, check_audio=check_audio, min_seconds=min_seconds,
                                  progress=tick)
    _print_summary(result.summary, output)
    if check_audio:
        click.echo(f"Rejected {len(result.rejected)} of {result.checked} audio files"
                   + (f"; reasons in {result.rejected_path}" if len(result.rejected) else ""))
        if strict and len(result.rejected):
            raise CorpusError(f"{len(result.rejected)} audio file(s) failed the check (--strict); "
                              f"see {result.rejected_path}")
