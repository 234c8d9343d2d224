"""Preference-stage throughput: alignkit's stage vs a plain TRL DPOTrainer script, side by side in one run.

    python bench/recipe_vs_trl.py --steps 20

Four variants, each in its own process (so peak memory is its own), on the real SmolLM2-135M-Instruct, the built-in
pairs, LoRA r=16 on q/k/v/o, batch 4, max_length 192, same seed and step count:
  trl_same       plain TRL script, settings equal to ours (no gradient checkpointing, reference not precomputed)
  ours_same      alignkit's preference stage with those same settings, monitors off -> orchestration overhead
  trl_defaults   plain TRL script with TRL's defaults (gradient checkpointing on, reference computed every step)
  ours_defaults  alignkit's training defaults (no gradient checkpointing, reference precomputed once); the squeezing
                 monitor is off here because its cost is fixed per stage, not per pair: bench/monitor_overhead.py
Prints pairs/s of the whole stage (set-up of the trainer, reference precompute and training), peak RSS, and the ratios
ours_same / trl_same (target >= 1.0) and ours_defaults / trl_defaults (target >= 1.25).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("trl_same", "ours_same", "trl_defaults", "ours_defaults")


def run_variant(name: str, steps: int, out: Path) -> dict:
    import torch
    from peft import LoraConfig
    from trl import DPOConfig, DPOTrainer

    from alignkit.config import parse_recipe_config
    from alignkit.data import load_builtin
    from alignkit.models import load_model, load_tokenizer
    from alignkit.stages import run_preference_stage

    torch.manual_seed(0)
    defaults = name.endswith("defaults")
    overrides = ["--output_dir", str(out), "--preference_max_steps", str(steps), "--logging_steps", "1000"]
    overrides += ["--probe_enabled", "false"]
    if not defaults:
        overrides += ["--precompute_ref_log_probs", "false"]
    cfg = parse_recipe_config(overrides)
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model)
    data = load_builtin()
    n_pairs = steps * cfg.run.per_device_train_batch_size
    start = time.perf_counter()
    if name.startswith("ours"):
        run_preference_stage(model, tokenizer, data["train"], cfg, out / "stage")
    else:  # what a user would write with TRL alone: same model, data, LoRA, optimizer settings
        args = DPOConfig(
            output_dir=str(out / "stage"),
            max_steps=steps,
            per_device_train_batch_size=cfg.run.per_device_train_batch_size,
            learning_rate=cfg.preference.preference_learning_rate,
            warmup_steps=0.1,
            lr_scheduler_type="cosine",
            beta=cfg.preference.beta,
            max_length=cfg.data.max_length,
            logging_steps=1000,
            save_strategy="no",
            report_to=[],
            seed=cfg.run.seed,
            use_cpu=not torch.cuda.is_available(),
            # TRL 1.16 defaults to bf16 autocast, also on a CPU; without native bf16 (this machine) a step then takes
            # ~90 s instead of ~5 s. A user would turn it off; alignkit does by construction (bf16 only on a GPU).
            bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
            **({} if defaults else {"gradient_checkpointing": False}),
        )
        lora = LoraConfig(
            r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM"
        )
        pairs = data["train"].select_columns(["prompt", "chosen", "rejected"])
        trainer = DPOTrainer(model=model, args=args, train_dataset=pairs, processing_class=tokenizer, peft_config=lora)
        trainer.train()
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": name, "seconds": round(seconds, 1), "pairs_per_s": round(n_pairs / seconds, 3),
            "peak_rss_mb": round(peak_mb)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="outputs/bench_recipe_vs_trl")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: one child process
    args = parser.parse_args()
    out = Path(args.out)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.steps, out / args.variant)))
        return
    results = {}
    for name in VARIANTS:
        cmd = [sys.executable, __file__, "--steps", str(args.steps), "--out", str(out), "--variant", name]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if proc.returncode != 0:
            sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(results[name]), flush=True)
    same = results["ours_same"]["pairs_per_s"] / results["trl_same"]["pairs_per_s"]
    default = results["ours_defaults"]["pairs_per_s"] / results["trl_defaults"]["pairs_per_s"]
    print(f"ratio ours_same / trl_same         = {same:.2f}  (target >= 1.0: orchestration costs nothing)")
    print(f"ratio ours_defaults / trl_defaults = {default:.2f}  (target >= 1.25)")


if __name__ == "__main__":
    main()
