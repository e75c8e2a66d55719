"""Self-contained HTML pages: a run's report (`report.html`, written by `evaluate_run`) and the building blocks the
comparison page (`compare.to_html`) shares with it.

One file each: the figures are inlined as base64 PNG data URIs, the CSS is inline, and nothing refers to any other
file, URL, script or font, so a page can be mailed or archived alone. The layout is a centred column of at most
1180 px; wide tables scroll inside their own box instead of widening the page; a figure is never wider than the
column. Order: headline figures with 95 % intervals first, then per-class F1, confusion matrices, and for attribute
runs CCC / MSE by range, then the training curves.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from fusion_ser.schema import has_attributes, has_classes
from fusion_ser.evaluation.metrics import headline_keys, metric_label
from fusion_ser.rundir import RunDir, RunInfo, atomic_write_text

REPORT_FILE = "report.html"

CSS = """
:root{--fg:#1d2433;--muted:#5b6475;--line:#d6dae3;--head:#eef1f6;--accent:#2f5fb3;--best:#eaf3ea}
*{box-sizing:border-box}
body{margin:0;background:#f7f8fa;color:var(--fg);font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:20px 28px 48px;background:#fff;min-height:100vh}
h1{font-size:1.55rem;margin:.2em 0 .4em}h2{font-size:1.2rem;margin:1.6em 0 .5em;padding-top:.4em;
border-top:1px solid var(--line)}h3{font-size:1.02rem;margin:1.2em 0 .4em}
p,li{max-width:75ch}.muted{color:var(--muted);font-size:.9rem}
nav{font-size:.9rem;margin:.4em 0 1em}nav a{color:var(--accent);text-decoration:none;margin-right:1.1em}
.scroll{overflow-x:auto;margin:.6em 0 1em;border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;font-size:.88rem;width:100%}
th,td{padding:5px 10px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{background:var(--head);font-weight:600;white-space:normal;vertical-align:bottom}
td:first-child,th:first-child{text-align:left}
table.left2 td:nth-child(2),table.left2 th:nth-child(2){text-align:left}
tr:last-child td{border-bottom:none}tr.baseline td{background:#fafbfd;font-style:italic}
tr.best td{background:var(--best)}
.ci{display:block;color:var(--muted);font-size:.78rem}
figure{margin:.6em 0 1.2em}figure img{max-width:100%;height:auto;border:1px solid var(--line);border-radius:4px}
figcaption{color:var(--muted);font-size:.85rem}
.figs{display:flex;flex-wrap:wrap;gap:14px}.figs figure{flex:1 1 340px;margin:0}
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def number(v: Optional[float], digits: int = 4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def ci_cell(value: float, low: float, high: float) -> str:
    """A figure with its 95 % interval beneath it (HTML)."""
    return f"{number(value)}<span class=\"ci\">[{number(low)}, {number(high)}]</span>"


def table(header: Sequence[str], rows: Iterable[Sequence[str]], row_classes: Optional[Sequence[str]] = None,
          escape: bool = True, left: int = 1) -> str:
    """A table in a horizontally scrolling box (numbers right-aligned, the first `left` columns left-aligned);
    cells are escaped unless `escape` is False (pre-built HTML)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes and row_classes[i] else ""
        cells = "".join(f"<td>{esc(c) if escape else c}</td>" for c in row)
        body.append(f"<tr class=\"{cls}\">{cells}</tr>" if cls else f"<tr>{cells}</tr>")
    cls = " class=\"left2\"" if left >= 2 else ""
    return (f"<div class=\"scroll\"><table{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            "</div>")


def image(path: Path, caption: str) -> str:
    """A figure with the PNG at `path` inlined as a data URI."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f"<figure><img alt=\"{esc(caption)}\" src=\"data:image/png;base64,{data}\">"
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def section(anchor: str, title: str, body: str) -> str:
    return f"<section id=\"{esc(anchor)}\"><h2>{esc(title)}</h2>{body}</section>"


def page(title: str, intro: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole document: title, intro HTML, a table of contents of in-page anchors, then the sections."""
    nav = "".join(f"<a href=\"#{esc(anchor)}\">{esc(name)}</a>" for anchor, name, _ in sections)
    body = "".join(section(anchor, name, content) for anchor, name, content in sections)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{CSS}</style></head><body><main><h1>{esc(title)}</h1>{intro}<nav>{nav}</nav>{body}</main>"
            "</body></html>\n")


def _headline_table(info: RunInfo, results: dict[str, dict]) -> str:
    splits = [s for s, m in results.items() if m.get("n", 0) > 0 and "ci" in m]
    if not splits:
        return "<p>No split has utterances with known truth.</p>"
    rows = []
    for k in headline_keys(info):
        cells = [esc(metric_label(k))]
        for s in splits:
            c = results[s]["ci"].get(k)
            cells.append(ci_cell(c["value"], c["low"], c["high"]) if c else "n/a")
        rows.append(cells)
    rows.append(["utterances scored"] + [esc(results[s]["n"]) for s in splits])
    notes = []
    for s in splits:
        m = results[s]["ci_method"]
        reasons = ", ".join(f"{r}: {n}" for r, n in (results[s].get("unscored") or {}).items()) or "unknown truth"
        notes.append(f"<p class=\"muted\">{esc(s)}: {results[s]['n']} scored, {results[s]['n_skipped']} skipped "
                     f"({esc(reasons)}); 95 % bootstrap intervals over {m['n_boot']} resamples of {esc(m['unit'])}s, "
                     f"seed {m['seed']}.</p>")
    return table(["figure"] + [f"{s} [95\u00a0%\u00a0CI]" for s in splits], rows, escape=False) + "".join(notes)


def _categorical_sections(results: dict[str, dict], figures: dict[str, dict[str, Path]]) -> list[tuple[str, str, str]]:
    splits = [s for s in results if results[s].get("n", 0) > 0 and "labels" in results[s]]
    if not splits:
        return []
    labels = list(dict.fromkeys(c for s in splits for c in results[s]["labels"]))  # splits may add unknown classes
    unknown = {c for s in splits for c in (results[s].get("unknown_classes") or {})}
    header = ["class"] + [f"{s} {f}" for s in splits for f in ("P", "R", "F1", "n")]
    rows = []
    for c in labels:
        row = [f"{c} (not a class of the run)" if c in unknown else c]
        for s in splits:
            m = results[s]
            row += [number(m["per_class_precision"].get(c)), number(m["per_class_recall"].get(c)),
                    number(m["per_class_f1"].get(c)), str(m["support"].get(c, ""))]
        rows.append(row)
    f1_figs = "".join(image(figures[s]["per_class_f1"], f"{s}: per-class F1") for s in splits
                      if "per_class_f1" in figures.get(s, {}))
    cm_figs = "".join(image(figures[s]["confusion"], f"{s}: confusion matrix, each true class's row sums to 1")
                      for s in splits if "confusion" in figures.get(s, {}))
    return [("per-class", "Per-class precision, recall and F1",
             table(header, rows) + f"<div class=\"figs\">{f1_figs}</div>"),
            ("confusion", "Confusion matrices", f"<div class=\"figs\">{cm_figs}</div>")]


def _attribute_sections(info: RunInfo, results: dict[str, dict],
                        figures: dict[str, dict[str, Path]]) -> list[tuple[str, str, str]]:
    header = ["split", "attribute", "CCC", "Pearson r", "MSE", "MSE bottom 25 %", "MSE middle 50 %", "MSE top 25 %", "n"]
    rows, range_figs, scatter_figs = [], [], []
    for s, m in results.items():
        for a in info.attributes:
            if f"ccc_{a}" in m:
                rows.append([s, a, number(m[f"ccc_{a}"]), number(m[f"pearson_{a}"]), number(m[f"mse_{a}"]),
                             number(m.get(f"mse_{a}_low")), number(m.get(f"mse_{a}_mid")),
                             number(m.get(f"mse_{a}_high")), str(m.get(f"n_{a}", ""))])
        figs = figures.get(s, {})
        if "mse_by_range" in figs:
            range_figs.append(image(figs["mse_by_range"], f"{s}: MSE by ground-truth range"))
        scatter_figs += [image(p, f"{s}: {key.removeprefix('scatter_')}, predicted against true")
                         for key, p in figs.items() if key.startswith("scatter_")]
    return [("attributes", "CCC and MSE by range", table(header, rows, left=2) + f"<div class=\"figs\">{''.join(range_figs)}</div>"),
            ("scatter", "Predicted against true values", f"<div class=\"figs\">{''.join(scatter_figs)}</div>")]


def run_report_html(run: RunDir, info: RunInfo, results: dict[str, dict], figures: dict[str, dict[str, Path]],
                    curves: Optional[Path], manifest: Optional[Path] = None) -> str:
    """The self-contained HTML report of one run (the figures must exist as PNG files)."""
    facts = [f"kind {info.kind}", f"task {info.task}", f"modality {info.modality}"]
    if manifest is not None:
        facts.append(f"manifest {manifest}")
    intro = f"<p class=\"muted\">{esc(', '.join(facts))}</p>"
    if info.members:
        intro += "<p class=\"muted\">members: " + esc(", ".join(info.members)) + "</p>"
    sections = [("headline", "Headline figures", _headline_table(info, results))]
    if has_classes(info.task):
        sections += _categorical_sections(results, figures)
    if has_attributes(info.task):
        sections += _attribute_sections(info, results, figures)
    if curves is not None:
        sections.append(("training", "Training", image(curves, "losses and dev figures per epoch")))
    return page(f"Report: {run.path.name}", intro, sections)


def write_run_html(run: RunDir, info: RunInfo, results: dict[str, dict], figures: dict[str, dict[str, Path]],
                   curves: Optional[Path], manifest: Optional[Path] = None) -> Path:
    """Write report.html into the run directory."""
    path = run.path / REPORT_FILE
    atomic_write_text(path, run_report_html(run, info, results, figures, curves, manifest))
    return path
