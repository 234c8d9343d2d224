"""The squeezing monitor inside real TRL trainers (tiny model, CPU): families, JSONL, PNG, guard actions, stages."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from datasets import Dataset

from alignkit.data.builtin import load_builtin
from alignkit.errors import AlignkitError
from alignkit.generation import generate
from alignkit.monitors import MonitorConfig, SqueezingMonitor, build_probe_set
from alignkit.monitors.config import STEP_FAMILIES
from alignkit.monitors.evaluate import evaluate_probes
from alignkit.sequences import render_prompt, score_responses

from .conftest import build_tiny_model

FAST_FAMILIES = ["chosen", "rejected", "irrelevant_test", "non_human", "argmax"]  # no generation: quick on CPU


@pytest.fixture(scope="module")
def data():
    return load_builtin()


def _pairs(data, n=8):
    return data["train"].select(range(n)).select_columns(["prompt", "chosen", "rejected"])


def _dpo(model, ref_model, tokenizer, train, out, steps, callbacks, **args):
    from trl import DPOConfig, DPOTrainer

    config = DPOConfig(
        **{
            "output_dir": str(out),
            "max_steps": steps,
            "per_device_train_batch_size": 2,
            "learning_rate": 1e-3,
            "logging_steps": 1,
            "save_strategy": "no",
            "report_to": [],
            "gradient_checkpointing": False,
            "use_cpu": True,
            "max_length": 96,
            "disable_tqdm": True,
            **args,  # a test's own settings win
        }
    )
    return DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=config,
        train_dataset=train,
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def test_shared_prompt_scoring_matches_pairwise_scoring(data, tiny_model, tiny_tokenizer):
    probes = build_probe_set(data["train"], data["test"], MonitorConfig(probe_num_prompts=3), seed=0)
    tiny_model.eval()
    shared = evaluate_probes(tiny_model, tiny_tokenizer, probes.probes, probes.families, 8, 512, 4)
    pairwise = evaluate_probes(tiny_model, tiny_tokenizer, probes.probes, probes.families, 8, 512, 4, False)
    prompts, responses, got = [], [], []
    for probe, a, b in zip(probes.probes, shared, pairwise):
        assert sorted(a.stats) == sorted(probes.families[:-1])  # every family but argmax (read off chosen)
        for family, stats in a.stats.items():
            for name, value in stats.items():
                assert value == pytest.approx(b.stats[family][name], abs=1e-4), (family, name)
            if family != "greedy":  # scored by its decoding: test_greedy_stats_are_the_decoded_tokens_log_probs
                prompts.append(probe.prompt)
                responses.append(probe.responses[family])
                got.append(stats["logp"])
    reference = score_responses(tiny_model, tiny_tokenizer, prompts, responses, batch_size=4)
    assert got == pytest.approx([sum(r) for r in reference], abs=1e-4)


def test_greedy_stats_are_the_decoded_tokens_log_probs(data, tiny_model, tiny_tokenizer):
    """The statistics read off the decoding equal a teacher-forced pass over the tokens it chose, up to their EOS."""
    prompts = list(data["test"]["prompt"][:3])
    tiny_model.eval()
    texts, stats = generate(tiny_model, tiny_tokenizer, prompts, max_new_tokens=6, batch_size=2, with_stats=True)
    assert [len(t) for t in texts] == [1, 1, 1] and [len(s) for s in stats] == [1, 1, 1]
    eos = tiny_tokenizer.eos_token_id
    for prompt, (row,) in zip(prompts, stats):
        prompt_ids = tiny_tokenizer(render_prompt(tiny_tokenizer, prompt), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids])
        with torch.no_grad():
            full = tiny_model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=eos, eos_token_id=eos)
            new = full[0, len(prompt_ids) :].tolist()
            keep = new.index(eos) if eos in new else len(new)
            keep = max(keep, 1)  # an EOS first is scored as itself
            logp = torch.log_softmax(tiny_model(full).logits[0, len(prompt_ids) - 1 : -1].float(), dim=-1)
        chosen = logp[torch.arange(keep), torch.tensor(new[:keep])]
        assert row["n_tokens"] == keep
        assert row["logp"] == pytest.approx(chosen.sum().item(), abs=1e-4)
        assert row["argmax_logp"] == pytest.approx(logp[:keep].max(-1).values.sum().item(), abs=1e-4)


@pytest.mark.parametrize("step_families", ["all", "default"])
def test_dpo_with_attached_monitor_logs_writes_and_mitigates(data, tiny_tokenizer, tmp_path, step_families):
    light = step_families == "default"  # mid-stage evaluations score only STEP_FAMILIES; the ends score every family
    config = MonitorConfig(
        probe_num_prompts=2, probe_every=2, probe_max_new_tokens=4, squeeze_threshold=-100.0, guard_action="mitigate",
        squeeze_metric="off_target_fall",  # defined at every evaluation: the threshold below any reading fires
        **({} if light else {"probe_step_families": ["all"]}),
    )  # fmt: skip
    probes = build_probe_set(data["train"], data["test"], config, seed=0)
    monitor = SqueezingMonitor(probes, config, tiny_tokenizer, tmp_path)
    callback = monitor.callback("preference", tmp_path / "preference")
    trainer = _dpo(
        build_tiny_model(tiny_tokenizer),
        build_tiny_model(tiny_tokenizer),
        tiny_tokenizer,
        _pairs(data),
        tmp_path / "preference",
        6,
        [callback],
        loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, 0.0],  # the SFT term is there from the start, weighted 0 until the guard raises it
    )
    callback.attach(trainer)
    trainer.train()

    records = [json.loads(line) for line in (tmp_path / "preference" / "probes.jsonl").read_text().splitlines()]
    assert [(r["event"], r["step"], r["global_step"]) for r in records] == [
        ("begin", 0, 0),
        ("step", 2, 2),
        ("step", 4, 4),
        ("end", 6, 6),
    ]
    for record in records:
        mid = light and record["event"] == "step"
        scored = [f for f in probes.families if f in STEP_FAMILIES] if mid else probes.families
        assert "greedy" in probes.families and (mid == ("greedy" not in scored))
        for split in ("train", "test"):
            for family in probes.families:
                for name in ("logp", "logp_per_token"):
                    key = f"probe/{split}/{family}/{name}"
                    if family in scored:
                        assert math.isfinite(record[key]), (split, family, name)
                    else:
                        assert key not in record, key
            for family in ("chosen", "rejected"):
                assert 0 < record[f"probe/{split}/{family}/argmax_prob"] <= 1
                assert record[f"probe/{split}/{family}/entropy"] > 0
        assert math.isfinite(record["squeeze/score"])
    # The alert fired at step 2 (threshold far below any score); the weight changed for steps 3 to 6.
    assert [r["guard/sft_weight"] for r in records] == [0.0, 0.0, 1.0, 1.0]
    assert "alert" in records[1] and trainer.loss_weights == [1.0, 1.0]
    losses = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    # The NLL of y+ under a random 400-token model is ~6 nats/token; DPO's loss starts at log 2.
    assert losses[1] < 1.0 and losses[2] < 1.0 and min(losses[s] for s in (3, 4, 5, 6)) > 3.0
    logged = [h["step"] for h in trainer.state.log_history if "squeeze/probe/train/chosen/logp" in h]
    assert logged == [0, 2, 4, 6]  # through the trainer's log, at the step they were measured

    # One per-probe record per probe x family x evaluation; every stored family, argmax, greedy_start, and at the end
    # the end's own decodings as fixed text (greedy_end, the next stage's greedy_start).
    lines = [json.loads(line) for line in (tmp_path / "preference" / "probe_records.jsonl").read_text().splitlines()]
    keys = [(r["step"], r["probe"], r["family"]) for r in lines]
    assert len(keys) == len(set(keys))
    per_eval = {step: {(p, f) for s, p, f in keys if s == step} for step in (0, 2, 4, 6)}
    expected = {(p.probe_id, f) for p in probes.probes for f in [*p.responses, "argmax", "greedy", "greedy_start"]}
    assert per_eval[0] == expected
    if light:
        assert per_eval[2] == per_eval[4] == {(p, f) for p, f in expected if f in STEP_FAMILIES}
    else:
        assert per_eval[2] == per_eval[4] == expected
    assert per_eval[6] == expected | {(p.probe_id, "greedy_end") for p in probes.probes}
    chosen = next(r for r in lines if r["family"] == "chosen")
    assert chosen["eos_logp"] < 0 and chosen["words_logp_per_token"] == pytest.approx(
        (chosen["logp"] - chosen["eos_logp"]) / (chosen["n_tokens"] - 1), rel=1e-3
    )

    summary = monitor.finish()
    assert (tmp_path / "squeezing.png").stat().st_size > 10_000
    assert (tmp_path / "probe_set.jsonl").exists()
    assert "| chosen | train |" in summary and "end of preference" in summary
    assert "raised the SFT-on-y+ loss weight from 0 to 1" in summary
    # The mechanism metrics with their 95% intervals over probes.
    row = next(line for line in summary.splitlines() if line.startswith("| off_target_fall |"))
    assert re.search(r"-?\d+\.\d{3} \[-?\d+\.\d{3}, -?\d+\.\d{3}\]", row), row
    assert (
        records[-1]["mech/off_target_fall_lo"]
        <= records[-1]["mech/off_target_fall"]
        <= records[-1]["mech/off_target_fall_hi"]
    )


def test_stop_guard_ends_the_stage_early_with_a_checkpoint(data, tiny_tokenizer, tmp_path):
    config = MonitorConfig(
        probe_num_prompts=2,
        probe_families=FAST_FAMILIES,
        probe_every=2,
        squeeze_metric="off_target_fall",  # defined at every evaluation, unlike the default ratio
        squeeze_threshold=-100.0,
        guard_action="stop",
    )
    probes = build_probe_set(data["train"], data["test"], config, seed=0)
    monitor = SqueezingMonitor(probes, config, tiny_tokenizer, tmp_path)
    model = build_tiny_model(tiny_tokenizer)
    trainer = _dpo(model, build_tiny_model(tiny_tokenizer), tiny_tokenizer, _pairs(data), tmp_path / "dpo", 8, [])
    trainer.add_callback(monitor.callback("dpo", tmp_path / "dpo", trainer=trainer))
    trainer.train()

    assert trainer.state.global_step == 2 < trainer.state.max_steps
    assert (tmp_path / "dpo" / "checkpoint-2").is_dir()
    records = [json.loads(line) for line in (tmp_path / "dpo" / "probes.jsonl").read_text().splitlines()]
    assert [(r["event"], r["step"]) for r in records] == [("begin", 0), ("end", 2)]
    assert "stopped the stage at step 2 of 8" in monitor.finish()


def test_unattached_callbacks_span_stages_on_one_step_axis(data, tiny_tokenizer, tmp_path):
    from trl import SFTConfig, SFTTrainer

    config = MonitorConfig(  # a time budget near 0: the automatic schedule probes only the first and last step
        probe_num_prompts=2,
        probe_families=FAST_FAMILIES,
        guard_action="mitigate",
        probe_min_evaluations=2,
        probe_time_budget=1e-9,
    )
    probes = build_probe_set(data["train"], data["test"], config, seed=0)
    monitor = SqueezingMonitor(probes, config, None, tmp_path)  # tokenizer from the trainer's processing_class
    model = build_tiny_model(tiny_tokenizer)
    rows = Dataset.from_list([{"prompt": r["prompt"], "completion": r["chosen"]} for r in _pairs(data)])
    sft_args = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        max_steps=3,
        per_device_train_batch_size=2,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        gradient_checkpointing=False,
        use_cpu=True,
        disable_tqdm=True,
    )
    sft = SFTTrainer(
        model=model,
        args=sft_args,
        train_dataset=rows,
        processing_class=tiny_tokenizer,
        callbacks=[monitor.callback("sft", tmp_path / "sft")],
    )
    sft.train()
    sft_logged = [h for h in sft.state.log_history if "squeeze/probe/test/chosen/logp" in h]
    assert [h["step"] for h in sft_logged] == [1, 3]  # step 0's probes ride along with the first log entry

    with pytest.raises(AlignkitError, match="needs an SFT term"):  # mitigate, but DPO without an 'sft' loss term
        _dpo(model, build_tiny_model(tiny_tokenizer), tiny_tokenizer, _pairs(data), tmp_path / "x", 2, [
            monitor.callback("bad", tmp_path / "x")
        ]).train()  # fmt: skip

    config.guard_action = "warn"
    dpo = _dpo(model, build_tiny_model(tiny_tokenizer), tiny_tokenizer, _pairs(data), tmp_path / "dpo", 2, [
        monitor.callback("dpo", tmp_path / "dpo")
    ])  # fmt: skip
    dpo.train()
    assert [(r["stage"], r["step"], r["global_step"]) for r in monitor.records] == [
        ("sft", 0, 0),
        ("sft", 3, 3),
        ("dpo", 0, 3),
        ("dpo", 2, 5),
    ]
    assert monitor.boundaries == [(0, "sft"), (3, "dpo")]
    # DPO starts from the very model SFT ended with: its first evaluation is SFT's last, checked by re-scoring.
    sft_end, dpo_begin = monitor.records[1], monitor.records[2]
    assert dpo_begin["handed_over_from"] == "sft" and "handed_over_from" not in sft_end
    probe_keys = [k for k in sft_end if k.startswith("probe/") and k != "probe/seconds"]
    assert len(probe_keys) > 8 and all(dpo_begin[k] == sft_end[k] for k in probe_keys)

    with torch.no_grad():  # a stage that starts from another model than the last one ended with measures afresh
        next(model.parameters()).add_(0.05)
    _dpo(model, build_tiny_model(tiny_tokenizer), tiny_tokenizer, _pairs(data), tmp_path / "dpo2", 1, [
        monitor.callback("dpo2", tmp_path / "dpo2")
    ]).train()  # fmt: skip
    dpo2_begin = monitor.records[4]
    assert (dpo2_begin["stage"], dpo2_begin["step"]) == ("dpo2", 0) and "handed_over_from" not in dpo2_begin
    assert dpo2_begin["probe/train/chosen/logp"] != monitor.records[3]["probe/train/chosen/logp"]
    summary = monitor.finish()
    assert "end of sft" in summary and "end of dpo" in summary


def test_automatic_schedule_spaces_the_minimum_evaluations(data, tiny_tokenizer, tmp_path):
    # probe_every=0 with the default probe_min_evaluations=4: a 6-step stage is probed at 0, 2, 4 and 6, whatever the
    # time budget affords (a budget near 0 affords nothing more, on a busy machine or an idle one: no timing enters).
    config = MonitorConfig(probe_num_prompts=2, probe_families=FAST_FAMILIES, probe_time_budget=1e-9)
    monitor = SqueezingMonitor(build_probe_set(data["train"], data["test"], config, seed=0), config, tiny_tokenizer,
                               tmp_path)  # fmt: skip
    callback = monitor.callback("preference", tmp_path / "preference")
    model = build_tiny_model(tiny_tokenizer)
    trainer = _dpo(model, build_tiny_model(tiny_tokenizer), tiny_tokenizer, _pairs(data), tmp_path / "preference", 6,
                   [callback])  # fmt: skip
    callback.attach(trainer)
    trainer.train()
    assert [(r["event"], r["step"]) for r in monitor.records] == [("begin", 0), ("step", 2), ("step", 4), ("end", 6)]
