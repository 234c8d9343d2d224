"""The recipe's optional last step: a judged win rate of the final model against a baseline (see alignkit.judge)."""

from __future__ import annotations

from pathlib import Path

from alignkit.config import RecipeConfig
from alignkit.judge import JudgeConfig, WinRateConfig, evaluate_win_rate
from alignkit.models import local_folder


def final_win_rate(cfg: RecipeConfig, final_dir: Path, prompts: list, out: Path) -> str:
    """Judge `final_dir` against `cfg.evaluation.eval_baseline` on `prompts`; returns the report's markdown section."""
    e = cfg.evaluation
    baseline = local_folder(cfg.model) if e.eval_baseline == "start" else e.eval_baseline
    judge = JudgeConfig(base_url=e.eval_judge_base_url, model=e.eval_judge_model, api_key_env=e.eval_judge_api_key_env)
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
    low, high = result.win_rate_ci
    return "\n".join(
        [
            "## Win rate",
            "",
            f"Final model vs `{result.baseline}`, judged by `{judge.model or 'local SmolLM2-135M'}` in both orders on "
            f"{result.n_pairs} held-out prompts: **win rate {result.win_rate:.1%}** (95% CI {low:.1%} to {high:.1%}; "
            f"{result.wins} wins, {result.ties} ties, {result.losses} losses), length-controlled "
            f"{result.length_controlled_win_rate:.1%}, position consistency {result.position_consistency:.0%}.",
            "",
            f"Full report: [`{out.name}/report.html`]({out.name}/report.html).",
        ]
    )
