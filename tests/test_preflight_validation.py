"""bench/preflight_validation.py: Spearman's ρ and its inputs on hand-computed numbers."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from alignkit.errors import AlignkitError

SCRIPT = Path(__file__).parents[1] / "bench" / "preflight_validation.py"
spec = importlib.util.spec_from_file_location("preflight_validation", SCRIPT)
validation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(validation)


def test_ranks_share_ties():
    assert validation.ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]


def test_spearman_by_hand():
    assert validation.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert validation.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x = (1,2,3), y = (1,3,2): 1 - 6·Σd²/(n(n²-1)) = 1 - 6·2/24 = 0.5
    assert validation.spearman([1, 2, 3], [5, 9, 7]) == pytest.approx(0.5)
    assert math.isnan(validation.spearman([1, 1, 1], [1, 2, 3]))


def test_bootstrap_interval_of_a_perfect_ranking_is_one():
    low, high = validation.bootstrap_interval(list(range(20)), [2 * v for v in range(20)], replicates=200)
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)


def test_joined_files_and_bad_input(tmp_path):
    pre, falls = tmp_path / "preflight.jsonl", tmp_path / "falls.jsonl"
    pre.write_text("\n".join(json.dumps({"row": r, "ches": float(r)}) for r in range(3)) + "\n")
    falls.write_text(
        json.dumps({"row": 2, "offtarget_fall": 0.5}) + "\n" + json.dumps({"row": 0, "offtarget_fall": 0.1})
    )
    pairs = validation.joined(pre, falls)
    assert [(r["row"], f) for r, f in pairs] == [(0, 0.1), (2, 0.5)]
    falls.write_text(json.dumps({"row": 2}) + "\n")
    with pytest.raises(AlignkitError, match=r"falls\.jsonl:1: field 'offtarget_fall': missing or not a number"):
        validation.joined(pre, falls)
