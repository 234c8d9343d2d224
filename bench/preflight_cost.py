"""Pre-flight time on the default data vs the preference stage's time (target: pre-flight ≤ 10%).

Everything goes through the recipe's own code path: a `RecipeConfig` parsed from recipes/configs/demo.yaml, the
recipe's pre-flight steps (`alignkit.preflight.recipe`: `after_sft`, `preference_pairs`) and
`alignkit.stages.run_preference_stage` with the settings the recipe gives it. The squeezing monitor is off, so the
stage is timed without its probe evaluations: the share is an upper bound of the pre-flight's share in a default run
(which monitors). SFT is off (`sft_mode: none`): the pre-flight then scores the base model, which is the stage's start
and reference exactly as the SFT model is after SFT, so its pass stands in for TRL's reference pass as it does in the
recipe (alignkit/preflight/reference.py); SFT changes the weights, not the cost of a pass or a step.

One run measures, side by side:

1. the pre-flight (`preflight: report`): model load, the batched scoring of the stage's pairs, the one-step
   predictions (`preflight_dynamics_pairs`, timed apart);
2. TRL's reference pass, which the pre-flight's pass replaces: the stage's trainer is built twice on the same pairs,
   once with the pre-flight's reference log-probs and once without (TRL then runs its pass in `__init__`); the
   difference of the two build times is that pass;
3. the preference stage itself, with the pre-flight's reference log-probs (model load, trainer build, training).

The preference stage without a pre-flight = (3) + (2); the pre-flight's cost to a run = (1) − (2), as a share of it.

    python bench/preflight_cost.py --results results/preflight_cost        # default config, under the CPU lock
    python bench/preflight_cost.py --preflight_dynamics_pairs 0            # any recipe field overrides the default

The seconds are shown rounded to 0.1 s; `raw_seconds` holds the same durations unrounded (a pass on a tiny model
can take less than 0.05 s). The figures also go to bench/results/preflight_cost/result.json (bench/_results.py).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from _recipe import set_cpu_threads
from _results import write_result

from alignkit.config import parse_recipe_config
from alignkit.data import load_preference_data
from alignkit.models import load_tokenizer
from alignkit.preflight import recipe as preflight
from alignkit.stages import REFERENCE_COLUMNS, StageResult, dpo_trainer, load_stage_model, run_preference_stage

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("alignkit")


def build_seconds(cfg, tokenizer, pairs, folder: Path) -> float:
    """Seconds to build the stage's trainer on `pairs` (TRL tokenizes them, and runs its reference pass unless the
    pairs carry valid reference log-probs); the model load before it is not counted."""
    policy = load_stage_model(cfg, [])
    started = time.perf_counter()
    trainer = dpo_trainer(policy, tokenizer, pairs, cfg, folder, cfg.preference.preference_max_steps)
    seconds = time.perf_counter() - started
    del trainer, policy
    return seconds


def measure(argv: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix="preflight_cost_"))
    cfg = parse_recipe_config(
        ["--config", str(ROOT / "recipes" / "configs" / "demo.yaml"), "--output_dir", str(out),
         "--probe_enabled", "false", "--save_steps", "1000", "--sft_mode", "none", "--preflight", "report", *argv]
    )  # fmt: skip
    preflight.check_preflight(cfg)
    threads = set_cpu_threads(cfg)
    tokenizer = load_tokenizer(cfg.model)
    data = load_preference_data(cfg.data, seed=cfg.run.seed)
    load_stage_model(cfg, [])  # warm-up: the GGUF conversion and file cache, so no phase below pays a first load

    started = time.perf_counter()
    result = preflight.after_sft(cfg, tokenizer, data, out, StageResult("sft", "off"), None)
    pairs = preflight.preference_pairs(cfg, data["train"], result)
    preflight_s = time.perf_counter() - started
    shared = set(REFERENCE_COLUMNS) <= set(pairs.column_names)

    with_reference = build_seconds(cfg, tokenizer, pairs, out / "build_shared")
    plain = pairs.remove_columns([c for c in REFERENCE_COLUMNS if c in pairs.column_names])
    without_reference = build_seconds(cfg, tokenizer, plain, out / "build_trl")
    trl_pass = without_reference - with_reference if shared else 0.0

    started = time.perf_counter()
    policy = load_stage_model(cfg, [])
    stage = run_preference_stage(policy, tokenizer, pairs, cfg, out / "preference")
    stage_s = time.perf_counter() - started
    stage_alone = stage_s + trl_pass  # what the stage takes when TRL runs its own reference pass
    raw = {
        "preflight": preflight_s, "preflight_dynamics": result.dynamics_seconds,
        "trainer_build_with_preflight_reference": with_reference, "trainer_build_with_trl_reference_pass":
        without_reference, "trl_reference_pass": trl_pass, "preference_stage_shared": stage_s,
        "preference_train": stage.seconds, "preference_stage_alone": stage_alone,
    }  # fmt: skip
    m, p = cfg.model, cfg.preference
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": "recipes/configs/demo.yaml",
        "overrides": ["--probe_enabled false", "--save_steps 1000", "--sft_mode none", "--preflight report", *argv],
        "settings": {
            "model": m.model_name_or_path, "use_lora": m.use_lora, "lora_r": m.lora_r,
            "lora_target_modules": m.lora_target_modules, "loss": p.loss,
            "preference_max_steps": p.preference_max_steps,
            "per_device_train_batch_size": cfg.run.per_device_train_batch_size, "max_length": cfg.data.max_length,
            "preflight_pairs": cfg.preflight.preflight_pairs,
            "preflight_dynamics_pairs": cfg.preflight.preflight_dynamics_pairs,
            "precompute_ref_log_probs": p.precompute_ref_log_probs, "threads": threads,
        },
        "pairs_scored": len(result.records),
        "reference_shared": shared,
        "preflight_seconds": round(preflight_s, 1),
        "preflight_dynamics_seconds": round(result.dynamics_seconds, 1),
        "trainer_build_seconds_with_preflight_reference": round(with_reference, 1),
        "trainer_build_seconds_with_trl_reference_pass": round(without_reference, 1),
        "trl_reference_pass_seconds": round(trl_pass, 1),
        "preference_stage_seconds_shared": round(stage_s, 1),
        "preference_train_seconds": round(stage.seconds, 1),
        "preference_steps": stage.steps,
        "preference_stage_seconds_alone": round(stage_alone, 1),
        "share_raw": round(preflight_s / stage_alone, 3),
        "share_added": round((preflight_s - trl_pass) / stage_alone, 3),
        "share_added_without_dynamics": round((preflight_s - result.dynamics_seconds - trl_pass) / stage_alone, 3),
        "load_average_1min_at_end": round(os.getloadavg()[0], 1),
        "verdict": result.verdict,
        "raw_seconds": raw,
    }  # fmt: skip


def markdown(r: dict) -> str:
    s = r["settings"]
    pct = {k: f"{100 * r[k]:.1f}%" for k in ("share_raw", "share_added", "share_added_without_dynamics")}
    return "\n".join([
        "# Pre-flight cost vs the preference stage (bench/preflight_cost.py)", "",
        f"Run {r['when']} on `{r['config']}` with {' '.join(r['overrides'])}: {s['model']}, LoRA r {s['lora_r']} on "
        f"{s['lora_target_modules']}, {s['loss']}, {s['preference_max_steps']} steps at batch "
        f"{s['per_device_train_batch_size']}, {r['pairs_scored']} pairs scored ({s['preflight_pairs']}), "
        f"{s['preflight_dynamics_pairs']} one-step predictions, {s['threads']} threads; load average at the end "
        f"{r['load_average_1min_at_end']}. Reference log-probs shared with the stage: {r['reference_shared']}.", "",
        "| phase | seconds |", "|---|---:|",
        f"| pre-flight (model load, scoring, one-step predictions) | {r['preflight_seconds']} |",
        f"| of which the one-step predictions | {r['preflight_dynamics_seconds']} |",
        "| TRL's reference pass, replaced by the pre-flight's (trainer build "
        f"{r['trainer_build_seconds_with_trl_reference_pass']} s without vs "
        f"{r['trainer_build_seconds_with_preflight_reference']} s with its reference log-probs) | "
        f"{r['trl_reference_pass_seconds']} |",
        f"| preference stage with the shared reference (load, build, {r['preference_steps']} steps) | "
        f"{r['preference_stage_seconds_shared']} |",
        f"| of which training | {r['preference_train_seconds']} |",
        f"| preference stage alone (with TRL's pass) | {r['preference_stage_seconds_alone']} |", "",
        "- pre-flight's added cost (its time less the reference pass it replaces) / stage alone: "
        f"**{pct['share_added']}**",
        f"- the same without the one-step predictions: **{pct['share_added_without_dynamics']}**",
        f"- pre-flight's whole time / stage alone (nothing shared): {pct['share_raw']}", "",
        f"Verdict of the pre-flight: {r['verdict']}", "",
    ])  # fmt: skip


def main(argv: list[str]) -> dict:
    results = None
    if "--results" in argv:
        i = argv.index("--results")
        results, argv = Path(argv[i + 1]), argv[:i] + argv[i + 2 :]
    r = measure(argv)
    write_result("preflight_cost", argv if results is None else [*argv, "--results", results], r)
    if results is not None:
        results.mkdir(parents=True, exist_ok=True)
        (results / "preflight_cost.json").write_text(json.dumps(r, indent=1) + "\n")
        (results / "preflight_cost.md").write_text(markdown(r))
    return r


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("alignkit").setLevel(logging.INFO)
    print(json.dumps(main(sys.argv[1:]), indent=1))
