"""The one stage engine: the on-policy rounds use the stages' public helpers, a round is a typed record, and both
preference paths take their callbacks the same way (a list, or `callbacks_for(stage_name, stage_dir)`)."""

from __future__ import annotations

import json

from alignkit.onpolicy.stage import ROUND_DONE, Round

from .test_onpolicy import run_stage
from .test_stage_callbacks import StopAt


def test_a_round_marker_round_trips(tmp_path):
    round_ = Round(2, tmp_path, {"prompts": 3, "on_policy_pairs": 2}, "trained", 4, 1.5, "adapter", [{"loss": 1.0}])
    round_.save()
    assert set(json.loads((tmp_path / ROUND_DONE).read_text())) == {
        "rows", "steps", "weights", "log_history", "status", "seconds", "stopped_by", "fingerprint"
    }  # fmt: skip
    assert Round.load(2, tmp_path) == round_ and round_.weights_path == tmp_path / "adapter"
    assert Round.load(3, tmp_path / "missing") is None and not round_.stopped_early


def test_onpolicy_rounds_take_callbacks_for_and_a_stop_ends_the_stage(tiny_model_dir, tiny_tokenizer, tmp_path):
    asked = []

    def callbacks_for(stage, stage_dir):
        asked.append((stage, stage_dir.name))
        return [StopAt(1)]

    out = tmp_path / "out"
    _, result = run_stage(tiny_model_dir, out, tiny_tokenizer, callbacks=callbacks_for)
    assert asked == [("preference round 1", "round-1")]  # the stop in round 1: no round 2
    assert result.status == "stopped early by the test's stopper in round 1" and result.steps == 1
    assert not (out / "preference" / "round-2").exists()
    done = json.loads((out / "preference" / "stage_complete.json").read_text())
    assert done["rounds"] == 1 and done["weights"] == "adapter"

    _, again = run_stage(tiny_model_dir, out, tiny_tokenizer, callbacks=callbacks_for)  # the guard's verdict stays
    assert again.status == "stopped early by the test's stopper in round 1; skipped (already complete)"

    # a run that died after the stopped round's marker, before the stage's: the stop still ends the stage
    (out / "preference" / "stage_complete.json").unlink()
    _, resumed = run_stage(tiny_model_dir, out, tiny_tokenizer, callbacks=callbacks_for)
    assert resumed.status == "stopped early by the test's stopper in round 1" and len(asked) == 1
    assert not (out / "preference" / "round-2").exists()
