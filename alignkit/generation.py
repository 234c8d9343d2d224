"""Batched sampling from a causal LM: the one place that calls `model.generate`.

Used for the monitors' `greedy` probe family, on-policy pair sampling and the evaluator's responses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from alignkit.sequences import Prompt, render_prompt


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
) -> list[list[str]]:
    """Responses for each prompt: a list of `num_return_sequences` strings per prompt.

    Prompts are left-padded so that every row's new tokens start at the same column, and decoding uses the KV cache.
    Generation stops at the tokenizer's EOS; the EOS itself is not part of the returned text.
    """
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    texts = [render_prompt(tokenizer, p) for p in prompts]
    out: list[list[str]] = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        chunk = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[start : start + batch_size]]
        width = max(len(ids) for ids in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, ids in enumerate(chunk):
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            attention_mask[i, width - len(ids) :] = 1
        sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            num_return_sequences=num_return_sequences,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
            use_cache=True,
            **sampling,
        )
        new_tokens = generated[:, width:]
        decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for i in range(len(chunk)):
            out.append([d.strip() for d in decoded[i * num_return_sequences : (i + 1) * num_return_sequences]])
    if was_training:
        model.train()
    return out
