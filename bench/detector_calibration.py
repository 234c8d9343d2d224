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
from dataclasses import dataclass
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
from alignkit.stats import wilson_interval


@dataclass(frozen=True)
class Condition:
    """One condition of the calibration. Fields left None take the bench's arguments (the development set's regime:
    --steps, --batch, --probe-every, a cosine schedule); the held-out set fixes the default recipe's regime."""

    kind: str  # sft | near | far | far25 | onpolicy | mixed_task: the stage and the data it trains on
    label: str  # positive (a negative gradient on a y- far below the model's answers) | null (none) | reference
    lr: float
    steps: int | None = None
    batch: int | None = None
    probe_every: int | None = None
    constant: bool = False  # the default recipe's constant schedule (else cosine, as the development runs trained)
    full: bool = False  # full-parameter training (else LoRA)
    loss: str = "dpo"
    sft_mode: str = "chosen"  # the SFT stage's: chosen (y+ only) or extended (y+ and y-)
    seeds: tuple[int, ...] = (0, 1, 2)


CONDITIONS = {
    "null_sft": Condition("sft", "null", 2e-4),  # the recipe's SFT rate
    "null_onpolicy": Condition("onpolicy", "null", 2e-4),  # as strong as the middle positive rate
    "null_tiny_lr": Condition("near", "null", 1e-6),
    "far_lr1e-4": Condition("far", "positive", 1e-4),  # the recipe's preference rate
    "far_lr2e-4": Condition("far", "positive", 2e-4),
    "far_lr4e-4": Condition("far", "positive", 4e-4),
    # Not in the rates: DPO on the dataset's near-miss pairs at the recipe's rate, the case where the original score
    # was suspected of false alarms. Opt-in (`--conditions ref_near_lr1e-4`), outside the 60-minute budget.
    "ref_near_lr1e-4": Condition("near", "reference", 1e-4),
}
# The held-out set (`--set heldout`): conditions that are not in the development set, new seeds, the default recipe's
# regime (batch 4, constant rate, 4 evaluations), run only after the detector was frozen (bench/detector_freeze.py).
# Labels come from the design. Nulls include drift that looks like squeezing; positives include weaker and other forms.
HELDOUT_REGIME = {"steps": 24, "batch": 4, "probe_every": 8, "constant": True}
HELDOUT = {
    "null_sft_long": Condition(
        "sft", "null", 2e-4, **HELDOUT_REGIME | {"steps": 48, "probe_every": 16}, seeds=(10, 11, 12)
    ),  # 48 steps at a constant 2e-4
    "null_sft_full": Condition("sft", "null", 2e-5, **HELDOUT_REGIME, full=True, seeds=(10, 11)),
    "null_sft_mixed_task": Condition("mixed_task", "null", 2e-4, **HELDOUT_REGIME, seeds=(10, 11)),  # 25% other task
    "null_ext_sft_far": Condition("sft", "null", 2e-4, **HELDOUT_REGIME, sft_mode="extended", seeds=(10, 11, 12)),
    "null_onpolicy_lr4e-4": Condition("onpolicy", "null", 4e-4, **HELDOUT_REGIME, seeds=(10, 11)),  # the demo's rate
    "far_lr5e-5": Condition("far", "positive", 5e-5, **HELDOUT_REGIME, seeds=(10, 11, 12)),
    "far25_lr2e-4": Condition("far25", "positive", 2e-4, **HELDOUT_REGIME, seeds=(10, 11, 12)),  # 25% far pairs
    "ipo_far_lr2e-4": Condition("far", "positive", 2e-4, **HELDOUT_REGIME, loss="ipo", seeds=(10, 11, 12)),
    "far_full_lr1e-5": Condition("far", "positive", 1e-5, **HELDOUT_REGIME, full=True, seeds=(10, 11, 12)),
}
ALL_CONDITIONS = CONDITIONS | HELDOUT
DEFAULT_CONDITIONS = [name for name, c in CONDITIONS.items() if c.label != "reference"]
FAMILIES = ["chosen", "rejected", "irrelevant_test", "irrelevant_human", "shuffled", "non_human", "greedy", "argmax"]
# Metrics whose threshold table is reported; `squeeze/score` is the original score, the rest are `mech/<name>`.
TABLE_METRICS = [m for m in ALERT_METRICS]
log = logging.getLogger("calibration")


