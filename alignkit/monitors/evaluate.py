"""Running the probes through a model: greedy decodings, then all families of a batch of prompts in one pass.

Every family of a probe shares its prompt, and chat prompts (system turn, template tokens) are often longer than the
short answers being scored. So by default a batch of probes costs two forward passes: one over the prompts, whose
key/value cache is then repeated for each of the prompt's responses, and one over all the responses of all families
at once. Scoring a (prompt, response) pair in one forward pass each (`share_prompt=False`) gives the same numbers
(tests/test_monitors_callback.py checks it against `alignkit.sequences.score_responses`) for about twice the compute
on the built-in data. The greedy decodings are scored by the decoding itself (`generate(..., with_stats=True)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from alignkit.generation import generate
from alignkit.monitors.probes import Probe
from alignkit.monitors.scoring import response_token_stats
from alignkit.preempt import interrupt_point
from alignkit.sequences import EncodedPair, collate, encode_pair, forward_shared_prompts


@dataclass
class ProbeResult:
    stats: dict[str, dict[str, float]] = field(default_factory=dict)  # family -> response_token_stats of the pair
    greedy: str | None = None  # the greedy decoding scored as the `greedy` family


@torch.inference_mode()
def evaluate_probes(
    model,
    tokenizer,
    probes: Sequence[Probe],
    families: Sequence[str],
    batch_size: int = 16,
    max_length: int | None = 512,
    max_new_tokens: int = 64,
    share_prompt: bool = True,
    generate_batch_size: int | None = None,
    progress: str | None = None,
    fixed: Sequence[dict[str, str]] | None = None,
    greedy_as: str | None = None,
) -> list[ProbeResult]:
    """Score every family of every probe with `model` as it is (adapter enabled; the caller sets eval mode).

    `argmax` needs no pass of its own: `family_metrics` reads it off the `chosen` statistics. `progress`, when given,
    is the label of progress bars over the decoding and scoring batches (an evaluation can take minutes on a CPU).
    `fixed` adds, per probe, more families of fixed text to score (e.g. `greedy_start`, a stage-start decoding);
    `greedy_as` also scores this evaluation's greedy decodings as fixed text under that family name (teacher-forced,
    with the EOS that `encode_pair` appends, which the per-probe records keep apart).
    """
    results = [ProbeResult() for _ in probes]
    if "greedy" in families and probes:
        # The decoding scores itself: the model's log-probs of the tokens it chose, with no second pass.
        decoded, decoded_stats = generate(
            model,
            tokenizer,
            [p.prompt for p in probes],
            max_new_tokens,
            batch_size=generate_batch_size or batch_size,
            progress=progress is not None,
            desc=f"{progress}: greedy decodings" if progress else "generate",
            with_stats=True,
        )
        for result, texts, stats in zip(results, decoded, decoded_stats):
            result.greedy = texts[0]
            result.stats["greedy"] = stats[0]

    # encode_pair keeps the tokenization identical to the rest of alignkit (prompt and response tokenized apart).
    encoded: list[list[tuple[str, EncodedPair]]] = []
    for n, probe in enumerate(probes):
        responses = {f: r for f, r in probe.responses.items() if f in families}
        if fixed is not None:
            responses.update(fixed[n])
        if greedy_as is not None and results[n].greedy is not None:
            responses[greedy_as] = results[n].greedy
        encoded.append([(f, encode_pair(tokenizer, probe.prompt, r, max_length)) for f, r in responses.items()])

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    score = _score_shared_prompt if share_prompt else _score_pairs
    chunks = _chunks(encoded, batch_size)
    for chunk in tqdm(chunks, desc=f"{progress}: scoring", disable=progress is None, leave=False):
        interrupt_point("probe scoring")  # a preemption signal stops here (alignkit/preempt.py)
        stats = score(model, [(i, encoded[i]) for i in chunk], pad, device, tokenizer.eos_token_id)
        for i, family, values in stats:
            results[i].stats[family] = values
    return results


def _chunks(encoded: list[list[tuple[str, EncodedPair]]], batch_size: int) -> list[list[int]]:
    """Probe indices per forward batch: whole probes, at most `batch_size` pairs (or one probe's, if it has more)."""
    # Longest first, so that each batch holds similar lengths and pads little.
    order = sorted(range(len(encoded)), key=lambda i: -max((len(p.input_ids) for _, p in encoded[i]), default=0))
    chunks: list[list[int]] = []
    rows = 0
    for i in order:
        if not encoded[i]:
            continue
        if chunks and rows + len(encoded[i]) <= batch_size:
            chunks[-1].append(i)
            rows += len(encoded[i])
        else:
            chunks.append([i])
            rows = len(encoded[i])
    return chunks


def _score_pairs(model, chunk, pad: int, device, eos: int | None = None) -> list[tuple[int, str, dict[str, float]]]:
    """One forward pass over right-padded (prompt + response) rows."""
    rows = [(i, family, pair) for i, pairs in chunk for family, pair in pairs]
    batch = collate([pair for _, _, pair in rows], pad)
    input_ids = batch["input_ids"].to(device)
    logits = model(input_ids=input_ids, attention_mask=batch["attention_mask"].to(device), use_cache=False).logits
    return _unpack(rows, response_token_stats(logits, input_ids, batch["response_mask"].to(device), eos))


def _score_shared_prompt(
    model, chunk, pad: int, device, eos: int | None = None
) -> list[tuple[int, str, dict[str, float]]]:
    """Prompts once (left-padded, cached), then every response of every probe against its prompt's cache."""
    prompts = [pairs[0][1].input_ids[: pairs[0][1].prompt_len] for _, pairs in chunk]
    rows = [(i, family, pair) for i, pairs in chunk for family, pair in pairs]
    owner = [b for b, (_, pairs) in enumerate(chunk) for _ in pairs]  # row -> its prompt in the batch
    if any(pair.input_ids[: pair.prompt_len] != prompts[b] for b, (_, _, pair) in zip(owner, rows)):
        raise RuntimeError("a probe's families tokenized its prompt differently; score with share_prompt=False")
    responses = [pair.input_ids[pair.prompt_len :] for _, _, pair in rows]
    out = forward_shared_prompts(model, prompts, responses, owner, pad, device)
    return _unpack(rows, response_token_stats(out.logits, out.response_ids, out.response_mask, eos))


def _unpack(rows, stats: dict[str, torch.Tensor]) -> list[tuple[int, str, dict[str, float]]]:
    values = {name: tensor.tolist() for name, tensor in stats.items()}
    return [(i, family, {name: v[r] for name, v in values.items()}) for r, (i, family, _) in enumerate(rows)]
