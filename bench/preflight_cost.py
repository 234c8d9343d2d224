"""Pre-flight time on the default data vs the preference stage's time (issue 18; target: pre-flight ≤ 10%).

Both are built through the recipe's own code path: a `RecipeConfig` parsed from recipes/configs/default.yaml, the
pre-flight's `run_preflight`, and `alignkit.stages.run_preference_stage` with the settings the recipe would give it
(never a hand-built DPOConfig: TRL defaults to bf16 even on CPU). The squeezing monitor is off, so the stage is timed
without its probe evaluations: the ratio is then an upper bound of the pre-flight's share in a default run (which
monitors). Both start from the base model: the SFT stage changes the weights, not the cost of a step.

    python bench/preflight_cost.py                          # default config, alone on the machine for a clean number
    python bench/preflight_cost.py --preflight_dynamics_pairs 0   # any recipe field overrides the default config
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from alignkit.config import parse_recipe_config
from alignkit.data import load_preference_data
from alignkit.models import load_tokenizer
from alignkit.preflight.run import run_preflight
from alignkit.stages import load_stage_model, run_preference_stage

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix="preflight_cost_"))
    cfg = parse_recipe_config(
        ["--config", str(ROOT / "recipes" / "configs" / "default.yaml"), "--output_dir", str(out),
         "--probe_enabled", "false", "--save_steps", "1000", *argv]
    )  # fmt: skip
    threads = cfg.run.cpu_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)  # as the recipe does on CPU
    tokenizer = load_tokenizer(cfg.model)
    data = load_preference_data(cfg.data, seed=cfg.run.seed)

    started = time.perf_counter()
    result = run_preflight(cfg, tokenizer, data["train"], data.get("test"), out / "preflight", None)
    preflight_wall = time.perf_counter() - started

    started = time.perf_counter()
    policy = load_stage_model(cfg, [])
    stage = run_preference_stage(policy, tokenizer, data["train"], cfg, out / "preference")
    stage_wall = time.perf_counter() - started
    return {
        "pairs_scored": len(result.records),
        "dynamics_pairs": cfg.preflight.preflight_dynamics_pairs,
        "preflight_seconds": round(preflight_wall, 1),
        "preflight_dynamics_seconds": round(result.dynamics_seconds, 1),
        "preference_steps": stage.steps,
        "preference_train_seconds": round(stage.seconds, 1),
        "preference_wall_seconds": round(stage_wall, 1),
        "ratio_to_train": round(preflight_wall / stage.seconds, 3),
        "ratio_to_train_without_dynamics": round((preflight_wall - result.dynamics_seconds) / stage.seconds, 3),
        "threads": threads,
        "load_average_1min_at_end": round(os.getloadavg()[0], 1),
        "verdict": result.verdict,
        "output_dir": str(out),
    }


if __name__ == "__main__":
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("alignkit").setLevel(logging.INFO)
    print(json.dumps(main(sys.argv[1:]), indent=1))
