"""Leaderboard-style comparison of runs against a baseline on the same utterances, written as md, html, csv or json.

Each run gets its headline figures with bootstrap 95 % intervals and its difference to the baseline with a paired
interval and a permutation p-value; runs are ranked by macro-F1 (categorical), mean CCC (attributes) or the multitask
score; multitask runs beside single-task runs are compared on the single task.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from fusion_ser.errors import FusionSerError
from fusion_ser.evaluation import html_report as htmlpage
from fusion_ser.evaluation import plots
from fusion_ser.evaluation.metrics import (compute_metrics, headline_keys, headline_metrics, higher_is_better, metric_label,
                                          primary_key, primary_metric)
from fusion_ser.evaluation.report import load_speakers
from fusion_ser.schema import has_attributes, has_classes
from fusion_ser.evaluation.resampling import ScoreData, bootstrap_ci, paired_test, score_data, shared_task
from fusion_ser.rundir import RunDir, RunInfo, atomic_write_text

log = logging.getLogger(__name__)

FORMATS = ("md", "html", "csv", "json")
ATTRIBUTE_ORDER = ["valence", "arousal", "dominance"]  # leaderboard column order; others follow


class CompareError(FusionSerError):
    """Runs that cannot be put in one table (different tasks, classes or utterances)."""


@dataclass
class Comparison:
    """Everything a comparison report shows; `table` is ranked, best first."""

    split: str
    task: str
    baseline: str
    n: int
    table: pd.DataFrame
    per_class: pd.DataFrame  # categorical: classes x runs (F1); attributes: figures x runs
    columns: list[str] = field(default_factory=list)  # headline figures in leaderboard order
    confusions: dict[str, list] = field(default_factory=dict)
    metrics: dict[str, dict] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)


def _names(paths: list[Path]) -> list[str]:
    """Short unique names for runs: the folder name, or parent/name where folder names repeat."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def _headline_columns(info: RunInfo) -> list[str]:
    """The headline figures of the run's task, attributes in leaderboard order (valence, arousal, dominance)."""
    attrs = [a for a in ATTRIBUTE_ORDER if a in info.attributes] + [a for a in info.attributes if a not in ATTRIBUTE_ORDER]
    return headline_metrics(info.task, attrs)


def _task_views(infos: dict[str, RunInfo], base_name: str) -> dict[str, RunInfo]:
    """Every run seen as a run of the task they share (resampling.shared_task): multitask runs among single-task
    ones are compared on that task; runs of two different single tasks cannot be compared."""
    task = infos[base_name].task
    for name, info in infos.items():
        shared = shared_task(task, info.task)
        if shared is None:
            raise CompareError(f"run '{name}' is a {info.task} run but the baseline '{base_name}' is "
                               f"{infos[base_name].task}; compare runs of one task (a multitask run compares with "
                               "either)")
        task = shared
    if any(info.task != task for info in infos.values()):
        log.info("comparing on the %s task: the multitask runs are scored on that part", task)
    return {name: replace(info, task=task, labels=list(info.labels) if has_classes(task) else [],
                          attributes=list(info.attributes) if has_attributes(task) else [])
            for name, info in infos.items()}


def _common_utterances(data: dict[str, ScoreData], baseline: str, intersect: bool) -> np.ndarray:
    sets = {name: set(d.utt_ids) for name, d in data.items()}
    common = set.intersection(*sets.values())
    if all(s == common for s in sets.values()):
        return data[baseline].utt_ids
    counts = ", ".join(f"'{name}': {len(s)}" for name, s in sets.items())
    if not intersect:
        raise CompareError(f"runs were evaluated on different utterances ({counts}; {len(common)} in common); "
                           "compare runs on the same split of the same manifest, or compare on the common ones only "
                           "(intersect)", options=("intersect",))
    if not common:
        raise CompareError(f"runs share no scored utterance ({counts}); comparing on the intersection cannot help")
    log.warning("comparing on the %d utterances common to all runs (%s)", len(common), counts)
    base_ids = data[baseline].utt_ids
    return base_ids[np.isin(base_ids, list(common))]


