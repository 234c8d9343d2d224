"""On-policy preference training: sample from the policy, rank, train on (best, worst), repeat (docs/onpolicy.md).

    from alignkit.onpolicy import run_onpolicy_preference_stage
    preference = run_onpolicy_preference_stage(tokenizer, data["train"], cfg, out / "preference", [sft], callbacks_for)

Modules: `sampling` (k samples per prompt: transformers generate or vLLM), `rankers` (the built-in verifier, an LLM
judge, a reward model, any `module:function`), `pairs` (best/worst selection, ties, the round files), `collect` (a
round's prompts, samples, ranking and training set), `stage` (the rounds, the reference model, resume).
"""

from alignkit.onpolicy.pairs import build_pairs, choose_pair, training_pairs
from alignkit.onpolicy.rankers import (
    JudgeRanker,
    RewardModelRanker,
    builtin_verifier,
    load_callable,
    ranker_from_config,
    verify,
)
from alignkit.onpolicy.sampling import sample_responses
from alignkit.onpolicy.stage import concat_adapters, run_onpolicy_preference_stage

__all__ = [
    "JudgeRanker",
    "RewardModelRanker",
    "build_pairs",
    "builtin_verifier",
    "choose_pair",
    "concat_adapters",
    "load_callable",
    "ranker_from_config",
    "run_onpolicy_preference_stage",
    "sample_responses",
    "training_pairs",
    "verify",
]
