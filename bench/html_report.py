"""The self-contained HTML reports in a real browser: a comparison page and one run's report.html, screenshotted.

Writes synthetic run dirs (8 MSP-Podcast classes, 3 runs + a baseline with train logs; 2 attribute runs), the
comparison HTML of each task and a run's report.html, checks that no page refers to anything outside itself, and
takes headless Chromium screenshots at a laptop size (1366x900, plus the full page height).
Usage: python bench/html_report.py [OUT_DIR]   (default: a temp dir; prints where the pages and PNGs are)
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd

from fusion_ser.schema import ATTRIBUTES, CATEGORICAL_LABELS
from fusion_ser.evaluation.compare import compare_runs, write_comparison
from fusion_ser.evaluation.report import evaluate_run
from fusion_ser.rundir import RunDir, RunInfo


class References(HTMLParser):
    """Every src / href of a page, and any <script> or <link>."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        self.scripts += tag in ("script", "link")
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def external(page: str) -> list[str]:
    parser = References()
    parser.feed(page)
    bad = [r for r in parser.refs if not (r.startswith("data:") or r.startswith("#"))]
    return bad + (["<script>/<link>"] if parser.scripts else []) + (["url("] if "url(" in page else [])


def make_run(root: Path, name: str, df: pd.DataFrame, info: RunInfo, log: pd.DataFrame | None = None) -> Path:
    run = RunDir(root / name)
    run.write_info(info)
    run.write_predictions("test", df)
    run.write_predictions("dev", df.sample(frac=0.5, random_state=1))
    if log is not None:
        log.to_csv(run.train_log_path, index=False)
    run.mark_complete()
    return run.path


def train_log(rng: np.random.Generator) -> pd.DataFrame:
    epochs = np.arange(1, 9)
    f1 = 0.2 + 0.25 * (1 - np.exp(-epochs / 3)) + rng.normal(0, 0.01, 8)
    return pd.DataFrame({"epoch": epochs, "train_loss": 2.0 * np.exp(-epochs / 4) + 0.4,
                         "dev_loss": 1.8 * np.exp(-epochs / 5) + 0.6, "dev_macro_f1": f1,
                         "best": epochs == int(np.argmax(f1)) + 1})


def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def screenshot(browser: str, page: Path, png: Path, height: int = 900) -> None:
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={png}", f"--window-size=1366,{height}", page.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)


def main(out: Path) -> None:
    rng = np.random.default_rng(0)
    n, labels = 1200, CATEGORICAL_LABELS
    y = rng.choice(labels, n, p=[0.07, 0.03, 0.03, 0.02, 0.25, 0.40, 0.10, 0.10])
    ids = [f"MSP-PODCAST_{i:06d}" for i in range(n)]
    cat = RunInfo(kind="model", task="categorical", labels=labels, modality="audio")
    runs = []
    for name, acc in [("whisper_tiny_audio", 0.38), ("wavlm_large_audio", 0.47), ("minilm_text", 0.33),
                      ("late_fusion_lr", 0.52)]:
        pred = np.where(rng.random(n) < acc, y, rng.choice(labels, n))
        runs.append(make_run(out, name, pd.DataFrame({"utt_id": ids, "label": y, "pred": pred}), cat, train_log(rng)))
    truth = rng.uniform(1, 7, (n, 3))
    att = RunInfo(kind="model", task="attributes", attributes=ATTRIBUTES, modality="audio")
    att_runs = []
    for name, noise in [("wavlm_attributes", 1.0), ("whisper_attributes", 1.3)]:
        df = pd.DataFrame({"utt_id": ids, **{a: truth[:, j] for j, a in enumerate(ATTRIBUTES)},
                           **{f"{a}_pred": truth[:, j] + rng.normal(0, noise, n) for j, a in enumerate(ATTRIBUTES)}})
        att_runs.append(make_run(out, name, df, att))
    pages = {
        "compare_categorical": write_comparison(compare_runs(runs[1:], runs[0], n_boot=300, n_perm=300),
                                                out / "compare_categorical.html"),
        "compare_attributes": write_comparison(compare_runs(att_runs[1:], att_runs[0], n_boot=300, n_perm=300),
                                               out / "compare_attributes.html"),
    }
    evaluate_run(runs[1], n_boot=300)
    evaluate_run(att_runs[0], n_boot=300)
    pages["run_report"] = runs[1] / "report.html"
    pages["run_report_attributes"] = att_runs[0] / "report.html"
    for name, page in pages.items():
        text = page.read_text()
        bad = external(text)
        print(f"{name:<24} {page}  {len(text) / 1e3:7.0f} kB  external references: {bad or 'none'}")
    browser = chromium()
    if browser is None:
        print("no chromium found (apt-get install chromium): no screenshots")
        return
    for name, page in pages.items():
        for suffix, height in (("", 900), ("_full", 3200)):
            png = out / f"{name}{suffix}.png"
            screenshot(browser, page, png, height)
            print(f"screenshot {png}")


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="html_report_"))
    target.mkdir(parents=True, exist_ok=True)
    main(target)
