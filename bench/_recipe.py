"""The recipe's own argument path, for benchmarks that train.

A bench builds a `RecipeConfig` here, at the CPU demo's settings (recipes/configs/demo.yaml, the settings the
benches' committed figures were measured with) with the fields it varies set by name (the flat names of the YAML files
and of the recipe's command line), and hands it to `alignkit.stages.run_sft_stage` /
`run_preference_stage`, which build TRL's configs with `sft_config` / `dpo_config`. So a bench trains exactly what
`recipes/extended_dpo.py` trains with the same fields: LoRA, schedule, lengths, and float32 on a CPU (TRL's own
default is bf16 autocast even there, which an earlier hand-built bench config inherited).
"""

from __future__ import annotations

import os
import time
from dataclasses import fields
from pathlib import Path

import torch
import yaml

from alignkit.config import CONFIG_CLASSES, RecipeConfig, config_keys

DEMO_YAML = Path(__file__).parents[1] / "recipes" / "configs" / "demo.yaml"


def recipe_config(**overrides) -> RecipeConfig:
    """The CPU demo's config (demo.yaml), with `overrides` (flat field names, e.g. `preference_max_steps=12`)."""
    if unknown := sorted(overrides.keys() - config_keys()):
        raise ValueError(f"not fields of the recipe's config: {unknown}")
    values = {**yaml.safe_load(DEMO_YAML.read_text()), **overrides}
    parts = [cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values}) for cls in CONFIG_CLASSES]
    return RecipeConfig(*parts)


def set_cpu_threads(cfg: RecipeConfig) -> int:
    """torch's threads as the recipe sets them for one CPU process: `cpu_threads`, or every core it may use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(cfg.run.cpu_threads or cores)
    return torch.get_num_threads()


def cpu_seconds() -> float:
    """CPU time this process (and its children) has used so far, user + system."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def cpu_use_line(wall_start: float, cpu_start: float, threads: int) -> str:
    """How busy this process kept its threads since the two starts: well below `threads` means it was not alone."""
    wall = time.perf_counter() - wall_start
    busy = (cpu_seconds() - cpu_start) / wall
    return f"CPU use: {busy:.2f} cores busy on average over {wall:.0f} s with {threads} torch threads"
