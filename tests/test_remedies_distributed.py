"""The squeezing remedies under two CPU processes (torchrun, gloo) match the single-process run with the same
effective batch: the loss history and every logged `loss/*` term, step by step. Three cases: DPOP with the
negative-gradient floor from the start, Cal-DPO, and DPO whose floor the guard turns on mid-stage (`guard_action:
mitigate`, `guard_mitigation: negative_floor`), which every process must do at the same step.

One process takes 4 pairs a step, two take 2 each: accelerate deals the batches of the one seeded sampler out in
turn, so a global step sees the same 4 pairs (tests/test_distributed.py). alignkit/objectives.py gathers each step's
per-pair terms over the processes before it logs their mean, checks its log-prob sums against TRL's (also gathered)
metrics, and returns the local per-pair mean, which DDP's gradient averaging turns into the mean over the 4 pairs. The
guard decides from probe values that every process gathers in full (alignkit/monitors/measure.py), so all decide alike.

The settings make every remedy path run: the preference learning rate 5e-2 pushes y+ below the reference at steps 3
and 4 (`loss/dpop_penalty` 0.71 and 0.25 nats) and one pair in four at step 3 has its y- more than the floor below the
reference (`loss/negative_floor_active` 0.25: gated and ungated pairs in one batch); the guard's alert at step 2 (a
threshold below any reading) turns the floor on from step 3. Measured 2026-12-06: the two runs' losses and `loss/*`
terms agree within 1e-6 absolute (5e-7 relative), their summed log-probs within 3e-5 nats (1.5e-7 relative), and
their floor shares exactly.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from .test_distributed import outputs
from .test_recipe import ENV, RECIPE, ROOT, tiny_args

BETA, DPOP_LAMBDA, FLOOR = 0.1, 50.0, 0.01
CASES = {  # the recipe options of each case (probes only where the guard needs them)
    "dpop_floor": {"loss": "dpop", "dpop_lambda": DPOP_LAMBDA, "negative_floor": FLOOR, "probe_enabled": False},
    "cal_dpo": {"loss": "cal_dpo", "probe_enabled": False},
    "guard_floor": {"loss": "dpo", "squeeze_metric": "off_target_fall", "squeeze_threshold": -100.0,
                    "guard_action": "mitigate", "guard_mitigation": "negative_floor", "guard_negative_floor": FLOOR},
}  # fmt: skip
# the first step trained with the floor on (the alert is at step 2); the cal_dpo case has no floor
FLOOR_FROM = {"dpop_floor": 1, "guard_floor": 3}
PAIRS_PER_STEP = 4  # the effective batch of both runs
STEPS = 4

# Tolerance, from the order of fp32 reductions. Every compared value comes from summed log-probs c, c0, r, r0 (a
# response's per-token log-probs summed; |sum| <= S, the run's largest logged `logps/*`, 140-235 nats here). The two
# runs pad their batches to different widths (4 pairs vs 2 per process), so matrix products, the log-softmax and the
# sums run in another order; fp32 rounds each partial sum (eps = 2**-23 = 1.2e-7), which moves a sum by a small
# multiple of eps relative to S: SUM_RTOL = 1e-6 (~8 eps, tests/test_distributed.py's STEP0_RTOL). A value then
# moves by SUM_RTOL * S times its largest slope in the four sums (SLOPE): the DPOP argument
# beta((1 + lambda)(c - c0) - (r - r0)) has coefficients summing to beta(4 + 2 lambda) in absolute value, DPO's
# beta((c - c0) - (r - r0)) 4 beta, and -log sigmoid has slope < 1; the penalty max(0, c0 - c) has 2. Later steps
# start from weights that differ by the previous steps' rounding (Adam magnifies it: 1e-4 relative on the adapters
# in tests/test_distributed.py), hence RTOL 1e-4 of the value on top. Training moves these values by O(0.1-1) a
# step; a term logged from one process's pairs only (not gathered) is off by 0.4 nats of penalty at step 3 here,
# and a learning rate 1% off in the two-process run fails the comparison from step 3 (tried once, by hand).
SUM_RTOL = 1e-6
RTOL = 1e-4
SLOPE = {  # `loss` (the step's total) takes the slope of its preference loss, `loss/dpop` or `loss/dpo`
    "loss/dpop": BETA * (4 + 2 * DPOP_LAMBDA),
    "loss/dpop_penalty": 2.0,
    "loss/dpo": 4 * BETA,
    "logps/chosen": 1.0,
    "logps/rejected": 1.0,
    # Cal-DPO on h+ = c - c0, h- = r - r0 (no beta): -log sigmoid(h+ - h-) has slopes summing to < 4 over the four
    # sums; the calibration term (h+ - t)^2 + (h- + t)^2 has 2|h+ - t| on c and c0 and 2|h- + t| on r and r0, which
    # for a mean over pairs sum to at most 4 sqrt(2 V), V the logged term (Cauchy-Schwarz, then Jensen): see slopes().
    "loss/cal_dpo_preference": 4.0,
}
CALIBRATION = "loss/cal_dpo_calibration"
# `loss/negative_floor_active` is the share of a step's pairs whose y- per-token log-ratio (r - r0)/|y-| is below
# -FLOOR: a step function, compared exactly (a share of the 4 pairs). A pair flips only if its ratio lies within
# 2 * SUM_RTOL * S / |y-| (< 1e-5 nats/token) of -FLOOR; measured 2026-12-06, the nearest pair sat 3.6e-3 away
# (guard case, step 3; 7.9e-3 in the DPOP case), and at steps 1-2 (policy = reference: ratios at rounding noise,
# ~1e-7 nats/token) every ratio sits FLOOR away.
FLOOR_SHARE = "loss/negative_floor_active"


def run(tiny_model_dir, out: Path, processes: int, case: str) -> subprocess.CompletedProcess:
    args = tiny_args(
        tiny_model_dir, out, sft_mode="none", max_train_samples=PAIRS_PER_STEP * STEPS, preference_max_steps=STEPS,
        preference_learning_rate=5e-2, beta=BETA, per_device_train_batch_size=PAIRS_PER_STEP // processes,
        **CASES[case],
    )  # fmt: skip
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    proc = subprocess.run(
        [*launcher, str(RECIPE), *args], env=ENV, capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module", params=list(CASES))
def single_and_double(request, tiny_model_dir, tmp_path_factory):
    """(case, one-process output, two-process output, their processes)."""
    root = tmp_path_factory.mktemp(request.param)
    one = run(tiny_model_dir, root / "one", 1, request.param)
    two = run(tiny_model_dir, root / "two", 2, request.param)
    return request.param, root / "one", root / "two", one, two


def steps(out: Path) -> list[dict]:
    """The preference stage's per-step log entries (the ones with a loss)."""
    history = json.loads((out / "metrics.json").read_text())["preference"]["log_history"]
    return [entry for entry in history if "loss" in entry]


