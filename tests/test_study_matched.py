"""Matched preference learning (alignkit/study/matched.py) on hand-worked numbers."""

from __future__ import annotations

import pytest

from alignkit.study.matched import crossing, interpolate, learning, matched_contrasts, matched_units
from alignkit.study.records import Run

OFF = ("irrelevant_test", "irrelevant_human", "shuffled", "non_human")


def test_crossing_interpolates_and_ignores_dips():
    assert crossing([0.0, 1.0, 3.0], 2.0) == pytest.approx(1.5)
    assert crossing([0.0, 2.0, 1.0, 4.0], 1.5) == pytest.approx(0.75)  # first reached on the way up
    assert crossing([0.0, 2.0, 1.0, 4.0], 3.0) == pytest.approx(2.5)  # the dip to 1 counts as 2 (running max)
    assert crossing([0.0, 1.0], 2.0) is None
    assert crossing([0.5, 1.0], 0.2) == 0.0


def test_interpolate_between_evaluations():
    values = [{("0", "p"): 0.0}, {("0", "p"): 1.0}, {("0", "p"): 3.0}]
    assert interpolate(values, 1.5) == {("0", "p"): pytest.approx(2.0)}
    assert interpolate(values, 2.0) == {("0", "p"): pytest.approx(3.0)}


def _records(step: int, event: str, chosen: dict[str, float], rejected: dict[str, float], off: dict[str, float]):
    """One evaluation: per probe (`t*` held-out, `r*` training) the per-token words log π of each family."""
    out = []
    for probe in chosen:
        split = "test" if probe.startswith("t") else "train"
        families = {"chosen": chosen[probe], "rejected": rejected[probe], **dict.fromkeys(OFF, off[probe])}
        out += [{"step": step, "event": event, "probe": probe, "split": split, "family": f,
                 "words_logp_per_token": v} for f, v in families.items()]  # fmt: skip
    return out


def _run(arm: str, seed: int, margins: list[float], falls: list[float], off_falls: list[float]) -> Run:
    """A run whose held-out margin, training y⁻ fall and off-target fall take these values at begin, mid, end."""
    records = []
    for (step, event), m, f, o in zip(((0, "begin"), (4, "step"), (8, "end")), margins, falls, off_falls):
        records += _records(step, event, {"t1": m, "r1": 0.0}, {"t1": 0.0, "r1": -f}, {"t1": -o, "r1": -o})
    meta = {"arm": arm, "seed": seed, "sft_mode": "chosen", "rejected": "far", "loss": "dpo",
            "dpo": {"epoch_steps": {"1": 4}}}  # fmt: skip
    return Run(meta=meta, probes=records)


def test_learning_measures_by_hand():
    run = _run("A_far", 0, [0.0, 0.2, 0.6], [0.0, 1.0, 3.0], [0.0, 0.5, 2.0])
    begin = [r for r in run.probes if r["event"] == "begin"]
    end = [r for r in run.probes if r["event"] == "end"]
    snap = {p: {r["family"]: r for r in begin if r["probe"] == p} for p in ("t1", "r1")}
    last = {p: {r["family"]: r for r in end if r["probe"] == p} for p in ("t1", "r1")}
    assert learning(run, snap, last, "heldout_margin") == pytest.approx(0.6)
    assert learning(run, snap, last, "rejected_fall") == pytest.approx(3.0)


def test_matched_difference_by_hand():
    # A learns faster: its held-out margin reaches B's final 0.4 halfway between begin (0) and mid (0.8), where its
    # off-target fall is 0.5 (halfway from 0 to 1.0); B reaches 0.4 only at its end, with fall 0.3: A − B = 0.2.
    a = _run("A_far", 0, [0.0, 0.8, 1.2], [0.0, 2.0, 4.0], [0.0, 1.0, 2.0])
    b = _run("B_far", 0, [0.0, 0.2, 0.4], [0.0, 1.0, 2.0], [0.0, 0.1, 0.3])
    diffs, match = matched_units(a, b, "heldout_margin")
    diff = diffs["off_target_fall"]
    assert match == {"level": pytest.approx(0.4), "t_x": pytest.approx(0.5), "t_y": pytest.approx(2.0)}
    assert diff == {(0, "t1"): pytest.approx(0.2), (0, "r1"): pytest.approx(0.2)}
    # matched on y⁻ fall: level min(4, 2) = 2, A at t=1 (fall 1.0), B at its end (0.3): A − B = 0.7
    diffs, match = matched_units(a, b, "rejected_fall")
    diff = diffs["off_target_fall"]
    assert (match["t_x"], match["t_y"]) == (pytest.approx(1.0), pytest.approx(2.0))
    assert diff[(0, "r1")] == pytest.approx(0.7)
    summary = matched_contrasts({(0, "A_far"): a, (0, "B_far"): b}, {"A-B|far": ("A_far", "B_far")}, n_boot=100)
    entry = summary["A-B|far"]["heldout_margin"]
    assert entry["off_target_fall"]["mean"] == pytest.approx(0.2)
    assert entry["matching"]["0"]["level"] == pytest.approx(0.4)
