"""bench/recipe_vs_trl.py: alignkit's side is the recipe's config (bench/_recipe.py) with only the bench's fields
changed; the plain-TRL side trains what the recipe trains with TRL's defaults for how, bf16 as TRL leaves it."""

from __future__ import annotations

import argparse

import pytest
import torch
from peft import LoraConfig
from trl import DPOConfig, DPOTrainer
from trl.trainer import utils as trl_utils

from alignkit.data.builtin import load_builtin
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


def test_compact_lm_head_gives_the_same_loss_and_gradients(
    tmp_path, cpu_only, monkeypatch, tiny_model, tiny_tokenizer
):
    """TRL's fused LM head on labelled positions only (the bench's `--ours_compact_lm_head`) changes no number."""
    module = bench("recipe_vs_trl")
    pairs = load_builtin()["train"].select(range(4)).select_columns(["prompt", "chosen", "rejected"])
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, use_cpu=True, bf16=False,
                     gradient_checkpointing=False, report_to=[], max_length=96)  # fmt: skip
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    trainer = DPOTrainer(
        model=tiny_model, args=args, train_dataset=pairs, processing_class=tiny_tokenizer, peft_config=lora
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["completion_mask"] == 0).any()  # prompt positions exist: the compact head has something to skip

    def loss_and_grads():
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        return loss.item(), grads

    calls = []
    original = trl_utils._use_triton
    monkeypatch.setattr(trl_utils, "_use_triton", lambda device: calls.append(device.type) or original(device))
    full_loss, full_grads = loss_and_grads()
    assert calls and not any(original(torch.device(d)) for d in calls)  # every position projected on the CPU
    module.compact_lm_head_on_cpu()
    compact_loss, compact_grads = loss_and_grads()
    assert trl_utils._use_triton(torch.device("cpu"))
    assert compact_loss == pytest.approx(full_loss, abs=1e-6)
    assert full_grads.keys() == compact_grads.keys() and full_grads
    for name, grad in full_grads.items():
        torch.testing.assert_close(compact_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)
