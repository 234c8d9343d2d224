"""TRL options reach through: a stage's pass-through (sft_trainer_args, preference_trainer_args) arrives in the
trainer's config; unknown options and options alignkit sets from its own fields are refused at config time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers.trainer_utils import SchedulerType

from alignkit.config import parse_recipe_config
from alignkit.errors import AlignkitError
from alignkit.stages import dpo_config, sft_config

CONFIGS = Path(__file__).parents[1] / "recipes" / "configs"


def _yaml(tmp_path, text: str) -> list[str]:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return ["--config", str(path), "--use_cpu", "true"]


def test_defaults_are_a_real_runs_settings(tmp_path):
    cfg = parse_recipe_config(["--use_cpu", "true"])
    sft, dpo = sft_config(cfg, tmp_path / "sft"), dpo_config(cfg, tmp_path / "preference", -1)
    # A user's run: every pair, one epoch per stage, cosine schedules, the alignment-handbook's LoRA rates.
    assert cfg.data.max_train_samples is None and cfg.data.test_fraction == 0.0
    assert (sft.lr_scheduler_type, dpo.lr_scheduler_type) == (SchedulerType.COSINE, SchedulerType.COSINE)
    for args in (sft, dpo):
        assert not args.save_only_model and not args.disable_tqdm
        assert (args.bf16, args.fp16, args.use_cpu) == (False, False, True)  # never TRL's bf16 default on a CPU
        assert (args.weight_decay, args.max_grad_norm, args.report_to) == (0.0, 1.0, [])
    assert (sft.learning_rate, sft.max_steps, sft.num_train_epochs) == (2e-4, -1, 1.0)
    assert (sft.completion_only_loss, sft.packing) == (True, False)
    assert (dpo.learning_rate, dpo.max_steps, dpo.beta, dpo.loss_type) == (5e-6, -1, 0.1, ["sigmoid"])
    assert dpo.truncation_mode == "keep_start"


def test_demo_differs_from_the_defaults_only_in_data_cut_lengths_and_rate(tmp_path):
    demo = parse_recipe_config(["--config", str(CONFIGS / "demo.yaml"), "--use_cpu", "true"])
    default = parse_recipe_config(["--use_cpu", "true"]).to_dict()
    changed = {k: v for k, v in demo.to_dict().items() if default[k] != v}
    assert changed == {
        "max_train_samples": 32, "sft_max_steps": 24, "preference_max_steps": 24, "preference_learning_rate": 4e-4,
        "preference_trainer_args": {"lr_scheduler_type": "constant"}, "logging_steps": 4, "save_steps": 20,
        "output_dir": "outputs/demo",
    }  # fmt: skip
    sft, dpo = sft_config(demo, tmp_path / "sft"), dpo_config(demo, tmp_path / "preference", 24)
    assert (sft.max_steps, dpo.max_steps, dpo.learning_rate) == (24, 24, 4e-4)
    assert dpo.lr_scheduler_type == SchedulerType.CONSTANT  # the paper's steady pushes within 24 steps


def test_yaml_pass_through_reaches_the_trainer_args(tmp_path):
    argv = _yaml(
        tmp_path,
        "sft_trainer_args: {optim: adafactor, report_to: [tensorboard], weight_decay: 1e-2}\n"
        "preference_trainer_args: {lr_scheduler_type: linear, max_grad_norm: 0.5, weight_decay: 0.05}\n",
    )
    cfg = parse_recipe_config(argv)
    sft, dpo = sft_config(cfg, tmp_path / "sft"), dpo_config(cfg, tmp_path / "preference", 6)
    assert (sft.optim, sft.report_to, sft.weight_decay) == ("adafactor", ["tensorboard"], 0.01)  # '1e-2' a float
    assert sft.lr_scheduler_type == SchedulerType.COSINE  # the other stage's options stay there
    assert dpo.lr_scheduler_type == SchedulerType.LINEAR and (dpo.max_grad_norm, dpo.weight_decay) == (0.5, 0.05)
    assert dpo.report_to == [] and dpo.max_steps == 6 and dpo.bf16 is False  # alignkit's own settings unchanged


def test_command_line_pass_through_is_json(tmp_path):
    cfg = parse_recipe_config(["--use_cpu", "true", "--preference_trainer_args", json.dumps({"optim": "adamw_torch"})])
    assert dpo_config(cfg, tmp_path, 4).optim == "adamw_torch"
    with pytest.raises(AlignkitError, match="preference_trainer_args.*expected a JSON mapping"):
        parse_recipe_config(["--preference_trainer_args", "optim=adamw_torch"])


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (
            "preference_trainer_args: {lr_sheduler_type: linear}\n",
            r"run\.yaml: config field 'preference_trainer_args': 'lr_sheduler_type' is not an option of "
            r"trl\.DPOConfig \(did you mean 'lr_scheduler_type'\?\)",
        ),
        ("sft_trainer_args: {beta: 0.2}\n", r"run\.yaml: .*'beta' is not an option of trl\.SFTConfig"),
        (
            "preference_trainer_args: {learning_rate: 1.0e-5}\n",
            r"run\.yaml: config field 'preference_trainer_args' sets 'learning_rate', which alignkit sets from its "
            r"own field: use preference_learning_rate",
        ),
        ("sft_trainer_args: {max_steps: 5}\n", r"'max_steps'.*use sft_max_steps"),
        ("preference_trainer_args: {bf16: true}\n", r"'bf16'.*use torch_dtype"),
        ("preference_trainer_args: {beta: 0.3}\n", r"'beta'.*use beta$"),
        ("sft_trainer_args: {optim: nope}\n", r"'optim' is 'nope'; expected one of: adamw_torch"),
        ("sft_trainer_args: {weight_decay: lots}\n", r"'weight_decay' is 'lots'; expected <class 'float'>"),
        ("sft_trainer_args: [weight_decay]\n", r"key 'sft_trainer_args' is \['weight_decay'\]"),
    ],
)
def test_bad_pass_through_is_one_line_naming_the_key(tmp_path, text, pattern):
    with pytest.raises(AlignkitError, match=pattern) as err:
        parse_recipe_config(_yaml(tmp_path, text))
    assert "\n" not in str(err.value)