def compare_runs(runs: list[str | Path], baseline: str | Path, *, split: str = "test", intersect: bool = False,
                 n_boot: int = 1000, n_perm: int = 1000, seed: int = 0, by_speaker: bool = False,
                 manifest: Optional[str | Path] = None) -> Comparison:
    """Score every run (and the baseline) on one split and test each against the baseline."""
    base_path = Path(baseline).resolve()
    paths = [base_path] + [p for p in dict.fromkeys(Path(r).resolve() for r in runs) if p != base_path]
    names = _names(paths)
    base_name = names[0]
    infos: dict[str, RunInfo] = {}
    frames: dict[str, pd.DataFrame] = {}
    sources: dict[str, str] = {}
    for name, path in zip(names, paths):
        rd = RunDir(path)
        infos[name] = rd.require_complete()
        frames[name] = rd.read_predictions(split)
        sources[name] = str(rd.predictions_path(split))
    infos = _task_views(infos, base_name)
    base_info = infos[base_name]
    for name, info in infos.items():
        if has_classes(info.task) and list(info.labels) != list(base_info.labels):
            raise CompareError(f"run '{name}' has classes {info.labels} but the baseline '{base_name}' has {base_info.labels}")
        if has_attributes(info.task) and list(info.attributes) != list(base_info.attributes):
            raise CompareError(f"run '{name}' predicts {info.attributes} but the baseline '{base_name}' predicts {base_info.attributes}")
    data = {name: score_data(frames[name], infos[name], source=sources[name]) for name in names}
    if any(d.n == 0 for d in data.values()):
        empty = [name for name, d in data.items() if d.n == 0]
        raise CompareError(f"runs {empty} have no utterance with known ground truth in split '{split}'; compare on a labelled split")
    common = _common_utterances(data, base_name, intersect)
    dropped = {name: int(d.n - len(common)) for name, d in data.items()}
    data = {name: d.subset(common) for name, d in data.items()}
    speakers = load_speakers(RunDir(base_path), manifest) if by_speaker else None

    rows, metrics = [], {}
    keep = set(common)
    for name in names:
        frame = frames[name][frames[name]["utt_id"].astype(str).isin(keep)]
        metrics[name] = compute_metrics(frame, infos[name], source=sources[name])
        ci = bootstrap_ci(data[name], n_boot=n_boot, seed=seed, speakers=speakers)
        row: dict = {"run": name, "n": len(common)}
        for k in headline_keys(base_info):
            row[k], row[f"{k}_low"], row[f"{k}_high"] = ci[k]["value"], ci[k]["low"], ci[k]["high"]
        if name != base_name:
            test = paired_test(data[base_name], data[name], n_boot=n_boot, n_perm=n_perm, seed=seed, speakers=speakers)
            for k in headline_keys(base_info):
                row[f"delta_{k}"], row[f"p_{k}"] = test[k]["delta"], test[k]["p_value"]
                row[f"delta_{k}_low"], row[f"delta_{k}_high"] = test[k]["low"], test[k]["high"]
        rows.append(row)
    primary = primary_key(base_info)
    ascending = not higher_is_better(primary)  # best first
    table = pd.DataFrame(rows).sort_values(primary, ascending=ascending, kind="stable").reset_index(drop=True)
    table.insert(0, "rank", table[primary].rank(ascending=ascending, method="min").astype(int))
    table.insert(2, "baseline", table["run"] == base_name)
    tables, confusions = [], {}
    if has_classes(base_info.task):
        tables.append(pd.DataFrame({name: metrics[name]["per_class_f1"] for name in table["run"]}))
        confusions = {name: metrics[name]["confusion_matrix"] for name in table["run"]}
    if has_attributes(base_info.task):
        keys = [k for a in base_info.attributes for k in (f"ccc_{a}", f"pearson_{a}", f"mse_{a}", f"mse_{a}_low",
                                                          f"mse_{a}_mid", f"mse_{a}_high")]
        tables.append(pd.DataFrame({name: {k: metrics[name].get(k, np.nan) for k in keys} for name in table["run"]}))
    per_class = pd.concat(tables)
    settings = {"n_boot": n_boot, "n_perm": n_perm, "seed": seed, "unit": "speaker" if by_speaker else "utterance",
                "intersect": intersect, "runs": {name: str(p) for name, p in zip(names, paths)}}
    return Comparison(split, base_info.task, base_name, len(common), table, per_class, _headline_columns(base_info),
                      confusions, metrics, dropped, settings)


