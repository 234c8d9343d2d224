"""Does the paper's DPO squeezing signature show on SmolLM2-135M, and does extended SFT reduce it?

Two arms, same steps, same data order, same probe set; each runs the recipe's two stages through its own argument
path (bench/_recipe.py: a `RecipeConfig` at the CPU demo's settings, recipes/configs/demo.yaml, handed to
`alignkit.stages.run_sft_stage`, then `load_stage_model` and `run_preference_stage`, as recipes/extended_dpo.py does;
LoRA on q/k/v/o, batch, lengths, float32 on a CPU):
  chosen_sft  : SFT on y+ only (`sft_mode: chosen`), then off-policy DPO (the usual recipe);
  extended_sft: SFT on y+ and y- (`sft_mode: extended`, the recipe's default), then DPO (Ren & Sutherland's fix).
Each stage trains a fresh LoRA adapter on the merged result of the stage before, so the DPO reference is the SFT
model. The learning rates are the demo's (SFT 2e-4; DPO 4e-4, so that a short stage moves the model) and constant
in both stages (the demo's DPO schedule, set through the recipe's own pass-through,
`{sft,preference}_trainer_args: {lr_scheduler_type: constant}`); the steps, the probe count and the greedy length
differ from the demo's; the monitor's schedule, families and alert are the demo's. The tables printed at the end
(start -> end of each stage, per family and split; mechanism metrics with their 95% intervals over probes) are what
docs/monitors.md quotes.

    python bench/squeezing_signature.py                      # ~7.5 min alone on 2 CPU cores
    python bench/squeezing_signature.py --sft-steps 4 --dpo-steps 4 --probe-n 2   # smoke run
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from pathlib import Path

from _recipe import cpu_seconds, cpu_use_line, recipe_config, set_cpu_threads
from _results import write_result

from alignkit.config import RecipeConfig
from alignkit.data import load_preference_data
from alignkit.models import load_model, load_tokenizer
from alignkit.monitors import SqueezingMonitor, build_probe_set
from alignkit.monitors.scoring import FIXED_GREEDY, MECHANISM_METRICS
from alignkit.stages import load_stage_model, run_preference_stage, run_sft_stage

ARMS = {"chosen_sft": "chosen", "extended_sft": "extended"}  # arm -> sft_mode
STAGES = ("sft", "preference")
TRAINING_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def arm_config(arm: str, args) -> RecipeConfig:
    """The recipe's config for one arm: its defaults, with this bench's SFT mode, steps, rates and probes."""
    return recipe_config(
        sft_mode=ARMS[arm],
        sft_max_steps=args.sft_steps,
        sft_learning_rate=args.sft_lr,
        sft_trainer_args={"lr_scheduler_type": "constant"},
        preference_max_steps=args.dpo_steps,
        preference_learning_rate=args.dpo_lr,
        preference_trainer_args={"lr_scheduler_type": "constant"},
        beta=args.beta,
        probe_num_prompts=args.probe_n,
        probe_every=args.probe_every,
        probe_max_new_tokens=args.max_new_tokens,
        output_dir=str(Path(args.out) / arm),
        seed=args.seed,
        save_steps=10_000,  # no checkpoints: nothing here resumes, and saving them only adds time
        cpu_threads=args.threads,
    )


def run_arm(arm: str, args, data, probes, tokenizer) -> dict:
    cfg = arm_config(arm, args)
    out = Path(cfg.run.output_dir)
    shutil.rmtree(out, ignore_errors=True)  # finished stages in the folder would be skipped, not trained
    monitor = SqueezingMonitor(probes, cfg.monitor, tokenizer, out)

    def callbacks_for(stage: str, stage_dir: Path) -> list:
        return [monitor.callback(stage, stage_dir)]

    sft = run_sft_stage(load_model(cfg.model), tokenizer, data["train"], cfg, out / "sft", callbacks_for)
    policy = load_stage_model(cfg, [sft])
    preference = run_preference_stage(policy, tokenizer, data["train"], cfg, out / "preference", callbacks_for)
    summary = monitor.finish()
    (out / "summary.md").write_text(summary)
    timings = {}
    for stage, result in zip(STAGES, (sft, preference)):
        timings[f"{stage}_seconds"] = result.seconds
        timings[f"{stage}_probe_seconds"] = sum(r["probe/seconds"] for r in monitor.records if r["stage"] == stage)
    metrics = {k: preference.metrics.get(k) for k in TRAINING_METRICS}
    return {"records": monitor.records, "events": monitor.events, "timings": timings, "preference_metrics": metrics}


def stage_deltas(records: list[dict], stage: str, keys: list[str]) -> dict[str, tuple[float, float]]:
    """(start, end) of each key within a stage."""
    rows = [r for r in records if r["stage"] == stage]
    return {k: (rows[0][k], rows[-1][k]) for k in keys if rows and k in rows[0] and k in rows[-1]}


def stage_end(records: list[dict], stage: str, keys: list[str]) -> dict[str, float]:
    """Each key at the stage's last evaluation."""
    rows = [r for r in records if r["stage"] == stage]
    return {k: rows[-1][k] for k in keys if rows and k in rows[-1]}


