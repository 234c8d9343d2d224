"""The monitor's cost cap (`probe_max_overhead`): evaluations spaced, and probes cut, to stay within a share of
training time. Deterministic: training steps and evaluations advance a fake clock by set amounts."""

from __future__ import annotations

import json

import pytest
from transformers import TrainerCallback

import alignkit.monitors.callback as callback_module
from alignkit.data.builtin import load_builtin
from alignkit.errors import AlignkitError
from alignkit.monitors import MonitorConfig
from alignkit.monitors.callback import REPORT_NAME, SqueezingCallback
from alignkit.monitors.scoring import plan_capped

from .conftest import build_tiny_model

FAMILIES = ["chosen", "rejected", "irrelevant_test", "non_human", "argmax"]
STEP_SECONDS = 1.0  # what each training step takes on the fake clock
PROBE_SECONDS = 0.5  # what scoring one probe takes at a stage's ends; half of it at a mid-stage evaluation


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Ticker(TrainerCallback):
    """Registered before the monitor: each training step takes STEP_SECONDS on the fake clock."""

    def __init__(self, clock: FakeClock):
        self.clock = clock

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.now += STEP_SECONDS


@pytest.fixture(scope="module")
def data():
    return load_builtin()


def _run(data, tiny_tokenizer, tmp_path, monkeypatch, steps: int, probes: int, cap: float) -> SqueezingCallback:
    from trl import DPOConfig, DPOTrainer

    clock = FakeClock()
    real_measure = callback_module.measure

    def timed_measure(model, tokenizer, probe_set, config, args, event, *rest):
        measured = real_measure(model, tokenizer, probe_set, config, args, event, *rest)
        clock.now += PROBE_SECONDS * len(probe_set.probes) * (0.5 if event == "step" else 1.0)
        return measured

    monkeypatch.setattr(callback_module, "measure", timed_measure)
    callback = SqueezingCallback(max_overhead=cap, probe_num_prompts=probes, probe_families=FAMILIES)
    callback.clock = clock
    pairs = data["train"].select(range(8)).select_columns(["prompt", "chosen", "rejected"])
    args = DPOConfig(
        output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=2, learning_rate=1e-3,
        logging_steps=10, save_strategy="no", report_to=[], gradient_checkpointing=False, use_cpu=True,
        max_length=96, disable_tqdm=True,
    )  # fmt: skip
    trainer = DPOTrainer(
        model=build_tiny_model(tiny_tokenizer),
        ref_model=build_tiny_model(tiny_tokenizer),
        args=args,
        train_dataset=pairs,
        eval_dataset=data["test"].select(range(8)).select_columns(["prompt", "chosen", "rejected"]),
        processing_class=tiny_tokenizer,
        callbacks=[Ticker(clock), callback],
    )
    trainer.train()
    return callback


def _records(path):
    return [json.loads(line) for line in (path / "probes.jsonl").read_text().splitlines()]


def test_the_cap_spaces_evaluations_within_the_share(data, tiny_tokenizer, tmp_path, monkeypatch):
    # 60 steps of 1 s, cap 11%: 6.6 s. The ends cost 2 s each (4 probes), a mid-stage evaluation 1 s (2 s until one
    # is measured). At step 1: 2.6 s left after the end -> 1 more, half-way (30); then 1.6 s -> 1 more, half-way
    # between 30 and 60 (45); then 0.6 s: none. 6 s in all, 10% of training.
    callback = _run(data, tiny_tokenizer, tmp_path, monkeypatch, steps=60, probes=2, cap=0.11)
    assert [(r["event"], r["step"]) for r in _records(tmp_path)] == [("begin", 0), ("step", 30), ("step", 45),
                                                                     ("end", 60)]  # fmt: skip
    assert callback.probe_seconds == pytest.approx(6.0) and callback.overhead == pytest.approx(0.1)
    report = (tmp_path / REPORT_NAME).read_text()
    assert "probing took 6.0 s, 10.0% of the stage's 60.0 s of training (probe_max_overhead 11.0%)" in report
    assert "evaluations at steps 0, 30, 45, 60" in report and "fewer than 3" not in report


def test_the_cap_cuts_probes_when_the_last_evaluation_would_not_fit(data, tiny_tokenizer, tmp_path, monkeypatch,
                                                                     caplog):  # fmt: skip
    # 20 steps, cap 30%: 6 s. The first evaluation of 8 probes cost 4 s, and the last would cost 4 s more: the last
    # can afford half of the probes (2 per split), and no evaluation in between fits: warned.
    with caplog.at_level("WARNING", logger="alignkit.monitors"):
        callback = _run(data, tiny_tokenizer, tmp_path, monkeypatch, steps=20, probes=4, cap=0.3)
    records = _records(tmp_path)
    assert [(r["event"], r["step"]) for r in records] == [("begin", 0), ("end", 20)]
    assert callback.probe_seconds == pytest.approx(6.0) and callback.overhead == pytest.approx(0.3)
    assert records[0]["probes_kept"] == 4 and len(callback.probes.probes) == 4
    assert sorted(p.split for p in callback.probes.probes) == ["test", "test", "train", "train"]
    # The first evaluation is re-read on the kept probes, so start and end compare the same ones.
    per_probe = [json.loads(line) for line in (tmp_path / "probe_records.jsonl").read_text().splitlines()]
    kept = {p.probe_id for p in callback.probes.probes}
    begin_chosen = [r["logp"] for r in per_probe if r["step"] == 0 and r["family"] == "chosen" and r["probe"] in kept
                    and r["split"] == "train"]  # fmt: skip
    assert records[0]["probe/train/chosen/logp"] == pytest.approx(sum(begin_chosen) / len(begin_chosen), rel=1e-4)
    assert {r["probe"] for r in per_probe if r["step"] == 20} == kept
    report = (tmp_path / REPORT_NAME).read_text()
    assert "4 of 8 probes scored after the first evaluation" in report
    assert "leaves 2 evaluation(s) in this stage of 20 steps (fewer than 3" in report
    assert any("fewer than 3" in r.message for r in caplog.records)


def test_no_cap_keeps_the_dense_schedule():
    config = MonitorConfig()
    assert config.probe_max_overhead == 0 and config.probe_min_evaluations == 4  # the recipe's default is unchanged
    with pytest.raises(AlignkitError, match="'probe_max_overhead' .* and 'probe_every' .* set one of them"):
        MonitorConfig(probe_max_overhead=0.05, probe_every=5)
    with pytest.raises(AlignkitError, match="'probe_max_overhead' is 1.5"):
        SqueezingCallback(max_overhead=1.5)


def test_plan_corrects_itself_as_measurements_come_in():
    # A mid-stage evaluation measured cheaper than the first guess: more evaluations fit, closer together.
    guess = plan_capped(0.1, 100, 0, 10.0, 10, 4.0, eval_seconds=2.0, end_seconds=2.0)
    measured = plan_capped(0.1, 100, 0, 10.0, 10, 4.0, eval_seconds=0.5, end_seconds=2.0)
    assert (guess.evaluations_left, guess.every) == (2, 34) and (measured.evaluations_left, measured.every) == (8, 12)
    # Training slower than thought: the budget grows with it.
    assert plan_capped(0.1, 100, 0, 20.0, 10, 4.0, 2.0, 2.0).evaluations_left == 7