def _cell(row: pd.Series, key: str) -> str:
    return f"{row[key]:.4f} [{row[key + '_low']:.4f}, {row[key + '_high']:.4f}]"


def _delta_cell(row: pd.Series, key: str) -> str:
    if row["baseline"]:
        return "baseline"
    p = row[f"p_{key}"]
    return f"{row[f'delta_{key}']:+.4f} (p={p:.3f})"


def _display_table(comp: Comparison) -> pd.DataFrame:
    """The leaderboard as strings: rank, run, each headline figure with its CI, difference to the baseline in the
    figure runs are ranked by (the differences in every headline figure are in the csv and json reports)."""
    primary = primary_metric(comp.task)
    out = []
    for _, row in comp.table.iterrows():
        d = {"rank": str(row["rank"]), "run": row["run"]}
        for k in comp.columns:
            d[metric_label(k)] = _cell(row, k)
        d[f"Δ {metric_label(primary)} vs baseline"] = _delta_cell(row, primary)
        out.append(d)
    return pd.DataFrame(out)


def _heading(title: str) -> str:
    return title[:1].upper() + title[1:]


def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(str(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(str(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def _figures(comp: Comparison, stem: Path) -> dict[str, Path]:
    """The comparison figures, written next to the report as <stem>_<name>.png."""
    figs = {}
    runs = list(comp.table["run"])
    if has_classes(comp.task):
        figs["per-class F1 bars"] = plots.plot_per_class_f1({r: comp.metrics[r]["per_class_f1"] for r in runs},
                                                       stem.with_name(stem.name + "_per_class_f1.png"))
        labels = comp.metrics[runs[0]]["labels"]
        figs["confusion matrices (row-normalised)"] = plots.plot_confusion_grid(
            comp.confusions, labels, stem.with_name(stem.name + "_confusions.png"))
    if has_attributes(comp.task):
        attrs = [k.removeprefix("ccc_") for k in comp.metrics[runs[0]] if k.startswith("ccc_") and k != "ccc_mean"]
        figs["MSE by ground-truth range"] = plots.plot_mse_by_range({r: comp.metrics[r] for r in runs}, attrs,
                                                                    stem.with_name(stem.name + "_mse_by_range.png"))
    return figs


def _notes(comp: Comparison) -> list[str]:
    s = comp.settings
    notes = [f"Split '{comp.split}', {comp.n} utterances scored by every run; baseline '{comp.baseline}'.",
             f"Brackets: 95 % bootstrap intervals ({s['n_boot']} resamples of {s['unit']}s, seed {s['seed']}); "
             f"Δ: difference to the baseline, p: two-sided paired permutation test ({s['n_perm']} permutations)."]
    dropped = {k: v for k, v in comp.dropped.items() if v}
    if dropped:
        notes.append("Restricted to the utterances common to all runs; dropped: "
                     + ", ".join(f"'{k}' {v}" for k, v in dropped.items()) + ".")
    return notes


DETAIL_COLUMN = {"categorical": "class", "attributes": "figure", "multitask": "class / figure"}
DETAIL_TITLE = {"categorical": "Per-class F1", "attributes": "Per-attribute figures",
                "multitask": "Per-class F1 and per-attribute figures"}


def _per_class_display(comp: Comparison) -> pd.DataFrame:
    df = comp.per_class.map(lambda v: "n/a" if pd.isna(v) else f"{v:.4f}")
    df.insert(0, DETAIL_COLUMN[comp.task], df.index)
    return df.reset_index(drop=True)


def to_markdown(comp: Comparison, path: Path) -> str:
    """Markdown report; figures are written beside it and linked by relative path."""
    figs = _figures(comp, path.with_suffix(""))
    lines = [f"# Comparison on {comp.split}", "", *_notes(comp), "", _md_table(_display_table(comp)), "",
             f"## {DETAIL_TITLE[comp.task]}", "",
             _md_table(_per_class_display(comp)), ""]
    for title, p in figs.items():
        lines += [f"## {_heading(title)}", "", f"![{title}]({p.name})", ""]
    return "\n".join(lines)


def _html_leaderboard(comp: Comparison) -> str:
    """The leaderboard as HTML: each headline figure with its interval beneath it, the baseline row marked."""
    primary = primary_metric(comp.task)
    header = ["rank", "run"] + [f"{metric_label(k)} [95\u00a0%\u00a0CI]" for k in comp.columns] + [
        f"Δ {metric_label(primary)} vs baseline (p)"]
    rows, classes = [], []
    for _, row in comp.table.iterrows():
        cells = [str(row["rank"]), htmlpage.esc(row["run"])]
        cells += [htmlpage.ci_cell(row[k], row[f"{k}_low"], row[f"{k}_high"]) for k in comp.columns]
        cells.append("baseline" if row["baseline"] else
                     f"{row[f'delta_{primary}']:+.4f}<span class=\"ci\">p={row[f'p_{primary}']:.3f}</span>")
        rows.append(cells)
        classes.append("baseline" if row["baseline"] else ("best" if row["rank"] == 1 else ""))
    return htmlpage.table(header, rows, classes, escape=False, left=2)


def _figure_label(key: str) -> str:
    """A per-attribute figure key as a reader names it: ccc_valence -> CCC valence, mse_valence_low -> MSE valence,
    bottom 25 %."""
    ranges = {"low": "bottom 25 %", "mid": "middle 50 %", "high": "top 25 %"}
    name, _, rest = key.partition("_")
    label = {"ccc": "CCC", "pearson": "Pearson r", "mse": "MSE"}.get(name, name)
    attr, _, part = rest.rpartition("_") if rest.rsplit("_", 1)[-1] in ranges else (rest, "", "")
    return f"{label} {attr}" + (f", {ranges[part]}" if part else "")


def to_html(comp: Comparison, path: Path) -> str:
    """One self-contained HTML page (html_report): the leaderboard with intervals first, then per-class F1 (or the
    per-attribute figures), confusion matrices or MSE by range; figures drawn in a temporary folder and inlined."""
    with tempfile.TemporaryDirectory() as tmp:
        figs = {title: htmlpage.image(p, _heading(title)) for title, p in _figures(comp, Path(tmp) / path.stem).items()}
    notes = "".join(f"<p class=\"muted\">{htmlpage.esc(n)}</p>" for n in _notes(comp))
    per_class = _per_class_display(comp)
    if has_attributes(comp.task):
        column = DETAIL_COLUMN[comp.task]
        classes = set(comp.metrics[comp.baseline].get("labels", [])) if has_classes(comp.task) else set()
        per_class[column] = [k if k in classes else _figure_label(k) for k in per_class[column]]
    sub = {**DETAIL_TITLE, "attributes": "Per-attribute figures (CCC, Pearson r, MSE by range)"}[comp.task]
    detail = htmlpage.table(list(per_class.columns), per_class.itertuples(index=False))
    sections = [("leaderboard", "Leaderboard", _html_leaderboard(comp)),
                ({"attributes": "attributes", "multitask": "detail"}.get(comp.task, "per-class"), sub,
                 detail + "".join(v for k, v in figs.items() if "confusion" not in k))]
    sections += [("confusion", "Confusion matrices", v) for k, v in figs.items() if "confusion" in k]
    return htmlpage.page(f"Comparison on {comp.split}", notes, sections)


def to_json(comp: Comparison) -> str:
    """Machine-readable comparison: the numeric table, per-class figures, confusion matrices and settings."""
    table = json.loads(comp.table.to_json(orient="records"))
    return json.dumps({"split": comp.split, "task": comp.task, "baseline": comp.baseline, "n": comp.n,
                       "table": table, "per_class": json.loads(comp.per_class.to_json()),
                       "confusion_matrices": comp.confusions, "dropped": comp.dropped, "settings": comp.settings},
                      indent=2)


def write_comparison(comp: Comparison, path: str | Path, fmt: Optional[str] = None) -> Path:
    """Write the comparison as md, html, csv (the numeric leaderboard) or json; fmt defaults to the file suffix."""
    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".").lower() or "md"
    if fmt not in FORMATS:
        raise CompareError(f"report format '{fmt}' (from '{path.name}') is not one of {list(FORMATS)}; name the format",
                           options=("fmt",))
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "md":
        text = to_markdown(comp, path)
    elif fmt == "html":
        text = to_html(comp, path)
    elif fmt == "csv":
        text = comp.table.to_csv(index=False)
    else:
        text = to_json(comp)
    atomic_write_text(path, text)
    return path
