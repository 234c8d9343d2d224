"""Calibrate the squeezing alert: null runs (no squeezing expected) vs positive runs (off-policy DPO on far y⁻).

Every run trains one stage of the recipe on SmolLM2-135M through the recipe's own code path (a `RecipeConfig` given to
`alignkit.stages.run_sft_stage` / `run_preference_stage`: LoRA, TRL trainers, CPU fp32), starting from the base model,
with the squeezing monitor probing at steps 0, `--probe-every`, ..., end. Conditions:

    null_sft       continued SFT on y+ (the dataset's chosen answers), the recipe's SFT learning rate
    null_onpolicy  DPO on fresh on-policy pairs (two samples of the model per prompt, the shorter one as y+), 2e-4
    null_tiny_lr   DPO on the dataset's (near-miss) pairs at a very small learning rate (1e-6)
    far_lr*        DPO whose y- is another task's rejected answer (alignkit.data.far), at 1e-4, 2e-4 and 4e-4
    ref_near_lr1e-4  (opt-in, not counted in the rates) DPO on the dataset's near-miss pairs at the recipe's rate

Each (condition, seed) writes `<out>/per_run/<condition>_s<seed>.json` (every evaluation's metrics with their
bootstrap intervals, the manipulation check, timing) and `...probe_records.jsonl.gz` (one record per probe x family x
evaluation); a run whose JSON exists is skipped, so the bench resumes, but only when it was made with the same
settings (its `fingerprint`: condition, rate, seed, steps, batch, probes, probe schedule, model): otherwise the bench
stops before any work and names each changed setting, or with `--overwrite` runs it again. `--analyze` (also run at
the end) reads those files alone and writes `table.md`, `summary.json` and `calibration.png`: per metric and
threshold, the detection rate on positive runs and the false-alarm rate on null runs.

    python bench/detector_calibration.py                      # all conditions, seeds 0 1 2
    python bench/detector_calibration.py --analyze            # recompute the table and figure from the files

The figures (runs per condition, each metric's best threshold with its detection and false-alarm rates) also go to
bench/results/detector_calibration/result.json (bench/_results.py).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import random
import shutil
import time
from pathlib import Path

import torch
from _results import write_result
from datasets import Dataset

from alignkit.config import (
    DataConfig,
    EvaluationConfig,
    ModelConfig,
    PreferenceStageConfig,
    RecipeConfig,
    RunConfig,
    SFTStageConfig,
)
from alignkit.data import load_preference_data
from alignkit.data.far import far_rejected
from alignkit.fingerprint import changed_fields, describe_changes
from alignkit.generation import generate
from alignkit.jsonl import json_safe
from alignkit.models import load_model, load_tokenizer
from alignkit.monitors import MonitorConfig, SqueezingMonitor, build_probe_set
from alignkit.monitors.config import ALERT_METRICS
from alignkit.stages import run_preference_stage, run_sft_stage

CONDITIONS = {  # name -> (kind, label, learning rate)
    "null_sft": ("sft", "null", 2e-4),  # the recipe's SFT rate
    "null_onpolicy": ("onpolicy", "null", 2e-4),  # as strong as the middle positive rate
    "null_tiny_lr": ("near", "null", 1e-6),
    "far_lr1e-4": ("far", "positive", 1e-4),  # the recipe's preference rate
    "far_lr2e-4": ("far", "positive", 2e-4),
    "far_lr4e-4": ("far", "positive", 4e-4),
    # Not in the rates: DPO on the dataset's near-miss pairs at the recipe's rate, the case where the original score
    # was suspected of false alarms. Opt-in (`--conditions ref_near_lr1e-4`), outside the 60-minute budget.
    "ref_near_lr1e-4": ("near", "reference", 1e-4),
}
DEFAULT_CONDITIONS = [name for name, (_, label, _) in CONDITIONS.items() if label != "reference"]
FAMILIES = ["chosen", "rejected", "irrelevant_test", "irrelevant_human", "shuffled", "non_human", "greedy", "argmax"]
# Metrics whose threshold table is reported; `squeeze/score` is the original score, the rest are `mech/<name>`.
TABLE_METRICS = [m for m in ALERT_METRICS]
log = logging.getLogger("calibration")


def recipe_config(args, kind: str, lr: float, seed: int, run_dir: Path) -> RecipeConfig:
    """The recipe's config for one run: defaults everywhere except the run's size, rate, seed and monitor."""
    return RecipeConfig(
        model=ModelConfig(),
        data=DataConfig(max_train_samples=None),  # the calibration's runs: every pair, as when it was measured
        sft=SFTStageConfig(sft_mode="chosen", sft_learning_rate=lr, sft_max_steps=args.steps),
        # {}: a cosine schedule, as the committed runs trained
        preference=PreferenceStageConfig(
            preference_learning_rate=lr, preference_max_steps=args.steps, preference_trainer_args={}
        ),
        monitor=MonitorConfig(
            probe_families=list(FAMILIES),
            probe_num_prompts=args.probes,
            probe_every=args.probe_every or 1_000_000,  # 0: the stage's first and last step only
            probe_max_new_tokens=32,
            probe_bootstrap=1000,
        ),
        evaluation=EvaluationConfig(),
        run=RunConfig(
            output_dir=str(run_dir),
            seed=seed,
            per_device_train_batch_size=args.batch,
            logging_steps=5,
            save_steps=10_000,  # no checkpoints: a run that dies is rerun whole
            report_to=["none"],
            cpu_threads=args.threads,
        ),
    )


def onpolicy_rows(model, tokenizer, rows: list[dict], seed: int, n: int) -> list[dict]:
    """Pairs of two samples of `model` per prompt, the shorter as y+ (a consistent preference whose y- is the
    model's own). Pairs whose samples both ended before the token limit come first (a cut-off sample would be trained
    with an EOS the model never chose); identical or equally long samples are skipped."""
    limit = 64
    texts, stats = generate(
        model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=limit, do_sample=True, num_return_sequences=2,
        batch_size=16, seed=seed, with_stats=True,
    )  # fmt: skip
    ended, cut = [], []
    for row, (a, b), st in zip(rows, texts, stats):
        if len(a) == len(b) or not a or not b:
            continue
        short, long = (a, b) if len(a) < len(b) else (b, a)
        pair = {**row, "chosen": [{"role": "assistant", "content": short}],
                "rejected": [{"role": "assistant", "content": long}]}  # fmt: skip
        (ended if all(s["n_tokens"] < limit for s in st) else cut).append(pair)
    return (ended + cut)[:n]


def train_rows(data, kind: str, seed: int, n: int, tokenizer, model) -> list[dict]:
    train = [dict(r) for r in data["train"]]
    if kind == "far":
        train = far_rejected(train)  # over the whole split, so each y- comes from the full pool of other tasks
    random.Random(seed).shuffle(train)
    if kind == "onpolicy":
        # A quarter more prompts than pairs: equally long sample pairs are rare, and sampling is the slow part.
        return onpolicy_rows(model, tokenizer, train[: n + n // 4], seed, n)
    return train[:n]


def manipulation_check(records_path: Path) -> dict:
    """At the stage's first evaluation, per training probe: y-'s words per token vs the model's own decoding's."""
    rows = [json.loads(line) for line in records_path.read_text().splitlines() if line.strip()]
    first = min(r["step"] for r in rows)
    start = [r for r in rows if r["step"] == first and r["split"] == "train"]
    by = {}
    for r in start:
        by.setdefault(r["family"], []).append(r.get("words_logp_per_token"))
    means = {f: _mean([v for v in vs if v is not None]) for f, vs in by.items()}
    gaps = [
        g["words_logp_per_token"] - j["words_logp_per_token"]
        for g in start
        if g["family"] == "greedy_start"
        for j in start
        if j["family"] == "rejected" and j["probe"] == g["probe"]
        if g.get("words_logp_per_token") is not None and j.get("words_logp_per_token") is not None
    ]
    return {"start_words_logp_per_token": means, "greedy_minus_rejected_per_probe": gaps}


def _mean(values) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan


def run_fingerprint(args, name: str, seed: int) -> dict:
    """The settings that make one (condition, seed) run what it is (alignkit/fingerprint.py)."""
    kind, _, lr = CONDITIONS[name]
    return {"condition": name, "kind": kind, "learning_rate": lr, "seed": seed, "steps": args.steps,
            "batch": args.batch, "probes": args.probes, "probe_every": args.probe_every,
            "model": ModelConfig().model_name_or_path}  # fmt: skip


def stale_runs(args, out: Path) -> list[tuple[Path, str]]:
    """(per-run JSON, what changed) for every finished run of this bench's conditions and seeds made with other
    settings; a JSON from before runs kept a fingerprint is compared on the settings it recorded."""
    stale = []
    for seed in args.seeds:
        for name in args.conditions:
            path = out / "per_run" / f"{name}_s{seed}.json"
            if not path.exists():
                continue
            run = json.loads(path.read_text())
            current = run_fingerprint(args, name, seed)
            if "fingerprint" in run:
                changes = changed_fields(run["fingerprint"], current)
            else:
                recorded = {k: run[k] for k in ("condition", "kind", "learning_rate", "seed", "steps") if k in run}
                changes = changed_fields(recorded, current, only_recorded=True)
            if changes:
                stale.append((path, describe_changes(changes)))
    return stale


def check_finished_runs(args, out: Path) -> None:
    """Stop, naming each changed setting, when `out` holds runs made with other settings; with --overwrite, delete
    their JSON so that they are run again."""
    if not (stale := stale_runs(args, out)):
        return
    listing = "\n".join(f"{path}:\n{why}" for path, why in stale)
    if not args.overwrite:
        raise SystemExit(
            f"error: {out} holds runs made with other settings:\n{listing}\nNothing was reused or "
            "changed. To keep them, rerun with a new --out; to replace them, rerun with --overwrite."
        )
    log.warning("--overwrite: these runs are run again:\n%s", listing)
    for path, _ in stale:
        path.unlink()


def run_one(args, name: str, seed: int, data, tokenizer, out: Path) -> None:
    kind, label, lr = CONDITIONS[name]
    run_dir = Path(args.work) / f"{name}_s{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a run that died half-way: start it again
    cfg = recipe_config(args, kind, lr, seed, run_dir)
    t0 = time.perf_counter()
    model = load_model(cfg.model)
    rows = train_rows(data, kind, seed, args.steps * args.batch, tokenizer, model)
    t_rows = time.perf_counter() - t0
    probes = build_probe_set(rows, data["test"], cfg.monitor, seed=seed)
    monitor = SqueezingMonitor(probes, cfg.monitor, tokenizer, run_dir)
    pairs = Dataset.from_list(rows)
    stage = "sft" if kind == "sft" else "preference"
    callbacks = [monitor.callback(stage, run_dir / stage)]
    if kind == "sft":
        result = run_sft_stage(model, tokenizer, pairs, cfg, run_dir / stage, callbacks)
    else:
        result = run_preference_stage(model, tokenizer, pairs, cfg, run_dir / stage, callbacks)
    seconds = time.perf_counter() - t0
    records_path = run_dir / stage / "probe_records.jsonl"
    evaluations = [{k: v for k, v in r.items() if k != "greedy_samples"} for r in monitor.records]
    summary = {
        "fingerprint": run_fingerprint(args, name, seed),
        "condition": name, "kind": kind, "label": label, "learning_rate": lr, "seed": seed, "stage": stage,
        "steps": result.steps, "pairs": len(rows), "status": result.status, "seconds": round(seconds, 1),
        "seconds_building_pairs": round(t_rows, 1),
        "probe_seconds": round(sum(e["probe/seconds"] for e in evaluations), 1),
        "probes": {s: probes.count(s) for s in ("train", "test")}, "families": probes.families,
        "manipulation": manipulation_check(records_path),
        "final_loss": result.metrics.get("train_loss"), "evaluations": evaluations,
        "greedy_samples": [r.get("greedy_samples") for r in monitor.records],
    }  # fmt: skip
    per_run = out / "per_run"
    per_run.mkdir(parents=True, exist_ok=True)
    with gzip.open(per_run / f"{name}_s{seed}.probe_records.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(records_path.read_text())
    (per_run / f"{name}_s{seed}.json").write_text(json.dumps(json_safe(summary), indent=1))
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    log.warning("done %s seed %d in %.0f s (%s)", name, seed, seconds, result.status)


# --- analysis: from the per-run files alone


def metric_key(metric: str) -> str:
    return "squeeze/score" if metric == "score" else f"mech/{metric}"


def run_values(run: dict, metric: str, bound: str) -> list[float]:
    """The alert's reading at every evaluation after the first (what the monitor compares with its threshold)."""
    key = metric_key(metric) + ("_lo" if bound == "lower" and metric != "score" else "")
    return [e.get(key) for e in run["evaluations"][1:] if e.get(key) is not None]


