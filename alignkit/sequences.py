"""Encoding (prompt, response) pairs and scoring response log-probabilities.

Shared by the squeezing monitors, the learning-dynamics decomposition and the evaluator, so that "log π(y|x)" means
the same tokens everywhere: the prompt rendered with the chat template (generation prompt added) when it is a list of
messages, the response tokenized on its own and followed by the end-of-sequence token. Tokenizing the two halves
separately is what TRL does too, and keeps the response tokens identical whatever prompt precedes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Message = dict[str, str]
Prompt = str | list[Message]
Response = str | list[Message]


def response_text(response: Response) -> str:
    """The text of a response given as a plain string or as a list holding one assistant message."""
    if isinstance(response, str):
        return response
    return "".join(m["content"] for m in response if m.get("role", "assistant") == "assistant")


def render_prompt(tokenizer, prompt: Prompt) -> str:
    """The prompt as the model sees it: chat-templated (with the generation prompt) for a list of messages."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


@dataclass
class EncodedPair:
    input_ids: list[int]
    prompt_len: int  # the response occupies input_ids[prompt_len:]

    @property
    def response_len(self) -> int:
        return len(self.input_ids) - self.prompt_len


def encode_pair(tokenizer, prompt: Prompt, response: Response, max_length: int | None = None) -> EncodedPair:
    """Token ids of prompt followed by response (+ EOS); truncates the response end, never the prompt."""
    prompt_ids = tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response_text(response), add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    ids = prompt_ids + response_ids
    if max_length is not None and len(ids) > max_length:
        ids = ids[: max(max_length, len(prompt_ids) + 1)]
    return EncodedPair(ids, len(prompt_ids))


def pad_id(tokenizer) -> int:
    """The token id that pads a batch: the tokenizer's pad token, or its EOS when it has none (padding is masked out,
    so any id would do; EOS is what `alignkit.models.load_tokenizer` and TRL fall back to)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def collate(pairs: Sequence[EncodedPair], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch with `response_mask` marking the positions whose *label* is a response token.

    `response_mask[b, t]` is 1 when token t+1 belongs to the response, so it lines up with logits[:, :-1].
    """
    width = max(len(p.input_ids) for p in pairs)
    input_ids = torch.full((len(pairs), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(pairs), width), dtype=torch.long)
    response_mask = torch.zeros((len(pairs), width - 1), dtype=torch.bool)
    for b, p in enumerate(pairs):
        n = len(p.input_ids)
        input_ids[b, :n] = torch.tensor(p.input_ids)
        attention_mask[b, :n] = 1
        response_mask[b, p.prompt_len - 1 : n - 1] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), left-padded: every row's last token sits in the last column, where decoding (or a
    key/value cache) continues from."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for b, ids in enumerate(sequences):
        input_ids[b, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[b, width - len(ids) :] = 1
    return input_ids, attention_mask


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log π(token_{t+1} | tokens_≤t) for every position: shape (batch, seq-1)."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


@torch.inference_mode()
def score_responses(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    responses: Sequence[Response],
    batch_size: int = 8,
    max_length: int | None = None,
) -> list[list[float]]:
    """Per-token log-probs of each response given its prompt, batched and padding-aware.

    Returns one list of floats per pair (length = number of response tokens incl. EOS); its sum is log π(y|x).
    """
    pad = pad_id(tokenizer)
    device = next(model.parameters()).device
    pairs = [encode_pair(tokenizer, p, r, max_length) for p, r in zip(prompts, responses)]
    out: list[list[float]] = []
    for start in range(0, len(pairs), batch_size):
        batch = collate(pairs[start : start + batch_size], pad)
        logits = model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).logits
        lp = token_logprobs(logits, batch["input_ids"].to(device)).cpu()
        for row, mask in zip(lp, batch["response_mask"]):
            out.append(row[mask].tolist())
    return out
