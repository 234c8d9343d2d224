"""bench/preflight_validation.py on a synthetic study whose off-target fall grows with the pair's valley depth."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.test_study_analysis import ARMS, TRAIN, depth, write_gz, write_study

SCRIPT = Path(__file__).parents[1] / "bench" / "preflight_validation.py"
spec = importlib.util.spec_from_file_location("preflight_validation", SCRIPT)
validation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(validation)


def with_preflight(root: Path, seeds=(0, 1, 2)) -> Path:
    """Pre-flight files: y-'s depth as in the probe records (deeper = more fall there), CHES unrelated to it."""
    for seed in seeds:
        for arm in ARMS:
            rows = [{"probe": p, "rejected_logp_per_token": depth(p), "rejected_min_logp": 2 * depth(p),
                     "chosen_logp_per_token": -1.0, "margin_per_token": -1.0 - depth(p),
                     "ches": float((i * 5 + seed) % 3)} for i, p in enumerate(TRAIN)]  # fmt: skip
            write_gz(root / "runs" / f"s{seed}" / f"{arm}.preflight.jsonl.gz", rows)
    return root


def test_valley_depth_predicts_within_runs_and_a_flat_score_does_not(tmp_path):
    root = with_preflight(write_study(tmp_path / "study"))
    rows = {r["score"]: r for r in validation.table(root, n_boot=200)}
    depth_row = rows["rejected_logp_per_token"]
    # Within each (seed, arm) the fall is 0.1·(−depth) + a constant: ranks exactly reversed, ρ = −1.
    assert depth_row["within_run"]["mean"] == pytest.approx(-1.0) and depth_row["predicts_within_run"]
    assert depth_row["units"] == 3 * len(ARMS) * len(TRAIN)
    # y- deeper below y+ = larger margin = more fall: ρ = +1, the sign a predicting margin has.
    assert rows["margin_per_token"]["within_run"]["mean"] == pytest.approx(1.0)
    assert rows["margin_per_token"]["predicts_within_run"]
    assert rows["rejected_min_logp"]["expected_sign"] == -1 and rows["ches"]["expected_sign"] == +1
    assert rows["chosen_logp_per_token"]["units"] == depth_row["units"]  # a constant score: ρ undefined
    assert not rows["chosen_logp_per_token"]["predicts_within_run"]


def test_main_writes_table_and_refuses_a_study_without_preflight(tmp_path, capsys):
    root = with_preflight(write_study(tmp_path / "study"))
    assert validation.main(["--study", str(root), "--bootstrap", "100"]) == 0
    saved = json.loads((root / "preflight_validation.json").read_text())
    assert {r["score"] for r in saved} == set(validation.SCORES)
    assert "| rejected_logp_per_token |" in (root / "preflight_validation.md").read_text()
    bare = write_study(tmp_path / "bare")
    assert validation.main(["--study", str(bare)]) == 2
    assert "no pre-flight files" in capsys.readouterr().err
