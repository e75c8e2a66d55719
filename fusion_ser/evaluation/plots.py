"""The figures of reports and comparisons, drawn with matplotlib's Agg canvas (no display, no global pyplot state)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fusion_ser.evaluation.metrics import headline_metrics

DPI = 110


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", format="png")
    return path


def _row_normalised(cm: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)


def _draw_confusion(ax, cm: np.ndarray, labels: Sequence[str], title: str) -> None:
    norm = _row_normalised(cm)
    ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    k = len(labels)
    ax.set_xticks(range(k), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")


def plot_confusion(cm: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Confusion matrix normalised by row (each true class sums to 1), cells annotated."""
    size = 1.2 + 0.55 * len(labels)
    fig = Figure(figsize=(size + 1, size))
    _draw_confusion(fig.add_subplot(), np.asarray(cm), labels, title or "confusion (row-normalised)")
    return _save(fig, path)


def plot_confusion_grid(cms: Mapping[str, Sequence[Sequence[int]]], labels: Sequence[str], path: str | Path,
                        columns: int = 2) -> Path:
    """Row-normalised confusion matrices of several runs, `columns` per row (so each stays legible on a page)."""
    n = len(cms)
    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    size = 1.2 + 0.5 * len(labels)
    fig = Figure(figsize=(size * cols + 1, (size + 0.5) * rows))
    for i, (name, cm) in enumerate(cms.items()):
        _draw_confusion(fig.add_subplot(rows, cols, i + 1), np.asarray(cm), labels, name)
    fig.tight_layout()
    return _save(fig, path)


def plot_per_class_f1(per_class: Mapping[str, Mapping[str, float]], path: str | Path) -> Path:
    """Per-class F1 bars, one group per class and one bar per run (a single run: one bar per class)."""
    runs = list(per_class)
    classes = list(next(iter(per_class.values())))
    width = 0.8 / len(runs)
    x = np.arange(len(classes))
    fig = Figure(figsize=(max(5.0, 0.7 * len(classes) * max(1, len(runs) / 2)), 3.5))
    ax = fig.add_subplot()
    for i, run in enumerate(runs):
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, [per_class[run][c] for c in classes], width, label=run)
    ax.set_xticks(x, classes, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title("per-class F1")
    if len(runs) > 1:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_scatter(truth: np.ndarray, pred: np.ndarray, attribute: str, path: str | Path,
                 value_range: Optional[Sequence[float]] = None, ccc_value: Optional[float] = None) -> Path:
    """Predicted against true values of one attribute, with the identity line."""
    fig = Figure(figsize=(4, 4))
    ax = fig.add_subplot()
    ax.scatter(truth, pred, s=6, alpha=0.4)
    lo, hi = value_range if value_range is not None else (float(np.min(truth)), float(np.max(truth)))
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1)
    ax.set_xlabel(f"true {attribute}")
    ax.set_ylabel(f"predicted {attribute}")
    ax.set_title(attribute + (f" (CCC {ccc_value:.3f})" if ccc_value is not None else ""))
    return _save(fig, path)


def plot_mse_by_range(metrics: Mapping[str, Mapping[str, float]], attributes: Sequence[str], path: str | Path) -> Path:
    """MSE in the bottom 25 %, middle 50 % and top 25 % of each attribute's ground truth; one bar group per
    attribute, one panel per run when several are given ({run: metrics})."""
    runs = list(metrics)
    fig = Figure(figsize=(4.5 * len(runs), 3.5))
    ranges = [("low", "bottom 25 %"), ("mid", "middle 50 %"), ("high", "top 25 %")]
    x = np.arange(len(attributes))
    for i, run in enumerate(runs):
        ax = fig.add_subplot(1, len(runs), i + 1)
        for j, (key, name) in enumerate(ranges):
            vals = [metrics[run].get(f"mse_{a}_{key}", np.nan) for a in attributes]
            ax.bar(x + (j - 1) * 0.27, vals, 0.27, label=name)
        ax.set_xticks(x, attributes)
        ax.set_ylabel("MSE")
        ax.set_title(run if len(runs) > 1 else "MSE by ground-truth range", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


# the categorical headline figures as the training log names them; accuracy is left out, as it equals micro-F1
# for single-label classes (the attribute ones, dev_ccc_*, are found by prefix)
HEADLINE_DEV = tuple(f"dev_{k}" for k in headline_metrics("categorical") if k != "accuracy")


def plot_training_curves(log_df: pd.DataFrame, path: str | Path) -> Optional[Path]:
    """Losses (columns ending in 'loss') and headline dev metrics (dev_macro_f1 ..., dev_ccc_*) against epoch, with
    the selected epoch (last row where `best` is true) marked; None if the log has nothing to draw."""
    if "epoch" not in log_df.columns or log_df.empty:
        return None
    numeric = [c for c in log_df.columns if c != "epoch" and pd.api.types.is_numeric_dtype(log_df[c])
               and not pd.api.types.is_bool_dtype(log_df[c]) and log_df[c].notna().any()]
    losses = [c for c in numeric if c.endswith("loss")]
    dev = [c for c in numeric if c in HEADLINE_DEV or c.startswith("dev_ccc_")]
    if not losses and not dev:
        return None
    best = None
    if "best" in log_df.columns:
        flags = log_df["best"].astype(str).str.lower() == "true"
        best = log_df.loc[flags, "epoch"].iloc[-1] if flags.any() else None
    panels = [p for p in ((losses, "loss"), (dev, "dev metric")) if p[0]]
    fig = Figure(figsize=(4.5 * len(panels), 3.3))
    for i, (cols, ylabel) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for c in cols:
            ax.plot(log_df["epoch"], log_df[c], marker="o", markersize=3, label=c)
        if best is not None:
            ax.axvline(best, color="grey", linestyle="--", linewidth=1, label=f"selected (epoch {best})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
