"""`evaluate_run`: recompute a run's metrics from its predictions, with bootstrap intervals, and write
metrics.json, report.md and the figures it links (all inside the run directory)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from fusion_ser.schema import CORPUS_COLUMN, has_attributes, has_classes
from fusion_ser.errors import FusionSerError
from fusion_ser.evaluation import plots
from fusion_ser.evaluation.metrics import attribute_arrays, compute_metrics, headline_keys
from fusion_ser.evaluation.resampling import bootstrap_ci, score_data
from fusion_ser.rundir import RunDir, RunDirError, RunInfo, atomic_write_text, read_run_config

log = logging.getLogger(__name__)


class ReportError(FusionSerError):
    """A report that cannot be made (no speakers for speaker resampling, unreadable manifest)."""


def run_manifest(run: RunDir) -> Optional[Path]:
    """The manifest a run was made from, as its config.yaml records it."""
    path = run.manifest()
    return Path(path) if path else None


def attribute_range(run: RunDir) -> Optional[list[float]]:
    """The attribute scale of a run (`data.attribute_range` in config.yaml), if recorded."""
    rng = (read_run_config(run.config_path)[0].get("data") or {}).get("attribute_range")
    return [float(v) for v in rng] if rng else None


def load_speakers(run: RunDir, manifest: Optional[str | Path] = None) -> dict[str, str]:
    """utt_id -> speaker from the given manifest, or the one recorded in the run's config.yaml."""
    path = Path(manifest) if manifest is not None else run_manifest(run)
    if path is None:
        raise ReportError(f"run '{run.path}' records no manifest in config.yaml; give the manifest to resample by "
                          "speaker", options=("manifest",))
    if not path.is_file():
        raise ReportError(f"manifest '{path}' (needed for the speaker column) does not exist; give the manifest at "
                          "its new location", options=("manifest",))
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("utt_id", "speaker") if c not in df.columns]
    if missing:
        raise ReportError(f"manifest '{path}' has no column(s) {missing}; speaker resampling needs utt_id and speaker")
    return dict(zip(df["utt_id"], df["speaker"]))


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"


def _ci_cell(ci: dict, key: str) -> str:
    c = ci[key]
    return f"{c['value']:.4f} [{c['low']:.4f}, {c['high']:.4f}]"


def evaluate_split(run: RunDir, info: RunInfo, split: str, *, n_boot: int = 1000, seed: int = 0,
                   speakers: Optional[dict[str, str]] = None) -> tuple[dict, pd.DataFrame]:
    """Metrics of one split with bootstrap intervals of the headline figures under `ci`."""
    df = run.read_predictions(split)
    source = str(run.predictions_path(split))
    metrics = compute_metrics(df, info, source=source)
    if metrics["n"] > 0:
        metrics["ci"] = bootstrap_ci(score_data(df, info, source=source), n_boot=n_boot, seed=seed, speakers=speakers)
        metrics["ci_method"] = {"level": 0.95, "n_boot": n_boot, "seed": seed,
                                "unit": "speaker" if speakers is not None else "utterance"}
        by_corpus = metrics_by_corpus(df, info, source)
        if by_corpus:
            metrics["by_corpus"] = by_corpus
    return metrics, df


def metrics_by_corpus(df: pd.DataFrame, info: RunInfo, source: str = "predictions") -> dict[str, dict]:
    """The headline figures (and n) of each corpus of a prediction frame with a `corpus` column holding more than
    one name (a multi-corpus run); {} otherwise."""
    if CORPUS_COLUMN not in df.columns:
        return {}
    corpus = df[CORPUS_COLUMN].fillna("").astype(str)
    if corpus.nunique() < 2:
        return {}
    out = {}
    for name in sorted(corpus.unique()):
        m = compute_metrics(df[corpus == name], info, source=f"{source} (corpus {name})")
        out[name] = {"n": m["n"], **{k: m[k] for k in headline_keys(info) if k in m}}
    return out


