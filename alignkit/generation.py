"""Batched sampling from a causal LM: the one place that calls `model.generate`.

Used for the monitors' `greedy` probe family, on-policy pair sampling and the evaluator's responses.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

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
) -> list[list[str]] | tuple[list[list[str]], list[list[dict[str, float]]]]:
    """Responses for each prompt: a list of `num_return_sequences` strings per prompt.

    Prompts are left-padded so that every row's new tokens start at the same column, and decoding uses the KV cache.
    Generation stops at the tokenizer's EOS; the EOS itself is not part of the returned text.

    Greedy decoding runs its own loop (`_greedy`), the same computation as `model.generate` except that a row that
    reached its EOS leaves the batch and the KV cache at once instead of idling until the batch's longest response
    ends: short answers dominate, so most of a batch's later steps used to be spent on finished rows. Sampling, and
    greedy decoding under a generation config that changes the logits (a repetition penalty, ...), call
    `model.generate`.

    With `with_stats`, also the token statistics of each response (`alignkit.sequences.response_token_stats`)
    under the model's own logits, read off the decoding itself: the generated tokens up to their EOS, or the EOS alone
    when that came first. A second forward pass over the decoded text would cost as much as the decoding again.
    """
    if seed is not None:
        torch.manual_seed(seed)
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    was_training = model.training
    model.eval()
    texts = [render_prompt(tokenizer, p) for p in prompts]
    out: list[list[str]] = []
    stats: list[list[dict[str, float]]] = []
    starts = range(0, len(texts), batch_size)
    own_loop = not do_sample and num_return_sequences == 1 and _plain_greedy(model) and _plain_cache(model)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        chunk = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[start : start + batch_size]]
        eos = tokenizer.eos_token_id
        if own_loop:
            new_tokens, rows = _greedy(model, chunk, device, max_new_tokens, eos, pad, with_stats)
        else:
            input_ids, attention_mask = left_pad(chunk, pad)
            width = input_ids.shape[1]
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
            generated = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                num_return_sequences=num_return_sequences,
                pad_token_id=pad,
                eos_token_id=eos,
                use_cache=True,
                output_logits=with_stats,
                return_dict_in_generate=True,
                **sampling,
            )
            new_tokens = generated.sequences[:, width:]
            rows = _decoding_stats(torch.stack(generated.logits, dim=1), new_tokens, eos) if with_stats else None
        decoded = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        k = num_return_sequences
        for i in range(len(chunk)):
            out.append([d.strip() for d in decoded[i * k : (i + 1) * k]])
        if with_stats:
            stats += [rows[i * k : (i + 1) * k] for i in range(len(chunk))]
    if was_training:
        model.train()
    return (out, stats) if with_stats else out


# Generation-config fields that make `model.generate` change greedy decoding, with the values that leave it as argmax
# of the raw logits; any other value sends greedy decoding to `model.generate`.
_NEUTRAL = {
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0),
    "bad_words_ids": (None,),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,),
    "renormalize_logits": (None, False),
    "remove_invalid_values": (None, False),
    "num_beams": (None, 1),
    "guidance_scale": (None, 1.0),
    "stop_strings": (None,),
    "prompt_lookup_num_tokens": (None,),
    "penalty_alpha": (None,),
    "dola_layers": (None,),
    "watermarking_config": (None,),
    "cache_implementation": (None, "dynamic"),
    "max_time": (None,),
}


def _plain_greedy(model) -> bool:
    """Whether greedy `model.generate` on this model is argmax of the raw logits with a dynamic KV cache."""
    config = getattr(model, "generation_config", None)
    if config is None:
        return False
    return all(getattr(config, name, None) in values for name, values in _NEUTRAL.items())


def _accepts_logits_to_keep(model) -> bool:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def _new_cache(model, data: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> DynamicCache:
    config = getattr(model, "config", None)
    text_config = config.get_text_config(decoder=True) if config is not None else None
    return DynamicCache(ddp_cache_data=data, config=text_config)


class _RoomyLayer(DynamicLayer):
    """A dynamic cache layer whose keys and values are views into buffers with room for more positions: a decoding
    step writes its column in place instead of copying the whole cache (`DynamicLayer.update` concatenates)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int):
        super().__init__()
        self.lazy_initialization(keys, values)
        self._buffers = [self._roomy(keys, room), self._roomy(values, room)]
        self._set_length(keys.shape[-2])

    @staticmethod
    def _roomy(states: torch.Tensor, room: int) -> torch.Tensor:
        rows, heads, length, dim = states.shape
        buffer = states.new_empty((rows, heads, length + room, dim))
        buffer[:, :, :length] = states
        return buffer

    def _set_length(self, length: int) -> None:
        self.keys, self.values = (buffer[:, :, :length] for buffer in self._buffers)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        if end > self._buffers[0].shape[-2]:  # out of room: grow (decoding never gets here)
            self._buffers = [self._roomy(b[:, :, :start], end - start) for b in self._buffers]
        self._buffers[0][:, :, start:end] = key_states
        self._buffers[1][:, :, start:end] = value_states
        self._set_length(end)
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        length = self.keys.shape[-2]
        self._buffers = [b[indices] for b in self._buffers]
        self._set_length(length)


