"""Time from a preemption signal to the recipe's exit, on the demo (SmolLM2-135M, recipes/configs/demo.yaml), CPU.

    python bench/preempt_latency.py            # three stops, each resumed by the next run, in outputs/bench_preempt/
    python bench/preempt_latency.py --finish   # then a fourth run that resumes and finishes the recipe

Each run is the recipe as the Docker image starts it (`python recipes/extended_dpo.py`, one process), with a callback
that sends SIGTERM to its own process at a chosen point and notes the time; the bench notes when the process has
exited. The three points are the slow cases for a stop:

1. `sft_first_evaluation`: as the SFT stage starts, just before the monitor's first probe evaluation (the longest
   one: all families, greedy decoding): it is interrupted and the run ends without a checkpoint (nothing trained);
2. `sft_step_with_evaluation`: at the start of SFT step 2, whose end has a probe evaluation due (`probe_every 2`): the
   step finishes, the evaluation is dropped, the checkpoint of step 2 is saved;
3. `preference_step_with_evaluation`: the same at preference step 2 (the rerun first finishes SFT from its checkpoint).

The run is the demo shortened to 4 + 4 steps with 8 probe prompts per split so that the bench fits a few minutes; the
latency does not depend on either (a step is one step, an interrupted evaluation stops at its next token or batch).
Every run must exit 75. Figures: bench/results/preempt_latency/result.json (bench/_results.py), rewritten after each
case; Kubernetes' default grace period is 30 s, Docker's 10 s. On a loaded machine a probe evaluation's scoring batch
(the interruption's unit there) takes longer: read the load average in the file's `machine`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _results import write_result

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "outputs" / "bench_preempt"
ARGS = ["--config", "recipes/configs/demo.yaml", "--sft_max_steps", "4", "--preference_max_steps", "4",
        "--probe_num_prompts", "8", "--probe_every", "2", "--save_steps", "1000", "--use_cpu", "true"]  # fmt: skip
GRACE = {"kubernetes": 30, "docker": 10}

# The recipe with a callback that sends SIGTERM at (stage, point) and writes the wall time of the signal to a file.
CHILD = """
import os, signal, sys, time
from transformers import TrainerCallback
import alignkit.stages as stages
from alignkit.recipe import main

stage, point, stamp = os.environ["BENCH_STAGE"], os.environ["BENCH_POINT"], os.environ["BENCH_STAMP"]

def send():
    with open(stamp, "w") as f:
        f.write(repr(time.time()))
    os.kill(os.getpid(), signal.SIGTERM)

class SignalAt(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        if point == "begin":
            send()

    def on_step_begin(self, args, state, control, **kwargs):
        if point != "begin" and state.global_step == int(point) - 1:
            send()

callbacks_for_stage = stages.callbacks_for_stage

def with_signal(callbacks, name, stage_dir):
    callbacks = list(callbacks_for_stage(callbacks, name, stage_dir))
    if name == stage:
        callbacks.insert(0, SignalAt())  # first: before the monitor's evaluation at the stage's start
    return callbacks

stages.callbacks_for_stage = with_signal
main(sys.argv[1:])
"""
CASES = [("sft_first_evaluation", "sft", "begin"), ("sft_step_with_evaluation", "sft", "2"),
         ("preference_step_with_evaluation", "preference", "2")]  # fmt: skip


def run_case(name: str, stage: str, point: str) -> dict:
    stamp = OUT / f"{name}.signal_time"
    stamp.unlink(missing_ok=True)
    env = {**os.environ, "BENCH_STAGE": stage, "BENCH_POINT": point, "BENCH_STAMP": str(stamp),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    start = time.time()
    log = OUT / f"{name}.log"
    with log.open("w") as f:
        proc = subprocess.run([sys.executable, "-c", CHILD, *ARGS, "--output_dir", str(OUT / "run")], env=env,
                              stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, timeout=900)  # fmt: skip
    exited = time.time()
    if proc.returncode != 75 or not stamp.exists():
        sys.exit(f"{name}: exit code {proc.returncode} (75 expected); see {log}")
    signalled = float(stamp.read_text())
    marker = json.loads((OUT / "run" / "preempted.json").read_text())
    figures = {
        "signal_to_exit_seconds": round(exited - signalled, 2),
        "signal_to_marker_seconds": marker["seconds_since_signal"],
        "run_seconds": round(exited - start, 1),
        "where": marker["where"],
        "checkpoint": Path(marker["checkpoint"]).name if marker["checkpoint"] else None,
        "exit_code": proc.returncode,
    }
    print(f"{name}: signal -> exit {figures['signal_to_exit_seconds']} s ({figures['where']})", file=sys.stderr)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finish", action="store_true", help="then resume once more and finish the recipe")
    args = parser.parse_args(argv)
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    cases: dict[str, dict] = {}
    for name, stage, point in CASES:  # the figures are written after each case: a run cut short keeps what it had
        cases[name] = run_case(name, stage, point)
        worst = max(c["signal_to_exit_seconds"] for c in cases.values())
        figures = {
            "cases": cases, "complete": len(cases) == len(CASES), "max_signal_to_exit_seconds": worst,
            "recipe_args": " ".join(ARGS), "fits_grace_seconds": {k: worst <= v for k, v in GRACE.items()},
        }  # fmt: skip
        write_result("preempt_latency", argv, figures)
    if args.finish:
        done = subprocess.run([sys.executable, "recipes/extended_dpo.py", *ARGS, "--output_dir", str(OUT / "run")],
                              capture_output=True, text=True, cwd=ROOT, timeout=900)  # fmt: skip
        figures["finished_after_resume"] = done.returncode == 0 and (OUT / "run" / "report.md").exists()
        write_result("preempt_latency", argv, figures)
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
