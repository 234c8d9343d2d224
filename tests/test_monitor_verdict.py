"""The monitor section's verdict lines: whether each stage squeezed, with the alert metric's interval."""

from __future__ import annotations

from alignkit.monitors.config import MonitorConfig
from alignkit.monitors.summary import verdict_lines


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
    lines = verdict_lines(MonitorConfig(), records, events, ["sft", "preference"])
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
    assert lines[-1] == "- **sft**: `off_target_fall` was not measured (one evaluation only)."
