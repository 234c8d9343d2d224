"""The pre-flight's pass as the preference stage's reference pass: one forward, two uses (its cost target).

After SFT the pre-flight scores exactly the model the preference stage starts from, and TRL's DPOTrainer (a fresh
LoRA adapter, no `ref_model`) uses that same model as its reference. With `precompute_ref_log_probs` TRL then runs a
second forward over the same pairs to sum their log-probs. If the pre-flight scores TRL's tokens, its sums are those
reference log-probs and the stage can skip its own pass (`alignkit.stages.PrecomputedReferenceDPOTrainer`, which
checks the tokens again, on TRL's own tokenization, before it uses them).

The two tokenizations differ only at the end. alignkit.sequences scores y's text followed by EOS; TRL 1.16
(`DPOTrainer._prepare_dataset`) tokenizes the prompt alone and the prompt followed by y, through the chat template for
conversational data (the template's end of turn and whatever it adds after it, e.g. ChatML's newline, belong to the
completion) and as text with EOS appended otherwise, and starts the completion where the two token lists diverge.
When TRL's prompt is alignkit's and TRL's completion begins with alignkit's response tokens, one pass over TRL's
tokens serves both: alignkit's scores read the first tokens, the reference sums them all (tokens later in a sequence
cannot change earlier log-probs). For pairs where that does not hold, the pass scores alignkit's tokens as before and
the pair has no reference log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignkit.sequences import EncodedPair, Prompt, Response, encode_pair
from alignkit.stages import reference_digest


def _tokenize(tokenizer, value, **template_kwargs) -> list[int]:
    """As TRL's `trl.data_utils._tokenize`: the chat template for a message list, the plain tokenizer for text."""
    if isinstance(value, list):
        return list(
            tokenizer.apply_chat_template(value, tokenize=True, return_dict=True, **template_kwargs)["input_ids"]
        )
    return list(tokenizer(text=value)["input_ids"])


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def trl_pair_ids(tokenizer, prompt: Prompt, chosen: Response, rejected: Response) -> tuple[list, list, list] | None:
    """(prompt_ids, chosen_ids, rejected_ids) as TRL 1.16's DPOTrainer tokenizes a pair (before truncation); None for
    a pair that mixes messages and plain text (alignkit.sequences accepts it, TRL's tokenization does not)."""
    if len({isinstance(x, list) for x in (prompt, chosen, rejected)}) > 1:
        return None
    if isinstance(prompt, list):
        prompt_ids = _tokenize(tokenizer, prompt, add_generation_prompt=True)
        full = [_tokenize(tokenizer, prompt + response) for response in (chosen, rejected)]
    else:
        eos = tokenizer.eos_token or ""
        texts = [r if r.endswith(eos) else r + eos for r in (chosen, rejected)]
        prompt_ids = _tokenize(tokenizer, prompt)
        full = [_tokenize(tokenizer, prompt + text) for text in texts]
    n = min(_common_prefix(prompt_ids, ids) for ids in full)
    return prompt_ids[:n], full[0][n:], full[1][n:]


@dataclass
class PairTokens:
    """What one pair's pass scores: the sequences, and how many response tokens of each are alignkit's."""

    chosen: EncodedPair
    rejected: EncodedPair
    n_chosen: int  # alignkit's response tokens (text + EOS) at the start of `chosen`'s response
    n_rejected: int
    digest: str | None  # `reference_digest` of TRL's ids when the pass scores them; None: alignkit's tokens only


def pair_tokens(tokenizer, prompt: Prompt, chosen: Response, rejected: Response, max_length: int | None) -> PairTokens:
    """TRL's tokens when they extend alignkit's (same prompt, completion = alignkit's response + a tail) and fit in
    `max_length`; otherwise alignkit's own (`encode_pair`), with no reference log-probs."""
    ours = [encode_pair(tokenizer, prompt, r, max_length) for r in (chosen, rejected)]
    n = [len(e.input_ids) - e.prompt_len for e in ours]
    trl = trl_pair_ids(tokenizer, prompt, chosen, rejected)
    if trl is None:
        return PairTokens(ours[0], ours[1], n[0], n[1], None)
    prompt_ids, *completions = trl
    fits = max_length is None or len(prompt_ids) + max(map(len, completions)) <= max_length
    extends = all(
        e.input_ids[: e.prompt_len] == prompt_ids and c[:k] == e.input_ids[e.prompt_len :]
        for e, c, k in zip(ours, completions, n)
    )
    if not (fits and extends):
        return PairTokens(ours[0], ours[1], n[0], n[1], None)
    trl = [EncodedPair(prompt_ids + c, len(prompt_ids)) for c in completions]
    return PairTokens(trl[0], trl[1], n[0], n[1], reference_digest(prompt_ids, *completions))