def print_changes(title: str, arms: list[str], per_arm: dict[str, dict], keys: list[str]) -> None:
    print(f"\n## {title}: start -> end (change)\n")
    print("| metric | " + " | ".join(arms) + " |")
    print("|---|" + "---|" * len(arms))
    for key in keys:
        cells = []
        for arm in arms:
            if key in per_arm[arm]:
                a, b = per_arm[arm][key]
                cells.append(f"{a:.3f} -> {b:.3f} ({b - a:+.3f})")
            else:
                cells.append("–")
        print(f"| {key} | " + " | ".join(cells) + " |")


def print_mechanism(title: str, arms: list[str], per_arm: dict[str, dict]) -> None:
    print(f"\n## {title}: mechanism metrics at the stage's end, since its start (mean [95% interval over probes])\n")
    print("| metric | " + " | ".join(arms) + " |")
    print("|---|" + "---|" * len(arms))
    for name in MECHANISM_METRICS:
        cells = []
        for arm in arms:
            mean, lo, hi = (per_arm[arm].get(f"mech/{name}{x}") for x in ("", "_lo", "_hi"))
            cell = "–" if mean is None or not math.isfinite(mean) else f"{mean:.3f}"
            if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
                cell += f" [{lo:.3f}, {hi:.3f}]"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + " |")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft-steps", type=int, default=40)
    parser.add_argument("--dpo-steps", type=int, default=40)
    parser.add_argument("--sft-lr", type=float, default=2e-4, help="the CPU demo's (recipes/configs/demo.yaml)")
    parser.add_argument("--dpo-lr", type=float, default=4e-4, help="the CPU demo's (recipes/configs/demo.yaml)")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--probe-n", type=int, default=8, help="probe prompts per split")
    parser.add_argument("--probe-every", type=int, default=0, help="0: the recipe's automatic schedule")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--out", default="outputs/squeezing_signature")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: every usable core, as the recipe)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    wall, cpu = time.perf_counter(), cpu_seconds()
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("alignkit.monitors").setLevel(logging.INFO)

    cfg = arm_config(args.arms[0], args)  # what the arms share: model, data, probes, threads
    threads = set_cpu_threads(cfg)
    tokenizer = load_tokenizer(cfg.model)
    data = load_preference_data(cfg.data, seed=cfg.run.seed)
    probes = build_probe_set(data["train"], data.get("test"), cfg.monitor, seed=cfg.run.seed)
    results = {arm: run_arm(arm, args, data, probes, tokenizer) for arm in args.arms}

    families = [*probes.families, FIXED_GREEDY] if "greedy" in probes.families else list(probes.families)
    keys = [f"probe/{s}/{f}/logp" for f in families for s in ("train", "test")]
    keys += [f"probe/{s}/{f}/{m}" for f in ("chosen", "rejected") for m in ("argmax_prob", "entropy")
             for s in ("train", "test")]  # fmt: skip
    keys += ["squeeze/score", "squeeze/rise", "squeeze/fall"]
    mech = [f"mech/{n}{x}" for n in MECHANISM_METRICS for x in ("", "_lo", "_hi")]
    r = cfg.run
    print(f"\nSmolLM2-135M, float32 on CPU, {threads} torch threads; LoRA r={cfg.model.lora_r}, batch "
          f"{r.per_device_train_batch_size}, max_length {cfg.data.max_length}; SFT {args.sft_steps} steps at "
          f"{args.sft_lr:g}, DPO {args.dpo_steps} steps at {args.dpo_lr:g} (beta {args.beta:g}); "
          f"{probes.count('train')} + {probes.count('test')} probes, {len(probes.families)} families")  # fmt: skip
    report = {"args": vars(args), "threads": threads}
    for stage, title in (("preference", "DPO stage"), ("sft", "SFT stage")):
        changes = {arm: stage_deltas(results[arm]["records"], stage, keys) for arm in args.arms}
        ends = {arm: stage_end(results[arm]["records"], stage, mech) for arm in args.arms}
        print_changes(title, args.arms, changes, keys)
        print_mechanism(title, args.arms, ends)
        for arm in args.arms:
            report.setdefault(arm, {})[stage] = {"changes": changes[arm], "mechanism_end": ends[arm]}
    for arm in args.arms:
        res = results[arm]
        metrics = {k: round(v, 4) for k, v in res["preference_metrics"].items() if v is not None}
        print(f"\n{arm}: DPO end {json.dumps(metrics)}")
        print(f"{arm}: timings {json.dumps({k: round(v, 1) for k, v in res['timings'].items()})}")
        for event in res["events"]:
            print(f"  alert {event['stage']} step {event['step']}: {event['message']}")
        report[arm] |= {"timings": res["timings"], "events": res["events"], "preference_metrics": metrics}
    print(cpu_use_line(wall, cpu, threads))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "signature.json").write_text(json.dumps(report, indent=1, default=str))
    write_result("squeezing_signature", argv, report)


if __name__ == "__main__":
    main()