def alarm(run: dict, metric: str, threshold: float, bound: str) -> bool:
    return any(v >= threshold for v in run_values(run, metric, bound))


def rates(runs: list[dict], metric: str, threshold: float, bound: str) -> tuple[float, float, int, int]:
    pos = [r for r in runs if r["label"] == "positive"]
    null = [r for r in runs if r["label"] == "null"]
    det = sum(alarm(r, metric, threshold, bound) for r in pos)
    fa = sum(alarm(r, metric, threshold, bound) for r in null)
    return det / max(1, len(pos)), fa / max(1, len(null)), len(pos), len(null)


def best_threshold(runs: list[dict], metric: str, bound: str, max_fa: float = 0.10) -> dict:
    """The threshold with the highest detection among those with false-alarm rate <= max_fa; ties: the midpoint of
    the widest gap between a null run's peak and the next peak above it (the margin against unseen null runs)."""
    labelled = [r for r in runs if r["label"] in ("null", "positive")]  # reference runs do not choose thresholds
    peaks = sorted({max(run_values(r, metric, bound), default=-math.inf) for r in labelled} - {-math.inf})
    if not peaks:
        return {"threshold": None}
    candidates = [(a + b) / 2 for a, b in zip(peaks, peaks[1:])] + [peaks[-1] + 1e-9, peaks[0] - 1e-9]
    best = None
    for t in candidates:
        det, fa, n_pos, n_null = rates(runs, metric, t, bound)
        if fa > max_fa:
            continue
        key = (det, -fa)
        if best is None or key > best[0]:
            best = (key, t)
    if best is None:
        return {"threshold": None}
    # Among thresholds with the same detection and false alarms, take the middle of that range: most margin.
    same = [t for t in candidates if rates(runs, metric, t, bound)[:2] == (best[0][0], -best[0][1])]
    t = (min(same) + max(same)) / 2
    det, fa, n_pos, n_null = rates(runs, metric, t, bound)
    null_peak = max(max(run_values(r, metric, bound), default=-math.inf) for r in runs if r["label"] == "null")
    pos_peaks = sorted(max(run_values(r, metric, bound), default=-math.inf) for r in runs if r["label"] == "positive")
    return {"threshold": t, "detection": det, "false_alarm": fa, "positives": n_pos, "nulls": n_null,
            "null_max": null_peak, "positive_min": pos_peaks[0] if pos_peaks else None}  # fmt: skip


