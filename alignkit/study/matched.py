"""Squeezing at matched preference learning: each arm's outcome read where it had learned a given amount, not at a
given step, so that a recipe that squeezes less only because it learns less shows up as such.

How much a run has learned at an evaluation, two ways (both seed-level means over probes, since DPO began):

    heldout_margin   mean over held-out (test-split) probes of Δ log π(y⁺)/token − Δ log π(y⁻)/token: the preference
                     the stage generalised (DPO's implicit reward margin per token, over β);
    rejected_fall    mean over training probes of −Δ log π(y⁻)/token: how far the negative gradient pushed y⁻.

Matching, for a comparison of arm X with arm Y under one seed: the seed's learning curve of each arm is its measure
at the DPO evaluations (begin = 0, the intermediate epochs, end), joined linearly. The matched level is the smallest of
the two arms' final values in that seed (both reached it; the measure is first made monotone by a running maximum,
so a dip never creates a second crossing). Each arm's evaluation position where its curve first reaches that level
is found by linear interpolation between the two evaluations around it, and every probe's outcome (e.g.
`off_target_fall`) is interpolated at that position. The difference X − Y is then paired per (seed, probe), and its
interval has seeds as the unit (`alignkit.stats.estimate`). With evaluations only at begin, mid-stage and end, the
interpolation is coarse; it assumes the outcome moves linearly between two evaluations.

Pure functions of the study's records; tests/test_study_matched.py checks them on hand-worked numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from alignkit.monitors.scoring import record_change
from alignkit.stats import Key, estimate
from alignkit.study.records import Run, Snapshot, checkpoints, mechanism_units, probe_splits

MEASURES = ("heldout_margin", "rejected_fall")
MATCHED_METRICS = ("off_target_fall", "concentration_alt", "chosen_change")
WORDS = "words_logp_per_token"


def _change(snap: Snapshot, begin: Snapshot, probe: str, family: str) -> float:
    return record_change(begin.get(probe, {}).get(family), snap.get(probe, {}).get(family), WORDS)


def learning(run: Run, begin: Snapshot, snap: Snapshot, measure: str) -> float:
    """The run's learning at `snap` since `begin` (see the module docstring), a mean over probes."""
    splits = probe_splits(run.probes)
    if measure == "heldout_margin":
        values = [_change(snap, begin, p, "chosen") - _change(snap, begin, p, "rejected") for p in begin
                  if splits.get(p) == "test"]  # fmt: skip
    elif measure == "rejected_fall":
        values = [-_change(snap, begin, p, "rejected") for p in begin if splits.get(p) == "train"]
    else:
        raise ValueError(f"unknown learning measure {measure!r}; one of {MEASURES}")
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def crossing(curve: Sequence[float], level: float) -> float | None:
    """The first position t (0 = the first evaluation, 1 = the second, ...) where the piecewise-linear curve, made
    monotone by a running maximum, reaches `level`; None when it never does.

    >>> crossing([0.0, 1.0, 3.0], 2.0)
    1.5
    """
    running = np.maximum.accumulate(np.asarray(curve, dtype=float))
    if not len(running) or not np.isfinite(running).all():
        return None
    if running[0] >= level:
        return 0.0
    for i in range(1, len(running)):
        if running[i] >= level:
            lo, hi = running[i - 1], running[i]
            return float(i - 1 + (level - lo) / (hi - lo))
    return None


def interpolate(values: Sequence[dict[Key, float]], t: float) -> dict[Key, float]:
    """Per unit, the value at position t between the evaluations `values[floor(t)]` and `values[ceil(t)]`."""
    i = min(int(math.floor(t)), len(values) - 1)
    j, w = min(i + 1, len(values) - 1), t - i
    return {k: (1 - w) * values[i][k] + w * values[j][k] for k in values[i].keys() & values[j].keys()}


def arm_curve(run: Run, measure: str) -> tuple[list[float], list[dict[str, dict[Key, float]]]]:
    """The run's learning at each DPO evaluation in order (begin first), and its mechanism units at each (begin:
    zero change)."""
    cps = checkpoints(run)
    if "begin" not in cps or "end" not in cps:
        return [], []
    order = ["begin", *sorted((c for c in cps if c.startswith("epoch")), key=lambda c: int(c[5:])), "end"]
    curve = [learning(run, cps["begin"], cps[c], measure) for c in order]
    units = [mechanism_units(run, cps["begin"], cps[c]) for c in order]
    return curve, units


def matched_units(
    x: Run, y: Run, measure: str, metrics: tuple[str, ...] = MATCHED_METRICS
) -> tuple[dict[str, dict[Key, float]], dict]:
    """Per metric, paired (seed, probe) differences x − y at the matched level of `measure` in this seed, and the
    matching itself ({level, t_x, t_y}); empty when either run has no curve or no common level. Each run's curve and
    units are computed once for all metrics."""
    curve_x, units_x = arm_curve(x, measure)
    curve_y, units_y = arm_curve(y, measure)
    if not curve_x or not curve_y:
        return {}, {}
    level = min(max(curve_x), max(curve_y))
    tx, ty = crossing(curve_x, level), crossing(curve_y, level)
    if tx is None or ty is None or not math.isfinite(level) or level <= 0:
        return {}, {}
    out = {}
    for metric in metrics:
        at_x = interpolate([u[metric] for u in units_x], tx)
        at_y = interpolate([u[metric] for u in units_y], ty)
        out[metric] = {k: at_x[k] - at_y[k] for k in at_x.keys() & at_y.keys() if math.isfinite(at_x[k] - at_y[k])}
    return out, {"level": float(level), "t_x": tx, "t_y": ty}


def matched_contrasts(runs: dict[tuple[int, str], Run], pairs: dict[str, tuple[str, str]], n_boot: int) -> dict:
    """{contrast: {measure: {metric: estimate, "matching": {seed: {level, t_x, t_y}}}}} for each named (x, y) pair of
    arms, over the seeds both have; `t_*` counts evaluations from DPO's begin (e.g. 1.0 = the first mid-stage one)."""
    out: dict = {}
    seeds = sorted({s for s, _ in runs})
    for name, (ax, ay) in pairs.items():
        for measure in MEASURES:
            entry: dict = {"matching": {}}
            units: dict[str, dict[Key, float]] = {metric: {} for metric in MATCHED_METRICS}
            for seed in seeds:
                if (seed, ax) in runs and (seed, ay) in runs:
                    diffs, match = matched_units(runs[(seed, ax)], runs[(seed, ay)], measure)
                    for metric, diff in diffs.items():
                        units[metric] |= diff
                    if match:
                        entry["matching"][str(seed)] = match
            entry |= {metric: estimate(u, n_boot=n_boot) for metric, u in units.items() if u}
            if len(entry) > 1:
                out.setdefault(name, {})[measure] = entry
    return out
