"""`fusion-ser test RUN --manifest OTHER.csv -o OUT`: score a run on another corpus's labelled rows (cross-corpus),
written as an evaluation run that `compare` ranks like any other."""

from __future__ import annotations

from pathlib import Path

import click

from fusion_ser.cli.common import handle_errors


@click.command("test")
@click.argument("run", type=click.Path(file_okay=False, path_type=Path))
@click.option("--manifest", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Manifest of the other corpus (labelled rows).")
@click.option("--split", default="test", show_default=True, help="Split of the manifest to score ('all': every row).")
@click.option("--map", "maps", multiple=True, metavar="VALUE=LABEL",
              help="Rename a label of the manifest to a class of the run (repeatable), e.g. --map calm=neutral.")
@click.option("--unknown", type=click.Choice(["ignore", "error"]), default="ignore", show_default=True,
              help="Rows labelled with a class the run does not know: not scored (macro-F1 over the shared classes), "
                   "or scored as errors (macro-F1 over every class of the corpus).")
@click.option("-o", "--output", "output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the evaluation run.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Inputs per batch.")
@click.option("--n-boot", type=click.IntRange(min=10), default=1000, show_default=True,
              help="Bootstrap resamples for the 95 % intervals.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@click.option("--force", is_flag=True, help="Replace an evaluation run already in the output folder.")
@handle_errors
def command(run: Path, manifest: Path, split: str, maps: tuple[str, ...], unknown: str, output: Path, device: str,
            batch_size: int, n_boot: int, seed: int, force: bool) -> None:
    """Predict SPLIT of MANIFEST with RUN (any run kind) and write predictions, metrics with 95 % intervals and a
    report into OUTPUT (a run of kind "evaluation")."""
    from fusion_ser.crosscorpus import evaluate_on_corpus, parse_label_map
    from fusion_ser.evaluation.metrics import headline_keys

    result = evaluate_on_corpus(run, manifest, output, split=split, label_map=parse_label_map(list(maps)),
                                unknown=unknown, device=device, batch_size=batch_size, force=force, n_boot=n_boot,
                                seed=seed)
    m, info = result.metrics, result.run.read_info()
    click.echo(f"{run} on {manifest} ({split}): {result.n_rows} rows, {m['n']} scored, {m['n_skipped']} not scored"
               + (f" ({', '.join(f'{r}: {n}' for r, n in m['unscored'].items())})" if m.get("unscored") else ""))
    if result.skipped:
        first = next(iter(result.skipped.items()))
        click.echo(f"  {len(result.skipped)} row(s) skipped, their audio could not be used (e.g. {first[0]}: {first[1]})")
    c = result.classes
    if c:
        click.echo(f"  shared classes: {', '.join(c['shared'])}")
        if c["unknown"]:
            how = "scored as errors" if unknown == "error" else "not scored (--unknown error counts them as errors)"
            click.echo(f"  corpus classes the run does not know: {', '.join(c['unknown'])}: {how}")
        if c["absent"]:
            click.echo(f"  run classes the corpus lacks: {', '.join(c['absent'])} (left out of the average)")
    for key in headline_keys(info):
        ci = m.get("ci", {}).get(key)
        if ci is not None:
            click.echo(f"  {key:<14} {ci['value']:.4f}  [{ci['low']:.4f}, {ci['high']:.4f}]")
    click.echo(f"wrote {result.run.path} (kind evaluation: compare it with other runs on this manifest)")
