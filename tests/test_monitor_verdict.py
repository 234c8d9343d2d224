"""The monitor section's verdict lines: whether each stage squeezed, with the alert metric's interval."""

from __future__ import annotations

from alignkit.monitors.config import MonitorConfig
from alignkit.monitors.summary import comparable_lines, verdict_lines


def _record(stage: str, step: int, mean: float, lo: float, hi: float) -> dict:
    return {"stage": stage, "step": step, "mech/off_target_fall": mean, "mech/off_target_fall_lo": lo,
            "mech/off_target_fall_hi": hi}  # fmt: skip


def test_verdict_says_alert_or_not_with_the_end_interval():
    records = [
        {"stage": "sft", "step": 0},  # the stage's first evaluation has no change yet
        _record("sft", 8, 0.01, -0.01, 0.02),
        _record("sft", 24, -0.10, -0.14, -0.07),
        _record("preference", 0, 0.0, 0.0, 0.0),
        _record("preference", 16, 0.09, 0.07, 0.11),
        _record("preference", 24, 0.31, 0.27, 0.35),
    ]
    events = [{"stage": "preference", "step": 16, "action": "warn"}]
    config = MonitorConfig(squeeze_metric="off_target_fall", squeeze_threshold=0.075)
    lines = verdict_lines(config, records, events, ["sft", "preference"])
    assert lines[2] == (
        "- **sft**: no squeezing alert; `off_target_fall` at its end (step 24): -0.100 [-0.140, -0.070] nats/token, "
        "alert threshold 0.075."
    )
    assert lines[3] == (
        "- **preference**: **squeezing** (alert at step 16, guard: warn); `off_target_fall` at its end (step 24): "
        "0.310 [0.270, 0.350] nats/token, alert threshold 0.075."
    )


def test_verdict_without_a_change_says_not_measured():
    lines = verdict_lines(MonitorConfig(), [{"stage": "sft", "step": 0}], [], ["sft"])
    assert lines[-1] == "- **sft**: `collateral_ratio` was not measured (one evaluation only)."


def test_default_verdict_reads_the_collateral_ratio_and_says_when_it_is_undefined():
    nan = float("nan")
    records = [
        {"stage": "sft", "step": 0},
        {"stage": "sft", "step": 24, "mech/collateral_ratio": nan, "mech/collateral_ratio_lo": nan,
         "mech/collateral_ratio_hi": nan},
        {"stage": "preference", "step": 0},
        {"stage": "preference", "step": 24, "mech/collateral_ratio": 0.61, "mech/collateral_ratio_lo": 0.5,
         "mech/collateral_ratio_hi": 0.75},
    ]  # fmt: skip
    lines = verdict_lines(MonitorConfig(), records, [], ["sft", "preference"])
    assert lines[2] == (
        "- **sft**: no squeezing alert; `collateral_ratio` at its end (step 24): undefined (y⁻ did not fall by 0.05 "
        "nats/token: nothing to alert on), alert threshold 0.183."
    )
    assert lines[3].endswith("`collateral_ratio` at its end (step 24): 0.610 [0.500, 0.750] nats per nat, alert "
                             "threshold 0.183.")  # fmt: skip


def _stage(stage: str, fixed: tuple[float, float], greedy: tuple[float, float], **end) -> list[dict]:
    """A stage's first and last evaluation: the greedy families' summed log-probs (train split) and `end`'s mech/*."""
    keys = ("probe/train/greedy_start/logp", "probe/train/greedy/logp")
    first = {"stage": stage, "step": 0, "mech/off_target_fall": 0.0, **dict(zip(keys, (fixed[0], greedy[0])))}
    last = {"stage": stage, "step": 24, **dict(zip(keys, (fixed[1], greedy[1])))}
    return [first, last | {f"mech/{k}": v for k, v in end.items()}]


def test_comparable_reading_and_the_stage_start_answer_are_explained():
    sft = _stage("sft", (-35.5, -37.3), (-16.9, -10.3), off_target_fall=-0.2, rejected_fall=-0.341)
    dpo = _stage("preference", (-37.3, -46.0), (-10.3, -8.4), off_target_fall=0.8, rejected_fall=1.0,
                 collateral_ratio=0.837, collateral_ratio_lo=0.636, collateral_ratio_hi=1.167,
                 greedy_start_rise=-0.378, greedy_start_rise_lo=-0.503, greedy_start_rise_hi=-0.263)  # fmt: skip
    lines = comparable_lines(sft + dpo, ["sft", "preference"])
    assert lines[3] == (
        "- **sft**, the reading that compares runs: `collateral_ratio` undefined: y⁻ rose by 0.341 nats/token (a fall "
        "below 0.05 defines none), no negative gradient at work for squeezing to be a side effect of."
    )
    assert lines[5] == (
        "- **preference**, the reading that compares runs: `collateral_ratio` 0.837 [0.636, 1.167] nats of off-target "
        "fall per nat of y⁻ fall."
    )
    assert lines[6] == (
        "  Stage-start greedy answers (train prompts), scored as fixed text: -8.70 nats per answer; "
        "`greedy_start_rise` -0.378 [-0.503, -0.263] nats/token; the answers decoded at the stage's end score +1.90 "
        "nats against the start's: the model moved away from its stage-start answers to other, now more likely, "
        "ones: a change of answer, not mass piling onto the old argmax."
    )
    rising = _stage("preference", (-20.0, -18.0), (-10.0, -9.0), off_target_fall=0.5, rejected_fall=0.6,
                    collateral_ratio=0.8)  # fmt: skip
    assert "reinforced its stage-start answers" in comparable_lines(rising, ["preference"])[-1]
    falling = _stage("preference", (-20.0, -25.0), (-10.0, -12.0), off_target_fall=0.5)
    assert "both fell" in comparable_lines(falling, ["preference"])[-1]
    assert "not measured (no rejected probes)" in comparable_lines(falling, ["preference"])[-2]
