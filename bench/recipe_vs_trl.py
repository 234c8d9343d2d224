"""Preference-stage throughput: alignkit's stage vs a plain TRL DPOTrainer script, side by side in one run.

    python bench/recipe_vs_trl.py                       # the recipe's preference_max_steps, every variant
    python bench/recipe_vs_trl.py --variants trl_fp32 ours --ours_trainer_args '{"precompute_ref_batch_size": 32}'
    python bench/recipe_vs_trl.py --profile ours        # one variant in this process under cProfile, time by part

alignkit's side goes through the recipe's own argument path (bench/_recipe.py): the recipe's config at its defaults
(recipes/configs/default.yaml: the real SmolLM2-135M-Instruct, float32 on a CPU, LoRA r=16 on q/k/v/o, batch 4,
max_length 192, cosine schedule, the reference precomputed, no gradient checkpointing), torch threads as the recipe
sets them, handed to `alignkit.stages.run_preference_stage`, monitor off (its cost is per stage, not per pair:
bench/monitor_overhead.py). The plain-TRL side is the script a TRL user writes: the same model, data, LoRA, batch,
learning rate, schedule, beta and max_length, `trainer.train()` then `trainer.save_model()`, and TRL's defaults for
everything else. Each variant runs in its own process (peak memory is its own), one after another:

  trl_same       TRL with alignkit's training settings: no gradient checkpointing, the reference every step, fp32
  ours_same      alignkit's stage with those same settings (`precompute_ref_log_probs: false`) -> orchestration cost
  trl_defaults   TRL's defaults as they are: gradient checkpointing on, the reference every step, and `bf16=True`,
                 which TRL 1.16 keeps on a CPU (bf16 autocast; `use_cpu=True` is the one thing a CPU user must add,
                 DPOConfig refuses to build without it). Slow on a CPU without native bf16: `--bf16_steps` steps only
  trl_fp32       TRL's defaults with `bf16=False`: what a TRL user on a CPU ends up running
  ours           alignkit's defaults (the recipe's config), plus `--ours_trainer_args` when given

Each prints pairs/s over the whole stage (trainer set-up incl. tokenization, reference pass, training, saving the
adapter; alignkit's stage also writes its pair subset, a checkpoint every `save_steps` and its stage files), the
training loop alone, and peak RSS. Ratios: ours_same / trl_same (orchestration, target >= 1.0) and ours / trl_fp32
and ours / trl_defaults ("each side's defaults", target >= 1.25). The variants' rows and the ratios also go to
bench/results/recipe_vs_trl/result.json (bench/_results.py).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from _recipe import cpu_seconds, recipe_config, set_cpu_threads
from _results import write_result
from peft import LoraConfig
from trl import DPOConfig, DPOTrainer
from trl.trainer import utils as trl_utils

from alignkit.config import RecipeConfig
from alignkit.data import load_preference_data
from alignkit.models import load_model, load_tokenizer
from alignkit.stages import dpo_config, pairs_for_steps, run_preference_stage

VARIANTS = ("trl_same", "ours_same", "trl_defaults", "trl_fp32", "ours")

# cProfile parts of a stage: (label, file suffix, function name); cumulative seconds, so nested parts overlap.
PARTS = (
    ("trainer set-up (DPOTrainer.__init__: tokenization, PEFT wrap)", "trl/trainer/dpo_trainer.py", "__init__"),
    ("reference precompute", "trl/trainer/dpo_trainer.py", "_precompute_ref_logps"),
    ("training loop (Trainer.train)", "transformers/trainer.py", "train"),
    ("  training steps (forward + backward)", "transformers/trainer.py", "training_step"),
    ("    loss: policy + per-step reference forward", "trl/trainer/dpo_trainer.py", "_compute_loss"),
    ("      LM head log-probs forward (chunked, fused)", "trl/kernels/chunked_logprob.py", "forward"),
    ("    backward", "accelerate/accelerator.py", "backward"),
    ("      LM head log-probs backward", "trl/kernels/chunked_logprob.py", "backward"),
    ("  optimizer step", "torch/optim/optimizer.py", "wrapper"),
    ("  data collation", "trl/trainer/dpo_trainer.py", "torch_call"),
    ("  callbacks", "transformers/trainer_callback.py", "call_event"),
    ("  checkpoint saves", "transformers/trainer.py", "_save_checkpoint"),
    ("saving the adapter (save_model)", "transformers/trainer.py", "save_model"),
)


def compact_lm_head_on_cpu() -> None:
    """Make TRL's fused LM head project only the positions that have a label (the response tokens) on a CPU too.

    TRL 1.16 does so where its Triton kernels run (CUDA, XPU); on any other device it projects every position, prompt
    and padding included, so that tile shapes stay fixed for graph compilers (`add_fused_lm_head`: "On Triton devices,
    only the valid positions are scored"). Its torch fallback takes the compact rows as they are. The labels, log-probs
    and gradients are the same (tests/test_bench_recipe_vs_trl.py); only the work on unlabelled positions goes.
    """
    triton = trl_utils._use_triton  # read by `_fused_forward` for this one choice; the kernels keep their own
    trl_utils._use_triton = lambda device: device.type == "cpu" or triton(device)


def variant_settings(name: str, args) -> dict:
    """What a variant changes from its side's defaults (printed with its result)."""
    if name == "ours_same":
        return {"precompute_ref_log_probs": False}
    if name == "ours":
        if not args.ours_trainer_args:
            return {}
        # on top of the recipe's own pass-through (default.yaml may set some)
        return {"preference_trainer_args": recipe_config().preference.preference_trainer_args | args.ours_trainer_args}
    if name == "trl_same":
        return {"gradient_checkpointing": False, "bf16": False}
    if name == "trl_fp32":
        return {"bf16": False}
    return {}


def ours_config(name: str, steps: int, out: Path, args) -> RecipeConfig:
    """The recipe's config of an `ours*` variant: its defaults, the bench's steps and folder, monitor off."""
    settings = variant_settings(name, args)
    return recipe_config(output_dir=str(out), preference_max_steps=steps, logging_steps=1000, probe_enabled=False,
                         **settings)  # fmt: skip


# What a `trl*` variant copies from the recipe's own DPOConfig: the training itself, not how it runs.
TRAINING = ("max_steps", "per_device_train_batch_size", "learning_rate", "warmup_steps", "lr_scheduler_type", "beta",
            "loss_type", "max_length", "seed")  # fmt: skip


def trl_config(name: str, cfg: RecipeConfig, steps: int, out: Path, args) -> DPOConfig:
    """A `trl*` variant's DPOConfig as a TRL user writes it: the training the recipe does (`TRAINING`, read off the
    recipe's DPOConfig), TRL's defaults for how it runs, and the variant's changes (`variant_settings`)."""
    recipe = dpo_config(cfg, out / "stage", steps)
    return DPOConfig(
        output_dir=str(out / "stage"),
        logging_steps=1000,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),  # without it DPOConfig refuses to build on a CPU (bf16 default)
        **{k: getattr(recipe, k) for k in TRAINING},
        **variant_settings(name, args),
    )