def regime(args, cond: Condition) -> tuple[int, int, int]:
    """(steps, batch, probe_every) of a condition: its own, or the bench's arguments."""
    return (cond.steps or args.steps, cond.batch or args.batch,
            args.probe_every if cond.probe_every is None else cond.probe_every)  # fmt: skip


def recipe_config(args, cond: Condition, seed: int, run_dir: Path) -> RecipeConfig:
    """The recipe's config for one run: defaults everywhere except the run's size, rate, schedule, seed and monitor."""
    steps, batch, probe_every = regime(args, cond)
    schedule = {"lr_scheduler_type": "constant"} if cond.constant else {}  # {}: cosine, as the development runs
    return RecipeConfig(
        model=ModelConfig(use_lora=not cond.full),
        data=DataConfig(max_train_samples=None),  # the calibration's runs: every pair, as when it was measured
        sft=SFTStageConfig(
            sft_mode=cond.sft_mode, sft_learning_rate=cond.lr, sft_max_steps=steps, sft_trainer_args=dict(schedule)
        ),  # fmt: skip
        preference=PreferenceStageConfig(
            loss=cond.loss,
            preference_learning_rate=cond.lr,
            preference_max_steps=steps,
            preference_trainer_args=dict(schedule),
        ),  # fmt: skip
        monitor=MonitorConfig(
            probe_families=list(FAMILIES),
            probe_num_prompts=args.probes,
            probe_every=probe_every or 1_000_000,  # 0: the stage's first and last step only
            probe_max_new_tokens=32,
            probe_bootstrap=1000,
        ),
        evaluation=EvaluationConfig(),
        run=RunConfig(
            output_dir=str(run_dir),
            seed=seed,
            per_device_train_batch_size=batch,
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


def other_task_chosen(rows: list[dict]) -> list[str | list]:
    """Each row's y+ replaced by another task's y+ (alignkit.data.far's construction, applied to the chosen column)."""
    # far_rejected moves the `rejected` column; its check that no moved answer is some row's y+ does not apply here
    # (every moved answer is a y+), so the copies it sees have an empty y+.
    swapped = far_rejected([{**r, "rejected": r["chosen"], "chosen": ""} for r in rows])
    return [r["rejected"] for r in swapped]


def train_rows(data, kind: str, seed: int, n: int, tokenizer, model) -> list[dict]:
    """The rows a run trains on. far: every y- is another task's; far25: a quarter of the pairs have such a y- (the
    rest their own near miss); mixed_task: SFT rows, a quarter of whose y+ are another task's answers."""
    train = [dict(r) for r in data["train"]]
    if kind in ("far", "far25"):
        far = far_rejected(train)  # over the whole split, so each y- comes from the full pool of other tasks
        train = far if kind == "far" else [f if i % 4 == 0 else t for i, (t, f) in enumerate(zip(train, far))]
    if kind == "mixed_task":
        other = other_task_chosen(train)
        train = [{**t, "chosen": c} if i % 4 == 0 else t for i, (t, c) in enumerate(zip(train, other))]
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
    cond = ALL_CONDITIONS[name]
    steps, batch, probe_every = regime(args, cond)
    extra = {k: getattr(cond, k) for k in ("constant", "full", "loss", "sft_mode")
             if getattr(cond, k) != getattr(Condition, k)}  # only what differs from the development runs  # fmt: skip
    return {"condition": name, "kind": cond.kind, "learning_rate": cond.lr, "seed": seed, "steps": steps,
            "batch": batch, "probes": args.probes, "probe_every": probe_every,
            "model": ModelConfig().model_name_or_path, **extra}  # fmt: skip


def jobs(args) -> list[tuple[str, int]]:
    """(condition, seed) of every run, seeds outer: a partial bench still has every condition at its first seeds.
    `args.seeds` None: each condition's own seeds."""
    pairs = [(name, seed) for name in args.conditions
             for seed in (args.seeds if args.seeds is not None else ALL_CONDITIONS[name].seeds)]  # fmt: skip
    order = list(ALL_CONDITIONS)
    return sorted(pairs, key=lambda p: (p[1], order.index(p[0])))


def stale_runs(args, out: Path) -> list[tuple[Path, str]]:
    """(per-run JSON, what changed) for every finished run of this bench's conditions and seeds made with other
    settings; a JSON from before runs kept a fingerprint is compared on the settings it recorded."""
    stale = []
    for name, seed in jobs(args):
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
    cond = ALL_CONDITIONS[name]
    kind, label, lr = cond.kind, cond.label, cond.lr
    run_dir = Path(args.work) / f"{name}_s{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a run that died half-way: start it again
    cfg = recipe_config(args, cond, seed, run_dir)
    steps, batch, _ = regime(args, cond)
    t0 = time.perf_counter()
    model = load_model(cfg.model)
    rows = train_rows(data, kind, seed, steps * batch, tokenizer, model)
    t_rows = time.perf_counter() - t0
    probes = build_probe_set(rows, data["test"], cfg.monitor, seed=seed)
    monitor = SqueezingMonitor(probes, cfg.monitor, tokenizer, run_dir)
    pairs = Dataset.from_list(rows)
    stage = "sft" if kind in ("sft", "mixed_task") else "preference"
    callbacks = [monitor.callback(stage, run_dir / stage)]
    if stage == "sft":
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
    order = [c for c in ALL_CONDITIONS if any(r["condition"] == c for r in runs)]
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


# --- the held-out set: scored at the frozen detector, never used to choose it


FROZEN = Path(__file__).resolve().parent / "results" / "detector_calibration" / "frozen.json"
CURRENT_ALERT = ("off_target_fall", 0.075)  # the alert before the held-out test, for comparison


def confusion(runs: list[dict], metric: str, threshold: float) -> dict:
    """Detection and false alarms of `metric >= threshold` (mean reading, any evaluation after the first), with
    Wilson 95% intervals; runs labelled `reference` are left out."""
    pos = [r for r in runs if r["label"] == "positive"]
    null = [r for r in runs if r["label"] == "null"]
    det = sum(alarm(r, metric, threshold, "mean") for r in pos)
    fa = sum(alarm(r, metric, threshold, "mean") for r in null)
    return {"metric": metric, "threshold": threshold, "positives": len(pos), "nulls": len(null),
            "detected": det, "false_alarms": fa,
            "detection": det / len(pos) if pos else math.nan, "detection_wilson95": wilson_interval(det, len(pos)),
            "false_alarm": fa / len(null) if null else math.nan,
            "false_alarm_wilson95": wilson_interval(fa, len(null))}  # fmt: skip


def analyze_heldout(out: Path) -> dict | None:
    """table.md, summary.json and heldout.png of the held-out runs, at the frozen detector and at the old alert."""
    runs = [json.loads(p.read_text()) for p in sorted((out / "per_run").glob("*.json"))]
    if not runs:
        print("no held-out runs yet")
        return None
    frozen = json.loads(FROZEN.read_text())
    reading, threshold = frozen["reading"], frozen["threshold"]
    order = [c for c in HELDOUT if any(r["condition"] == c for r in runs)]
    tables = {"frozen": confusion(runs, reading, threshold), "current": confusion(runs, *CURRENT_ALERT)}

    def pct(c: dict, key: str, n: str, k: str) -> str:
        lo, hi = c[f"{key}_wilson95"]
        return f"{c[key]:.0%} ({c[k]}/{c[n]}) [{lo:.0%}, {hi:.0%}]"

    lines = [
        "# Detector v2 on held-out runs",
        "",
        f"{len(runs)} runs ({sum(r['label'] == 'positive' for r in runs)} positive, "
        f"{sum(r['label'] == 'null' for r in runs)} null by design), conditions and seeds not in the development "
        f"set, the default recipe's regime. Frozen detector: `{reading}` >= {threshold} "
        "(bench/results/detector_calibration/frozen.json); an alarm is the mean reading reaching it at any "
        "evaluation after the first.",
        "",
        "| detector | detection [Wilson 95%] | false alarms [Wilson 95%] |",
        "|---|---:|---:|",
    ]
    for name, c in (("frozen", tables["frozen"]), ("current alert", tables["current"])):
        detection = pct(c, "detection", "positives", "detected")
        false_alarm = pct(c, "false_alarm", "nulls", "false_alarms")
        lines.append(f"| {name}: `{c['metric']}` >= {c['threshold']:g} | {detection} | {false_alarm} |")
    lines += [
        "",
        "## Per condition: alarms, and each run's largest reading after the first evaluation",
        "",
        f"| condition | label | alarms (`{reading}`) | largest `{reading}` per run | alarms (`off_target_fall`) | "
        "largest `off_target_fall` per run | y- fall at the end per run |",
        "|---|---|---:|---|---:|---|---|",
    ]

    def peaks(cr: list[dict], metric: str) -> str:
        return ", ".join(f"{max(run_values(r, metric, 'mean'), default=math.nan):.3f}" for r in cr)

    for c in order:
        cr = [r for r in runs if r["condition"] == c]

        falls = ", ".join(f"{r['evaluations'][-1].get('mech/rejected_fall', math.nan):.3f}" for r in cr)
        lines.append(
            f"| {c} | {cr[0]['label']} | {sum(alarm(r, reading, threshold, 'mean') for r in cr)}/{len(cr)} | "
            f"{peaks(cr, reading)} | {sum(alarm(r, *CURRENT_ALERT, 'mean') for r in cr)}/{len(cr)} | "
            f"{peaks(cr, 'off_target_fall')} | {falls} |"
        )
    lines += ["", "nan: the reading was undefined at every evaluation (y- fell by < 0.05 nats/token: no alarm)."]
    summary = {"runs": len(runs), "conditions": {c: sum(r["condition"] == c for r in runs) for c in order},
               "frozen": frozen["reading"], "tables": tables}  # fmt: skip
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps(json_safe(summary), indent=1))
    plot_heldout(runs, order, out / "heldout.png", reading, threshold)
    print("\n".join(lines))
    return summary


def plot_heldout(runs: list[dict], order: list[str], path: Path, reading: str, threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, (metric, t) in zip(axes, ((reading, threshold), CURRENT_ALERT)):
        for x, c in enumerate(order):
            for j, r in enumerate(rr for rr in runs if rr["condition"] == c):
                peak = max(run_values(r, metric, "mean"), default=math.nan)
                color = "C3" if r["label"] == "positive" else "C0"
                ax.plot(x + (j - 1) * 0.15, peak if math.isfinite(peak) else 0.0, "o" if math.isfinite(peak) else "x",
                        color=color, ms=5)  # fmt: skip
        ax.axhline(t, color="k", ls=":", lw=1)
        ax.set_xticks(range(len(order)), order, rotation=60, fontsize=7)
        ax.set_title(f"{metric} (threshold {t:g})", fontsize=9)
    fig.suptitle("Held-out runs: largest reading after the first evaluation (red: positive, blue: null; "
                 "x: undefined, drawn at 0)", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--set",
        default="dev",
        choices=["dev", "heldout"],
        help="dev: the development runs; heldout: the held-out runs, scored at frozen.json",
    )
    parser.add_argument("--out", help="default bench/results/detector_calibration (dev), .../detector_heldout")
    parser.add_argument("--work", help="default outputs/detector_calibration (dev), outputs/detector_heldout")
    parser.add_argument("--conditions", nargs="*", choices=list(ALL_CONDITIONS), help="default: the set's")
    parser.add_argument("--seeds", nargs="*", type=int, help="default: each condition's own (dev 0 1 2)")
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
    heldout = args.set == "heldout"
    name = "detector_heldout" if heldout else "detector_calibration"
    args.out = args.out or f"bench/results/{name}"
    args.work = args.work or f"outputs/{name}"
    args.conditions = args.conditions or (list(HELDOUT) if heldout else DEFAULT_CONDITIONS)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    out = Path(args.out)
    if heldout and not FROZEN.exists():
        raise SystemExit(f"error: {FROZEN} is missing: freeze the detector first (python bench/detector_freeze.py)")
    if not args.analyze:
        check_finished_runs(args, out)  # before any work: a finished run is reused only with the same settings
        torch.set_num_threads(args.threads)
        tokenizer = load_tokenizer(ModelConfig())
        data = load_preference_data(DataConfig(max_train_samples=None))
        todo = jobs(args)
        for i, (condition, seed) in enumerate(todo, 1):
            if (out / "per_run" / f"{condition}_s{seed}.json").exists():
                log.warning("[%d/%d] skip %s seed %d: done", i, len(todo), condition, seed)
                continue
            log.warning("[%d/%d] start %s seed %d", i, len(todo), condition, seed)
            run_one(args, condition, seed, data, tokenizer, out)
    if heldout:
        summary = analyze_heldout(out)
        if summary is not None:
            write_result("detector_heldout", argv, summary | {"per_run_folder": str(out / "per_run")})
        return
    summary = analyze(out)
    if summary is not None:
        figures = {k: summary[k] for k in ("runs", "conditions", "best")} | {"per_run_folder": str(out / "per_run")}
        write_result("detector_calibration", argv, figures)


if __name__ == "__main__":
    main()
