"""MonitorConfig's mid-stage families: normalised, checked, and always holding what the alert reads."""

from __future__ import annotations

import pytest

from alignkit.errors import AlignkitError
from alignkit.monitors.config import ALL_FAMILIES, OFF_TARGET_FAMILIES, STEP_FAMILIES, MonitorConfig


def test_default_step_families_leave_out_greedy_and_rewrites():
    config = MonitorConfig()
    assert config.probe_step_families == list(STEP_FAMILIES)
    assert "greedy" not in config.probe_step_families and "chosen_rephrase" not in config.probe_step_families
    assert set(OFF_TARGET_FAMILIES) <= set(config.probe_step_families)


@pytest.mark.parametrize("value", ["all", ["all"], []])
def test_all_means_every_tracked_family(value):
    config = MonitorConfig(probe_families=["chosen", "rejected", "greedy", "shuffled"], probe_step_families=value)
    assert config.probe_step_families == ["chosen", "rejected", "shuffled", "greedy"]  # canonical order


def test_comma_list_keeps_tracked_families_and_adds_what_the_alert_reads():
    config = MonitorConfig(probe_step_families="chosen, greedy", squeeze_metric="rejected_fall")
    assert config.probe_step_families == ["chosen", "rejected", "greedy"]
    config = MonitorConfig(probe_step_families=["chosen"], squeeze_metric="greedy_start_rise")
    assert config.probe_step_families == ["chosen", "greedy"]
    # Families not tracked at all are not scored mid-stage either.
    config = MonitorConfig(probe_families=["chosen", "rejected"], probe_step_families=["chosen", "greedy"],
                           squeeze_metric="rejected_fall")  # fmt: skip
    assert config.probe_step_families == ["chosen", "rejected"]


def test_score_alert_scores_every_family_mid_stage():
    config = MonitorConfig(squeeze_metric="score")
    assert config.probe_step_families == list(ALL_FAMILIES)


def test_unknown_step_family_names_the_field():
    with pytest.raises(AlignkitError, match=r"'probe_step_families' has unknown families \['gredy'\]"):
        MonitorConfig(probe_step_families=["chosen", "gredy"])
