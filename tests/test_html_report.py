"""The HTML reports (compare --format html, each run's report.html) are single self-contained files: no reference
leaves the page (only data: URIs and in-page anchors), and they carry the leaderboard figures with their intervals."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from fusion_ser.evaluation.compare import compare_runs, write_comparison
from fusion_ser.evaluation.metrics import headline_keys
from fusion_ser.evaluation.report import evaluate_run
from fusion_ser.rundir import RUN_FILES, RunDir, prepare_output
from tests.test_compare import PNG_SIGNATURE, attr_frame, attr_info, cat_frame, cat_info, make_run
from tests.test_report import train_log

REFERENCE_ATTRS = {"src", "href", "srcset", "action", "data", "poster", "formaction", "background", "xlink:href"}
EMBEDDING_TAGS = {"script", "link", "iframe", "object", "embed", "base", "frame"}


class Page(HTMLParser):
    """Every reference of a page, its ids, embedded-resource tags, style text and table cells."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []
        self.ids: set[str] = set()
        self.embedding: list[str] = []
        self.style = ""
        self.tables: list[list[list[str]]] = []
        self._in_style = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.refs += [(tag, k, v or "") for k, v in attrs if k in REFERENCE_ATTRS]
        if "id" in a:
            self.ids.add(a["id"])
        if "style" in a:
            self.style += a["style"] or ""
        if tag in EMBEDDING_TAGS:
            self.embedding.append(tag)
        self._in_style = tag == "style"
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.style += data
        if self._cell is not None:
            self._cell.append(data + " ")


def parse_self_contained(path: Path) -> Page:
    """Parse a page and check that it refers to nothing outside itself."""
    page = Page()
    page.feed(path.read_text())
    assert page.embedding == []  # no script, stylesheet link, frame, object or base
    assert "url(" not in page.style and "@import" not in page.style and "@font-face" not in page.style
    for tag, attr, value in page.refs:
        if value.startswith("#"):
            assert value[1:] in page.ids, f"anchor {value} has no target"
        else:
            assert tag == "img" and attr == "src" and value.startswith("data:image/png;base64,"), (tag, attr, value[:60])
            assert base64.b64decode(value.split(",", 1)[1]).startswith(PNG_SIGNATURE)
    return page


def interval_text(c: dict) -> str:
    return f"{c['value']:.4f} [{c['low']:.4f}, {c['high']:.4f}]"


@pytest.fixture()
def cat_runs(tmp_path) -> dict[str, Path]:
    from tests.test_compare import truth_labels

    y = truth_labels(300, 9)
    return {name: make_run(tmp_path, name, {"test": cat_frame(y, p, s), "dev": cat_frame(y, p, s + 50)}, cat_info(),
                           train_log=train_log())
            for name, p, s in [("audio", 0.5, 1), ("text", 0.3, 2), ("fusion", 0.8, 3)]}


def test_comparison_page_is_self_contained_and_leads_with_the_leaderboard(cat_runs, tmp_path):
    comp = compare_runs([cat_runs["text"], cat_runs["fusion"]], cat_runs["audio"], n_boot=100, n_perm=100)
    path = write_comparison(comp, tmp_path / "board.html")
    page = parse_self_contained(path)
    assert len([r for r in page.refs if r[0] == "img"]) == 2  # per-class F1 bars, confusion matrices
    text = path.read_text()
    assert text.index("id=\"leaderboard\"") < text.index("id=\"per-class\"") < text.index("id=\"confusion\"")
    board = page.tables[0]
    assert board[0][:2] == ["rank", "run"]
    by_run = {row[1]: row for row in board[1:]}
    assert list(by_run) == ["fusion", "audio", "text"]
    for _, row in comp.table.iterrows():
        cells = by_run[row["run"]]
        for j, k in enumerate(comp.columns):
            c = {"value": row[k], "low": row[f"{k}_low"], "high": row[f"{k}_high"]}
            assert cells[2 + j] == interval_text(c)
    assert by_run["audio"][-1] == "baseline" and by_run["fusion"][-1].startswith("+")
    f1 = page.tables[1]
    assert f1[0] == ["class", "fusion", "audio", "text"]
    assert f1[1][1] == f"{comp.metrics['fusion']['per_class_f1'][f1[1][0]]:.4f}"


