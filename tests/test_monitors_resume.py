"""The guard's state survives a resume: baseline, alert history, a weight raised by `mitigate`, "stopped early"."""

from __future__ import annotations

import json

import pytest
from transformers import TrainerCallback

from alignkit.data.builtin import load_builtin
from alignkit.errors import AlignkitError
from alignkit.monitors import MonitorConfig, SqueezingMonitor, build_probe_set
from alignkit.monitors.stage_files import GUARD_STATE, PROBE_RECORDS

from .conftest import build_tiny_model
from .test_monitors_callback import FAST_FAMILIES, _dpo, _pairs


@pytest.fixture(scope="module")
def data():
    return load_builtin()


class Killed(RuntimeError):
    pass


class KillAt(TrainerCallback):
    """Stands in for a killed process: the training loop dies at `step`, after the checkpoints before it."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed(f"killed at step {self.step}")
        return control


def _mitigating_run(data, tokenizer, tmp_path, extra_callbacks=()):
    config = MonitorConfig(
        probe_num_prompts=2,
        probe_families=FAST_FAMILIES,
        probe_every=2,
        squeeze_metric="score",
        squeeze_threshold=-100.0,  # the first evaluation after the start alerts
        guard_action="mitigate",
    )
    probes = build_probe_set(data["train"], data["test"], config, seed=0)
    monitor = SqueezingMonitor(probes, config, tokenizer, tmp_path)
    callback = monitor.callback("preference", tmp_path / "preference")
    trainer = _dpo(
        build_tiny_model(tokenizer),
        build_tiny_model(tokenizer),
        tokenizer,
        _pairs(data),
        tmp_path / "preference",
        6,
        [callback, *extra_callbacks],
        loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, 0.0],
        save_strategy="steps",
        save_steps=2,
    )
    callback.attach(trainer)
    return monitor, callback, trainer


def test_resume_after_mitigation_keeps_weight_baseline_and_alerts(data, tiny_tokenizer, tmp_path):
    monitor, callback, trainer = _mitigating_run(data, tiny_tokenizer, tmp_path, [KillAt(3)])
    with pytest.raises(Killed):
        trainer.train()
    assert trainer.loss_weights == [1.0, 1.0]  # the guard raised it at step 2, before the kill
    saved = json.loads((tmp_path / "preference" / "checkpoint-2" / GUARD_STATE).read_text())
    assert saved["sft_weight"] == 1.0 and saved["guard_acted"] and len(saved["events"]) == 1
    baseline = json.loads(json.dumps(callback._start_values))

    # A new process: new monitor, callback and trainer, whose config says weight 0 again.
    monitor2, callback2, trainer2 = _mitigating_run(data, tiny_tokenizer, tmp_path)
    seen = {}

    class Peek(TrainerCallback):  # runs after the monitor's on_train_begin: what the first resumed step trains with
        def on_train_begin(self, args, state, control, **kwargs):
            seen["weights"] = list(trainer2.loss_weights)
            return control

    trainer2.add_callback(Peek())
    trainer2.train(resume_from_checkpoint=str(tmp_path / "preference" / "checkpoint-2"))

    assert seen["weights"] == [1.0, 1.0] and trainer2.loss_weights == [1.0, 1.0]
    assert callback2.resumed_guard_state and callback2._start_values == baseline  # not re-taken at step 2
    assert len(monitor2.events) == 1 and monitor2.events[0]["step"] == 2  # restored, and no second action
    records = [json.loads(line) for line in (tmp_path / "preference" / "probes.jsonl").read_text().splitlines()]
    assert [(r["event"], r["step"]) for r in records] == [("begin", 0), ("step", 2), ("resume", 2), ("step", 4),
                                                          ("end", 6)]  # fmt: skip
    assert [r["guard/sft_weight"] for r in records] == [0.0, 0.0, 1.0, 1.0, 1.0]  # logged before the step-2 alert
    assert [r["step"] for r in monitor2.records] == [0, 2, 2, 4, 6]  # the report sees the whole stage
    lines = (tmp_path / "preference" / PROBE_RECORDS).read_text().splitlines()
    n_families = len({json.loads(line)["family"] for line in lines})
    assert len(lines) == 5 * 4 * n_families  # 4 probes x families x 5 evaluations
    assert "raised the SFT-on-y+ loss weight from 0 to 1" in monitor2.finish()


def test_resume_after_a_kill_mid_write_drops_the_torn_lines(data, tiny_tokenizer, tmp_path):
    """A kill can cut the monitor's files mid-line; the resume skips the torn tails and rewrites whole lines."""
    _, _, trainer = _mitigating_run(data, tiny_tokenizer, tmp_path, [KillAt(3)])
    with pytest.raises(Killed):
        trainer.train()
    stage = tmp_path / "preference"
    for name in ("probes.jsonl", PROBE_RECORDS):
        with (stage / name).open("a", encoding="utf-8") as f:
            f.write('{"stage": "preference", "event": "step", "st')  # no newline: the write was cut short

    monitor2, _, trainer2 = _mitigating_run(data, tiny_tokenizer, tmp_path)
    trainer2.train(resume_from_checkpoint=str(stage / "checkpoint-2"))

    assert [r["step"] for r in monitor2.records] == [0, 2, 2, 4, 6]
    for name in ("probes.jsonl", PROBE_RECORDS):
        lines = (stage / name).read_text().splitlines()
        assert all(isinstance(json.loads(line), dict) for line in lines)  # every line whole again


def test_rerun_of_a_guard_stopped_stage_still_says_stopped_early(tiny_model_dir, tmp_path):
    from .test_recipe import run_recipe_in_process, tiny_args

    argv = tiny_args(tiny_model_dir, tmp_path / "out", guard_action="stop", squeeze_threshold=-100.0,
                     squeeze_metric="score", preference_max_steps=6)  # fmt: skip
    out = run_recipe_in_process(argv)
    first = json.loads((out / "metrics.json").read_text())["preference"]["status"]
    assert first.startswith("stopped early")
    again = run_recipe_in_process(argv)
    status = json.loads((again / "metrics.json").read_text())["preference"]["status"]
    assert status.startswith("stopped early") and "already complete" in status


def test_a_guard_that_could_never_fire_is_an_error(data, tiny_tokenizer, tmp_path):
    config = MonitorConfig(
        probe_num_prompts=2,
        probe_families=["chosen", "rejected"],
        squeeze_metric="off_target_fall",
        guard_action="stop",
    )
    probes = build_probe_set(data["train"], data["test"], config, seed=0)
    with pytest.raises(AlignkitError, match="disarmed.*off_target_fall"):
        SqueezingMonitor(probes, config, tiny_tokenizer, tmp_path)
    config.guard_action = "warn"  # only warns: said in the log and in the report's notes
    monitor = SqueezingMonitor(probes, config, tiny_tokenizer, tmp_path)
    assert any("disarmed" in n for n in monitor.notes)