def run_variant(name: str, steps: int, out: Path, args) -> dict:
    torch.manual_seed(0)
    ours = name.startswith("ours")
    cfg = ours_config(name, steps, out, args) if ours else recipe_config(output_dir=str(out))
    if ours:  # the recipe sets torch's threads; a plain TRL script leaves torch's default
        set_cpu_threads(cfg)
        if args.ours_compact_lm_head:
            compact_lm_head_on_cpu()
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model)
    data = load_preference_data(cfg.data, seed=cfg.run.seed)
    start, cpu = time.perf_counter(), cpu_seconds()
    if ours:
        loop = run_preference_stage(model, tokenizer, data["train"], cfg, out / "stage").seconds
    else:
        m = cfg.model
        lora = LoraConfig(r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                          target_modules=m.lora_target_modules, task_type="CAUSAL_LM")  # fmt: skip
        # the subset of pairs alignkit's stage trains on, so both sides see the same lengths
        pairs = pairs_for_steps(data["train"], steps, cfg).select_columns(["prompt", "chosen", "rejected"])
        trainer = DPOTrainer(model=model, args=trl_config(name, cfg, steps, out, args), train_dataset=pairs,
                             processing_class=tokenizer, peft_config=lora)  # fmt: skip
        loop_start = time.perf_counter()
        trainer.train()
        loop = time.perf_counter() - loop_start
        trainer.save_model(str(out / "stage" / "adapter"))
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_pairs = steps * cfg.run.per_device_train_batch_size
    settings = variant_settings(name, args) | ({"compact_lm_head": True} if ours and args.ours_compact_lm_head else {})
    recorded = ("per_device_train_batch_size", "max_length", "lora_r", "precompute_ref_log_probs",
                "gradient_checkpointing", "preference_trainer_args", "save_steps", "torch_dtype")  # fmt: skip
    recipe = {k: cfg.to_dict()[k] for k in recorded} if ours else None  # the recipe's settings this run measured
    return {"variant": name, "steps": steps, "settings": settings, "recipe": recipe,
            "threads": torch.get_num_threads(), "seconds": round(seconds, 1), "loop_seconds": round(loop, 1),
            "s_per_step": round(loop / steps, 2), "pairs_per_s": round(n_pairs / seconds, 3),
            "peak_rss_mb": round(peak_mb),
            # cores this process kept busy: near its thread count when it ran alone, lower when it shared the CPU
            "cpu_busy": round((cpu_seconds() - cpu) / seconds, 2)}  # fmt: skip


