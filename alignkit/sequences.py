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


def user_text(prompt: Prompt) -> str:
    """The user's words of a prompt (its user turns joined by spaces; a string prompt is its own text)."""
    return prompt if isinstance(prompt, str) else " ".join(m["content"] for m in prompt if m.get("role") == "user")


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


@dataclass
class SharedPromptOutput:
    """What `forward_shared_prompts` returns, aligned like `collate`: position 0 is the last prompt position (it
    predicts the first response token), then one position per response token."""

    logits: torch.Tensor  # (rows, R + 1, vocab)
    response_ids: torch.Tensor  # (rows, R + 1); column 0 stands in for the last prompt token, padding is `pad`
    response_mask: torch.Tensor  # (rows, R) bool: which labels are response tokens
    hidden: torch.Tensor | None  # (rows, R + 1, d) last-layer states at the same positions, when asked for


def forward_shared_prompts(
    model,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    owner: Sequence[int],
    pad: int,
    device,
    hidden_states: bool = False,
) -> SharedPromptOutput:
    """Score many responses that share few prompts: each prompt once, then every response against its prompt's cache.

    Pass 1 runs the left-padded prompts with a key/value cache and vocabulary-wide logits at their last position only;
    pass 2 runs each response row against a copy of its prompt's cache (`owner[row]` = its prompt's index). Against
    scoring (prompt + response) rows in full, the prompt is computed once and the 49k-vocabulary logits only where a
    response token is predicted.
    """
    prompt_ids, prompt_mask = left_pad(prompts, pad)
    out = model(
        input_ids=prompt_ids.to(device),
        attention_mask=prompt_mask.to(device),
        position_ids=(prompt_mask.cumsum(-1) - 1).clamp(min=0).to(device),
        use_cache=True,
        logits_to_keep=1,  # only the last prompt position predicts a response token
        output_hidden_states=hidden_states,
    )
    rows = torch.tensor(list(owner))
    width = max(len(r) for r in responses)
    response_ids = torch.full((len(responses), width + 1), pad, dtype=torch.long)
    response_mask = torch.zeros((len(responses), width), dtype=torch.bool)
    for b, ids in enumerate(responses):
        response_ids[b, 1 : len(ids) + 1] = torch.tensor(ids)
        response_mask[b, : len(ids)] = True
    cache = out.past_key_values
    cache.reorder_cache(rows.to(device))  # one copy of each prompt's keys/values per response row
    lengths = prompt_mask.sum(-1)[rows]
    out_r = model(
        input_ids=response_ids[:, 1:].to(device),
        attention_mask=torch.cat([prompt_mask[rows], response_mask.long()], dim=1).to(device),
        position_ids=(lengths[:, None] + torch.arange(width)[None]).to(device),
        past_key_values=cache,
        use_cache=True,
        output_hidden_states=hidden_states,
    )
    on = rows.to(device)
    logits = torch.cat([out.logits[:, -1:][on], out_r.logits], dim=1)
    hidden = None
    if hidden_states:
        hidden = torch.cat([out.hidden_states[-1][:, -1:][on], out_r.hidden_states[-1]], dim=1)
    return SharedPromptOutput(logits, response_ids.to(device), response_mask.to(device), hidden)


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


