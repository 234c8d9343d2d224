"""The recipe's optional last step: a judged win rate of the final model against a baseline (see alignkit.judge).

`check_judge` runs before training, so that a judge that cannot work fails in seconds; `final_win_rate` runs after
it and never raises: a failure becomes the report section that says what failed, so the run's report is still
written.
"""

from __future__ import annotations

import dataclasses
import logging
import traceback
from pathlib import Path

from alignkit.config import RecipeConfig
from alignkit.endpoint import LOCAL, VERIFIER
from alignkit.errors import AlignkitError
from alignkit.judge import JudgeConfig, WinRateConfig, evaluate_win_rate
from alignkit.judge.validate import validate_judge
from alignkit.judge.verifier import with_references
from alignkit.models import local_folder
from alignkit.preempt import Preempted

logger = logging.getLogger(__name__)


def eval_judge(cfg: RecipeConfig) -> JudgeConfig:
    """The judge the evaluation settings name; 'auto' is the verifier for the built-in data, else the local judge."""
    endpoint = cfg.evaluation.judge_endpoint
    if endpoint.base_url == "auto":
        endpoint = dataclasses.replace(endpoint, base_url=VERIFIER if cfg.data.dataset_name == "builtin" else LOCAL)
    return JudgeConfig.from_endpoint(endpoint)


def check_judge(cfg: RecipeConfig, test_rows: list[dict]) -> JudgeConfig:
    """Before training: the judge can be used (see alignkit.judge.validate), and the verifier has reference answers
    to check against. Raises AlignkitError naming the setting."""
    judge = eval_judge(cfg)
    validate_judge(judge)
    if not test_rows:
        raise AlignkitError(f"eval_win_rate: the data {cfg.data.dataset_name!r} has no held-out split to judge on.")
    if judge.is_verifier and not any((r.get("reference_answer") or "").strip() for r in with_references(test_rows)):
        raise AlignkitError(
            f"eval_judge_base_url=verifier: no held-out row of {cfg.data.dataset_name!r} has a 'reference_answer' "
            "(the verifier needs one); use eval_judge_base_url 'local' or an OpenAI-compatible URL."
        )
    return judge


def final_win_rate(cfg: RecipeConfig, final_dir: Path, prompts, out: Path) -> str:
    """Judge `final_dir` against `cfg.evaluation.eval_baseline` on `prompts` (the held-out split, as a dataset or rows,
    so that the verifier sees the reference answers); returns the report's markdown section, also when it fails."""
    e = cfg.evaluation
    judge_name = "?"
    try:
        judge = eval_judge(cfg)
        judge_name = "the verifier (reference answers)" if judge.is_verifier else f"`{judge.model}`"
        baseline = local_folder(cfg.model) if e.eval_baseline == "start" else e.eval_baseline
        result = evaluate_win_rate(
            candidate=str(final_dir),
            baseline=str(baseline),
            prompts=prompts,
            judge=judge,
            output_dir=out,
            config=WinRateConfig(
                limit=e.eval_num_prompts,
                max_new_tokens=e.eval_max_new_tokens,
                candidate_name="final",
                baseline_name="start" if e.eval_baseline == "start" else Path(e.eval_baseline).name,
            ),
        )
    except Preempted:  # a preemption signal stopped the answers' generation: the rerun evaluates again
        raise
    except Exception as err:  # the trained model is saved: the report must still be written, with this
        out.mkdir(parents=True, exist_ok=True)
        (out / "error.txt").write_text(traceback.format_exc())
        logger.error("final evaluation failed: %s: %s", type(err).__name__, err)
        return failed_section(judge_name, f"{type(err).__name__}: {err}", out)
    return result_section(result, judge_name, out)


def failed_section(judge_name: str, error: str, out: Path) -> str:
    return "\n".join([
        "## Win rate",
        "",
        f"**The final evaluation failed** (judge {judge_name}): {error}",
        "",
        f"The trained model is saved; the traceback is in [`{out.name}/error.txt`]({out.name}/error.txt). Rerun the "
        f"evaluation alone with `python eval/win_rate.py --candidate final --baseline ... --output-dir {out.name}`: "
        "finished judgments are cached there.",
    ])  # fmt: skip


def result_section(result, judge_name: str, out: Path) -> str:
    low, high = result.win_rate_ci
    lines = [
        "## Win rate",
        "",
        f"Final model vs `{result.baseline}`, judged by {judge_name} in both orders on {result.n_pairs} held-out "
        f"prompts: **win rate {result.win_rate:.1%}** (95% CI {low:.1%} to {high:.1%}; {result.wins} wins, "
        f"{result.ties} ties, {result.losses} losses), length-controlled {result.length_controlled_win_rate:.1%} "
        "(simplified fit: one model judged on these prompts), position consistency "
        f"{result.position_consistency:.0%}.",
    ]
    if result.unjudged:
        errors = [
            j["error"]
            for p in result.pairs
            for j in (p.candidate_first, p.candidate_second)
            if j and j.get("error") and j["status"] != "unverifiable"
        ]
        state = "**Incomplete:**" if not result.complete else "Left out:"
        detail = f"; first error: {errors[0]}" if errors else ""
        lines += ["", f"{state} {_counts(result.unjudged)} not in the numbers{detail}."]
    lines += ["", f"Full report: [`{out.name}/report.html`]({out.name}/report.html)."]
    return "\n".join(lines)


def _counts(unjudged: dict[str, int]) -> str:
    return ", ".join(f"{n} pair(s) {status}" for status, n in sorted(unjudged.items()))
