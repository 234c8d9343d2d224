"""The benchmarks that train build their trainers through the recipe's own argument path (bench/_recipe.py): the
recipe's config at its defaults, turned into TRL's configs by `alignkit.stages`. So they train as the recipe does,
float32 on a CPU, and never under TRL's own bf16 default, which hand-built bench configs once inherited."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

from alignkit.config import parse_recipe_config
from alignkit.models import resolve_dtype
from alignkit.stages import dpo_config, sft_config

BENCH = Path(__file__).resolve().parents[1] / "bench"
DEMO_YAML = BENCH.parent / "recipes" / "configs" / "demo.yaml"


def bench(name: str):
    """A bench script as a module (they import their shared helper `_recipe` from their own folder)."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def changed_fields(cfg) -> set[str]:
    """The fields where `cfg` differs from the CPU demo's config (recipes/configs/demo.yaml, as parsed)."""
    default = parse_recipe_config(["--config", str(DEMO_YAML)]).to_dict()
    return {k for k, v in cfg.to_dict().items() if default[k] != v}


def assert_float32_on_cpu(cfg, args) -> None:
    assert resolve_dtype(cfg.model.torch_dtype) == torch.float32
    assert (args.bf16, args.fp16, args.use_cpu) == (False, False, True)


def test_monitor_overhead_trains_the_recipes_preference_stage(tmp_path, cpu_only):
    module = bench("monitor_overhead")
    args = module.build_parser().parse_args(["--out", str(tmp_path)])
    cfg = module.bench_config(args)
    assert changed_fields(cfg) == {"preference_max_steps", "output_dir"}  # the monitor at the recipe's defaults
    dpo = dpo_config(cfg, tmp_path / "preference", cfg.preference.preference_max_steps)
    assert_float32_on_cpu(cfg, dpo)
    assert dpo.max_steps == args.steps and dpo.learning_rate == cfg.preference.preference_learning_rate


@pytest.mark.parametrize(("arm", "mode"), [("chosen_sft", "chosen"), ("extended_sft", "extended")])
def test_squeezing_signature_trains_the_recipes_stages(tmp_path, cpu_only, arm, mode):
    module = bench("squeezing_signature")
    args = module.build_parser().parse_args(["--out", str(tmp_path)])
    cfg = module.arm_config(arm, args)
    assert cfg.sft.sft_mode == mode
    # steps, rates and schedule, probes and the run's folder; model, LoRA, batch and lengths stay the recipe's
    assert changed_fields(cfg) <= {
        "sft_mode", "sft_max_steps", "sft_learning_rate", "sft_trainer_args", "preference_max_steps",
        "preference_learning_rate", "preference_trainer_args", "beta", "probe_num_prompts", "probe_every",
        "probe_max_new_tokens", "output_dir", "seed", "save_steps", "cpu_threads",
    }  # fmt: skip
    sft = sft_config(cfg, tmp_path / "sft")
    dpo = dpo_config(cfg, tmp_path / "preference", cfg.preference.preference_max_steps)
    for trl_args in (sft, dpo):
        assert_float32_on_cpu(cfg, trl_args)
    assert (sft.max_steps, dpo.max_steps, dpo.learning_rate) == (args.sft_steps, args.dpo_steps, args.dpo_lr)
