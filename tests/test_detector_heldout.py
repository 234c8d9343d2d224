"""The held-out set of the detector's calibration (bench/detector_calibration.py --set heldout): its design (new
conditions and seeds, enough runs of each label), the data its conditions train on, and how it is scored."""

from __future__ import annotations

import sys

import pytest

from alignkit.config import DataConfig
from alignkit.data import load_preference_data

from .conftest import load_bench


@pytest.fixture(scope="module")
def bench():
    yield load_bench("detector_calibration")
    sys.modules.pop("detector_calibration", None)


def test_the_heldout_set_is_new_and_large_enough(bench):
    runs = [(name, seed) for name, c in bench.HELDOUT.items() for seed in c.seeds]
    labels = [bench.HELDOUT[name].label for name, _ in runs]
    assert labels.count("null") >= 12 and labels.count("positive") >= 12
    assert all(len(c.seeds) >= 2 for c in bench.HELDOUT.values())
    dev_seeds = {s for c in bench.CONDITIONS.values() for s in c.seeds}
    assert not dev_seeds & {s for c in bench.HELDOUT.values() for s in c.seeds}
    assert not set(bench.HELDOUT) & set(bench.CONDITIONS)
    long_sft = bench.HELDOUT["null_sft_long"]
    assert long_sft.steps >= 48 and long_sft.lr == 2e-4 and long_sft.constant


def test_conditions_train_on_the_data_their_names_say(bench):
    data = load_preference_data(DataConfig(max_train_samples=None))
    train = [dict(r) for r in data["train"]]
    chosen = {str(r["chosen"]) for r in train}
    own_rejected = {r["id"]: str(r["rejected"]) for r in train}
    own_chosen = {r["id"]: str(r["chosen"]) for r in train}
    n = len(train)
    far25 = bench.train_rows(data, "far25", 0, n, None, None)
    swapped = [r for r in far25 if str(r["rejected"]) != own_rejected[r["id"]]]
    assert len(swapped) == (n + 3) // 4  # every fourth row of the split
    assert not {str(r["rejected"]) for r in swapped} & chosen  # another task's y-, never anyone's y+
    mixed = bench.train_rows(data, "mixed_task", 0, n, None, None)
    other = [r for r in mixed if str(r["chosen"]) != own_chosen[r["id"]]]
    assert len(other) == (n + 3) // 4
    tasks = {str(r["chosen"]): r["task"] for r in train}
    assert all(tasks[str(r["chosen"])] != r["task"] for r in other)  # another task's answer


def test_heldout_scoring_counts_alarms_with_wilson_intervals(bench):
    def run(label: str, readings: list[float | None]) -> dict:
        evaluations = [{"mech/collateral_ratio": None}] + [{"mech/collateral_ratio": v} for v in readings]
        return {"label": label, "evaluations": evaluations}

    runs = [run("positive", [0.1, 0.5]), run("positive", [None, 0.1]), run("null", [None, None]),
            run("null", [0.2, 0.0]), run("reference", [0.9])]  # fmt: skip
    c = bench.confusion(runs, "collateral_ratio", 0.183)
    assert (c["detected"], c["positives"], c["false_alarms"], c["nulls"]) == (1, 2, 1, 2)
    assert c["detection_wilson95"] == pytest.approx((0.0945, 0.9055), abs=1e-4)
