"""The pre-flight inside the recipe on a tiny model: the report section, and both `act` paths with their counts."""

from __future__ import annotations

import json
import shutil

import pytest

from alignkit.errors import AlignkitError
from alignkit.jsonl import read_jsonl
from alignkit.preflight.cli import main as cli_main

from .test_recipe import run_recipe_in_process, tiny_args


def _args(tiny_model_dir, out, **overrides) -> list[str]:
    # preference_max_steps 3 x batch 2: the preference stage trains on (and the pre-flight scores) 6 of the 12 pairs
    return tiny_args(tiny_model_dir, out, probe_enabled=False, preflight_dynamics_pairs=0, **overrides)


def test_report_then_drop(tiny_model_dir, tmp_path, capsys):
    out = run_recipe_in_process(_args(tiny_model_dir, tmp_path / "out", preflight="report"))
    report = (out / "report.md").read_text()
    assert "## Pre-flight (docs/preflight.md)" in report and "under: the SFT model" in report
    assert "preflight: report: nothing changed" in report
    records = [r for _, r in read_jsonl(out / "preflight" / "preflight.jsonl")]
    assert len(records) == 6
    # The command line on the same run folder finds the finished SFT stage and scores under it (here: reuses).
    assert cli_main(_args(tiny_model_dir, out)) == 0
    assert "under the SFT model" in capsys.readouterr().out

    # Same run folder, act + drop at the median depth: SFT and the scores are reused, half the pairs are dropped.
    threshold = sorted(r["rejected_logp_per_token"] for r in records)[3]
    shutil.rmtree(out / "preference")
    run_recipe_in_process(
        _args(tiny_model_dir, out, preflight="act", preflight_action="drop", preflight_threshold=threshold)
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["preference"]["rows"] == {"pairs": 3}
    assert (
        "preflight_action drop: 3 pairs at risk removed; the preference stage trained on the other 3"
        in (out / "report.md").read_text()
    )


def test_extend_sft_trains_on_the_risky_rejected_responses(tiny_model_dir, tmp_path):
    # Every y- of a random tiny model is far below -0.000001 nats/token: all 6 scored pairs are at risk.
    args = _args(tiny_model_dir, tmp_path / "out", sft_mode="chosen", preflight="act", preflight_threshold="-0.000001")
    out = run_recipe_in_process(args)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sft"]["rows"] == {"chosen": 12, "rejected (pre-flight)": 6}
    assert metrics["preference"]["rows"] == {"pairs": 6}  # extend_sft drops nothing
    report = (out / "report.md").read_text()
    assert "under: the base model" in report and "the SFT stage also trained on y- of the 6 pairs at risk" in report


def test_drop_refuses_to_drop_everything(tiny_model_dir, tmp_path):
    args = _args(
        tiny_model_dir, tmp_path / "out", preflight="act", preflight_action="drop", preflight_threshold="-0.000001"
    )
    with pytest.raises(AlignkitError, match="would drop all 6 scored pairs"):
        run_recipe_in_process(args)