def profile_variant(name: str, steps: int, out: Path, args) -> None:
    """Run one variant under cProfile and print the cumulative seconds of the stage's parts (PARTS)."""
    profiler = cProfile.Profile()
    result = profiler.runcall(run_variant, name, steps, out / name, args)
    out.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(str(out / f"{name}.prof"))
    # (file, line, function) -> (calls, primitive calls, own seconds, cumulative seconds, callers)
    stats = pstats.Stats(profiler).stats
    print(json.dumps(result))
    print(f"{'part':60}{'calls':>8}{'seconds':>10}{'share':>8}")
    for label, suffix, function in PARTS:
        hits = [(v[0], v[3]) for (file, _, fn), v in stats.items() if fn == function and file.endswith(suffix)]
        calls, seconds = max(hits, key=lambda h: h[1], default=(0, 0.0))
        print(f"{label:60}{calls:8d}{seconds:10.1f}{seconds / result['seconds']:8.1%}")
    print(f"profile: {out / f'{name}.prof'} (`python -m pstats` to browse)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=None, help="preference steps (default: the recipe's)")
    parser.add_argument("--bf16_steps", type=int, default=3, help="steps of trl_defaults (bf16 autocast on a CPU)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--ours_trainer_args", type=json.loads, default=None,
                        help="preference_trainer_args of `ours` (JSON), e.g. a TRL option to try")  # fmt: skip
    parser.add_argument("--ours_compact_lm_head", action="store_true",
                        help="ours*: TRL's LM head on labelled positions only, also on a CPU")  # fmt: skip
    parser.add_argument("--profile", choices=VARIANTS, help="run this variant in-process under cProfile")
    parser.add_argument("--out", default="outputs/bench_recipe_vs_trl")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: one child process
    args = parser.parse_args(argv)
    steps = args.steps or recipe_config().preference.preference_max_steps
    out = Path(args.out)

    def steps_of(name: str) -> int:
        on_cpu_bf16 = name == "trl_defaults" and not torch.cuda.is_available()
        return min(steps, args.bf16_steps) if on_cpu_bf16 else steps

    if args.variant:
        print(json.dumps(run_variant(args.variant, steps_of(args.variant), out / args.variant, args)))
        return
    if args.profile:
        profile_variant(args.profile, steps_of(args.profile), out / "profile", args)
        return
    results = {}
    for name in args.variants:
        cmd = [sys.executable, __file__, "--steps", str(steps), "--bf16_steps", str(args.bf16_steps),
               "--out", str(out), "--variant", name]  # fmt: skip
        if args.ours_trainer_args:
            cmd += ["--ours_trainer_args", json.dumps(args.ours_trainer_args)]
        if args.ours_compact_lm_head:
            cmd += ["--ours_compact_lm_head"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if proc.returncode != 0:
            sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(results[name]), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")

    ratios = {}

    def ratio(a: str, b: str, label: str) -> None:
        if a in results and b in results:
            value = results[a]["pairs_per_s"] / results[b]["pairs_per_s"]
            ratios[f"{a} / {b}"] = value
            print(f"ratio {a} / {b} = {value:.2f} pairs/s  ({label})")

    print(f"\n{steps} steps (trl_defaults: {steps_of('trl_defaults')}), pairs/s over the whole stage")
    ratio("ours_same", "trl_same", "target >= 1.0: orchestration costs nothing")
    ratio("ours", "trl_fp32", "each side's defaults, TRL's bf16 turned off; target >= 1.25")
    ratio("ours", "trl_defaults", "each side's defaults as they are; target >= 1.25")
    figures = {"steps": steps, "trl_defaults_steps": steps_of("trl_defaults"), "variants": results, "ratios": ratios}
    write_result("recipe_vs_trl", argv, figures)


if __name__ == "__main__":
    main()
