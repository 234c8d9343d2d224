"""The pre-flight's batched forward passes: per-token log-probs and last-layer hidden states of y+ and y- together.

The passes that give the log-probs also give the hidden states, so CHES costs nothing beyond them. Encoding and
log-probs are `alignkit.sequences`' (`encode_pair`, `token_logprobs`), so the numbers equal `score_responses`' (a
test checks it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alignkit.preflight.scores import ches, mean_response_hidden
from alignkit.sequences import EncodedPair, Prompt, Response, encode_pair, forward_shared_prompts, token_logprobs

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


def _forward_pairs(model, batch: list[tuple[EncodedPair, EncodedPair]], pad: int, device):
    """Log-probs and mean hidden states of a batch of pairs: each prompt once, then its two responses against it.

    The two passes are `alignkit.sequences.forward_shared_prompts` (the monitor's probe scoring shares them): rows
    0..B-1 are the chosen responses, rows B..2B-1 the rejected ones.

    Returns (logps (2B, R) per response token, response_mask (2B, R), mean hidden states (2B, d)); row b and b + B
    are pair b's y+ and y-.
    """
    prompts = [chosen.input_ids[: chosen.prompt_len] for chosen, _ in batch]
    if any(rejected.input_ids[: rejected.prompt_len] != prompt for (_, rejected), prompt in zip(batch, prompts)):
        raise RuntimeError("y+ and y- of a pair tokenized their prompt differently")
    n = len(batch)
    responses = [p.input_ids[p.prompt_len :] for p in [c for c, _ in batch] + [r for _, r in batch]]
    out = forward_shared_prompts(model, prompts, responses, list(range(n)) * 2, pad, device, hidden_states=True)
    logps = token_logprobs(out.logits, out.response_ids).cpu()
    response_mask = out.response_mask.cpu()
    return logps, response_mask, mean_response_hidden(out.hidden.cpu(), response_mask)


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
    """Score every pair under `model`, `batch_size` pairs per batch (`_forward_pairs`).

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
            logps, mask, means = _forward_pairs(model, [encoded[i] for i in rows], pad, device)
            n = len(rows)
            similarity = ches(means[:n], means[n:]).tolist()
            for b, i in enumerate(rows):
                out[i] = PairPass(logps[b][mask[b]].tolist(), logps[b + n][mask[b + n]].tolist(), similarity[b])
            logger.info("[preflight] scored %d/%d pairs", min(start + batch_size, len(order)), len(order))
    finally:
        model.train(was_training)
    return out