def analyze(out: Path) -> dict | None:
    """Writes table.md, summary.json and calibration.png from the per-run files; returns the summary."""
    runs = [json.loads(p.read_text()) for p in sorted((out / "per_run").glob("*.json"))]
    if not runs:
        print("no runs yet")
        return None
    order = [c for c in CONDITIONS if any(r["condition"] == c for r in runs)]
    lines = ["# Squeezing-alert calibration", "", f"{len(runs)} runs: "
             + ", ".join(f"{c} x{sum(r['condition'] == c for r in runs)}" for c in order) + ".", ""]  # fmt: skip
    lines += [
        "## Per condition: metric at the end of the stage (mean over seeds; each seed's 95% bootstrap interval)",
        "",
    ]
    metrics = [m for m in TABLE_METRICS] + ["off_target_eos_change", "chosen_fall", "greedy_rise"]
    lines.append("| condition | " + " | ".join(metrics) + " |")
    lines.append("|---|" + "---:|" * len(metrics))
    for c in order:
        cells = []
        for m in metrics:
            ends = [r["evaluations"][-1] for r in runs if r["condition"] == c]
            k = metric_key(m)
            vals = [e.get(k) for e in ends if e.get(k) is not None]
            ivs = [f"[{e.get(k + '_lo'):.2f}, {e.get(k + '_hi'):.2f}]" for e in ends
                   if e.get(k + "_lo") is not None and e.get(k + "_hi") is not None]  # fmt: skip
            cell = f"{_mean(vals):.3f}" if vals else "–"
            cells.append(cell + (" " + " ".join(ivs) if ivs else ""))
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines += ["", "## Manipulation check: per-token log π at the stage's first evaluation (training probes)", "",
              "| condition | rejected | chosen | greedy_start | greedy − rejected per probe (mean, min) |",
              "|---|---:|---:|---:|---:|"]  # fmt: skip
    for c in order:
        cr = [r for r in runs if r["condition"] == c]
        m = [r["manipulation"]["start_words_logp_per_token"] for r in cr]
        gaps = [g for r in cr for g in r["manipulation"]["greedy_minus_rejected_per_probe"]]
        lines.append(
            f"| {c} | {_mean(x.get('rejected') for x in m):.2f} | {_mean(x.get('chosen') for x in m):.2f} | "
            f"{_mean(x.get('greedy_start') for x in m):.2f} | {_mean(gaps):.2f}, {min(gaps, default=math.nan):.2f} |"
        )
    summary = {"runs": len(runs), "best": {}}
    lines += ["", "## Detection and false-alarm rates at the best threshold per metric (false alarms <= 10%)", "",
              "Alarm = the metric reaches the threshold at any evaluation after the stage's first. `lower`: the lower "
              "end of the 95% bootstrap interval over probes must reach it.", "",
              "| metric | reading | threshold | detection (positives) | false alarms (nulls) | max over nulls | "
              "min over positives |", "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for m in TABLE_METRICS:
        for bound in ("mean", "lower") if m != "score" else ("mean",):
            b = best_threshold(runs, m, bound)
            summary["best"][f"{m}/{bound}"] = b
            if b["threshold"] is None:
                lines.append(f"| {m} | {bound} | – | – | – | – | – |")
                continue
            n_det, n_fa = round(b["detection"] * b["positives"]), round(b["false_alarm"] * b["nulls"])
            lines.append(
                f"| {m} | {bound} | {b['threshold']:.3f} | {b['detection']:.0%} ({n_det}/{b['positives']}) | "
                f"{b['false_alarm']:.0%} ({n_fa}/{b['nulls']}) | {b['null_max']:.3f} | {b['positive_min']:.3f} |"
            )
    lines += ["", "## Alarms per condition at each metric's best threshold (mean reading)", "",
              "| metric | threshold | " + " | ".join(order) + " |", "|---|---:|" + "---:|" * len(order)]  # fmt: skip
    for m in TABLE_METRICS:
        t = summary["best"][f"{m}/mean"].get("threshold")
        if t is None:
            continue
        cells = []
        for c in order:
            cr = [r for r in runs if r["condition"] == c]
            cells.append(f"{sum(alarm(r, m, t, 'mean') for r in cr)}/{len(cr)}")
        lines.append(f"| {m} | {t:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "## Threshold sweep (mean reading)", ""]
    sweep = {}
    for m in TABLE_METRICS:
        peaks = sorted(max(run_values(r, m, "mean"), default=math.nan) for r in runs)
        grid = sorted({round(p, 3) for p in peaks if math.isfinite(p)})
        rows = []
        for t in grid:
            det, fa, _, _ = rates(runs, m, t, "mean")
            rows.append((t, det, fa))
        sweep[m] = rows
        lines.append(f"- `{m}`: " + "; ".join(f"≥{t:g}: det {d:.0%}, FA {f:.0%}" for t, d, f in rows))
    summary["sweep"] = sweep
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(json_safe(summary), indent=1))
    plot(runs, order, out / "calibration.png", summary)
    print("\n".join(lines))
    summary["conditions"] = {c: sum(r["condition"] == c for r in runs) for c in order}
    return summary


def plot(runs: list[dict], order: list[str], path: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = TABLE_METRICS
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 4.2))
    for ax, m in zip(axes, metrics):
        k = metric_key(m)
        for x, c in enumerate(order):
            for j, r in enumerate(rr for rr in runs if rr["condition"] == c):
                e = r["evaluations"][-1]
                v = e.get(k)
                if v is None:
                    continue
                color = {"positive": "C3", "null": "C0"}.get(r["label"], "grey")
                lo, hi = e.get(k + "_lo"), e.get(k + "_hi")
                xx = x + (j - 1) * 0.15
                if lo is not None and hi is not None:
                    ax.errorbar(xx, v, yerr=[[v - lo], [hi - v]], fmt="o", color=color, ms=4, capsize=2)
                else:
                    ax.plot(xx, v, "o", color=color, ms=4)
        b = summary["best"].get(f"{m}/mean", {})
        if b.get("threshold") is not None:
            ax.axhline(b["threshold"], color="k", ls=":", lw=1)
        ax.set_xticks(range(len(order)), order, rotation=60, fontsize=7)
        ax.set_title(m, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle("End-of-stage value per run (blue: null, red: positive, grey: reference; "
                 "bars: 95% bootstrap over probes; dotted: best threshold)", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results/detector_calibration")
    parser.add_argument("--work", default="outputs/detector_calibration")
    parser.add_argument("--conditions", nargs="*", default=DEFAULT_CONDITIONS, choices=list(CONDITIONS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--probes", type=int, default=8, help="probe prompts per split")
    parser.add_argument("--probe-every", type=int, default=0, help="0: only at the start and the end")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="run again the finished runs in --out made with other settings (else: stop)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    parser.add_argument("--keep", action="store_true", help="keep the run folders under --work")
    parser.add_argument("--analyze", action="store_true", help="only recompute the table and figure")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    out = Path(args.out)
    if not args.analyze:
        check_finished_runs(args, out)  # before any work: a finished run is reused only with the same settings
        torch.set_num_threads(args.threads)
        tokenizer = load_tokenizer(ModelConfig())
        data = load_preference_data(DataConfig(max_train_samples=None))
        # Seeds outer: a partial bench still has every condition at its first seeds.
        for seed in args.seeds:
            for name in args.conditions:
                if (out / "per_run" / f"{name}_s{seed}.json").exists():
                    log.warning("skip %s seed %d: done", name, seed)
                    continue
                log.warning("start %s seed %d", name, seed)
                run_one(args, name, seed, data, tokenizer, out)
    summary = analyze(out)
    if summary is not None:
        figures = {k: summary[k] for k in ("runs", "conditions", "best")} | {"per_run_folder": str(out / "per_run")}
        write_result("detector_calibration", argv, figures)


if __name__ == "__main__":
    main()