def response_token_stats(
    logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor, eos_token_id: int | None = None
) -> dict[str, torch.Tensor]:
    """Per-sequence sums over the response tokens, from one forward pass.

    Args:
        logits: (batch, seq, vocab) next-token logits.
        input_ids: (batch, seq) the scored tokens.
        response_mask: (batch, seq-1) bool, True where the *label* (token t+1) is a response token; lines up with
            logits[:, :-1] as `alignkit.sequences.collate` builds it.
        eos_token_id: labels equal to it are also summed apart (`eos_logp`, `n_eos`), so that a change of P(EOS)
            alone can be told from a change of the words (about 1 scored token in 10 is EOS on short answers).

    Returns:
        float64 tensors of shape (batch,): `logp` = Σ_t log π(y_t | x, y_<t); `n_tokens`; `argmax_logp` =
        Σ_t log max_v π(v | x, y_<t) (the teacher-forced argmax sequence along y); `argmax_prob` = Σ_t max_v π(·);
        `entropy` = Σ_t H(π(· | x, y_<t)) in nats; `eos_logp` and `n_eos`: log π and count of the EOS labels;
        `top_logodds` = Σ_t logit(max_v π(v)) and `alt_logodds` = Σ_t logit(π(y*_t)), y*_t = argmax_{v ≠ y_t} π(v),
        where logit(p) = log p − log(1 − p). The two log-odds measure concentration without the headroom cap of a
        probability or log-probability: at p = 0.95 a log-prob can rise by 0.05 nats at most, a log-odds by any amount.
    """
    # Only response positions go through the vocabulary-wide softmax: prompts and padding are most of a batch's
    # tokens, and a (tokens x vocab) float32 tensor is the memory peak of probing.
    rows = response_mask.nonzero(as_tuple=True)[0]
    scored = logits[:, :-1][response_mask].float()  # (N, vocab): one row per scored label
    labels = input_ids[:, 1:][response_mask]  # (N,)
    # Each full-vocabulary pass costs about as much as the rest together on a CPU, so every statistic is read off
    # four of them (top-2, exp, sum, dot) instead of a materialized log-softmax and its copies:
    # log π(v) = x_v − lse with lse = m + log Σ exp(x − m), m = max x; H = lse − Σ π(v) x_v = log s − Σ e·(x − m) / s
    # with e = exp(x − m), s = Σ e (centred, so a peaked row does not subtract two large numbers).
    top = scored.topk(2, dim=-1)  # (N, 2): the argmax, and the runner-up for y* when the label is the argmax
    peak = top.values[:, 0]
    # In place: `scored` is already a copy. Clamped so that a -inf logit (a banned token) adds 0·(finite) to the dot.
    centred = scored.sub_(peak[:, None]).clamp_(min=torch.finfo(scored.dtype).min)
    e = centred.exp()
    total = e.sum(dim=-1)
    log_total = total.log()  # lse − m; every log π below is (x − m) − (lse − m), as precise as a log-softmax
    token_logp = centred.gather(-1, labels[:, None]).squeeze(-1) - log_total
    max_logp = -log_total
    entropy = (log_total - torch.linalg.vecdot(e, centred) / total).clamp(min=0.0)
    # y*: the most likely token other than the one in the text (the paper's squeezing moves mass onto it).
    alt_logp = torch.where(top.indices[:, 0] == labels, top.values[:, 1] - peak, 0.0) - log_total
    is_eos = labels == eos_token_id if eos_token_id is not None else torch.zeros_like(labels, dtype=torch.bool)

    def per_row(values: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(logits.shape[0], dtype=torch.float64, device=values.device)
        return out.index_add_(0, rows, values.double())

    return {
        "logp": per_row(token_logp),
        "n_tokens": per_row(torch.ones_like(token_logp)),
        "argmax_logp": per_row(max_logp),
        "argmax_prob": per_row(max_logp.exp()),
        "entropy": per_row(entropy),
        "eos_logp": per_row(torch.where(is_eos, token_logp, 0.0)),
        "n_eos": per_row(is_eos.to(token_logp.dtype)),
        "alt_logodds": per_row(log_odds(alt_logp)),
        "top_logodds": per_row(log_odds(max_logp)),
    }


LOGODDS_CLAMP = 30.0  # |logit| cap: float32 log-probs cannot resolve 1 - p below ~1e-7 (logit ~16) anyway


def log_odds(logp: torch.Tensor) -> torch.Tensor:
    """logit(p) = log p − log(1 − p) from log p, computed stably, clamped to ±LOGODDS_CLAMP.

    `log(-expm1(log p))` is log(1 − p) without the cancellation of 1 − exp(log p) near p = 1.
    """
    logp = logp.double().clamp(max=-1e-300)
    return (logp - torch.log(-torch.expm1(logp))).clamp(-LOGODDS_CLAMP, LOGODDS_CLAMP)
