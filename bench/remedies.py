"""The squeezing remedies side by side on far-y⁻ pairs: does each do what its formula says?

    nice -n 10 python bench/remedies.py                       # 3 seeds x 6 arms, 4 pairs, 8 steps, 1 thread
    python bench/remedies.py --seeds 0 --arms dpo floor       # a subset

Per seed: the study's far-y⁻ pairs (alignkit.study.run.seed_data: `num_pairs` training pairs whose y⁻ is another
task's answer), one chosen-only SFT (the study's A_far start: y⁻ stays deep in the valley, where DPO squeezes most),
then one preference stage per arm from that SFT model, every arm for the same steps through the recipe's own path
(bench/_recipe.py at the CPU demo's settings; the filter arm through the recipe's pre-flight functions). Per run:

- the squeezing reading: the monitor's `off_target_fall` at the stage's end (nats/token, since the stage began) with
  its 95% bootstrap interval over probes (the alert's metric; "Detector v2" replaces it when it lands);
- the change of log π(y⁺) and log π(y⁻) per token on the training pairs (the monitor's chosen/rejected families);
- on held-out far pairs: the implicit-reward margin β[(c − c₀) − (r − r₀)] and its accuracy (share > 0), so an arm
  that "prevents squeezing" by not learning shows it;
- the stage's training wall time without the probes' (`train_seconds`), and the stage's CPU time (probes included,
  less sensitive to other jobs on the machine), each as a ratio to plain DPO's in the same seed.

Arms: dpo (plain), dpop, cal_dpo, sft_mix (sft_weight 1.0), floor (negative_floor 0.5), filter
(preflight_filter_fraction 0.25). Figures: bench/results/remedies/result.json (per-arm means over seeds with t
intervals, paired differences against dpo) and runs.json (every run). Working files go to outputs/bench_remedies/.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from _recipe import recipe_config, set_cpu_threads
from datasets import Dataset

from alignkit.data.far import far_rejected
from alignkit.models import load_tokenizer
from alignkit.monitors import SqueezingMonitor, build_probe_set
from alignkit.monitors.config import STEP_FAMILIES
from alignkit.preflight import recipe as preflight_recipe
from alignkit.preflight.passes import score_pairs
from alignkit.stages import load_stage_model, run_preference_stage, run_sft_stage
from alignkit.study.config import StudyConfig
from alignkit.study.run import seed_data

logger = logging.getLogger("alignkit")
ARMS = {
    "dpo": {},
    "dpop": {"loss": "dpop"},
    "cal_dpo": {"loss": "cal_dpo"},
    "sft_mix": {"sft_weight": 1.0},
    "floor": {"negative_floor": 0.5},
    "filter": {"preflight_filter_fraction": 0.25},
}
RESULTS = Path(__file__).resolve().parent / "results" / "remedies"
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}  # Student t quantiles for the 95% intervals


def config(args, seed: int, folder: Path, **arm):
    model = {"model_name_or_path": args.model} if args.model else {}
    return recipe_config(
        **model, output_dir=str(folder), seed=seed, sft_mode="chosen", sft_max_steps=args.sft_steps,
        max_train_samples=None, preference_max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        logging_steps=args.steps, save_steps=1_000_000, probe_num_prompts=args.num_pairs, probe_every=args.steps,
        probe_families=list(STEP_FAMILIES), cpu_threads=args.cpu_threads,
        preflight_dynamics_pairs=0, report_to=["none"], **arm,
    )  # fmt: skip


def heldout_margins(model, tokenizer, pairs: list[dict], max_length: int) -> list[tuple[float, float]]:
    """(summed log π(y⁺), summed log π(y⁻)) of each held-out pair under `model`."""
    scored = score_pairs(model, tokenizer, [p["prompt"] for p in pairs], [p["chosen"] for p in pairs],
                         [p["rejected"] for p in pairs], max_length=max_length)  # fmt: skip
    return [(math.fsum(s.chosen_logps), math.fsum(s.rejected_logps)) for s in scored]


def run_arm(args, name: str, seed: int, data: dict, sft, reference: list, tokenizer, work: Path) -> dict:
    cfg = config(args, seed, work / name, **ARMS[name])
    pairs = data["far"]
    recipe_data = {"train": Dataset.from_list(pairs), "test": Dataset.from_list(data["heldout_probes"])}
    checked = preflight_recipe.after_sft(cfg, tokenizer, recipe_data, work / name, sft, None)
    dpo_pairs = preflight_recipe.preference_pairs(cfg, Dataset.from_list(pairs), checked)
    probes = build_probe_set(pairs, data["heldout_probes"], cfg.monitor, seed=seed)  # every pair, dropped or not
    monitor = SqueezingMonitor(probes, cfg.monitor, tokenizer, work / name)
    stage_dir = work / name / "preference"
    policy = load_stage_model(cfg, [sft])
    cpu = os.times()
    result = run_preference_stage(
        policy, tokenizer, dpo_pairs, cfg, stage_dir, [monitor.callback("preference", stage_dir)], [sft]
    )
    cpu_seconds = sum(os.times()[:2]) - sum(cpu[:2])  # user + system of this process: less noisy on a shared CPU
    probe_seconds = sum(r.get("probe/seconds", 0.0) for r in monitor.records)  # inside the stage's time
    del policy
    first, last = monitor.records[0], monitor.records[-1]
    final = load_stage_model(cfg, [sft, result])
    after = heldout_margins(final, tokenizer, data["heldout_far"], cfg.data.max_length)
    beta = cfg.preference.beta
    margins = [beta * ((c - c0) - (r - r0)) for (c, r), (c0, r0) in zip(after, reference)]

    def delta(family: str) -> float:
        key = f"probe/train/{family}/logp_per_token"
        return last[key] - first[key]

    return {
        "arm": name, "seed": seed, "steps": result.steps, "pairs": result.rows.get("pairs"),
        "stage_seconds": round(result.seconds, 2), "stage_cpu_seconds": round(cpu_seconds, 2),
        "probe_seconds": round(probe_seconds, 2), "train_seconds": round(result.seconds - probe_seconds, 2),
        "off_target_fall": last["mech/off_target_fall"],
        "off_target_fall_ci": [last["mech/off_target_fall_lo"], last["mech/off_target_fall_hi"]],
        "chosen_change_per_token": delta("chosen"), "rejected_change_per_token": delta("rejected"),
        "heldout_margin": statistics.fmean(margins), "heldout_accuracy": statistics.fmean(m > 0 for m in margins),
        "loss_terms": {k: v for k, v in result.metrics.items() if k.startswith("loss/")},
        "dropped": [r["row"] for r in preflight_recipe.filtered(cfg, checked)] if checked is not None else [],
    }  # fmt: skip


def interval(values: list[float]) -> dict:
    """Mean and 95% t interval over seeds (no interval from one seed)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"mean": mean, "ci": None, "n": len(values)}
    half = T_975[len(values) - 1] * statistics.stdev(values) / math.sqrt(len(values))
    return {"mean": mean, "ci": [mean - half, mean + half], "n": len(values)}


