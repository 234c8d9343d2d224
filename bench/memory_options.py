"""Peak memory (CPU RSS here) of the default preference stage with and without its memory options.

    python bench/memory_options.py --steps 10

Each combination of `precompute_ref_log_probs` and `gradient_checkpointing` runs alignkit's preference stage on the
real SmolLM2-135M-Instruct (built-in pairs, LoRA r=16, batch 4, monitor off) in its own process, so each peak is its
own. Prints a markdown table: peak RSS, and seconds for the stage, with the default row first; the rows also go to
bench/results/memory_options/result.json (bench/_results.py).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _results import write_result


def run_one(precompute: bool, checkpointing: bool, steps: int, out: Path) -> dict:
    from alignkit.config import parse_recipe_config
    from alignkit.data import load_builtin
    from alignkit.models import load_model, load_tokenizer
    from alignkit.stages import run_preference_stage

    cfg = parse_recipe_config(["--output_dir", str(out), "--preference_max_steps", str(steps), "--probe_enabled",
                               "false", "--precompute_ref_log_probs", str(precompute), "--gradient_checkpointing",
                               str(checkpointing), "--logging_steps", "1000"])  # fmt: skip
    tokenizer, model = load_tokenizer(cfg.model), load_model(cfg.model)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    run_preference_stage(model, tokenizer, load_builtin()["train"], cfg, out / "stage")
    return {
        "precompute_ref_log_probs": precompute,
        "gradient_checkpointing": checkpointing,
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_after_model_load_mb": round(before),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default="outputs/bench_memory")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: "precompute,checkpointing" in a child process
    args = parser.parse_args(argv)
    if args.one:
        precompute, checkpointing = (v == "True" for v in args.one.split(","))
        print(json.dumps(run_one(precompute, checkpointing, args.steps, Path(args.out) / args.one.replace(",", "_"))))
        return
    print(
        "| precompute_ref_log_probs | gradient_checkpointing | peak RSS (MB) | RSS after model load (MB) | seconds |"
    )
    print("|---|---|---:|---:|---:|")
    rows = []
    for precompute, checkpointing in itertools.product((True, False), (False, True)):  # default (True, False) first
        cmd = [sys.executable, __file__, "--steps", str(args.steps), "--out", args.out,
               "--one", f"{precompute},{checkpointing}"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if proc.returncode != 0:
            sys.exit(proc.stderr[-3000:])
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"| {precompute} | {checkpointing} | {r['peak_rss_mb']} | {r['rss_after_model_load_mb']} | "
              f"{r['seconds']} |", flush=True)  # fmt: skip
    write_result("memory_options", argv, {"steps": args.steps, "rows": rows})


if __name__ == "__main__":
    main()
