"""The squeezing monitor's probes for GRPO: completions sampled at the start, split by reward, scored as fixed text.

GRPO's negative gradient on a group's wrong completions can lower the likelihood of its correct ones, or let it rise
only slightly: lazy likelihood displacement (Deng, Ren, ... Sutherland et al. 2025, "On the Effect of Negative
Gradient in Group Relative Deep Reinforcement Optimization", arXiv 2505.18830), the GRPO form of squeezing. To watch
for it, each probe prompt gets `GRPO_SAMPLES` completions sampled from the model before training, scored by the
trainer's own reward functions (weighted as the trainer weighs them):

- `chosen`: a correct completion, one with the highest reward sampled (the verifier's 1);
- `rejected`: a wrong one, with the lowest reward sampled;
- the off-target families (`irrelevant_*`, `shuffled`, `non_human`) built from them as for preference data.

Every evaluation scores them as fixed text, so the reading is the monitor's usual one: `chosen_fall` < 0 is the
correct completions' log π rising; lazy likelihood displacement is `chosen_fall` > 0, or a rise much smaller than the
wrong ones' fall (`rejected_fall`); `off_target_fall` is the squeeze of text no completion is. A prompt whose samples
all got the same reward has no correct-vs-wrong contrast: it keeps its best completion as `chosen` only when that one
has the top reward, and is left out otherwise.
"""

from __future__ import annotations

import math
import random

import torch

from alignkit.errors import AlignkitError
from alignkit.generation import generate
from alignkit.monitors.measure import eval_mode

GRPO_SAMPLES = 4  # completions sampled per probe prompt at the start
GRPO_STAGE = "grpo"


def grpo_probe_rows(trainer, model, tokenizer, dataset, num_prompts: int, max_new_tokens: int, batch_size: int,
                    seed: int) -> tuple[list[dict], str]:  # fmt: skip
    """Up to `num_prompts` probe rows (`prompt`, `chosen`, and `rejected` where a wrong completion was sampled) from
    the prompts of `dataset`, with a note for the report on how they were made."""
    rows = [dict(r) for r in dataset] if dataset is not None else []
    if not rows:
        return [], "no prompts to sample from"
    if "prompt" not in rows[0]:
        raise AlignkitError(f"the GRPO trainer's dataset has columns {sorted(rows[0])}: the monitor needs 'prompt'")
    picked = sorted(random.Random(seed).sample(range(len(rows)), min(2 * num_prompts, len(rows))))
    rows = [rows[i] for i in picked]  # twice as many as needed: prompts without a correct completion drop out
    with eval_mode(model), torch.no_grad():
        samples = generate(
            model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=max_new_tokens, do_sample=True,
            num_return_sequences=GRPO_SAMPLES, batch_size=batch_size, seed=seed,
        )  # fmt: skip
    rewards = completion_rewards(trainer, tokenizer, rows, samples)
    finite = [r for per_row in rewards for r in per_row if math.isfinite(r)]
    if not finite:
        return [], "the reward functions scored none of the sampled completions"
    top, bottom = max(finite), min(finite)
    out = []
    for row, texts, scores in zip(rows, samples, rewards):
        correct = [t for t, s in zip(texts, scores) if s == top and t.strip()]
        wrong = [t for t, s in zip(texts, scores) if s == bottom and s < top and t.strip()]
        if not correct:
            continue
        probe = {"prompt": row["prompt"], "chosen": correct[0], **({"rejected": wrong[0]} if wrong else {})}
        out.append(probe | ({"id": row["id"]} if "id" in row else {}))
        if len(out) == num_prompts:
            break
    with_wrong = sum("rejected" in r for r in out)
    note = (
        f"GRPO probes: {GRPO_SAMPLES} completions sampled per prompt at the start and scored by the trainer's reward "
        f"functions; `chosen` is one with the top reward ({top:g}), `rejected` one with the lowest ({bottom:g}), both "
        f"scored as fixed text since: {len(out)} prompts with a correct completion, {with_wrong} of them with a "
        "wrong one too"
    )
    return out, note


def completion_rewards(trainer, tokenizer, rows: list[dict], samples: list[list[str]]) -> list[list[float]]:
    """The trainer's weighted reward of each sampled completion (NaN where a function returned None), called as
    TRL's GRPOTrainer calls its reward functions: prompts, completions (messages for conversational prompts), the
    completions' token ids, and the dataset's other columns as keyword lists."""
    flat_rows = [row for row, texts in zip(rows, samples) for _ in texts]
    texts = [t for per_row in samples for t in per_row]
    conversational = isinstance(flat_rows[0]["prompt"], list)
    completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    columns = {k: [row.get(k) for row in flat_rows] for k in flat_rows[0] if k not in ("prompt", "completion")}
    weights = getattr(trainer, "reward_weights", None)
    weights = weights.tolist() if weights is not None else [1.0] * len(trainer.reward_funcs)
    total = [0.0] * len(texts)
    for func, weight in zip(trainer.reward_funcs, weights):
        if isinstance(func, torch.nn.Module):
            raise AlignkitError(
                "the squeezing monitor splits GRPO's sampled completions with the trainer's reward functions; a "
                "reward model is not supported yet: pass reward functions (e.g. a verifier)"
            )
        scores = func(
            prompts=[r["prompt"] for r in flat_rows], completions=completions, completion_ids=ids,
            trainer_state=getattr(trainer, "state", None), log_extra=_ignore, log_metric=_ignore, **columns,
        )  # fmt: skip
        total = [t + weight * (math.nan if s is None else float(s)) for t, s in zip(total, scores)]
    n = len(samples[0]) if samples else 0
    return [total[i * n : (i + 1) * n] for i in range(len(samples))]


def _ignore(*args, **kwargs) -> None:
    """Stands for GRPOTrainer's `log_extra`/`log_metric`, which a reward function may call."""