def _split_figures(run: RunDir, info: RunInfo, split: str, metrics: dict, df: pd.DataFrame,
                   value_range: Optional[list[float]]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    if metrics["n"] == 0:
        return out
    if has_classes(info.task) and "confusion_matrix" in metrics:
        out["confusion"] = plots.plot_confusion(metrics["confusion_matrix"], metrics.get("labels", info.labels),
                                                run.path / f"{split}_confusion.png", f"{split}: confusion (row-normalised)")
        out["per_class_f1"] = plots.plot_per_class_f1({split: metrics["per_class_f1"]}, run.path / f"{split}_per_class_f1.png")
    if not has_attributes(info.task):
        return out
    for a in info.attributes:
        truth, pred, _ = attribute_arrays(df, a)
        if len(truth):
            out[f"scatter_{a}"] = plots.plot_scatter(truth, pred, a, run.path / f"{split}_scatter_{a}.png", value_range,
                                                     metrics.get(f"ccc_{a}"))
    scored = [a for a in info.attributes if f"ccc_{a}" in metrics]
    out["mse_by_range"] = plots.plot_mse_by_range({split: metrics}, scored, run.path / f"{split}_mse_by_range.png")
    return out


def _categorical_section(metrics: dict, figs: dict[str, Path]) -> list[str]:
    lines = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    unknown = metrics.get("unknown_classes") or {}
    for c in metrics["labels"]:
        name = f"{c} (not a class of the run: every row is an error)" if c in unknown else c
        lines.append(f"| {name} | {metrics['per_class_precision'][c]:.4f} | {metrics['per_class_recall'][c]:.4f} | "
                     f"{metrics['per_class_f1'][c]:.4f} | {metrics['support'][c]} |")
    lines += ["", f"![confusion matrix]({figs['confusion'].name})", "", f"![per-class F1]({figs['per_class_f1'].name})", ""]
    return lines


def _attribute_section(metrics: dict, info: RunInfo, figs: dict[str, Path]) -> list[str]:
    lines = ["| attribute | CCC | Pearson r | MSE | MSE bottom 25 % | MSE middle 50 % | MSE top 25 % | n |",
             "|---|---|---|---|---|---|---|---|"]
    for a in info.attributes:
        if f"ccc_{a}" not in metrics:
            continue
        lines.append(f"| {a} | {metrics[f'ccc_{a}']:.4f} | {metrics[f'pearson_{a}']:.4f} | {metrics[f'mse_{a}']:.4f} | "
                     f"{_fmt(metrics[f'mse_{a}_low'])} | {_fmt(metrics[f'mse_{a}_mid'])} | {_fmt(metrics[f'mse_{a}_high'])} | "
                     f"{metrics[f'n_{a}']} |")
    lines.append("")
    for key, path in figs.items():
        if key not in ("confusion", "per_class_f1"):  # the class section's figures
            lines += [f"![{key}]({path.name})", ""]
    return lines


def _unscored_text(metrics: dict) -> str:
    """'10 skipped (no label: 8, other/no_agreement: 2)': rows not scored, by reason when recorded."""
    reasons = metrics.get("unscored") or {}
    detail = ", ".join(f"{r}: {n}" for r, n in reasons.items()) or "unknown truth"
    return f"{metrics['n_skipped']} skipped ({detail})"


def _scored_text(metrics: dict) -> str:
    """'230 utterances scored' (with the rows whose label is not a class of the run, which count as errors)."""
    unknown = metrics.get("unknown_classes") or {}
    if not unknown:
        return f"{metrics['n']} utterances scored"
    names = ", ".join(f"{c}: {n}" for c, n in unknown.items())
    return (f"{metrics['n']} utterances scored ({metrics['n_unknown_class']} of them labelled with classes the run "
            f"does not know, {names}: they count as errors)")


def write_report(run: RunDir, info: RunInfo, results: dict[str, dict], figures: dict[str, dict[str, Path]],
                 curves: Optional[Path]) -> Path:
    """report.md of a run: headline figures with 95 % intervals, per-class / per-attribute tables, figure links."""
    lines = [f"# Report: {run.path.name}", "",
             f"- kind: {info.kind}, task: {info.task}, modality: {info.modality}"]
    if info.members:
        lines.append(f"- members: {', '.join(info.members)}")
    manifest = run_manifest(run)
    if manifest is not None:
        lines.append(f"- manifest: {manifest}")
    lines.append("")
    for split, metrics in results.items():
        lines += [f"## {split}", ""]
        if metrics["n"] == 0:
            reasons = metrics.get("unscored") or {}
            by_reason = f" By reason: {', '.join(f'{r}: {n}' for r, n in reasons.items())}." if reasons else ""
            lines += [f"No scored utterances: all {metrics['n_skipped']} rows have unknown ground truth.{by_reason}", ""]
            continue
        method = metrics["ci_method"]
        lines += [f"{_scored_text(metrics)}, {_unscored_text(metrics)}. "
                  f"95 % bootstrap intervals over {method['n_boot']} resamples of {method['unit']}s (seed {method['seed']}).", "",
                  "| metric | value [95 % CI] |", "|---|---|"]
        lines += [f"| {k} | {_ci_cell(metrics['ci'], k)} |" for k in headline_keys(info) if k in metrics["ci"]]
        lines.append("")
        if has_classes(info.task) and "labels" in metrics:
            lines += _categorical_section(metrics, figures[split])
        if has_attributes(info.task):
            lines += _attribute_section(metrics, info, figures[split])
    if curves is not None:
        lines += ["## Training", "", f"![training curves]({curves.name})", ""]
    path = run.path / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def evaluate_run(run_dir: str | Path, splits: Optional[list[str]] = None, *, n_boot: int = 1000, seed: int = 0,
                 by_speaker: bool = False, manifest: Optional[str | Path] = None,
                 allow_incomplete: bool = False) -> dict:
    """Recompute the metrics of a run from its predictions; write metrics.json, report.md and PNGs; return
    {split: metrics} for the evaluated splits (other entries of metrics.json are kept, and splits evaluated
    before stay in report.md)."""
    run = RunDir(run_dir)
    info = run.read_info() if allow_incomplete else run.require_complete()
    available = run.splits()
    splits = list(splits) if splits else available
    if not splits:
        raise RunDirError(f"run '{run.path}' has no predictions/<split>.csv to evaluate")
    for s in splits:
        if s not in available:
            raise RunDirError(f"run '{run.path}' has no predictions for split '{s}' (has: {available or 'none'})")
    speakers = load_speakers(run, manifest) if by_speaker else None
    value_range = attribute_range(run)
    results, figures = {}, {}
    for s in splits:
        metrics, df = evaluate_split(run, info, s, n_boot=n_boot, seed=seed, speakers=speakers)
        results[s] = metrics
        figures[s] = _split_figures(run, info, s, metrics, df, value_range)
        log.info("%s/%s: %d scored, %d skipped", run.path.name, s, metrics["n"], metrics["n_skipped"])
    curves = None
    if run.train_log_path.is_file():
        curves = plots.plot_training_curves(pd.read_csv(run.train_log_path), run.path / "training_curves.png")
    all_metrics = run.read_metrics()
    all_metrics.update(results)
    run.write_metrics(all_metrics)
    for s in available:  # splits evaluated earlier (with intervals) stay in the report
        stored = all_metrics.get(s)
        if s not in figures and isinstance(stored, dict) and "ci" in stored:
            figures[s] = _split_figures(run, info, s, stored, run.read_predictions(s), value_range)
    write_report(run, info, {s: all_metrics[s] for s in available if s in figures}, figures, curves)
    from fusion_ser.evaluation.card import write_model_card
    from fusion_ser.evaluation.html_report import write_run_html

    write_run_html(run, info, {s: all_metrics[s] for s in available if s in figures}, figures, curves, run_manifest(run))
    write_model_card(run, info)
    return results