def logsum_scale(*histories: list[dict]) -> float:
    """S: the largest summed log-prob magnitude the runs logged."""
    return max(abs(e[k]) for h in histories for e in h for k in ("logps/chosen", "logps/rejected"))


def slopes(a: dict, b: dict) -> dict[str, float]:
    """The compared keys of a step's entry with their slopes (SLOPE; Cal-DPO's from the logged calibration term)."""
    out = {k: v for k, v in SLOPE.items() if k in a}
    if CALIBRATION in a:
        out[CALIBRATION] = 4 * math.sqrt(2 * max(a[CALIBRATION], b[CALIBRATION]))
        out["loss/cal_dpo"] = out["loss/cal_dpo_preference"] + out[CALIBRATION]
    out["loss"] = next(v for k, v in out.items() if k in ("loss/dpop", "loss/dpo", "loss/cal_dpo"))
    return out


def mismatches(one: list[dict], two: list[dict]) -> list[str]:
    """Every compared value of `two` outside the tolerance of `one`'s (entries paired by step)."""
    assert [e["step"] for e in one] == [e["step"] for e in two]
    scale = logsum_scale(one, two)
    bad = []
    for a, b in zip(one, two):
        assert {k for k in a if k.startswith("loss")} == {k for k in b if k.startswith("loss")}, a["step"]
        if a.get(FLOOR_SHARE) != b.get(FLOOR_SHARE):
            bad.append(f"step {a['step']} {FLOOR_SHARE}: {a[FLOOR_SHARE]} vs {b[FLOOR_SHARE]}")
        for key, slope in slopes(a, b).items():
            if not math.isclose(a[key], b[key], rel_tol=RTOL, abs_tol=SUM_RTOL * scale * slope):
                bad.append(f"step {a['step']} {key}: {a[key]} vs {b[key]}")
    return bad


