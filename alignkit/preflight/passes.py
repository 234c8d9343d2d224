"""The pre-flight's batched forward passes: per-token log-probs and last-layer hidden states of y+ and y- together.

One forward pass per batch gives both, so CHES costs nothing beyond the log-probs. Encoding and log-probs are
`alignkit.sequences`' (`encode_pair`, `collate`, `token_logprobs`), so the numbers equal `score_responses`'.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alignkit.preflight.scores import ches, mean_response_hidden
from alignkit.sequences import Prompt, Response, collate, encode_pair, token_logprobs

logger = logging.getLogger(__name__)


@dataclass
class PairPass:
    """What one forward pass over (x, y+) and (x, y-) tells about a pair."""

    chosen_logps: list[float]  # per response token (EOS included)
    rejected_logps: list[float]
    ches: float  # length-normalised, `scores.ches`


def _order(lengths: Sequence[int]) -> list[int]:
    """Indices longest first, so each batch holds rows of similar length (less padding)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


@torch.inference_mode()
def score_pairs(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    chosen: Sequence[Response],
    rejected: Sequence[Response],
    batch_size: int = 16,
    max_length: int | None = None,
) -> list[PairPass]:
    """Score every pair under `model`: one forward pass per `batch_size` pairs (2·batch_size sequences).

    Returns one `PairPass` per pair, in the input order.
    """
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    encoded = [
        (encode_pair(tokenizer, p, c, max_length), encode_pair(tokenizer, p, r, max_length))
        for p, c, r in zip(prompts, chosen, rejected)
    ]
    order = _order([max(len(c.input_ids), len(r.input_ids)) for c, r in encoded])
    out: list[PairPass | None] = [None] * len(encoded)
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            # Chosen rows first, then rejected rows: row b and row b + n are the same pair.
            batch = collate([encoded[i][0] for i in rows] + [encoded[i][1] for i in rows], pad)
            input_ids = batch["input_ids"].to(device)
            result = model(
                input_ids=input_ids,
                attention_mask=batch["attention_mask"].to(device),
                output_hidden_states=True,
                use_cache=False,
            )
            logps = token_logprobs(result.logits, input_ids).cpu()
            means = mean_response_hidden(result.hidden_states[-1].cpu(), batch["response_mask"])
            n = len(rows)
            similarity = ches(means[:n], means[n:]).tolist()
            for b, i in enumerate(rows):
                out[i] = PairPass(
                    logps[b][batch["response_mask"][b]].tolist(),
                    logps[b + n][batch["response_mask"][b + n]].tolist(),
                    similarity[b],
                )
            logger.info("[preflight] scored %d/%d pairs", min(start + batch_size, len(order)), len(order))
    finally:
        model.train(was_training)
    return out
