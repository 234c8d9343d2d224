"""Does the pre-flight's `act` help? Each `_act_` arm against its baseline, the same arm without `_act_`.

The baseline (e.g. A_far) is what `preflight: report` gives: the pairs are scored and nothing changes. The act arm
(A_far_act_extend, A_far_act_drop) ran the recipe's own `act` path (alignkit/study/run.py). Read in the study's
order, manipulation first:

- `per_seed`: what the pre-flight marked (pairs at risk of those scored, under which model) and what DPO then trained
  on (pairs, pair-gradients over its steps, against the baseline's): drop keeps the steps but spreads them over fewer
  pairs, a confound the comparison carries;
- `levels`: y⁻'s and y⁺'s per-token log π at DPO begin, act − baseline paired per (seed, probe), on the probes of the
  pairs marked at risk and on the others: extend_sft must lift the marked y⁻ before DPO starts;
- `off_target_fall`: per checkpoint, both arms' mean and the paired difference act − baseline over (seed, probe),
  on every probe and split by at risk / not at risk (training probes) / held-out; act helps when the difference's
  interval lies below 0;
- `accuracy`: held-out verifier accuracy per checkpoint, both arms, the paired difference over (seed, prompt) and the
  win rate (ties as half).

Only the seeds both arms finished enter a comparison.
"""

from __future__ import annotations

from collections.abc import Mapping

from alignkit.stats import Key, estimate, merge, paired_difference
from alignkit.study.config import parse_arm
from alignkit.study.quality import score_units, win_rate, win_units
from alignkit.study.records import Run

Units = Mapping[Key, float]


def _subset(units: Units, keep) -> dict[Key, float]:
    return {k: v for k, v in units.items() if keep(k)}


def _split(diff: Units, at_risk: set[Key], train: set[Key], n_boot: int) -> dict[str, dict]:
    """The estimate of `diff` on every unit, and on the probes at risk / not at risk / held-out."""
    return {
        "all": estimate(dict(diff), n_boot=n_boot),
        "at_risk": estimate(_subset(diff, lambda k: k in at_risk), n_boot=n_boot),
        "not_at_risk": estimate(_subset(diff, lambda k: k in train and k not in at_risk), n_boot=n_boot),
        "heldout": estimate(_subset(diff, lambda k: k not in train), n_boot=n_boot),
    }


def verdict(diff: dict | None) -> str:
    """'reduced' / 'increased' when the interval of act − baseline excludes 0, else 'no difference found'."""
    if not diff or diff.get("lo") is None or diff.get("hi") is None:
        return "untestable"
    return "reduced" if diff["hi"] < 0 else "increased" if diff["lo"] > 0 else "no difference found"


def compare_arm(arm: str, runs: dict[tuple[int, str], Run], mechanisms: dict, levels: dict, n_boot: int) -> dict:
    base = parse_arm(arm).baseline
    seeds = sorted({s for s, a in runs if a == arm} & {s for s, a in runs if a == base})
    acted = [runs[(s, arm)] for s in seeds]

    def in_seeds(key: Key) -> bool:
        return key[0] in seeds

    at_risk = {(run.seed, probe) for run in acted for probe in run.meta["act"]["at_risk_probes"]}
    train = {k for k in levels.get(base, {}).get("rejected", {}) if in_seeds(k)}
    out: dict = {"baseline": base, "action": acted[0].meta["act"]["action"] if acted else None, "seeds": seeds}
    out["per_seed"] = {
        str(run.seed): {
            k: run.meta["act"].get(k)
            for k in ("scored", "at_risk", "scored_under", "dpo_pairs", "dpo_pair_updates", "baseline_pair_updates")
        }
        | {"dpo_steps": run.meta["dpo"]["steps"], "baseline_dpo_steps": runs[(run.seed, base)].meta["dpo"]["steps"]}
        for run in acted
    }
    out["levels"] = {
        family: _split(
            paired_difference(
                _subset(levels.get(arm, {}).get(family, {}), in_seeds),
                _subset(levels.get(base, {}).get(family, {}), in_seeds),
            ),
            at_risk,
            train,
            n_boot,
        )  # fmt: skip
        for family in ("rejected", "chosen")
    }
    out["off_target_fall"] = {}
    for cp in sorted(mechanisms.get(arm, {}).keys() & mechanisms.get(base, {}).keys(), key=lambda c: (c == "end", c)):
        x = _subset(mechanisms[arm][cp].get("off_target_fall", {}), in_seeds)
        y = _subset(mechanisms[base][cp].get("off_target_fall", {}), in_seeds)
        diff = _split(paired_difference(x, y), at_risk, train, n_boot)
        out["off_target_fall"][cp] = {
            "act": estimate(x, n_boot=n_boot), "baseline": estimate(y, n_boot=n_boot), "difference": diff,
            "verdict": verdict(diff["all"]),
        }  # fmt: skip
    scores = {a: {} for a in (arm, base)}
    for a in scores:
        for run in (runs[(s, a)] for s in seeds):
            for cp, units in score_units(run).items():
                scores[a][cp] = merge([scores[a].get(cp, {}), units])
    out["accuracy"] = {
        cp: {
            "act": estimate(scores[arm][cp], n_boot=n_boot),
            "baseline": estimate(scores[base][cp], n_boot=n_boot),
            "difference": estimate(paired_difference(scores[arm][cp], scores[base][cp]), n_boot=n_boot),
            "win_rate": win_rate(win_units(scores[arm][cp], scores[base][cp]), n_boot),
        }  # fmt: skip
        for cp in sorted(scores[arm].keys() & scores[base].keys())
    }
    return out


def act_comparison(runs: dict[tuple[int, str], Run], mechanisms: dict, levels: dict, n_boot: int) -> dict:
    """{act arm: compare_arm(...)} for every `_act_` arm whose baseline has a finished run on a common seed.

    `mechanisms` and `levels` are alignkit.study.analysis' `arm_mechanisms(runs)` and `arm_levels(runs)`.
    """
    arms = sorted({run.arm for run in runs.values() if run.meta.get("act")})
    out = {}
    for arm in arms:
        base = parse_arm(arm).baseline
        if {s for s, a in runs if a == arm} & {s for s, a in runs if a == base}:
            out[arm] = compare_arm(arm, runs, mechanisms, levels, n_boot)
    return out
