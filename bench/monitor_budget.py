"""The monitor's cost cap on a long DPO stage: is the realised probe share within `probe_max_overhead`, and how much
later does the alert fire than with a dense schedule?

    python bench/monitor_budget.py                     # 300 steps, dense (every 10 steps) then capped at 5%, ~35 min
    python bench/monitor_budget.py --steps 40 --dense_every 5 --num_pairs 32    # a quick look

One preference stage on far-y⁻ pairs (the study's construction, alignkit.data.far: each y⁻ is another task's answer,
where DPO squeezes most), run twice from the base model with the same seed through the recipe's own path
(bench/_recipe.py at the CPU demo's settings, `alignkit.stages.run_preference_stage` with the monitor's callback, as
`recipes/extended_dpo.py` runs it):

- dense: `probe_every` = `--dense_every`;
- capped: `probe_max_overhead` = `--cap` (the schedule and, if needed, the probe count chosen by the callback from
  its own timings).

Probes: `--probe_prompts` prompts per split, scored on the mid-stage families (`STEP_FAMILIES`: chosen, rejected,
the off-target families the alert reads, argmax) at every evaluation. A stage on its own pays for its first
evaluation (in the recipe the SFT stage's last one stands for it), so the realised share counts it.

Per run: every evaluation's step and seconds, the realised share (probe seconds / training
seconds, the callback's own note), and the first evaluation at which the alert's reading (`squeeze_metric` against
`squeeze_threshold`) fired. "Evaluations later" counts the capped run's evaluations from the first one at or after the
dense run's alert step to the one that fired: 0 means the capped run alerted at its first chance.

Figures: bench/results/monitor_budget/result.json (with every evaluation's record per run) and a figure
(bench/results/monitor_budget/monitor_budget.png). A finished run's records are reused when the bench is rerun after
a kill (outputs/bench_monitor_budget/<run>/records.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from _recipe import recipe_config, set_cpu_threads  # noqa: E402
from _results import results_dir, write_result  # noqa: E402
from datasets import Dataset  # noqa: E402

from alignkit.data import load_preference_data  # noqa: E402
from alignkit.data.far import far_rejected  # noqa: E402
from alignkit.models import load_model, load_tokenizer  # noqa: E402
from alignkit.monitors import SqueezingMonitor, build_probe_set  # noqa: E402
from alignkit.monitors.config import STEP_FAMILIES  # noqa: E402
from alignkit.stages import run_preference_stage  # noqa: E402

WORK = Path(__file__).resolve().parents[1] / "outputs" / "bench_monitor_budget"


def config(args, folder: Path, **monitor):
    return recipe_config(
        output_dir=str(folder), seed=args.seed, max_train_samples=None, preference_max_steps=args.steps,
        preference_learning_rate=args.lr, per_device_train_batch_size=args.batch_size, logging_steps=10,
        save_steps=1_000_000, probe_num_prompts=args.probe_prompts, probe_families=list(STEP_FAMILIES),
        preflight_dynamics_pairs=0, report_to=["none"], **monitor,
    )  # fmt: skip


def run(args, name: str, pairs: list[dict], heldout: list[dict], **monitor) -> dict:
    folder = WORK / name
    done = folder / "records.json"
    cfg = config(args, folder, **monitor)
    key = {"steps": args.steps, "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed,
           "probe_prompts": args.probe_prompts, "num_pairs": args.num_pairs, **monitor}  # fmt: skip
    if done.exists() and json.loads(done.read_text())["settings"] == key:
        print(f"[monitor_budget] {name}: reusing {done}", flush=True)
        return json.loads(done.read_text())
    shutil.rmtree(folder, ignore_errors=True)  # a half-finished stage restarts: its timings must be one run's
    set_cpu_threads(cfg)
    tokenizer = load_tokenizer(cfg.model)
    probes = build_probe_set(pairs, heldout, cfg.monitor, seed=args.seed)
    monitor_ = SqueezingMonitor(probes, cfg.monitor, tokenizer, folder)
    callback = monitor_.callback("preference", folder / "preference")
    print(f"[monitor_budget] {name}: {args.steps} steps, {monitor}", flush=True)
    start = time.perf_counter()
    result = run_preference_stage(
        load_model(cfg.model), tokenizer, Dataset.from_list(pairs), cfg, folder / "preference", [callback]
    )
    wall = time.perf_counter() - start
    metric, threshold = cfg.monitor.squeeze_metric, cfg.monitor.squeeze_threshold
    evaluations = [
        {"step": r["step"], "event": r["event"], "seconds": round(r["probe/seconds"], 2),
         "reading": r.get(f"mech/{metric}"), "probes_kept": r.get("probes_kept")}
        for r in monitor_.records
    ]  # fmt: skip
    fired = next((e["step"] for e in evaluations if e["reading"] is not None and e["reading"] >= threshold), None)
    out = {
        "settings": key, "stage_seconds": round(wall, 1), "train_seconds": round(callback._train_seconds, 1),
        "probe_seconds": round(callback.probe_seconds, 1),
        "share": round(callback.probe_seconds / callback._train_seconds, 4),  # the callback's own note, for both runs
        "evaluations": evaluations, "alert_step": fired, "metric": metric, "threshold": threshold,
        "steps": result.steps, "notes": [n for n in monitor_.notes if "probe" in n],
    }  # fmt: skip
    done.write_text(json.dumps(out, indent=1))
    return out


def later(dense: dict, capped: dict) -> int | None:
    """How many of the capped run's evaluations after its first chance (the first at or after the dense alert step)
    it took to alert; None when either run did not alert."""
    if dense["alert_step"] is None or capped["alert_step"] is None:
        return None
    steps = [e["step"] for e in capped["evaluations"]]
    chance = next((i for i, s in enumerate(steps) if s >= dense["alert_step"]), len(steps) - 1)
    return steps.index(capped["alert_step"]) - chance


def figure(dense: dict, capped: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for run_, label, style in ((dense, "dense", "o-"), (capped, "capped", "s--")):
        ev = [e for e in run_["evaluations"] if e["reading"] is not None]
        share = f"{run_['share']:.1%} of training time"
        ax.plot([e["step"] for e in ev], [e["reading"] for e in ev], style, ms=4, label=f"{label}: probes {share}")
    ax.axhline(dense["threshold"], color="grey", lw=0.8, ls=":", label=f"threshold {dense['threshold']:g}")
    ax.set_xlabel("DPO step")
    ax.set_ylabel(f"{dense['metric']} (nats/token, since the stage began)")
    ax.set_title("Alert reading, dense schedule vs probe_max_overhead")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="preference steps of each run")
    parser.add_argument("--dense_every", type=int, default=10, help="the dense run's probe_every")
    parser.add_argument("--cap", type=float, default=0.05, help="the capped run's probe_max_overhead")
    parser.add_argument("--lr", type=float, default=1e-4, help="preference learning rate (constant, LoRA)")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--num_pairs", type=int, default=0, help="far pairs to train on; 0 = the whole split")
    parser.add_argument("--probe_prompts", type=int, default=16, help="probe_num_prompts (per split)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    data = load_preference_data(config(args, WORK).data)
    pairs = far_rejected([dict(r) for r in data["train"]])
    pairs = pairs[: args.num_pairs] if args.num_pairs else pairs
    heldout = [dict(r) for r in data["test"]]
    dense = run(args, "dense", pairs, heldout, probe_every=args.dense_every)
    capped = run(args, "capped", pairs, heldout, probe_max_overhead=args.cap)
    out = results_dir("monitor_budget")
    out.mkdir(parents=True, exist_ok=True)
    figure(dense, capped, out / "monitor_budget.png")
    figures = {
        "capped_share": capped["share"], "cap": args.cap, "share_within_cap": capped["share"] <= args.cap,
        "dense_share": dense["share"], "dense_alert_step": dense["alert_step"],
        "capped_alert_step": capped["alert_step"], "capped_evaluations_later": later(dense, capped),
        "capped_evaluation_steps": [e["step"] for e in capped["evaluations"]],
        "runs": {"dense": dense, "capped": capped},
    }  # fmt: skip
    write_result("monitor_budget", argv, figures)
    print(json.dumps({k: v for k, v in figures.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