def _plain_cache(model) -> bool:
    """Whether the model's dynamic KV cache is a plain per-layer concatenation (no sliding window, no state)."""
    return all(type(layer) is DynamicLayer for layer in _new_cache(model).layers)


def _length_groups(lengths: list[int]) -> list[list[int]]:
    """Row indices grouped by length, each group's lengths within 1/8 of its shortest (little padding inside)."""
    order = sorted(range(len(lengths)), key=lambda r: lengths[r])
    groups: list[list[int]] = []
    for r in order:
        if groups and lengths[r] - lengths[groups[-1][0]] <= max(1, lengths[groups[-1][0]] // 8):
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def _prefill(
    model, prompts: list[list[int]], pad: int, device: torch.device, keep_last: dict[str, int], room: int
) -> tuple[DynamicCache, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The KV cache of a batch of prompts, with room for `room` more positions: (cache, attention mask, next
    position ids (rows, 1), last logits).

    The prompts' common prefix (a chat template's system prompt) runs once, when there are several prompts; each
    group of rows with suffixes of similar length then runs on top of it, so padding costs little. The batch's cache
    row r holds, left to right, the prefix, padding, and row r's suffix ending at the last column, where decoding
    continues; the attention mask marks the padding out and position ids count real tokens only, as
    `model.generate` counts them on a left-padded batch: each row sees the same keys and values at the same positions.
    """
    rows = len(prompts)
    shared = 0
    shortest = min(len(p) for p in prompts)
    while rows > 1 and shared < shortest - 1 and all(p[shared] == prompts[0][shared] for p in prompts):
        shared += 1
    prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    if shared:
        cache = _new_cache(model)
        ids = torch.tensor([prompts[0][:shared]], dtype=torch.long, device=device)
        model(input_ids=ids, position_ids=torch.arange(shared, device=device)[None], past_key_values=cache,
              use_cache=True, **keep_last)  # fmt: skip
        prefix = [(layer.keys, layer.values) for layer in cache.layers]
    width = max(len(p) for p in prompts) - shared
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    mask = torch.zeros((rows, shared + width), dtype=torch.long, device=device)
    mask[:, :shared] = 1
    logits: torch.Tensor | None = None
    for group in _length_groups([len(p) for p in prompts]):
        suffix_ids, suffix_mask = left_pad([prompts[r][shared:] for r in group], pad)
        suffix_ids, suffix_mask = suffix_ids.to(device), suffix_mask.to(device)
        n, w = suffix_ids.shape
        start = None if prefix is None else [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in prefix]
        cache = _new_cache(model, start)
        positions = (shared + suffix_mask.cumsum(-1) - 1).masked_fill(suffix_mask == 0, 0)
        group_mask = torch.cat([mask[group, :shared], suffix_mask], dim=1)
        out = model(input_ids=suffix_ids, attention_mask=group_mask, position_ids=positions, past_key_values=cache,
                    use_cache=True, **keep_last).logits[:, -1]  # fmt: skip
        if logits is None:
            logits = out.new_zeros((rows, out.shape[-1]))
        index = torch.tensor(group, device=device)
        logits[index] = out
        mask[index, shared + width - w :] = suffix_mask
        for layer_index, layer in enumerate(cache.layers):
            if len(keys) <= layer_index:
                shape = (rows, *layer.keys.shape[1:2], shared + width, layer.keys.shape[-1])
                keys.append(layer.keys.new_zeros(shape))
                values.append(layer.values.new_zeros(shape))
                if prefix is not None:
                    keys[layer_index][:, :, :shared] = prefix[layer_index][0]
                    values[layer_index][:, :, :shared] = prefix[layer_index][1]
            keys[layer_index][index, :, shared + width - w :] = layer.keys[:, :, shared:]
            values[layer_index][index, :, shared + width - w :] = layer.values[:, :, shared:]
    assert logits is not None
    next_position = torch.tensor([[len(p)] for p in prompts], dtype=torch.long, device=device)
    cache = _new_cache(model)
    cache.layers = [_RoomyLayer(k, v, room) for k, v in zip(keys, values)]
    return cache, mask, next_position, logits


def _greedy(
    model, prompts: list[list[int]], device: torch.device, max_new_tokens: int, eos: int | None, pad: int,
    with_stats: bool,
) -> tuple[torch.Tensor, list[dict[str, float]] | None]:  # fmt: skip
    """Greedy decoding of a batch of prompts (token ids): (new tokens, pad after each row's EOS; stats or None).

    The computation of `model.generate(do_sample=False)` on the left-padded batch: position ids counted from each
    row's first real token, the logits of the last position only, argmax; the output has as many columns as steps
    ran, a finished row padded with `pad` after its EOS. The differences are in what is not computed: the prompts'
    common prefix runs once and padding mostly not at all (`_prefill`), and a row leaves the batch (and the KV
    cache) as soon as it emits its EOS instead of idling until the longest row ends.
    """
    rows = len(prompts)
    keep_last = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
    cache, attention_mask, next_position, logits = _prefill(model, prompts, pad, device, keep_last, max_new_tokens)
    tokens = torch.full((rows, max_new_tokens), pad, dtype=torch.long, device=device)
    active = torch.arange(rows, device=device)  # the batch row of each cache row
    sums = _StatSums(rows) if with_stats else None
    steps = 0
    while True:
        logits = logits.to(dtype=torch.float32)
        chosen = logits.argmax(dim=-1)
        tokens[active, steps] = chosen
        if sums is not None:
            sums.add(logits, chosen, active, eos, first=steps == 0)
        steps += 1
        running = chosen != eos if eos is not None else torch.ones_like(chosen, dtype=torch.bool)
        if steps == max_new_tokens or not bool(running.any()):
            break
        if not bool(running.all()):
            index = running.nonzero().squeeze(1)
            cache.batch_select_indices(index)
            active, chosen = active[index], chosen[index]
            attention_mask, next_position = attention_mask[index], next_position[index]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], dim=1)
        logits = model(
            input_ids=chosen.unsqueeze(1), attention_mask=attention_mask, position_ids=next_position,
            past_key_values=cache, use_cache=True, **keep_last,
        ).logits[:, -1]  # fmt: skip
        next_position = next_position + 1
    return tokens[:, :steps], (sums.rows() if sums is not None else None)


class _StatSums:
    """`response_token_stats` of each decoded row, summed step by step over the rows still decoding.

    A step's token counts unless it is the row's EOS, which counts only when it came first (see `_decoding_stats`).
    Float64 sums in step order: the same additions, in the same order, as one call over the whole decoding.
    """

    def __init__(self, rows: int):
        self.totals: dict[str, torch.Tensor] | None = None
        self.n = rows

    def add(self, logits: torch.Tensor, chosen: torch.Tensor, active: torch.Tensor, eos: int | None, first: bool):
        counts = chosen != eos if eos is not None and not first else torch.ones_like(chosen, dtype=torch.bool)
        # response_token_stats reads logits[:, t] as the prediction of ids[:, t + 1]: a dummy second column.
        ids = torch.stack([chosen, chosen], dim=1)
        step = response_token_stats(torch.stack([logits, logits], dim=1), ids, counts.unsqueeze(1))
        if self.totals is None:
            self.totals = {name: torch.zeros(self.n, dtype=torch.float64, device=v.device) for name, v in step.items()}
        for name, values in step.items():
            self.totals[name].index_add_(0, active, values)

    def rows(self) -> list[dict[str, float]]:
        assert self.totals is not None
        values = {name: t.tolist() for name, t in self.totals.items()}
        return [{name: v[r] for name, v in values.items()} for r in range(self.n)]


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
