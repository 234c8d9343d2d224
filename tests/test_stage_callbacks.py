"""Callbacks by contract: a stage attaches any callback with `attach(trainer)` and reads an early stop from the
trainer's state; no stage module knows a monitor class."""

from __future__ import annotations

import ast
from pathlib import Path

from transformers import TrainerCallback

from alignkit.callbacks import stop_training
from alignkit.config import parse_recipe_config
from alignkit.data import load_preference_data
from alignkit.models import load_model, load_tokenizer
from alignkit.stages import preference_loss, run_sft_stage

from .test_recipe import tiny_args

ALIGNKIT = Path(__file__).parents[1] / "alignkit"


class StopAt(TrainerCallback):
    """Not a monitor: asks for its trainer and ends the stage at `step`."""

    def __init__(self, step: int):
        self.step = step
        self.trainer = None

    def attach(self, trainer):
        self.trainer = trainer
        return self

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            stop_training(state, control, "the test's stopper")
        return control


def test_stage_attaches_a_callback_and_reports_its_stop_on_rerun(tiny_model_dir, tmp_path):
    cfg = parse_recipe_config(tiny_args(tiny_model_dir, tmp_path, sft_mode="chosen", sft_max_steps=4))
    tokenizer, pairs = load_tokenizer(cfg.model), load_preference_data(cfg.data, seed=0)["train"]
    stopper = StopAt(2)
    result = run_sft_stage(load_model(cfg.model), tokenizer, pairs, cfg, tmp_path / "sft", [stopper])
    assert stopper.trainer is not None and stopper.trainer.state.max_steps == 4
    assert (result.status, result.steps) == ("stopped early by the test's stopper", 2)
    again = run_sft_stage(None, tokenizer, pairs, cfg, tmp_path / "sft", [StopAt(2)])
    assert again.status == "stopped early by the test's stopper; skipped (already complete)"


def test_a_stage_that_runs_to_the_end_was_not_stopped(tiny_model_dir, tmp_path):
    cfg = parse_recipe_config(tiny_args(tiny_model_dir, tmp_path, sft_mode="chosen", sft_max_steps=2))
    tokenizer, pairs = load_tokenizer(cfg.model), load_preference_data(cfg.data, seed=0)["train"]
    result = run_sft_stage(load_model(cfg.model), tokenizer, pairs, cfg, tmp_path / "sft", [StopAt(5)])
    assert (result.status, result.steps) == ("trained", 2)


def test_the_sft_slot_for_mitigate_is_a_config_property():
    assert not parse_recipe_config([]).sft_term_in_preference_loss
    cfg = parse_recipe_config(["--guard_action", "mitigate"])
    assert cfg.sft_term_in_preference_loss and preference_loss(cfg) == (["sigmoid", "sft"], [1.0, 0.0])
    cfg = parse_recipe_config(["--sft_weight", "0.5", "--loss", "ipo"])
    assert cfg.sft_term_in_preference_loss and preference_loss(cfg) == (["ipo", "sft"], [1.0, 0.5])


def test_no_stage_module_imports_the_monitors():
    for path in (ALIGNKIT / "stages.py", ALIGNKIT / "onpolicy" / "stage.py", ALIGNKIT / "onpolicy" / "collect.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        assert not {m for m in imported if m and m.startswith("alignkit.monitors")}, path
