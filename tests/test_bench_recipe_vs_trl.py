"""bench/recipe_vs_trl.py: alignkit's side is the recipe's config (bench/_recipe.py) with only the bench's fields
changed; the plain-TRL side trains what the recipe trains with TRL's defaults for how, bf16 as TRL leaves it."""

from __future__ import annotations

import argparse

import pytest
import torch

from alignkit.stages import dpo_config

from .test_bench_paths import assert_float32_on_cpu, bench, changed_fields


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def options(ours_trainer_args=None) -> argparse.Namespace:
    return argparse.Namespace(ours_trainer_args=ours_trainer_args)


@pytest.mark.parametrize(
    ("name", "trainer_args", "changed"),
    [
        ("ours", None, set()),
        ("ours", {"precompute_ref_batch_size": 32}, {"preference_trainer_args"}),
        ("ours_same", None, {"precompute_ref_log_probs"}),
    ],
)
def test_ours_is_the_recipes_preference_stage(tmp_path, cpu_only, name, trainer_args, changed):
    module = bench("recipe_vs_trl")
    cfg = module.ours_config(name, 5, tmp_path, options(trainer_args))
    bench_fields = {"preference_max_steps", "output_dir", "logging_steps", "probe_enabled"}
    assert changed_fields(cfg) == bench_fields | changed
    args = dpo_config(cfg, tmp_path / "stage", 5)
    assert_float32_on_cpu(cfg, args)
    assert args.gradient_checkpointing is False and args.precompute_ref_log_probs is (name == "ours")
    if trainer_args:
        assert args.precompute_ref_batch_size == 32


@pytest.mark.parametrize(
    ("name", "bf16", "checkpointing"),
    [("trl_defaults", True, True), ("trl_fp32", False, True), ("trl_same", False, False)],
)
def test_trl_side_trains_the_recipes_settings_with_trls_defaults(tmp_path, cpu_only, name, bf16, checkpointing):
    module = bench("recipe_vs_trl")
    cfg = module.recipe_config()
    args = module.trl_config(name, cfg, 5, tmp_path, options())
    ours = dpo_config(cfg, tmp_path / "ours", 5)
    same = ("per_device_train_batch_size", "learning_rate", "beta", "max_length", "max_steps", "seed", "warmup_steps")
    assert {k: getattr(args, k) for k in same} == {k: getattr(ours, k) for k in same}
    assert args.lr_scheduler_type == ours.lr_scheduler_type
    assert (args.bf16, args.gradient_checkpointing, args.precompute_ref_log_probs) == (bf16, checkpointing, False)
    assert args.use_cpu
