"""Behaviour held fixed across restructurings: the golden flow (audio, attributes, text, late fusion, ensemble,
predict API) predicts the same labels as recorded, probabilities and attribute values within 1e-4."""

from __future__ import annotations

import pytest

from tests.golden.flow import EXPECTED, compare, cpu_kind, expected_dir, read_expected, run_flow


def test_golden_flow_matches_recording(tmp_path):
    if not (EXPECTED / "index.json").is_file():
        pytest.skip(f"no golden recording for this CPU family ({cpu_kind()}): record one with "
                    "`python -m tests.golden.record` on the code before a restructuring")
    expected = read_expected()
    got = run_flow(tmp_path)
    assert sorted(got) == sorted(expected)
    problems = compare(expected, got)
    assert not problems, "\n".join(problems)


def test_compare_detects_a_changed_prediction():
    expected = read_expected(expected_dir("avx512"))
    changed = {k: v.copy() for k, v in expected.items()}
    frame = changed["late.test"]
    col = [c for c in frame.columns if c.startswith("prob_")][0]
    frame.loc[0, col] += 1e-3
    assert compare(expected, changed) == [f"late.test: {col} differs by 1.00e-03"]