def test_both_runs_finish_and_write_one_set_of_files(single_and_double):
    case, one, two, proc_one, proc_two = single_and_double
    assert "effective batch 4 = 4 per device x 1 accumulation x 1 process(es)" in proc_one.stderr
    assert "effective batch 4 = 2 per device x 1 accumulation x 2 process(es)" in proc_two.stderr
    for out in (one, two):
        done = json.loads((out / "preference" / "stage_complete.json").read_text())
        assert done["steps"] == STEPS
    assert outputs(one) == outputs(two)  # one set of files: nothing per rank, nothing written twice
    assert proc_two.stderr.count("done: ") == 1  # only the main process reports
    for out in (one, two):  # each run's report names the remedy and its logged terms, or the guard's action
        report = (out / "report.md").read_text()
        line = next((x for x in report.splitlines() if x.startswith("- squeezing remedies")), "")
        if case == "dpop_floor":
            for part in ("DPOP (dpop_lambda 50)", "negative-gradient floor 0.01 nats/token", "`loss/dpop_penalty`",
                         f"`{FLOOR_SHARE}`"):  # fmt: skip
                assert part in line, line
        elif case == "cal_dpo":
            for part in ("Cal-DPO (calibration targets +-5)", f"`{CALIBRATION}`", "`loss/cal_dpo_preference`"):
                assert part in line, line
        else:
            assert "turned on the negative-gradient floor at 0.01 nats/token (was off)" in report


def test_remedy_terms_are_logged_and_every_path_runs(single_and_double):
    case, one, two, _, _ = single_and_double
    loss = CASES[case]["loss"]
    for out in (one, two):
        history = steps(out)
        assert [e["step"] for e in history] == list(range(1, STEPS + 1))
        for entry in history:
            # no SFT term: the step's loss is alignkit's (TRL's own sigmoid term has weight 0)
            assert entry[f"loss/{loss}"] == pytest.approx(entry["loss"], rel=1e-6, abs=1e-6)  # fp32 rounding
            if loss == "cal_dpo":
                parts = entry["loss/cal_dpo_preference"] + entry[CALIBRATION]
                assert entry["loss/cal_dpo"] == pytest.approx(parts, rel=1e-5)
                assert FLOOR_SHARE not in entry
                continue
            assert FLOOR_SHARE in entry, entry
            assert entry[FLOOR_SHARE] * PAIRS_PER_STEP in range(PAIRS_PER_STEP + 1), entry  # a share of the pairs
        if loss == "cal_dpo":
            calibration = [e[CALIBRATION] for e in history]
            assert calibration[-1] < calibration[0], calibration  # the calibration term acts: h's move to +-5
            continue
        active = [e[FLOOR_SHARE] for e in history]
        assert 0 < max(active[FLOOR_FROM[case] - 1 :]) < 1  # gated and ungated y- in one batch
        assert max(active[: FLOOR_FROM[case] - 1], default=0.0) == 0.0  # no floor before the guard turns it on
        if loss == "dpop":
            assert max(e["loss/dpop_penalty"] for e in history) > 0.1  # y+ fell below the reference: it acts


def test_loss_history_and_remedy_terms_match_one_process(single_and_double):
    _, one, two, _, _ = single_and_double
    assert mismatches(steps(one), steps(two)) == []
    train_loss = [
        next(e["train_loss"] for e in json.loads((out / "metrics.json").read_text())["preference"]["log_history"]
             if "train_loss" in e)
        for out in (one, two)
    ]  # fmt: skip
    slope = max(SLOPE["loss/dpop"], *(slopes(e, e)["loss"] for e in steps(one)))  # the largest of the losses\
    assert math.isclose(*train_loss, rel_tol=RTOL, abs_tol=SUM_RTOL * logsum_scale(steps(one), steps(two)) * slope)


def test_the_comparison_catches_a_term_from_one_process_only():
    """A penalty averaged over one process's 2 pairs instead of the step's 4, or a floor share off by a pair, fails;
    rounding-sized differences pass."""
    entry = {"step": 3, "loss": 3.8212, "loss/dpop": 3.8212, "loss/dpop_penalty": 0.7076, FLOOR_SHARE: 0.25,
             "logps/chosen": -234.3, "logps/rejected": -176.6}  # fmt: skip
    rounded = entry | {"loss": 3.8212 + 1e-6, "loss/dpop": 3.8212 + 1e-6, "logps/chosen": -234.3 + 3e-5}
    assert mismatches([entry], [rounded]) == []
    assert mismatches([entry], [entry | {"loss/dpop_penalty": 1.0979}]) == [
        "step 3 loss/dpop_penalty: 0.7076 vs 1.0979"
    ]
    assert mismatches([entry], [entry | {FLOOR_SHARE: 0.5}]) == [f"step 3 {FLOOR_SHARE}: 0.25 vs 0.5"]
    dpo = {"step": 3, "loss": 0.7066, "loss/dpo": 0.7066, FLOOR_SHARE: 0.25, "logps/chosen": -234.0,
           "logps/rejected": -176.8}  # fmt: skip
    assert mismatches([dpo], [dpo | {"loss": 0.7166, "loss/dpo": 0.7166}]) == [
        "step 3 loss/dpo: 0.7066 vs 0.7166",
        "step 3 loss: 0.7066 vs 0.7166",
    ]
