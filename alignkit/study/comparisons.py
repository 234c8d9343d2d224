"""Each arm against the arm it is compared with: squeezing raw and at matched learning, quality, and time.

The rows of the study's remedy table (docs/study.md) and of its extended-SFT rows. A comparison is (base, arm), read
as base − arm for squeezing (positive: the arm squeezes less) and as arm − base for quality (positive: the arm's
answers read higher):

- every arm with a baseline in the study (alignkit.study.config.Arm.baseline: a remedy, IPO or on-policy arm against
  the same SFT without it; Ah and B against A) and, where both ran, B against Ah (extended SFT at equal y⁺ exposure);
- `raw`: the paired (seed, probe) difference at DPO's end of OUTCOMES, plus each arm's own end values;
- `learned`: what each arm learned by the end (held-out margin, y⁻ fall; seed-level means over probes), so that a
  remedy that squeezes less because it learns less shows up as such;
- `matched`: base − arm at matched held-out margin and at matched y⁻ fall (alignkit/study/matched.py);
- `quality`: at DPO's end, arm − base of each reading of `quality_units` paired per (seed, prompt), and the verifier's
  win rate of the arm against the base (ties half);
- `seconds`: each arm's mean preference-training time per seed (the DPO stage without the study's probes and held-out
  answers; on-policy includes its sampling) and their ratio.

Every interval has seeds as the unit, probes or prompts resampled inside (`alignkit.stats.estimate`).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from alignkit.stats import Key, estimate, merge, paired_difference
from alignkit.study.config import parse_arm
from alignkit.study.matched import arm_curve, learning, matched_contrasts
from alignkit.study.quality import pair_units, score_units, text_units, training_index, win_rate, win_units
from alignkit.study.records import Run, checkpoints, mechanism_units

OUTCOMES = ("off_target_fall", "rejected_fall", "chosen_change", "concentration_alt")
QUALITY = ("terminated", "repetition", "echo", "copying", "words", "accuracy", "yplus_change", "ranking")


def baseline_of(run: Run) -> str:
    return run.meta.get("baseline") or parse_arm(run.arm).baseline


def pairs_to_compare(runs: dict[tuple[int, str], Run]) -> dict[str, tuple[str, str]]:
    """{"<arm> vs <base>": (base, arm)} for every arm whose baseline ran, and B vs Ah at each y⁻ where both ran."""
    arms = {run.arm: run for run in runs.values()}
    out = {}
    for arm, run in sorted(arms.items()):
        base = baseline_of(run)
        if base != arm and base in arms:
            out[f"{arm} vs {base}"] = (base, arm)
    for rejected in ("near", "far"):
        if f"B_{rejected}" in arms and f"Ah_{rejected}" in arms:
            out[f"B_{rejected} vs Ah_{rejected}"] = (f"Ah_{rejected}", f"B_{rejected}")
    return out


def last_checkpoint(run: Run) -> str:
    """The generations' last checkpoint (`epoch<last>`)."""
    return max((g["checkpoint"] for g in run.generations), key=lambda c: int(c[5:]), default="epoch0")


def quality_units(run: Run, answers: dict[str, str]) -> dict[str, dict[str, dict[Key, float]]]:
    """{checkpoint: {reading: {(seed, prompt): value}}}: the text readings, the verifier's score (`accuracy`) and the
    held-out pair readings (alignkit/study/quality.py)."""
    out: dict[str, dict[str, dict[Key, float]]] = defaultdict(dict)
    for cp, readings in text_units(run, training_index(run, answers)).items():
        out[cp] |= readings
    for cp, units in score_units(run).items():
        out[cp]["accuracy"] = units
    for cp, readings in pair_units(run).items():
        out[cp] |= readings
    return dict(out)


def end_units(run: Run) -> dict[str, dict[Key, float]]:
    cps = checkpoints(run)
    if "begin" not in cps or "end" not in cps:
        return {}
    units = mechanism_units(run, cps["begin"], cps["end"])
    return {m: units[m] for m in OUTCOMES if m in units}


