"""The pre-flight's batched forward passes: per-token log-probs and last-layer hidden states of y+ and y- together.

The passes that give the log-probs also give the hidden states, so CHES costs nothing beyond them. Encoding and
log-probs are `alignkit.sequences`' (`encode_pair`, `token_logprobs`), so the numbers equal `score_responses`' (a
test checks it). Where TRL's tokens of a pair extend those (alignkit/preflight/reference.py), the pass scores TRL's
and also returns their sums: the preference stage's reference log-probs when the model is its starting model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alignkit.preflight.reference import PairTokens, pair_tokens
from alignkit.preflight.scores import ches, mean_response_hidden
from alignkit.sequences import Prompt, Response, forward_shared_prompts, token_logprobs

logger = logging.getLogger(__name__)


@dataclass
class PairPass:
    """What one forward pass over (x, y+) and (x, y-) tells about a pair."""

    chosen_logps: list[float]  # per response token (EOS included)
    rejected_logps: list[float]
    ches: float  # length-normalised, `scores.ches`
    ref_chosen_logps: float | None = None  # Σ log π over TRL's completion tokens of y+ (None: not TRL's tokens)
    ref_rejected_logps: float | None = None
    ref_digest: str | None = None  # `alignkit.stages.reference_digest` of the TRL ids they were summed over


def _order(lengths: Sequence[int]) -> list[int]:
    """Indices longest first, so each batch holds rows of similar length (less padding)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def _forward_pairs(model, batch: list[PairTokens], pad: int, device):
    """Log-probs and mean hidden states of a batch of pairs: each prompt once, then its two responses against it.

    The two passes are `alignkit.sequences.forward_shared_prompts` (the monitor's probe scoring shares them): rows
    0..B-1 are the chosen responses, rows B..2B-1 the rejected ones.

    Returns (logps (2B, R) per scored response token, response_mask (2B, R), ours (2B, R): the mask of alignkit's
    response tokens (the first `n_chosen` / `n_rejected`), mean hidden states over those (2B, d)); row b and b + B
    are pair b's y+ and y-.
    """
    prompts = [t.chosen.input_ids[: t.chosen.prompt_len] for t in batch]
    if any(t.rejected.input_ids[: t.rejected.prompt_len] != prompt for t, prompt in zip(batch, prompts)):
        raise RuntimeError("y+ and y- of a pair tokenized their prompt differently")
    n = len(batch)
    sequences = [t.chosen for t in batch] + [t.rejected for t in batch]
    responses = [p.input_ids[p.prompt_len :] for p in sequences]
    out = forward_shared_prompts(model, prompts, responses, list(range(n)) * 2, pad, device, hidden_states=True)
    logps = token_logprobs(out.logits, out.response_ids).cpu()
    response_mask = out.response_mask.cpu()
    ours = torch.zeros_like(response_mask)
    for row, k in enumerate([t.n_chosen for t in batch] + [t.n_rejected for t in batch]):
        ours[row, :k] = True
    return logps, response_mask, ours, mean_response_hidden(out.hidden.cpu(), ours)


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
    encoded = [pair_tokens(tokenizer, p, c, r, max_length) for p, c, r in zip(prompts, chosen, rejected)]
    order = _order([max(len(t.chosen.input_ids), len(t.rejected.input_ids)) for t in encoded])
    out: list[PairPass | None] = [None] * len(encoded)
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            logps, mask, ours, means = _forward_pairs(model, [encoded[i] for i in rows], pad, device)
            n = len(rows)
            similarity = ches(means[:n], means[n:]).tolist()
            for b, i in enumerate(rows):
                scored = PairPass(logps[b][ours[b]].tolist(), logps[b + n][ours[b + n]].tolist(), similarity[b])
                if encoded[i].digest is not None:  # TRL's tokens: their sums are the reference log-probs
                    scored.ref_chosen_logps = float(logps[b][mask[b]].sum())
                    scored.ref_rejected_logps = float(logps[b + n][mask[b + n]].sum())
                    scored.ref_digest = encoded[i].digest
                out[i] = scored
            logger.info("[preflight] scored %d/%d pairs", min(start + batch_size, len(order)), len(order))
    finally:
        model.train(was_training)
    return out
