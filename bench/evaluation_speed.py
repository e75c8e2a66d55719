"""How long evaluation takes at MSP-Podcast scale: metrics, bootstrap intervals, paired tests, a full comparison.

Synthetic run dirs (8 classes, N test utterances, 4 runs + a baseline; attributes for 3 runs) in a temp dir;
prints seconds per step. Usage: python bench/evaluation_speed.py [N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fusion_ser.schema import ATTRIBUTES, CATEGORICAL_LABELS
from fusion_ser.evaluation.compare import compare_runs, write_comparison
from fusion_ser.evaluation.metrics import compute_metrics
from fusion_ser.evaluation.report import evaluate_run
from fusion_ser.evaluation.resampling import bootstrap_ci, paired_test, score_data
from fusion_ser.rundir import RunDir, RunInfo


def make_run(root: Path, name: str, df: pd.DataFrame, info: RunInfo) -> Path:
    run = RunDir(root / name)
    run.write_info(info)
    run.write_predictions("test", df)
    run.mark_complete()
    return run.path


def timed(label: str, fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    print(f"{label:<58} {time.perf_counter() - t:7.2f} s")
    return out


def main(n: int) -> None:
    rng = np.random.default_rng(0)
    labels = CATEGORICAL_LABELS
    y = rng.choice(labels, n, p=[0.07, 0.03, 0.03, 0.02, 0.25, 0.40, 0.10, 0.10])
    ids = [f"MSP-PODCAST_{i:06d}" for i in range(n)]
    cat = RunInfo(kind="model", task="categorical", labels=labels, complete=False)
    att = RunInfo(kind="model", task="attributes", attributes=ATTRIBUTES, complete=False)
    truth = rng.uniform(1, 7, (n, 3))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cat_runs, att_runs = [], []
        for i, acc in enumerate([0.30, 0.35, 0.38, 0.40, 0.45]):
            pred = np.where(rng.random(n) < acc, y, rng.choice(labels, n))
            cat_runs.append(make_run(root, f"cat{i}", pd.DataFrame({"utt_id": ids, "label": y, "pred": pred}), cat))
        for i, noise in enumerate([1.5, 1.2, 1.0]):
            df = pd.DataFrame({"utt_id": ids, **{a: truth[:, j] for j, a in enumerate(ATTRIBUTES)},
                               **{f"{a}_pred": truth[:, j] + rng.normal(0, noise, n) for j, a in enumerate(ATTRIBUTES)}})
            att_runs.append(make_run(root, f"att{i}", df, att))
        print(f"N = {n} utterances, 8 classes / 3 attributes, 1000 resamples, 1000 permutations")
        df = RunDir(cat_runs[0]).read_predictions("test")
        info = RunDir(cat_runs[0]).read_info()
        timed("compute_metrics (categorical)", compute_metrics, df, info)
        data = score_data(df, info)
        timed("bootstrap_ci (categorical, 1000 resamples)", bootstrap_ci, data)
        other = score_data(RunDir(cat_runs[1]).read_predictions("test"), info)
        timed("paired_test (categorical)", paired_test, data, other)
        adf = RunDir(att_runs[0]).read_predictions("test")
        adata = score_data(adf, RunDir(att_runs[0]).read_info())
        timed("bootstrap_ci (attributes, 1000 resamples)", bootstrap_ci, adata)
        timed("paired_test (attributes)", paired_test, adata,
              score_data(RunDir(att_runs[1]).read_predictions("test"), RunDir(att_runs[1]).read_info()))
        timed("evaluate_run (categorical: metrics.json, report.md, 2 PNGs)", evaluate_run, cat_runs[0])
        timed("evaluate_run (attributes: 4 PNGs)", evaluate_run, att_runs[0])
        comp = timed("compare_runs (5 categorical runs)", compare_runs, cat_runs[1:], cat_runs[0])
        timed("write_comparison html (figures embedded)", write_comparison, comp, root / "cmp.html")
        comp = timed("compare_runs (3 attribute runs)", compare_runs, att_runs[1:], att_runs[0])
        print("ranking:", ", ".join(f"{r.run} {r.ccc_mean:.3f}" for r in comp.table.itertuples()))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
