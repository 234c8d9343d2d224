"""`response_token_stats` against its definition, written out plainly in float64 (one softmax per scored position),
on random and adversarial logits: peaked rows, ties at the top, the label at the top and not, padding rows."""

from __future__ import annotations

import math

import pytest
import torch

from alignkit.data.builtin import load_builtin
from alignkit.sequences import collate, encode_pair, log_odds, pad_id, response_token_stats


def by_definition(logits, input_ids, response_mask, eos):
    """The statistics by their docstring, position by position: float32 log-probs (what a model's logits give),
    everything after them in float64."""
    out = {
        k: [0.0] * logits.shape[0]
        for k in response_token_stats(logits[:1, :2], input_ids[:1, :2], response_mask[:1, :1])
    }
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1] - 1):
            if not response_mask[b, t]:
                continue
            logp = torch.log_softmax(logits[b, t].float(), dim=-1).double()
            y = int(input_ids[b, t + 1])
            others = logp.clone()
            others[y] = -math.inf
            p = logp.exp()
            values = {
                "logp": logp[y], "n_tokens": 1.0, "argmax_logp": logp.max(), "argmax_prob": p.max(),
                "entropy": -(p[p > 0] * logp[p > 0]).sum(), "eos_logp": logp[y] if y == eos else 0.0,
                "n_eos": float(y == eos), "alt_logodds": log_odds(others.max()), "top_logodds": log_odds(logp.max()),
            }  # fmt: skip
            for k, v in values.items():
                out[k][b] += float(v)
    return out


def batch(seed: int, vocab: int = 97, rows: int = 5, width: int = 9):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, width, vocab, generator=g) * 3
    logits[0] *= 8  # peaked: probabilities near 1, entropies near 0
    input_ids = torch.randint(0, vocab, (rows, width), generator=g)
    argmax = logits[1, :-1].argmax(-1)
    input_ids[1, 1:] = argmax  # labels at the top: alt is the runner-up
    logits[2, :, 5] = logits[2].max(-1).values  # a tie at the top
    input_ids[2, 1:] = 5
    response_mask = torch.rand(rows, width - 1, generator=g) > 0.3
    response_mask[3] = False  # a row with nothing scored
    return logits, input_ids, response_mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_response_token_stats_match_their_definition(seed):
    logits, input_ids, response_mask = batch(seed)
    eos = int(input_ids[0, 3])
    got = response_token_stats(logits, input_ids, response_mask, eos_token_id=eos)
    want = by_definition(logits, input_ids, response_mask, eos)
    assert set(got) == set(want)
    for name, values in want.items():
        assert got[name].dtype == torch.float64 and got[name].shape == (logits.shape[0],)
        assert got[name].tolist() == pytest.approx(values, abs=1e-5, rel=1e-5), name


def test_response_token_stats_on_a_model_match_their_definition(tiny_model, tiny_tokenizer):
    """The same on a (tiny) model's logits over built-in pairs, as probe scoring computes them."""
    data = load_builtin()["train"].select(range(6))
    pairs = [encode_pair(tiny_tokenizer, row["prompt"], row[side]) for row in data for side in ("chosen", "rejected")]
    batch = collate(pairs, pad_id(tiny_tokenizer))
    with torch.inference_mode():
        logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    eos = tiny_tokenizer.eos_token_id
    got = response_token_stats(logits, batch["input_ids"], batch["response_mask"], eos_token_id=eos)
    want = by_definition(logits, batch["input_ids"], batch["response_mask"], eos)
    for name, values in want.items():
        assert got[name].tolist() == pytest.approx(values, abs=1e-5), name
