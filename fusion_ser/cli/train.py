"""`fusion-ser train`: train an audio, text or fused model into a run directory (or all folds with --cv)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import click

from fusion_ser.cli.common import handle_errors
from fusion_ser.config import Config, choices


class ProgressPrinter:
    """Renders the trainer's progress events as tqdm bars (one per epoch, one for the feature cache) and lines."""

    def __init__(self) -> None:
        self.bar: Any = None

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __call__(self, event: Any) -> None:
        from tqdm import tqdm

        from fusion_ser.training import events as E

        if isinstance(event, E.FoldStarted):
            self._close()
            click.echo(f"== fold {event.fold} of {event.folds} ==")
        elif isinstance(event, E.RunStarted):
            verb = "resuming" if event.resume else "training"
            click.echo(f"{verb}: {event.n_train} train, {event.n_dev} dev, {event.n_test} test utterances "
                       f"({event.skipped})")
        elif isinstance(event, E.CacheStarted):
            self._close()
            self.bar = tqdm(total=event.items, desc=f"caching {event.modality} features", unit="utt")
        elif isinstance(event, E.CacheProgress):
            if self.bar is not None:
                self.bar.update(event.n)
        elif isinstance(event, E.EpochStarted):
            self._close()
            self.bar = tqdm(total=event.steps, desc=f"epoch {event.epoch}/{event.epochs}", unit="batch")
        elif isinstance(event, E.StepDone):
            if self.bar is not None:
                self.bar.n = event.step
                self.bar.set_postfix(loss=f"{event.loss:.4f}", utt_s=f"{event.utt_per_s:.1f}", refresh=False)
                self.bar.refresh()
        elif isinstance(event, E.EpochEnded) and event.refit:
            self._close()
            click.echo(f"refit epoch {event.epoch}/{event.epochs} on train+dev: train loss "
                       f"{event.train_loss:.4f}, {event.utt_per_s:.1f} utt/s")
        elif isinstance(event, E.EpochEnded):
            if self.bar is not None:
                self.bar.n = self.bar.total
                self.bar.set_postfix(loss=f"{event.train_loss:.4f}", utt_s=f"{event.utt_per_s:.1f}",
                                     **{f"dev_{event.metric}": f"{event.dev:.4f}"}, refresh=False)
            self._close()
            mark = " *" if event.best else ""
            click.echo(f"epoch {event.epoch}: train loss {event.train_loss:.4f}, {event.utt_per_s:.1f} utt/s, "
                       f"dev {event.metric} {event.dev:.4f}{mark}")

    def close(self) -> None:
        """Close any open bar."""
        self._close()


