"""`python -m alignkit.monitors.compare`: the collateral ratio of runs side by side, from their probe records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from alignkit.errors import AlignkitError
from alignkit.monitors.compare import load_arm, main, summarise
from alignkit.monitors.stage_files import evaluations
from alignkit.stats import nested_draws

OFF_TARGET = ("irrelevant_test", "irrelevant_human", "shuffled", "non_human")


def write_run(folder: Path, changes: dict[str, tuple[float, float | None]], stage: str = "preference") -> Path:
    """A run folder whose stage has two evaluations; per probe, the off-target families' words log-prob per token
    falls by `off` and y⁻'s by `rejected` (None: a held-out probe, no y⁻ read)."""
    rows = []
    for step, event in ((0, "begin"), (24, "end")):
        for probe, (off, rejected) in changes.items():
            split = "train" if rejected is not None else "test"
            families = {f: -2.0 - (off if step else 0.0) for f in OFF_TARGET}
            families["rejected"] = -3.0 - ((rejected or 0.0) if step else 0.0)
            for family, value in families.items():
                rows.append({"stage": stage, "event": event, "step": step, "probe": f"{split}/{probe}",
                             "split": split, "family": family, "words_logp_per_token": value})  # fmt: skip
    (folder / stage).mkdir(parents=True)
    (folder / stage / "probe_records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_the_ratio_is_the_monitors_and_the_difference_has_the_right_sign(tmp_path):
    # Arm a: off-target mean (0.4 + 0.2 + 0.3) / 3 = 0.3 over every probe, y⁻ mean (0.5 + 0.7) / 2 = 0.6 over the
    # training probes: 0.5, as the monitor computes it (NaN-skipping means, then their ratio). Arm b: 0.1 / 0.5 = 0.2.
    a = write_run(tmp_path / "a", {"p1": (0.4, 0.5), "p2": (0.2, 0.7), "p3": (0.3, None)})
    b = write_run(tmp_path / "b", {"p1": (0.1, 0.4), "p2": (0.1, 0.6)})
    rows = summarise([load_arm(str(a), "a", "preference"), load_arm(str(b), "b", "preference")], n_boot=200)
    assert rows[0]["collateral_ratio"]["value"] == pytest.approx(0.5)
    assert rows[1]["collateral_ratio"]["value"] == pytest.approx(0.2)
    assert rows[1]["collateral_ratio_minus_first"]["value"] == pytest.approx(-0.3)
    lo, hi = rows[1]["collateral_ratio_minus_first"]["interval"]
    assert lo <= -0.3 <= hi and hi < 0  # every replicate of b lies below every replicate of a here
    assert rows[0]["off_target_fall"]["value"] == pytest.approx(0.3)


def test_a_run_whose_negative_gradient_did_not_act_has_no_ratio(tmp_path):
    run = write_run(tmp_path / "sft", {"p1": (0.4, -0.3), "p2": (0.2, 0.01)})  # y⁻ rose on average
    (row,) = summarise([load_arm(str(run), "sft", "preference")], n_boot=50)
    assert math.isnan(row["collateral_ratio"]["value"])


def test_seeds_are_the_unit_of_the_interval():
    """Two seeds whose probes agree within each seed but whose levels differ: resampling probes flat sees little
    spread; resampling seeds first sees the two levels."""
    units = {(s, p): (0.1 if s == 0 else 0.9) + 0.001 * p for s in (0, 1) for p in range(20)}
    draws = nested_draws(units, n=400)
    assert np.nanmin(draws) < 0.2 and np.nanmax(draws) > 0.8  # some replicates draw seed 0 twice, some seed 1 twice


def test_the_command_names_a_missing_run_and_writes_a_figure(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "no probe records of stage 'preference'" in capsys.readouterr().err
    a = write_run(tmp_path / "a", {"p1": (0.4, 0.5), "p2": (0.2, 0.7)})
    b = write_run(tmp_path / "b", {"p1": (0.1, 0.4), "p2": (0.1, 0.6)})
    figure = tmp_path / "cmp.png"
    assert main([f"{a},{a}", str(b), "--names", "plain", "remedy", "--figure", str(figure), "--n_boot", "50"]) == 0
    out = capsys.readouterr().out
    assert "| plain | 2 | 4 | 0.500" in out and "| remedy | 1 | 2 | 0.200" in out
    assert figure.stat().st_size > 0


def test_evaluations_order_begin_before_end_at_one_step_and_a_one_step_stage_is_refused(tmp_path):
    rec = {"probe": "train/0", "split": "train", "family": "rejected", "words_logp_per_token": -1.0}
    order = ((4, "end"), (4, "step"), (0, "begin"), (4, "begin"))
    rows = [{**rec, "step": step, "event": event} for step, event in order]
    assert [(s, e) for s, e, _ in evaluations(rows)] == [(0, "begin"), (4, "begin"), (4, "step"), (4, "end")]
    assert evaluations(rows)[-1][2]["train/0"]["rejected"]["event"] == "end"
    (tmp_path / "preference").mkdir()
    (tmp_path / "preference" / "probe_records.jsonl").write_text(
        "".join(json.dumps({**rec, "stage": "preference", "step": 0, "event": e}) + "\n" for e in ("begin", "end"))
    )
    with pytest.raises(AlignkitError, match="evaluations at 1 step"):
        load_arm(str(tmp_path), None, "preference")