METRICS = ("off_target_fall", "chosen_change_per_token", "rejected_change_per_token", "heldout_margin",
           "heldout_accuracy", "train_seconds", "stage_cpu_seconds")  # fmt: skip


def summarise(runs: list[dict]) -> dict:
    """Per arm: each metric's mean over seeds with its interval, and the paired difference to dpo's run of the same
    seed (the wall time as a ratio)."""
    by = {(r["arm"], r["seed"]): r for r in runs}
    out = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        seeds = sorted(s for a, s in by if a == arm)
        entry = {m: interval([by[arm, s][m] for s in seeds]) for m in METRICS}
        paired = [s for s in seeds if ("dpo", s) in by]
        if arm != "dpo" and paired:
            entry["minus_dpo"] = {m: interval([by[arm, s][m] - by["dpo", s][m] for s in paired])
                                  for m in METRICS[:5]}  # fmt: skip
            for m in METRICS[5:]:  # the cost, as a ratio to plain DPO's: wall time without the probes, and CPU time
                entry[f"{m}_ratio_to_dpo"] = interval([by[arm, s][m] / by["dpo", s][m] for s in paired])
        out[arm] = entry
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--num_pairs", type=int, default=4)
    parser.add_argument("--num_heldout", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="preference steps per arm (the one stage length)")
    parser.add_argument("--sft_steps", type=int, default=4)
    parser.add_argument("--cpu_threads", type=int, default=1, help="torch threads (1: steadier on a shared CPU)")
    parser.add_argument("--work", default="outputs/bench_remedies")
    parser.add_argument("--summarise", action="store_true", help="only summarise the runs.json already written")
    parser.add_argument("--model", default=None, help="another model (tests: a tiny one); default: the CPU demo's")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    started = time.perf_counter()
    study = StudyConfig(num_train_pairs=args.num_pairs, batch_size=args.batch_size, num_heldout_probes=4,
                        eval_num_prompts=args.num_heldout)  # fmt: skip
    folder = Path(os.environ.get("BENCH_RESULTS_DIR") or RESULTS.parent) / RESULTS.name
    folder.mkdir(parents=True, exist_ok=True)
    runs = json.loads((folder / "runs.json").read_text()) if args.summarise else []
    for seed in [] if args.summarise else args.seeds:
        data = seed_data(study, seed)
        data["heldout_far"] = far_rejected(data["eval"])
        work = Path(args.work) / f"s{seed}"
        base = config(args, seed, work / "sft_chosen")
        set_cpu_threads(base)
        tokenizer = load_tokenizer(base.model)
        sft = run_sft_stage(None, tokenizer, Dataset.from_list(data["far"]), base, work / "sft_chosen" / "sft")
        reference = heldout_margins(load_stage_model(base, [sft]), tokenizer, data["heldout_far"],
                                    base.data.max_length)  # fmt: skip
        for name in args.arms:
            t0 = time.perf_counter()
            runs.append(run_arm(args, name, seed, data, sft, reference, tokenizer, work))
            print(f"seed {seed} {name}: {json.dumps(runs[-1])} ({time.perf_counter() - t0:.0f} s)", flush=True)
            (folder / "runs.json").write_text(json.dumps(runs, indent=1) + "\n")  # kept if the bench is cut short
    figures = {"settings": vars(args), "runs": len(runs), "wall_seconds": round(time.perf_counter() - started, 1),
               "arms": summarise(runs)}  # fmt: skip
    record = {
        "bench": "remedies",
        "command": shlex.join(["python", "bench/remedies.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
                    "load_average": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version()},
        "figures": figures,
    }  # fmt: skip
    (folder / "result.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    print(f"figures written to {folder / 'result.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
