"""An LLM judge's win rate for each of the study's comparisons, through the win-rate evaluator, seeds as the unit.

    python -m alignkit.study.judge --study_dir results/squeezing_study/full \\
        --judge https://api.openai.com/v1 --judge_model gpt-4o --judge_api_key_env OPENAI_API_KEY

For each comparison of the study (`comparisons.pairs_to_compare`: an arm against its baseline) and each seed both
ran, the two arms' answers at the arm's last checkpoint to the same held-out prompts go to the evaluator
(`alignkit.judge.evaluate_win_rate`) as outputs files. It asks the judge in both orders and caches every verdict
under `<study_dir>/judge/<arm>_vs_<base>/s<seed>/` (with its report), so a rerun after a kill or a spent request
budget asks only what is missing. Per prompt the outcome is 1 (the arm wins in both orders), ½ (tie, or the two
orders disagree) or 0; the win rate's interval resamples seeds, then prompts inside each (`alignkit.stats`), as the
verifier's does. `<study_dir>/judge_win_rates.json` holds the result; the analysis reads it into
`summary["judge_win_rates"]` and the report adds a section.

Any judge the evaluator takes works here (`--judge verifier` too, which gives the study's own verifier win rates
again: a cross-check). The local SmolLM2 judge is at chance (docs/evaluation.md, "Judge quality"): use a strong one.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from alignkit.cli import parse_dataclasses
from alignkit.errors import AlignkitError
from alignkit.jsonl import json_safe, write_jsonl_atomic
from alignkit.judge.cli import JUDGE_ALIASES, JUDGE_PREFIX
from alignkit.judge.config import JudgeConfig
from alignkit.judge.evaluate import evaluate_win_rate
from alignkit.stats import Key, merge
from alignkit.study.comparisons import last_checkpoint, pairs_to_compare
from alignkit.study.quality import win_rate
from alignkit.study.records import JUDGE_RESULT, Run, load_runs

N_BOOT = 2000


@dataclass
class StudyJudgeRun:
    """Which study's answers the judge compares."""

    _argument_group_name = "what to judge"

    study_dir: str | None = field(
        default=None, metadata={"help": "Required. A study folder with finished runs (runs/s<seed>/<arm>.*)."}
    )
    comparisons: list[str] | None = field(
        default=None,
        metadata={"help": "Which comparisons, by their names in the report (e.g. 'B_far vs A_far'); default: all."},
    )
    bootstrap: int = field(default=N_BOOT, metadata={"help": "Bootstrap replicates for the seed-level interval."})
    quiet: bool = field(default=False, metadata={"help": "No progress bars."})

    def __post_init__(self):
        if not self.study_dir:
            raise AlignkitError("--study_dir is required (a folder the squeezing study wrote).")


def answers(run: Run, checkpoint: str) -> dict[str, dict]:
    """prompt id -> generation row of `run` at `checkpoint`."""
    return {g["prompt_id"]: g for g in run.generations if g["checkpoint"] == checkpoint}


def outcome_units(scores: dict[str, float], seed: int) -> dict[Key, tuple[float, float, float]]:
    """The evaluator's per-prompt scores as `quality.win_units` gives the verifier's: (outcome, win, decisive)."""
    return {(seed, pid): (s, float(s == 1.0), float(s != 0.5)) for pid, s in scores.items()}


def judge_pair(arm_run: Run, base_run: Run, judge: JudgeConfig, out: Path, progress: bool) -> tuple[dict, dict]:
    """One seed of one comparison: ({prompt id: score}, the evaluator's summary)."""
    checkpoint = last_checkpoint(arm_run)
    mine, theirs = answers(arm_run, checkpoint), answers(base_run, checkpoint)
    ids = sorted(mine.keys() & theirs.keys())
    if not ids:
        raise AlignkitError(
            f"seed {arm_run.seed}: {arm_run.arm} and {base_run.arm} have no answers to the same prompts at "
            f"{checkpoint} ({arm_run.path}): nothing to judge"
        )
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for side, rows in (("candidate", mine), ("baseline", theirs)):
        files[side] = out / f"{side}_answers.jsonl"
        write_jsonl_atomic(
            files[side], ({"id": i, "prompt": rows[i]["prompt_text"], "output": rows[i]["response"]} for i in ids)
        )
    result = evaluate_win_rate(files["candidate"], files["baseline"], judge=judge, output_dir=out, progress=progress)
    scores = {ids[p.index]: p.score for p in result.pairs if p.score is not None}
    return scores, result.summary()


def judge_study(
    study_dir: str | Path,
    judge: JudgeConfig,
    names: Sequence[str] | None = None,
    n_boot: int = N_BOOT,
    progress: bool = True,
) -> dict:
    """Judge every (or each named) comparison at every seed, write `<study_dir>/judge_win_rates.json`, return it."""
    study_dir = Path(study_dir)
    runs = load_runs(study_dir)
    pairs = pairs_to_compare(runs)
    unknown = sorted(set(names or []) - pairs.keys())
    if unknown:
        raise AlignkitError(f"--comparisons {unknown}: not in {study_dir}; its comparisons are {sorted(pairs)}")
    result = {"judge": judge.describe(), "comparisons": {}}
    for name, (base, arm) in pairs.items():
        if names and name not in names:
            continue
        seeds = sorted(s for s, a in runs if a == arm and (s, base) in runs)
        units, per_seed = [], {}
        for seed in seeds:
            folder = study_dir / "judge" / f"{arm}_vs_{base}" / f"s{seed}"
            scores, summary = judge_pair(runs[(seed, arm)], runs[(seed, base)], judge, folder, progress)
            units.append(outcome_units(scores, seed))
            per_seed[seed] = {k: summary.get(k) for k in ("win_rate", "wins", "ties", "losses", "n_pairs")} | {
                "unjudged": summary.get("unjudged"),
                "complete": summary.get("complete"),
            }
        result["comparisons"][name] = {
            "base": base,
            "arm": arm,
            "seeds": seeds,
            "win_rate": win_rate(merge(units), n_boot) if units else None,
            "per_seed": per_seed,
            "complete": all(s["complete"] for s in per_seed.values()),
        }
    result["complete"] = all(c["complete"] for c in result["comparisons"].values())
    (study_dir / JUDGE_RESULT).write_text(json.dumps(json_safe(result), indent=1) + "\n")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run, judge = parse_dataclasses(
            (StudyJudgeRun, JudgeConfig),
            sys.argv[1:] if argv is None else argv,
            description="An LLM judge's win rate for each comparison of a squeezing study, seeds as the unit.",
            prefixes={JudgeConfig: JUDGE_PREFIX},
            aliases=JUDGE_ALIASES,
            prog="python -m alignkit.study.judge",
        )
        result = judge_study(run.study_dir, judge, run.comparisons, run.bootstrap, progress=not run.quiet)
    except AlignkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, comp in result["comparisons"].items():
        rate = comp["win_rate"]["ours"] if comp["win_rate"] else None
        shown = f"{rate['mean']:.3f} [{rate['lo']:.3f}, {rate['hi']:.3f}]" if rate else "n/a"
        print(f"{name}: judge win rate {shown} over seeds {comp['seeds']}")
    print(f"written: {Path(run.study_dir) / JUDGE_RESULT}; rerun --analyze to put it in the report")
    if not result["complete"]:
        print("incomplete: some pairs have no verdict yet; rerun the same command to finish.", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