def _headline(metrics: dict, task: str) -> str:
    from fusion_ser.evaluation.metrics import headline_metrics

    attributes = [k.removeprefix("ccc_") for k in metrics if k.startswith("ccc_") and k != "ccc_mean"]  # scored ones
    keys = headline_metrics(task, attributes)
    return ", ".join(f"{k} {metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), (int, float)))


def _resume_config(out_dir: Path, overrides: list[str]) -> Any:
    """The resolved config of an unfinished run dir, with overrides applied."""
    from fusion_ser.config import ConfigError
    from fusion_ser.rundir import load_run_config

    saved = out_dir / "config.yaml"
    if not saved.is_file():
        raise ConfigError("no config given: pass -c CONFIG.yaml (only an unfinished run dir can be resumed without one)")
    return load_run_config(saved, overrides)[0]


@click.command("train")
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML config (configs/*.yaml). Optional when resuming: the run's own config.yaml is used.")
@click.option("--manifest", type=click.Path(dir_okay=False), default=None,
              help="Manifest CSV to train on (default: data.manifest of the config).")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Run directory to write; an unfinished one is resumed from its last checkpoint.")
@click.option("--modality", type=click.Choice(choices(Config, "modality")), default=None,
              help="Override the config's modality.")
@click.option("--fold", type=int, default=None, help="Train on fold K of the manifest's fold column (K test, K+1 dev).")
@click.option("--cv", is_flag=True, default=False, help="Train every fold into OUT/fold_k and average (cv_metrics.json).")
@click.option("--dry-run", is_flag=True, default=False,
              help="Print the plan (rows, steps, parameters, device, cache size, free disk) and stop; nothing is written.")
@click.argument("overrides", nargs=-1)
@handle_errors
def command(config_path: Optional[str], manifest: Optional[str], out_dir: str, modality: Optional[str],
            fold: Optional[int], cv: bool, dry_run: bool, overrides: tuple[str, ...]) -> None:
    """Train a model: fusion-ser train -c CFG --manifest M.csv -o RUN [key=value ...].

    OVERRIDES are dotted config keys, e.g. train.epochs=5 optim.lr_head=0.001.
    """
    from fusion_ser.config import ConfigError, load_config
    from fusion_ser.training import distributed as D
    from fusion_ser.training.job import dry_run as plan_run, train_cv, train_run

    extra = list(overrides)
    if modality:
        extra.append(f"modality={modality}")
    if fold is not None:
        if cv:
            raise ConfigError("--fold and --cv exclude each other: --cv already trains every fold")
        extra.append(f"data.fold={fold}")
    if config_path is None:
        cfg = _resume_config(Path(out_dir), extra)
    else:
        cfg = load_config(config_path, extra)
    if dry_run:
        plan = plan_run(cfg, manifest)
        _print_plan(plan)
        plan.raise_problems()
        return
    printer = ProgressPrinter()
    dist = D.init_distributed()
    try:
        if cv:
            summary = train_cv(cfg, manifest, out_dir, progress=printer)
        else:
            run = train_run(cfg, manifest, out_dir, progress=printer)
    finally:
        printer.close()
        D.cleanup(dist)
    if not dist.is_main:
        return
    if cv:
        _cv_summary(summary, Path(out_dir), cfg.task)
    else:
        _summary(run)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _print_plan(plan: Any) -> None:
    """The dry run's plan, one screen."""
    click.echo("plan (nothing trained, nothing written):")
    click.echo("  rows: " + ", ".join(f"{s} {n}" for s, n in plan.rows.items()) + f" ({plan.dropped})")
    if plan.classes:
        width = max(len(c) for c in plan.classes["train"]) if plan.classes["train"] else 5
        click.echo("  " + "class".ljust(width) + "".join(f"{s:>8}" for s in plan.classes))
        for c in plan.classes["train"]:
            click.echo("  " + c.ljust(width) + "".join(f"{plan.classes[s][c]:>8}" for s in plan.classes))
    click.echo(f"  steps: {plan.steps_per_epoch} per epoch x {plan.epochs} epochs")
    click.echo(f"  parameters: {plan.trainable_params:,} trainable of {plan.total_params:,}")
    click.echo(f"  device: {plan.device}, precision {plan.precision}")
    for c in plan.cache:
        click.echo(f"  feature cache ({c.modality}): {c.entries} entries, {c.frames:,} frames x {c.layers} layer(s) x "
                   f"{c.dims} dims x fp16 = {_gb(c.bytes)}")
    if plan.cache:
        free = _gb(plan.free_disk) if plan.free_disk is not None else "unknown"
        click.echo(f"  cache folder: {plan.cache_dir} ({free} free)")
    if plan.missing_text:
        click.echo("  rows without a transcript: " + ", ".join(f"{s} {n}" for s, n in plan.missing_text.items()))
    for p in plan.problems:
        click.echo(f"  PROBLEM: {p}")


def _cv_summary(summary: dict, out_dir: Path, task: str) -> None:
    """Mean ± std of the headline metrics over folds."""
    click.echo(f"\n{summary['folds']}-fold cross-validation written to {out_dir / 'cv_metrics.json'}")
    from fusion_ser.evaluation.metrics import headline_metrics

    for split in ("dev", "test"):
        if split in summary:
            attributes = [k.removeprefix("ccc_") for k in summary[split] if k.startswith("ccc_") and k != "ccc_mean"]
            keys = headline_metrics(task, attributes)
            figs = ", ".join(f"{k} {summary[split][k]['mean']:.4f} ± {summary[split][k]['std']:.4f}"
                             for k in keys if k in summary[split])
            click.echo(f"  {split}: {figs}")


def _summary(run: Any) -> None:
    """Best epoch, dev/test headline metrics and where the run is."""
    metrics = run.read_metrics()
    info = run.read_info()
    click.echo(f"\nrun written to {run.path}")
    click.echo(f"  best epoch: {metrics.get('best_epoch')} (selected on dev {metrics.get('selection_metric')})")
    for split in ("dev", "test"):
        if split in metrics:
            click.echo(f"  {split}: {_headline(metrics[split], info.task) or 'no labelled rows'}")
    if metrics.get("test_model") == "refit_on_dev":
        click.echo(f"  test predictions come from a model refit on train+dev for {metrics.get('refit_epochs')} epochs "
                   f"(model/); dev figures from the dev-selected model (model_dev_selected/)")
    if info.extra.get("skipped_clips"):
        click.echo(f"  {info.extra['skipped_clips']} unreadable clip(s) skipped: see {run.path / 'skipped_clips.json'}")
    dropped = info.extra.get("dropped_rows") or {}
    if dropped:
        total = sum(n for by_reason in dropped.values() for n in by_reason.values())
        parts = "; ".join(f"{split}: " + ", ".join(f"{n} {reason}" for reason, n in by_reason.items())
                          for split, by_reason in dropped.items())
        click.echo(f"  {total} manifest row(s) not used ({parts}): see {run.path / 'dropped_rows.json'}")
    for split, n in (info.extra.get("cropped_eval_clips") or {}).items():
        click.echo(f"  {n} {split} clip(s) longer than data.max_eval_seconds were evaluated on their start only")
    for split in ("dev", "test"):
        m = metrics.get(split) or {}
        if m.get("n_unknown_class"):
            click.echo(f"  {split}: {m['n_unknown_class']} row(s) labelled with a class the model does not know "
                       f"({', '.join(m.get('unknown_classes', {}))}) count as errors")
        if m.get("n_skipped"):
            reasons = ", ".join(f"{n} {r}" for r, n in (m.get("unscored") or {}).items())
            click.echo(f"  {split}: {m['n_skipped']} row(s) not scored ({reasons or 'unknown truth'})")
