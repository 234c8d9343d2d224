"""Batched sampling from a causal LM: the one place that calls `model.generate`.

Used for the monitors' `greedy` probe family, on-policy pair sampling and the evaluator's responses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from alignkit.preempt import generation_stops, interrupt_point
from alignkit.sequences import Prompt, left_pad, pad_id, render_prompt, response_token_stats


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    batch_size: int = 16,
    seed: int | None = None,
    progress: bool = False,
    desc: str = "generate",
    with_stats: bool = False,
    with_cap_hit: bool = False,
) -> list[list[str]] | tuple[list[list[str]], list[list[dict[str, float]]]] | tuple[list[list[str]], list[list[bool]]]:
    """Responses for each prompt: a list of `num_return_sequences` strings per prompt.

    Prompts are left-padded so that every row's new tokens start at the same column, and decoding uses the KV cache.
    Generation stops at the tokenizer's EOS; the EOS itself is not part of the returned text.

    With `with_stats`, also the token statistics of each response (`alignkit.sequences.response_token_stats`)
    under the model's own logits, read off the decoding itself: the generated tokens up to their EOS, or the EOS alone
    when that came first. A second forward pass over the decoded text would cost as much as the decoding again.

    With `with_cap_hit` (not with `with_stats`), also the decoder's stop reason of each response: True when it used
    all `max_new_tokens` without producing EOS (cut at the cap), False when it ended itself.
    """
    if with_stats and with_cap_hit:
        raise ValueError("generate: ask for with_stats or with_cap_hit, not both")
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    was_training = model.training
    model.eval()
    texts = [render_prompt(tokenizer, p) for p in prompts]
    out: list[list[str]] = []
    stats: list[list[dict[str, float]]] = []
    cap_hits: list[list[bool]] = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        chunk = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[start : start + batch_size]]
        input_ids, attention_mask = left_pad(chunk, pad)
        width = input_ids.shape[1]
        sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
        interrupt_point(desc)  # a preemption signal (alignkit/preempt.py): stop between two batches ...
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            num_return_sequences=num_return_sequences,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
            use_cache=True,
            output_logits=with_stats,
            return_dict_in_generate=True,
            stopping_criteria=generation_stops(),  # ... or between two tokens, dropping this batch's texts
            **sampling,
        )
        interrupt_point(desc)
        new_tokens = generated.sequences[:, width:]
        decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        k = num_return_sequences
        for i in range(len(chunk)):
            out.append([d.strip() for d in decoded[i * k : (i + 1) * k]])
        if with_cap_hit:
            hit = ~(new_tokens == tokenizer.eos_token_id).any(dim=1) if tokenizer.eos_token_id is not None else None
            flags = [True] * len(decoded) if hit is None else hit.tolist()
            cap_hits += [flags[i * k : (i + 1) * k] for i in range(len(chunk))]
        if with_stats:
            rows = _decoding_stats(torch.stack(generated.logits, dim=1), new_tokens, tokenizer.eos_token_id)
            stats += [rows[i * k : (i + 1) * k] for i in range(len(chunk))]
    if was_training:
        model.train()
    if with_cap_hit:
        return out, cap_hits
    return (out, stats) if with_stats else out


def _decoding_stats(logits: torch.Tensor, tokens: torch.Tensor, eos: int | None) -> list[dict[str, float]]:
    """`response_token_stats` of each generated row: its tokens before the first EOS (the EOS alone if it came first).

    Tokens after the EOS are padding, and an EOS the decoding never reached (cut at max_new_tokens) was never chosen.
    """
    ended = (tokens == eos).cumsum(dim=1) > 0 if eos is not None else torch.zeros_like(tokens, dtype=torch.bool)
    mask = ~ended
    mask[:, 0] |= ~mask.any(dim=1)
    # response_token_stats reads logits[:, t] as the prediction of ids[:, t + 1]: shift by a dummy first column.
    ids = torch.cat([tokens[:, :1], tokens], dim=1)
    padded = torch.cat([logits, logits[:, :1]], dim=1)
    values = {name: t.tolist() for name, t in response_token_stats(padded, ids, mask).items()}
    return [{name: v[r] for name, v in values.items()} for r in range(tokens.shape[0])]
