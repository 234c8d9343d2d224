"""LLM-as-a-judge win rates: did the candidate (e.g. extended SFT + DPO) beat the baseline?

    from alignkit.judge import JudgeConfig, evaluate_win_rate
    result = evaluate_win_rate("runs/dpo/final", "HuggingFaceTB/SmolLM2-135M-Instruct", judge=JudgeConfig(),
                               output_dir="runs/dpo/win_rate")
    print(result.win_rate, result.win_rate_ci, result.position_consistency)

Modules: `config` (dataclasses), `parse` (templates, verdict parser, verdict-token log-odds), `metrics` (pure
functions), `cache` (crash-safe JSONL), `client` (async judging with retries and a budget, text or logprobs mode),
`local_server` (llama.cpp judge), `verifier` (the reference-answer judge), `validate` (is a judge usable, checked in
seconds), `quality` (a judge against the shipped labelled set), `inputs` (outputs files, prompt sets, model loading),
`report` (md/html/png), `benchmarks` (lm-eval). The scriptable OpenAI-compatible server that tests and benchmarks
judge against is a test fake: tests/fake_judge_server.py.
"""

from alignkit.judge.config import JudgeConfig, WinRateConfig
from alignkit.judge.evaluate import PairResult, WinRateResult, evaluate_win_rate
from alignkit.judge.metrics import (
    bootstrap_ci,
    combine_log_odds,
    combine_orders,
    length_controlled_win_rate,
    length_controlled_with_difficulty,
    position_consistency,
    win_rate,
)
from alignkit.judge.parse import load_template, parse_verdict

__all__ = [
    "JudgeConfig",
    "PairResult",
    "WinRateConfig",
    "WinRateResult",
    "bootstrap_ci",
    "combine_log_odds",
    "combine_orders",
    "evaluate_win_rate",
    "length_controlled_win_rate",
    "length_controlled_with_difficulty",
    "load_template",
    "parse_verdict",
    "position_consistency",
    "win_rate",
]
