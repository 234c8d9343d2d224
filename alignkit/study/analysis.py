"""The squeezing study's analysis: every number of the report, computed from the runner's files alone.

Inputs, under `<study_dir>/runs/s<seed>/`, one set per finished (seed, arm): `<arm>.json` (what ran, timings),
`<arm>.probe_records.jsonl.gz` (per evaluation × probe × family records of the DPO stage) and
`<arm>.generations.jsonl.gz` (held-out answers with verifier scores). An arm is read off its JSON's fields
(`sft_mode` chosen|extended = A|B, `rejected` near|far, `loss`), never off its name.

Units: (seed, probe) for probe metrics, (seed, prompt) for generations, (seed, arm, probe) for the pooled
dose–response; every interval is a 95% percentile bootstrap with seeds as the unit, units resampled inside each
drawn seed (alignkit.stats.estimate). Comparisons between arms are paired: one difference per unit, on the units both
arms have.

`analyze(study_dir)` writes `<study_dir>/summary.json`, a dict with these keys (an *estimate* is
`{mean, lo, hi, n_units, n_seeds, per_seed: {seed: value}}`; checkpoints are `begin`, `epoch<e>` for the
intermediate evaluations named in the run JSON's `dpo.epoch_steps`, and `end`):

- `study_dir`, `n_boot`, `level`, `primary_loss`, `baseline_arm`, `seeds`, `caveats` (list of sentences),
  `arms`: {arm: {sft_mode, rejected, loss, seeds}}.
- `timing`: {total_s, per_seed: {seed: {total_s, runs: {arm: {seconds, sft_s, dpo_s}}}}};
  `settings`: {arm: {sft, dpo, settings}} from the lowest seed's run JSON.
- `manipulation`: {levels: {arm: {chosen|rejected: estimate}} (begin words_logp_per_token, train probes),
  checks: {M1|M2: {claim, status: passed|failed|untestable, estimate, near (M2 only), threshold}},
  y_plus_change: {near|far: estimate} (B − A of chosen at begin), exposure: {sft_mode: {y_plus, y_minus}}}.
- `outcomes`: {arm: {checkpoint: {metric: estimate}}} with metrics OUTCOME_METRICS (DPO checkpoint vs begin).
- `contrasts`: {loss: {checkpoint: {contrast: {metric: estimate}}}}, contrasts `A-B|near`, `A-B|far`,
  `interaction` = (A−B)|far − (A−B)|near, `far-near|A`; metrics CONTRAST_METRICS.
- `trajectories`: {arm: {family: [[step, mean Δ per-token log π since begin], ...]}}.
- `dose_response`: {pooled, within_arm_mean: estimate of Spearman ρ, per_arm: {arm: estimate},
  points: [[seed, arm, probe, x, y], ...]} with x = begin y⁻ words_logp_per_token, y = off_target_fall at end.
- `quality`: {accuracy: {arm: {checkpoint: estimate}}, win_rates: {"<x>_vs_<base>": {checkpoint: {ours, paper:
  estimate, wins, ties, losses}}}, paper_reference: {checkpoint: win rate}}.
- `matched`: {contrast: {measure: {metric: estimate, matching: {seed: {level, t_x, t_y}}}}}: A − B at matched
  held-out margin and at matched y⁻ fall (alignkit/study/matched.py).
- `claims`: [{id, claim, verdict, evidence, rests_on, note}], verdicts from the rules in `decide_claims`.
- `act` (only with `_act_` arms, which enter nothing above): {act arm: alignkit.study.act.compare_arm(...)}.

The factorial keys above read the arms marked `factorial` (A|B × near|far × DPO|IPO); the keys below read every arm
(alignkit/study/comparisons.py):

- `outcomes` also holds the other arms; `arm_seeds`: {arm: [seeds]}.
- `comparisons`: {"<arm> vs <base>": {base, arm, seeds, raw, end, learned, matched, quality, win_rate, seconds}}.
- `arm_quality`: {arm: {checkpoint: {reading: estimate}}}; `quality_change`: {arm: {reading: estimate}}
  (last checkpoint − epoch0).
- `sft_effect`: {arm: {yplus_change, yminus_change, gap}} (SFT model − base model on the held-out pairs).
- `learning_curves`: {arm: [[held-out margin, off-target fall], ...]} per DPO evaluation.
- `paper_claims`: [{id, claim, verdict, evidence, note}] (alignkit.study.claims.paper_verdicts).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from alignkit.config import DataConfig
from alignkit.data import load_preference_data
from alignkit.errors import AlignkitError
from alignkit.jsonl import json_safe
from alignkit.monitors.stage_files import evaluations
from alignkit.sequences import response_text
from alignkit.stats import (
    LEVEL,
    N_BOOT,
    Key,
    estimate,
    mean_of,
    mean_within_group_spearman,
    merge,
    paired_difference,
    ratio_difference,
    ratio_of_means,
    spearman,
)
from alignkit.study.act import act_comparison
from alignkit.study.claims import decide_claims, finite, paper_verdicts
from alignkit.study.comparisons import (
    arm_quality,
    compare,
    learning_curves,
    quality_by_run,
    quality_change,
    sft_effect,
)
from alignkit.study.matched import matched_contrasts
from alignkit.study.quality import quality
from alignkit.study.records import (
    PRIMARY_LOSS,
    Run,
    Snapshot,
    arm_grid,
    checkpoints,
    load_judge,
    load_runs,
    mechanism_units,
    probe_splits,
)

CHECK_MIN_NATS = 1.0  # nats/token: the gap M1 demands between the valleys and the lift M2 demands from extended SFT
MIN_SEEDS = 3  # below this, intervals are over probes only: say so
OUTCOME_METRICS = (
    "off_target_fall", "chosen_change", "rejected_fall", "concentration_alt", "concentration_top",
    "collateral_ratio", "off_target_eos_change", "greedy_start_rise", "greedy_rise",
)  # fmt: skip
CONTRAST_METRICS = ("off_target_fall", "chosen_change", "concentration_alt", "collateral_ratio")
WORDS = "words_logp_per_token"  # per-token log π without the EOS label: the paper's quantity, length-free
# The model-derived families have no EOS-free value worth comparing (greedy changes text; argmax has logp only).
FAMILY_FIELD = {"argmax": "logp_per_token", "greedy": "logp_per_token"}
PAIR_FAMILIES = ("chosen", "rejected")  # looked at on training probes only: where the gradient acts


def level_units(run: Run, snap: Snapshot, family: str, name: str = WORDS, split: str = "train") -> dict[Key, float]:
    """{(seed, probe): record[name]} of one family at one evaluation, over the probes of `split` (None -> NaN)."""
    splits = probe_splits(run.probes)
    out = {}
    for probe, families in snap.items():
        value = families.get(family, {}).get(name)
        if splits.get(probe) == split:
            out[(run.seed, probe)] = math.nan if value is None else float(value)
    return out


def arm_mechanisms(runs: dict[tuple[int, str], Run]) -> dict[str, dict[str, dict[str, dict]]]:
    """{arm: {checkpoint: {metric: units pooled over seeds}}} for every DPO checkpoint after `begin`."""
    out: dict[str, dict[str, dict[str, list]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for run in runs.values():
        cps = checkpoints(run)
        if "begin" not in cps:
            continue
        for label, snap in cps.items():
            if label != "begin":
                for metric, units in mechanism_units(run, cps["begin"], snap).items():
                    out[run.arm][label][metric].append(units)
    return {a: {c: {m: merge(parts) for m, parts in ms.items()} for c, ms in cs.items()} for a, cs in out.items()}


def arm_levels(runs: dict[tuple[int, str], Run]) -> dict[str, dict[str, dict[Key, float]]]:
    """{arm: {chosen|rejected: {(seed, probe): begin words_logp_per_token}}} over training probes."""
    out: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run in runs.values():
        begin = checkpoints(run).get("begin")
        for family in PAIR_FAMILIES:
            out[run.arm][family].append(level_units(run, begin, family) if begin else {})
    return {a: {f: merge(parts) for f, parts in fs.items()} for a, fs in out.items()}


def trajectories(runs: dict[tuple[int, str], Run]) -> dict[str, dict[str, list[list[float]]]]:
    """{arm: {family: [[step, mean over (seed, probe) of Δ per-token log π since begin], ...]}}.

    chosen/rejected over training probes, every other family over all probes; EOS-free values except for the
    model-derived families (FAMILY_FIELD).
    """
    acc: dict[str, dict[str, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for run in runs.values():
        snaps = evaluations(run.probes)
        begin = next((snap for _, e, snap in snaps if e == "begin"), None)
        splits = probe_splits(run.probes)
        for step, _, snap in snaps if begin else []:
            for probe, families in snap.items():
                for family, record in families.items():
                    if family in PAIR_FAMILIES and splits.get(probe) != "train":
                        continue
                    name = FAMILY_FIELD.get(family, WORDS)
                    start = begin.get(probe, {}).get(family, {}).get(name)
                    if record.get(name) is not None and start is not None:
                        acc[run.arm][family][step].append(record[name] - start)
    return {
        arm: {f: [[s, float(np.mean(v))] for s, v in sorted(steps.items())] for f, steps in fams.items()}
        for arm, fams in acc.items()
    }


# --- manipulation checks, outcomes, contrasts


def manipulation(levels: dict, runs: dict[tuple[int, str], Run], grid: dict, loss: str, n_boot: int) -> dict:
    """M1 (FAR's y⁻ ≥ 1 nat/token below NEAR's under chosen-only SFT) and M2 (extended SFT lifts FAR's y⁻ by ≥ 1),
    on begin (= after SFT) per-token log π of y⁻ over training probes, paired per (seed, probe); and y⁺'s side."""

    def units(sft: str, rejected: str, family: str) -> dict | None:
        arm = grid.get((sft, rejected, loss))
        return levels.get(arm, {}).get(family) if arm else None

    def diff(x: tuple, y: tuple, family: str) -> dict | None:
        ux, uy = units(*x, family), units(*y, family)
        return estimate(paired_difference(ux, uy), n_boot=n_boot) if ux and uy else None

    a_near, a_far, b_near, b_far = ("chosen", "near"), ("chosen", "far"), ("extended", "near"), ("extended", "far")
    m1 = diff(a_far, a_near, "rejected")
    m2, m2_near = diff(b_far, a_far, "rejected"), diff(b_near, a_near, "rejected")
    checks = {
        "M1": {
            "claim": f"FAR's y⁻ sits ≥ {CHECK_MIN_NATS:g} nat/token below NEAR's, chosen-only SFT (A_far − A_near)",
            "status": check_status(m1, lambda m: m <= -CHECK_MIN_NATS),
            "estimate": m1,
            "threshold": -CHECK_MIN_NATS,
        },
        "M2": {
            "claim": f"Extended SFT lifts FAR's y⁻ by ≥ {CHECK_MIN_NATS:g} nat/token (B_far − A_far)",
            "status": check_status(m2, lambda m: m >= CHECK_MIN_NATS),
            "estimate": m2,
            "near": m2_near,
            "threshold": CHECK_MIN_NATS,
        },
    }
    return {
        "levels": {arm: {f: estimate(u, n_boot=n_boot) for f, u in fams.items()} for arm, fams in levels.items()},
        "checks": checks,
        "y_plus_change": {"near": diff(b_near, a_near, "chosen"), "far": diff(b_far, a_far, "chosen")},
        "exposure": exposure(runs),
    }


def check_status(est: dict | None, passes) -> str:
    if est is None or not finite(est["mean"]):
        return "untestable"
    return "passed" if passes(est["mean"]) else "failed"


def exposure(runs: dict[tuple[int, str], Run]) -> dict[str, dict[str, float]]:
    """{sft_mode: {y_plus, y_minus}}: times each training pair's y⁺ / y⁻ was seen in SFT (mean over runs)."""
    acc: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs.values():
        sft = run.meta.get("sft", {})
        for side in ("y_plus", "y_minus"):
            if sft.get(f"{side}_exposure") is not None:
                acc[run.meta["sft_mode"]][side].append(float(sft[f"{side}_exposure"]))
    return {mode: {side: float(np.mean(v)) for side, v in sides.items()} for mode, sides in acc.items()}


def outcomes(mechanisms: dict, n_boot: int) -> dict[str, dict[str, dict[str, dict]]]:
    """{arm: {checkpoint: {metric: estimate}}}; the collateral ratio as a ratio of means, bootstrapped as a ratio."""
    return {
        arm: {
            cp: {
                m: estimate(units[m], ratio_of_means if m == "collateral_ratio" else mean_of, n_boot)
                for m in OUTCOME_METRICS
                if m in units
            }
            for cp, units in cps.items()
        }
        for arm, cps in mechanisms.items()
    }


def contrast_units(mechanisms: dict, grid: dict, loss: str, checkpoint: str, metric: str) -> dict[str, dict]:
    """Paired per (seed, probe) differences: (A − B) under near and far, their interaction, and far − near under A."""

    def units(sft: str, rejected: str) -> dict:
        arm = grid.get((sft, rejected, loss))
        return mechanisms.get(arm, {}).get(checkpoint, {}).get(metric, {})

    if metric == "collateral_ratio":  # (fall, y⁻ fall) per unit: a difference of two ratios of means, paired
        return {name: u for name, u in {
            "A-B|near": paired_ratios(units("chosen", "near"), units("extended", "near")),
            "A-B|far": paired_ratios(units("chosen", "far"), units("extended", "far")),
            "far-near|A": paired_ratios(units("chosen", "far"), units("chosen", "near")),
        }.items() if u}  # fmt: skip
    near = paired_difference(units("chosen", "near"), units("extended", "near"))
    far = paired_difference(units("chosen", "far"), units("extended", "far"))
    out = {
        "A-B|near": near,
        "A-B|far": far,
        "interaction": paired_difference(far, near),
        "far-near|A": paired_difference(units("chosen", "far"), units("chosen", "near")),
    }
    return {name: u for name, u in out.items() if u}


def paired_ratios(x: dict, y: dict) -> dict:
    """{unit: (x's numerator, x's denominator, y's numerator, y's denominator)} on the units both arms have."""
    return {k: (*x[k], *y[k]) for k in x.keys() & y.keys()}


def contrasts(mechanisms: dict, grid: dict, n_boot: int) -> dict[str, dict[str, dict[str, dict[str, dict]]]]:
    """{loss: {checkpoint: {contrast: {metric: estimate}}}} over CONTRAST_METRICS."""
    out: dict = {}
    cps = sorted({cp for arms in mechanisms.values() for cp in arms})
    for loss in sorted({cell[2] for cell in grid}):
        for cp in cps:
            for metric in CONTRAST_METRICS:
                for name, units in contrast_units(mechanisms, grid, loss, cp, metric).items():
                    by_name = out.setdefault(loss, {}).setdefault(cp, {}).setdefault(name, {})
                    statistic = ratio_difference if metric == "collateral_ratio" else mean_of
                    by_name[metric] = estimate(units, statistic, n_boot)
    return out


# --- dose–response


def dose_units(runs: dict[tuple[int, str], Run], mechanisms: dict) -> dict[Key, tuple[float, float]]:
    """{(seed, arm, probe): (x, y)}: x = the training pair's y⁻ words_logp_per_token at begin (valley depth, more
    negative = deeper), y = its off_target_fall at the end of DPO."""
    out = {}
    for run in runs.values():
        begin = checkpoints(run).get("begin")
        fall = mechanisms.get(run.arm, {}).get("end", {}).get("off_target_fall", {})
        if begin is None:
            continue
        for (seed, probe), x in level_units(run, begin, "rejected").items():
            out[(seed, run.arm, probe)] = (x, fall.get((seed, probe), math.nan))
    return out


def dose_response(units: dict[Key, tuple[float, float]], n_boot: int) -> dict:
    """Spearman ρ of (valley depth, off-target fall): pooled over arms, per arm, and the mean of within-arm ρ."""
    arms = sorted({k[1] for k in units})
    code = {arm: i for i, arm in enumerate(arms)}
    grouped = {k: (x, y, code[k[1]]) for k, (x, y) in units.items()}
    return {
        "pooled": estimate(units, spearman, n_boot),
        "within_arm_mean": estimate(grouped, mean_within_group_spearman, n_boot),
        "per_arm": {arm: estimate({k: v for k, v in units.items() if k[1] == arm}, spearman, n_boot) for arm in arms},
        "points": [[k[0], k[1], k[2], x, y] for k, (x, y) in sorted(units.items(), key=str) if math.isfinite(x + y)],
    }


# --- quality from generations


# --- everything


def timing(runs: dict[tuple[int, str], Run]) -> dict:
    per_seed: dict[str, dict] = defaultdict(lambda: {"total_s": 0.0, "runs": {}})
    for (seed, arm), run in sorted(runs.items()):
        seconds = float(run.meta.get("seconds") or 0.0)
        per_seed[str(seed)]["total_s"] += seconds
        per_seed[str(seed)]["runs"][arm] = {
            "seconds": seconds,
            "sft_s": run.meta.get("sft", {}).get("seconds"),
            "dpo_s": run.meta.get("dpo", {}).get("seconds"),
        }
    return {"total_s": sum(s["total_s"] for s in per_seed.values()), "per_seed": dict(per_seed)}


def planned_seeds(run: Run, seeds: list[int]) -> list[int]:
    """The seeds (of those with any run) the study meant `run.arm` for: an `extra_arms` arm only the first
    `extra_seeds` of the study's seeds (its settings as recorded in the run), every other arm all of them."""
    settings = run.meta.get("settings", {})
    if run.arm in settings.get("extra_arms", []) and run.arm not in settings.get("arms", []):
        first = settings.get("seeds", seeds)[: settings.get("extra_seeds", len(seeds))]
        return [s for s in seeds if s in first]
    return seeds


def caveats(runs: dict[tuple[int, str], Run], grid: dict, loss: str) -> list[str]:
    seeds = sorted({seed for seed, _ in runs})
    out = []
    if len(seeds) < MIN_SEEDS:
        plural = "s" if len(seeds) != 1 else ""
        out.append(f"{len(seeds)} seed{plural}: an interval over seeds needs ≥ {MIN_SEEDS} of them to mean much")
    for arm in sorted({a for _, a in runs}):
        have = sorted(s for s, a in runs if a == arm)
        planned = planned_seeds(runs[(have[0], arm)], seeds)
        if set(planned) - set(have):
            out.append(f"arm {arm} finished seeds {have} only, of {planned}: its paired comparisons use those")
    kinds = {cell[1] for cell in grid}  # a study without any near (far) arm leaves those cells out by design
    for sft in ("chosen", "extended"):
        for rejected in ("near", "far"):
            if rejected in kinds and (sft, rejected, loss) not in grid:
                out.append(f"arm {'A' if sft == 'chosen' else 'B'}_{rejected} ({loss}) has no finished run")
    for (seed, arm), run in sorted(runs.items()):
        if not run.probes:
            out.append(f"seed {seed} {arm}: no probe records")
        if not run.generations:
            out.append(f"seed {seed} {arm}: no generations")
    return out


def matched_pairs(grid: dict, loss: str) -> dict[str, tuple[str, str]]:
    """The arm pairs compared at matched learning: chosen-only (A) against extended (B) SFT, per kind of y⁻."""
    pairs = {f"A-B|{r}": (grid.get(("chosen", r, loss)), grid.get(("extended", r, loss))) for r in ("near", "far")}
    return {name: (x, y) for name, (x, y) in pairs.items() if x and y}


def is_factorial(run: Run) -> bool:
    """A cell of the SFT × y⁻ × loss factorial (alignkit.study.config.Arm.factorial; runs written before the JSON
    said so are the arms without a pre-flight action)."""
    return run.meta.get("factorial", not run.meta.get("act"))


def summarize(runs: dict[tuple[int, str], Run], n_boot: int = N_BOOT, judge: dict | None = None) -> dict:
    """Every number of the study from loaded runs (see the module docstring for the layout).

    The factorial's numbers come from the arms without a pre-flight action; `_act_` arms are compared with their
    baseline arm in `act` (alignkit/study/act.py) and enter nothing else.
    """
    every = runs
    runs = {k: run for k, run in every.items() if is_factorial(run)}
    if not runs:
        raise AlignkitError("the study has only _act_ arms: run their baseline arm too (A_far beside A_far_act_drop)")
    grid = arm_grid(runs)
    losses = {cell[2] for cell in grid}
    loss = PRIMARY_LOSS if PRIMARY_LOSS in losses else sorted(losses)[0]
    mechanisms = arm_mechanisms(runs)
    lowest = {}
    for (_, arm), run in sorted(every.items(), reverse=True):
        keys = ("sft_mode", "rejected", "loss", "variant", "sft", "dpo", "settings")
        lowest[arm] = {k: run.meta.get(k) for k in keys}
    summary = {
        "n_boot": n_boot,
        "level": LEVEL,
        "primary_loss": loss,
        "baseline_arm": grid.get(("chosen", "near", loss)),
        "seeds": sorted({seed for seed, _ in runs}),
        "caveats": caveats(runs, grid, loss),
        "arms": {
            arm: {"sft_mode": c[0], "rejected": c[1], "loss": c[2], "seeds": sorted(s for s, a in runs if a == arm)}
            for c, arm in sorted(grid.items(), key=lambda kv: kv[1])
        },
        "timing": timing(every),
        "settings": dict(sorted(lowest.items())),
        "manipulation": manipulation(arm_levels(runs), runs, grid, loss, n_boot),
        "outcomes": outcomes(mechanisms, n_boot),
        "contrasts": contrasts(mechanisms, grid, n_boot),
        "trajectories": trajectories(runs),
        "dose_response": dose_response(dose_units(runs, mechanisms), n_boot),
        "quality": quality(runs, grid, loss, n_boot),
        "matched": matched_contrasts(runs, matched_pairs(grid, loss), n_boot),
    }
    summary["claims"] = decide_claims(summary)
    answers = training_answers()
    summary["outcomes"] |= {arm: o for arm, o in outcomes(arm_mechanisms(every), n_boot).items()
                            if arm not in summary["outcomes"]}  # fmt: skip
    # Every other arm's levels at DPO begin too (Ah: does half the SFT steps give extended SFT's y⁺ level?)
    levels = summary["manipulation"]["levels"]
    levels |= {arm: {f: estimate(u, n_boot=n_boot) for f, u in fams.items()}
               for arm, fams in arm_levels(every).items() if arm not in levels}  # fmt: skip
    readings = quality_by_run(every, answers)
    summary["comparisons"] = compare(every, readings, n_boot)
    summary["arm_quality"] = arm_quality(every, readings, n_boot)
    summary["quality_change"] = quality_change(every, readings, n_boot)
    summary["sft_effect"] = sft_effect(every, n_boot)
    summary["learning_curves"] = learning_curves(every)
    if judge is not None:
        summary["judge_win_rates"] = judge  # an LLM judge's win rates (alignkit/study/judge.py)
    summary["paper_claims"] = paper_verdicts(summary)
    summary["arm_seeds"] = {arm: sorted(s for s, a in every if a == arm) for arm in sorted({a for _, a in every})}
    acted = {k: run for k, run in every.items() if run.meta.get("act")}
    if acted:
        summary["act"] = act_comparison(every, arm_mechanisms(every), arm_levels(every), n_boot)
    return summary


def training_answers() -> dict[str, str]:
    """id -> y⁺ text of the built-in training split, the study's pairs (for the copying reading)."""
    data = load_preference_data(DataConfig(max_train_samples=None))
    return {row["id"]: response_text(row["chosen"]) for row in data["train"]}


def analyze(study_dir: str | Path, n_boot: int = N_BOOT) -> dict:
    """Load every run under `study_dir`, compute the summary and write `<study_dir>/summary.json`."""
    judge = load_judge(study_dir)
    summary = json_safe({"study_dir": str(study_dir), **summarize(load_runs(study_dir), n_boot, judge)})
    path = Path(study_dir, "summary.json")
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    tmp.replace(path)  # a reader sees the old summary or the new one, never half
    return summary