def test_attribute_comparison_page_shows_ccc_and_mse_by_range(tmp_path):
    truth = np.random.default_rng(2).uniform(1, 7, (300, 3))
    base = make_run(tmp_path, "base", {"test": attr_frame(truth, 1.5, 1)}, attr_info())
    good = make_run(tmp_path, "good", {"test": attr_frame(truth, 0.5, 2)}, attr_info())
    comp = compare_runs([good], base, n_boot=100, n_perm=100)
    page = parse_self_contained(write_comparison(comp, tmp_path / "attr.html"))
    assert [c.split(" [")[0] for c in page.tables[0][0][2:6]] == ["CCC valence", "CCC arousal", "CCC dominance",
                                                                   "mean CCC"]
    labels = [row[0] for row in page.tables[1][1:]]
    assert "MSE valence, bottom 25 %" in labels and "CCC arousal" in labels
    assert len([r for r in page.refs if r[0] == "img"]) == 1  # MSE by range


def test_each_evaluated_run_gets_a_self_contained_report_html(cat_runs, tmp_path):
    run = cat_runs["fusion"]
    evaluate_run(run, n_boot=100)
    path = run / "report.html"
    page = parse_self_contained(path)
    metrics = json.loads((run / "metrics.json").read_text())
    info = RunDir(run).read_info()
    headline = page.tables[0]
    assert headline[0][1:] == ["dev [95 % CI]", "test [95 % CI]"]
    for row, k in zip(headline[1:], headline_keys(info)):
        assert row[1:] == [interval_text(metrics["dev"]["ci"][k]), interval_text(metrics["test"]["ci"][k])]
    text = path.read_text()
    assert text.index("id=\"headline\"") < text.index("id=\"per-class\"") < text.index("id=\"confusion\"")
    assert text.index("id=\"confusion\"") < text.index("id=\"training\"")
    assert len([r for r in page.refs if r[0] == "img"]) == 5  # 2 per-class F1, 2 confusions, training curves
    truth = np.random.default_rng(0).uniform(1, 7, (150, 3))
    attr = make_run(tmp_path, "attr", {"test": attr_frame(truth, 0.8, 1)}, attr_info())
    evaluate_run(attr, n_boot=50)
    page = parse_self_contained(attr / "report.html")
    assert "CCC and MSE by range" in (attr / "report.html").read_text()
    assert any(row[:2] == ["test", "valence"] for row in page.tables[1])


def test_report_html_is_part_of_the_run_directory(cat_runs):
    assert "report.html" in RUN_FILES
    run = cat_runs["audio"]
    evaluate_run(run, n_boot=50)
    (run / "notes.txt").write_text("mine")
    prepare_output(run, kind="model", force=True)
    assert not (run / "report.html").exists() and (run / "notes.txt").is_file()


def test_a_split_with_a_class_the_run_does_not_know_still_reports(tmp_path):
    from tests.test_compare import truth_labels

    test = cat_frame(truth_labels(120, 4), 0.6, 1)
    test.loc[:4, "label"] = "contempt"  # not one of the run's classes: scored as errors
    run = make_run(tmp_path, "r", {"test": test, "dev": cat_frame(truth_labels(80, 5), 0.5, 2)}, cat_info())
    evaluate_run(run, n_boot=50)
    page = parse_self_contained(run / "report.html")
    classes = [row[0] for row in page.tables[1][1:]]
    assert "contempt (not a class of the run)" in classes
    contempt = page.tables[1][1 + classes.index("contempt (not a class of the run)")]
    assert contempt[1:5] == ["n/a"] * 3 + [""] and contempt[-1] == "5"  # no dev figures; 5 test rows