def learned(run: Run) -> dict[str, float]:
    cps = checkpoints(run)
    if "begin" not in cps or "end" not in cps:
        return {}
    return {m: learning(run, cps["begin"], cps["end"], m) for m in ("heldout_margin", "rejected_fall")}


def train_seconds(run: Run) -> float:
    """The preference stage's time without the study's own measurements (probes, held-out answers)."""
    m = run.meta
    return float(m["dpo"]["seconds"]) - float(m.get("probe_seconds") or 0.0) - float(m.get("answer_seconds") or 0.0)


def per_seed_estimate(values: dict[int, float]) -> dict:
    """A seed-level estimate of one number per seed (no units inside a seed)."""
    return estimate({(seed, "-"): v for seed, v in values.items() if math.isfinite(v)})


Quality = dict[tuple[int, str], dict[str, dict[str, dict[Key, float]]]]  # (seed, arm) -> `quality_units`


def quality_by_run(runs: dict[tuple[int, str], Run], answers: dict[str, str]) -> Quality:
    """Each run's `quality_units`, read once: a baseline enters several comparisons."""
    return {key: quality_units(run, answers) for key, run in runs.items()}


def arm_quality(runs: dict[tuple[int, str], Run], quality: Quality, n_boot: int) -> dict:
    """{arm: {checkpoint: {reading: estimate}}}: every quality reading per arm at each checkpoint it was read."""
    parts: dict[str, dict[str, dict[str, list]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for key, run in runs.items():
        for cp, readings in quality[key].items():
            for name, units in readings.items():
                parts[run.arm][cp][name].append(units)
    return {
        arm: {cp: {n: estimate(merge(u), n_boot=n_boot) for n, u in sorted(r.items())} for cp, r in sorted(c.items())}
        for arm, c in sorted(parts.items())
    }


def compare(runs: dict[tuple[int, str], Run], quality: Quality, n_boot: int) -> dict:
    """{"<arm> vs <base>": {base, arm, seeds, raw, learned, matched, quality, seconds}} (see the module docstring)."""
    pairs = pairs_to_compare(runs)
    matched = matched_contrasts(runs, pairs, n_boot)
    out = {}
    for name, (base, arm) in pairs.items():
        seeds = sorted(s for s, a in runs if a == arm and (s, base) in runs)
        raw_diff: dict[str, list] = defaultdict(list)
        own: dict[str, dict[str, list]] = {base: defaultdict(list), arm: defaultdict(list)}
        qual_diff: dict[str, list] = defaultdict(list)
        wins, learned_by, seconds = [], {base: defaultdict(dict), arm: defaultdict(dict)}, {base: {}, arm: {}}
        for seed in seeds:
            rb, ra = runs[(seed, base)], runs[(seed, arm)]
            ub, ua = end_units(rb), end_units(ra)
            for m in OUTCOMES:
                if m in ub and m in ua:
                    raw_diff[m].append(paired_difference(ub[m], ua[m]))
                    own[base][m].append(ub[m])
                    own[arm][m].append(ua[m])
            for who, run in ((base, rb), (arm, ra)):
                for m, v in learned(run).items():
                    learned_by[who][m][seed] = v
                seconds[who][seed] = train_seconds(run)
            qb, qa = quality[(seed, base)], quality[(seed, arm)]
            cp = last_checkpoint(ra)
            for reading in QUALITY:
                x, y = qa.get(cp, {}).get(reading), qb.get(cp, {}).get(reading)
                if x and y:
                    qual_diff[reading].append(paired_difference(x, y))
            if "accuracy" in qa.get(cp, {}) and "accuracy" in qb.get(cp, {}):
                wins.append(win_units(qa[cp]["accuracy"], qb[cp]["accuracy"]))
        ratio = {s: seconds[arm][s] / seconds[base][s] for s in seeds if seconds[base][s] > 0}
        out[name] = {
            "base": base,
            "arm": arm,
            "seeds": seeds,
            "raw": {m: estimate(merge(u), n_boot=n_boot) for m, u in raw_diff.items()},
            "end": {who: {m: estimate(merge(u), n_boot=n_boot) for m, u in ms.items()} for who, ms in own.items()},
            "learned": {who: {m: per_seed_estimate(v) for m, v in ms.items()} for who, ms in learned_by.items()},
            "matched": matched.get(name, {}),
            "quality": {r: estimate(merge(u), n_boot=n_boot) for r, u in qual_diff.items()},
            "win_rate": win_rate(merge(wins), n_boot) if wins else None,
            "seconds": {who: float(np.mean(list(v.values()))) if v else math.nan for who, v in seconds.items()}
            | {"ratio": per_seed_estimate(ratio)},
        }
    return out


def sft_effect(runs: dict[tuple[int, str], Run], n_boot: int) -> dict:
    """{arm: {yplus_change, yminus_change, gap}}: SFT's effect on the held-out pairs (prompts it never trained on),
    the SFT model (each arm's DPO begin, `epoch0`) minus the base model, per token, paired per (seed, prompt); `gap` is
    y⁺'s change minus y⁻'s. The paper's SFT-stage claim: learning y⁺ on some prompts raises similar responses on
    others (y⁺ of held-out prompts), and the dispreferred y⁻ less."""
    parts: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run in runs.values():
        base = {r["id"]: r for r in run.base_pairs}
        sft = {r["id"]: r for r in run.heldout_pairs if r["checkpoint"] == "epoch0"}
        common = sorted(base.keys() & sft.keys())
        if not common:
            continue
        plus = {(run.seed, i): sft[i]["chosen_logp_per_token"] - base[i]["chosen_logp_per_token"] for i in common}
        minus = {(run.seed, i): sft[i]["rejected_logp_per_token"] - base[i]["rejected_logp_per_token"] for i in common}
        parts[run.arm]["yplus_change"].append(plus)
        parts[run.arm]["yminus_change"].append(minus)
        parts[run.arm]["gap"].append(paired_difference(plus, minus))
    return {arm: {m: estimate(merge(u), n_boot=n_boot) for m, u in ms.items()} for arm, ms in sorted(parts.items())}


def quality_change(runs: dict[tuple[int, str], Run], quality: Quality, n_boot: int) -> dict:
    """{arm: {reading: estimate}}: each text reading at the arm's last checkpoint minus the same prompt's at DPO's
    begin (the SFT model's answer), paired per (seed, prompt): what DPO did to the answers (the repeater phenomenon:
    repetition up, termination down)."""
    parts: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for key, run in runs.items():
        units = quality[key]
        last, begin = units.get(last_checkpoint(run), {}), units.get("epoch0", {})
        if last is begin:
            continue
        for reading in ("terminated", "repetition", "echo", "copying", "words", "accuracy"):
            if reading in last and reading in begin:
                parts[run.arm][reading].append(paired_difference(last[reading], begin[reading]))
    return {arm: {m: estimate(merge(u), n_boot=n_boot) for m, u in ms.items()} for arm, ms in sorted(parts.items())}


def learning_curves(runs: dict[tuple[int, str], Run]) -> dict[str, list[list[float]]]:
    """{arm: [[held-out margin, off-target fall], ...]}: per DPO evaluation (begin first), each the mean over the
    arm's seeds of the seed's mean over probes: squeezing against what was learned, the picture behind `matched`."""
    by_arm: dict[str, list[list[tuple[float, float]]]] = defaultdict(list)
    for run in runs.values():
        curve, units = arm_curve(run, "heldout_margin")
        if curve:
            falls = [float(np.nanmean(list(u["off_target_fall"].values()))) for u in units]
            by_arm[run.arm].append(list(zip(curve, falls)))
    out = {}
    for arm, seeds in sorted(by_arm.items()):
        n = min(len(s) for s in seeds)
        out[arm] = [[float(np.nanmean([s[i][j] for s in seeds])) for j in (0, 1)] for i in range(n)]
    return out
