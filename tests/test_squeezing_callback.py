"""`SqueezingCallback` used alone in plain TRL scripts: one line, probes from the trainer's data, report at the end."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset
from transformers import TrainerCallback

from alignkit.data.builtin import load_builtin
from alignkit.errors import AlignkitError
from alignkit.monitors.callback import REPORT_NAME, SqueezingCallback
from alignkit.monitors.trainer_data import probe_rows

from .conftest import build_tiny_model

FAST = {"probe_num_prompts": 2, "probe_families": ["chosen", "rejected", "irrelevant_test", "non_human", "argmax"]}
ARGS = {
    "per_device_train_batch_size": 2,
    "learning_rate": 1e-3,
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": [],
    "gradient_checkpointing": False,
    "use_cpu": True,
    "max_length": 96,
    "disable_tqdm": True,
}


@pytest.fixture(scope="module")
def data():
    return load_builtin()


class LogRecorder(TrainerCallback):
    """Stands for a reporting callback (TensorBoard, W&B): registered before the monitor, it sees what is logged."""

    def __init__(self):
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def _pairs(data, split="train", n=8):
    return data[split].select(range(n)).select_columns(["prompt", "chosen", "rejected"])


def test_one_line_in_a_dpo_script_writes_the_report_and_logs_through_the_trainer(data, tiny_tokenizer, tmp_path):
    from trl import DPOConfig, DPOTrainer

    recorder = LogRecorder()
    callback = SqueezingCallback(probe_every=2, **FAST)
    trainer = DPOTrainer(
        model=build_tiny_model(tiny_tokenizer),
        ref_model=build_tiny_model(tiny_tokenizer),
        args=DPOConfig(output_dir=str(tmp_path), max_steps=4, **ARGS),
        train_dataset=_pairs(data),
        eval_dataset=_pairs(data, "test"),
        processing_class=tiny_tokenizer,
        callbacks=[recorder, callback],
    )
    trainer.train()

    assert callback.trainer is trainer and callback.stage == "dpo"
    records = [json.loads(line) for line in (tmp_path / "probes.jsonl").read_text().splitlines()]
    assert [(r["event"], r["step"]) for r in records] == [("begin", 0), ("step", 2), ("end", 4)]
    probe_set = [json.loads(line) for line in (tmp_path / "probe_set.jsonl").read_text().splitlines()]
    train_prompts = set(map(json.dumps, _pairs(data)["prompt"]))
    test_prompts = set(map(json.dumps, _pairs(data, "test")["prompt"]))
    splits = {p["split"] for p in probe_set[1:]}
    assert splits == {"train", "test"} and len(probe_set) == 1 + 4
    for probe in probe_set[1:]:  # drawn from the trainer's own data, TRL's EOS taken off again
        assert json.dumps(probe["prompt"]) in (train_prompts if probe["split"] == "train" else test_prompts)
        assert not probe["responses"]["chosen"].endswith(tiny_tokenizer.eos_token)
    report = (tmp_path / REPORT_NAME).read_text()
    assert callback.report_path == tmp_path / REPORT_NAME
    assert "## Squeezing monitor" in report and "| chosen | train |" in report and "squeezing.png" in report
    assert (tmp_path / "squeezing.png").stat().st_size > 10_000
    # Through Trainer.log at the step measured, so a reporting callback registered before the monitor sees them.
    seen = [(h["step"], h.get("squeeze/probe/train/chosen/logp")) for h in trainer.state.log_history
            if "squeeze/probe/train/chosen/logp" in h]  # fmt: skip
    assert [s for s, _ in seen] == [0, 2, 4]
    assert [v for _, v in seen] == pytest.approx([r["probe/train/chosen/logp"] for r in records])
    assert sum("squeeze/mech/off_target_fall" in logs for logs in recorder.logs) == 3
    assert not any(k.startswith(("probe/", "mech/")) for logs in recorder.logs for k in logs)


def test_add_callback_with_the_trainer_on_conversational_sft_data(data, tiny_tokenizer, tmp_path):
    from trl import SFTConfig, SFTTrainer

    rows = [{"messages": r["prompt"] + r["chosen"]} for r in _pairs(data, n=6)]  # the built-in data is conversational
    trainer = SFTTrainer(
        model=build_tiny_model(tiny_tokenizer),
        args=SFTConfig(output_dir=str(tmp_path), max_steps=2, **ARGS),
        train_dataset=Dataset.from_list(rows),
        processing_class=tiny_tokenizer,
    )
    callback = SqueezingCallback(trainer, **FAST)
    trainer.add_callback(callback)
    trainer.train()

    assert callback.stage == "sft"
    report = (tmp_path / REPORT_NAME).read_text()
    # SFT data has no rejected answers and this trainer no held-out set: both are said, not failed on.
    assert "no rejected responses" in report and "no held-out split" in report
    probe_set = [json.loads(line) for line in (tmp_path / "probe_set.jsonl").read_text().splitlines()]
    assert probe_set[0]["families"] == ["chosen", "non_human", "argmax"]  # of FAST, what SFT data without eval has
    prompts = [row["messages"][:-1] for row in rows]
    assert len(probe_set) == 1 + 2 and all(p["prompt"] in prompts for p in probe_set[1:])
    assert any("squeeze/probe/train/chosen/logp" in h for h in trainer.state.log_history)


def test_probe_rows_read_every_trl_format(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token
    user = [{"role": "user", "content": "What is 2+2?"}]
    answer, wrong = [{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "5"}]
    rows = {
        "preference": {"prompt": "Q?", "chosen": " yes" + eos, "rejected": " no" + eos, "prompt_ids": [1]},
        "conversational": {"prompt": user, "chosen": answer, "rejected": wrong},
        "implicit prompt": {"chosen": user + answer, "rejected": user + wrong},
        "implicit text": {"chosen": "Q: hi? A: yes", "rejected": "Q: hi? A: no"},
        "prompt-completion": {"prompt": "Q?", "completion": " yes" + eos},
        "messages": {"messages": user + answer},
        "text": {"text": "one two three four five" + eos},
    }
    got = {name: probe_rows([row], eos)[0] for name, row in rows.items()}
    assert got["preference"] == {"prompt": "Q?", "chosen": " yes", "rejected": " no"}
    assert got["conversational"] == got["implicit prompt"] == {"prompt": user, "chosen": answer, "rejected": wrong}
    assert got["implicit text"] == {"prompt": "Q: hi? A:", "chosen": " yes", "rejected": " no"}
    assert got["prompt-completion"] == {"prompt": "Q?", "chosen": " yes"}
    assert got["messages"] == {"prompt": user, "chosen": answer}
    assert got["text"] == {"prompt": "one two", "chosen": " three four five"}
    assert probe_rows(None) == []
    with pytest.raises(AlignkitError, match=r"columns \['input_ids', 'labels'\].*raw text"):
        probe_rows([{"input_ids": [1, 2], "labels": [1, 2]}])
    with pytest.raises(AlignkitError, match="training dataset row 1: field 'messages'"):
        probe_rows([{"messages": user + answer}, {"messages": user}])


def test_unknown_option_is_an_error_naming_it():
    with pytest.raises(AlignkitError, match=r"unknown option\(s\) \['probe_familes'\]"):
        SqueezingCallback(probe_familes=["chosen"])
    assert SqueezingCallback(squeeze_threshold=0.2, guard_action="stop").config.squeeze_threshold == 0.2
