"""Does pre-flight risk predict the off-target fall a pair goes on to show? Rank correlations with intervals.

Reads a squeezing study's raw files (recipes/squeezing_study.py; nothing is trained here): per (seed, arm),
`<arm>.preflight.jsonl.gz` holds each training pair's pre-flight scores under the model DPO started from, and
`<arm>.probe_records.jsonl.gz` the same pair's probe before and after DPO. For every score it reports Spearman's ρ
between the score and the pair's off-target fall at the end of DPO (alignkit.monitors.scoring: the mean fall of
log π per token of the off-target families under that pair's prompt):

- pooled over (seed, arm, pair) units, with a 95% bootstrap interval over units;
- the mean of the within-arm ρ (each (seed, arm) ranked alone, then averaged), with its interval: the pooled ρ alone
  can be carried by the arms' differences (far y⁻ are deeper *and* squeeze more), the within-arm ρ cannot.

A deeper valley is a lower log-prob, so a score that predicts has ρ < 0 for log-probs, ρ > 0 for the margin and CHES.
The fall on a pair's probe is caused by every pair's updates, not by that pair alone: what is tested is whether the
pairs that pre-flight marks at risk are where the squeezing shows, which is what `preflight: act` relies on.

The one-step prediction (`offtarget_delta`, `offtarget_argmax_delta`; alignkit/preflight/onestep.py) costs a backward
and a forward-mode pass per pair, so it exists for a sample only: the `_act_drop` arms' pre-flight
(`<arm>.act_preflight.jsonl.gz`, `preflight_dynamics_pairs` per run) scored the SFT model that the arm without
`_act_drop` started its DPO from, so its sampled pairs are that arm's pairs, with that arm's measured fall. On those
pairs every score is compared, on the same units (`one_step` in the JSON, the second table).

    python bench/preflight_validation.py --study results/squeezing_study/v1
    python bench/preflight_validation.py --study results/preflight_act       # with the one-step sample
    python bench/preflight_validation.py --study results/squeezing_study/v1 --onestep results/preflight_onestep \
        --out results/preflight_onestep         # every pair of A_near and A_far (bench/preflight_onestep.py)

The tables' figures also go to bench/results/preflight_validation/result.json (bench/_results.py).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from _results import write_result

from alignkit.errors import AlignkitError
from alignkit.jsonl import json_safe
from alignkit.stats import bootstrap_interval, mean_within_group_spearman, spearman
from alignkit.study.analysis import arm_mechanisms
from alignkit.study.config import parse_arm
from alignkit.study.records import load_runs, read_records

SCORES = ("rejected_logp_per_token", "rejected_min_logp", "chosen_logp_per_token", "margin_per_token", "ches")
ONE_STEP = ("offtarget_delta", "offtarget_argmax_delta")
# The sign of ρ for a score that predicts: log-probs are lower for a deeper valley (ρ < 0); the margin log π(y⁺) −
# log π(y⁻) per token is larger when y⁻ sits deeper below y⁺ (ρ > 0); CHES is larger for more similar y⁺ and y⁻, which
# Razin et al. find displaces likelihood (ρ > 0). The one-step change of an off-target answer is negative when the step
# pushes it down (ρ < 0); the argmax's rises while the rest is squeezed (ρ > 0).
EXPECTED_SIGN = {"margin_per_token": +1, "ches": +1, "offtarget_argmax_delta": +1}


def units(study: Path) -> dict[str, dict[tuple, tuple[float, float, int]]]:
    """{score: {(seed, arm, probe): (score, off-target fall at the end of DPO, arm code)}}."""
    runs = load_runs(study)
    falls = arm_mechanisms(runs)
    arms = sorted({arm for _, arm in runs})
    out: dict[str, dict] = {s: {} for s in SCORES}
    missing = []
    for seed, arm in sorted(runs):
        path = study / "runs" / f"s{seed}" / f"{arm}.preflight.jsonl.gz"
        if not path.is_file():
            missing.append(str(path))
            continue
        fall = falls.get(arm, {}).get("end", {}).get("off_target_fall", {})
        for record in read_records(path):
            y = fall.get((seed, record["probe"]))
            for score in SCORES:
                x = record.get(score)
                if x is not None and y is not None and math.isfinite(x) and math.isfinite(y):
                    out[score][(seed, arm, record["probe"])] = (float(x), float(y), arms.index(arm))
    if missing and not any(out.values()):
        raise AlignkitError(f"no pre-flight files in {study}/runs (e.g. {missing[0]}): rerun the study to make them")
    return out


def onestep_units(study: Path, onestep: Path | None = None) -> dict[str, dict[tuple, tuple[float, float, int]]]:
    """{score: {(seed, arm, probe): (score, fall, run code)}} over the pairs with a one-step prediction, every score
    (SCORES and ONE_STEP) on the same pairs; `arm` is the arm whose DPO started from the model they were scored on.

    The predictions come from `onestep/s<seed>/<arm>.onestep.jsonl.gz` (bench/preflight_onestep.py) when given, else
    from the study's `_act_drop` arms. The run code groups (seed, arm) for the within-run ρ.
    """
    runs = load_runs(study)
    falls = arm_mechanisms(runs)
    sources = []  # (seed, arm whose fall it is, records file)
    for (seed, arm), run in sorted(runs.items()):
        if onestep is not None:
            path = onestep / f"s{seed}" / f"{arm}.onestep.jsonl.gz"
            if path.is_file():
                sources.append((seed, arm, path))
        elif (run.meta.get("act") or {}).get("action") == "drop":  # extend_sft's pre-flight scored the base model
            sources.append(
                (seed, parse_arm(arm).baseline, study / "runs" / f"s{seed}" / f"{arm}.act_preflight.jsonl.gz")
            )
    arms = sorted({arm for _, arm, _ in sources})
    out: dict[str, dict] = {s: {} for s in (*SCORES, *ONE_STEP)}
    for seed, arm, path in sources:
        fall = falls.get(arm, {}).get("end", {}).get("off_target_fall", {})
        for record in read_records(path):
            y = fall.get((seed, record["probe"]))
            if record.get("offtarget_delta") is None or y is None or not math.isfinite(y):
                continue
            for score in out:
                out[score][(seed, arm, record["probe"])] = (float(record[score]), float(y), arms.index(arm))
    return out


def correlations(by_score: dict[str, dict], n_boot: int) -> list[dict]:
    rows = []
    for score, by_unit in by_score.items():
        if not by_unit:
            continue
        pooled = bootstrap_interval({k: v[:2] for k, v in by_unit.items()}, spearman, n=n_boot).to_dict()
        grouped = {(k[0], k[1], k[2]): (v[0], v[1], v[2] * 1000 + k[0]) for k, v in by_unit.items()}
        within = bootstrap_interval(grouped, mean_within_group_spearman, n=n_boot).to_dict()
        sign = EXPECTED_SIGN.get(score, -1)
        predicts = within["lo"] > 0 if sign > 0 else within["hi"] < 0
        rows.append({"score": score, "expected_sign": sign, "units": len(by_unit), "pooled": pooled,
                     "within_run": within, "predicts_within_run": bool(predicts)})  # fmt: skip
    return rows


def table(study: Path, n_boot: int) -> list[dict]:
    return correlations(units(study), n_boot)


def _cell(e: dict) -> str:
    if e["mean"] is None or not math.isfinite(e["mean"]):
        return "n/a"
    lo, hi = (f"{v:+.2f}" if v is not None and math.isfinite(v) else "n/a" for v in (e["lo"], e["hi"]))
    return f"{e['mean']:+.2f} [{lo}, {hi}]"


def markdown(rows: list[dict], study: Path, sampled: list[dict] | None = None, source: str = "") -> str:
    lines = [
        f"Pre-flight scores vs the off-target fall on the same pair's probe ({study}; Spearman ρ, 95% bootstrap over "
        "units; within-run = each (seed, arm) ranked alone, then averaged).",
        "",
        *_rows_table(rows),
    ]
    if sampled:
        lines += [
            "",
            f"On the {sampled[0]['units']} pairs with a one-step prediction, every score on the same pairs ({source}; "
            "scored under the SFT model the arm's DPO started from, against that arm's measured fall):",
            "",
            *_rows_table(sampled),
        ]
    return "\n".join(lines) + "\n"


def _rows_table(rows: list[dict]) -> list[str]:
    lines = [
        "| score | predicts if | units | pooled ρ | within-run ρ | predicts within runs |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        sign, verdict = ">" if r["expected_sign"] > 0 else "<", "yes" if r["predicts_within_run"] else "no"
        lines.append(f"| {r['score']} | ρ {sign} 0 | {r['units']} | {_cell(r['pooled'])} | {_cell(r['within_run'])} | "
                     f"{verdict} |")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", type=Path, default=Path("results/squeezing_study/v1"))
    p.add_argument("--out", type=Path, help="folder for preflight_validation.{json,md} (default: --study)")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--onestep", type=Path, help="bench/preflight_onestep.py's output (default: the _act_drop arms')")
    args = p.parse_args(argv)
    try:
        rows = table(args.study, args.bootstrap)
        sampled = correlations(onestep_units(args.study, args.onestep), args.bootstrap)
    except AlignkitError as err:
        print(f"preflight_validation: error: {err}", file=sys.stderr)
        return 2
    out = args.out or args.study
    out.mkdir(parents=True, exist_ok=True)
    payload = rows if not sampled else {"all_pairs": rows, "one_step": sampled}
    (out / "preflight_validation.json").write_text(json.dumps(json_safe(payload), indent=1))
    source = f"predictions in {args.onestep}" if args.onestep else "the `_act_drop` arms' pre-flight"
    text = markdown(rows, args.study, sampled, source)
    (out / "preflight_validation.md").write_text(text)
    print(text)
    write_result("preflight_validation", argv, {"study": args.study, "predictions": source, "all_pairs": rows,
                                                "one_step": sampled})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
