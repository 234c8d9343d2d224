"""Greedy decoding's own loop (finished rows leave the batch) against `model.generate` on a tiny model.

Texts must be identical and the statistics read off the decoding equal, on batches whose rows end at different steps.
"""

from __future__ import annotations

import copy

import pytest
import torch

from alignkit.data.builtin import load_builtin
from alignkit.generation import _decoding_stats, _greedy, _length_groups, _plain_greedy, generate
from alignkit.sequences import left_pad, render_prompt

from .conftest import build_tiny_model


@pytest.fixture(scope="module")
def prompts():
    return list(load_builtin()["test"]["prompt"][:6])


def _varied_model(tokenizer, seed):
    """The tiny model with weights drawn wider than its init: at the init's scale greedy decoding repeats one token."""
    model = build_tiny_model(tokenizer, seed=seed).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.3, generator=generator)
    return model


def _ids(tokenizer, prompts):
    return [tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]


def _batch(tokenizer, prompts):
    return left_pad(_ids(tokenizer, prompts), tokenizer.pad_token_id)


def _reference(model, input_ids, attention_mask, max_new_tokens, eos, pad):
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=pad, eos_token_id=eos, use_cache=True, output_logits=True, return_dict_in_generate=True,
        )  # fmt: skip
    tokens = out.sequences[:, input_ids.shape[1] :]
    return tokens, _decoding_stats(torch.stack(out.logits, dim=1), tokens, eos)


def _staggered_eos(model, input_ids, attention_mask, steps):
    """A token id that greedy decoding emits first at different steps in different rows (an EOS stand-in that ends
    rows at different times: the random tiny model rarely emits its real EOS)."""
    tokens, _ = _reference(model, input_ids, attention_mask, steps, None, 0)
    best, best_spread = None, 0
    for token in tokens.unique().tolist():
        firsts = {row.index(token) for row in tokens.tolist() if token in row}
        ends = sum(token in row for row in tokens.tolist())
        if 0 < ends < len(tokens) and len(firsts) > best_spread:  # some rows end, at different steps; some never do
            best, best_spread = token, len(firsts)
    assert best is not None and best_spread >= 2
    return best


@pytest.mark.parametrize(("seed", "chat"), [(0, True), (1, True), (2, True), (0, False), (3, False)])
def test_own_greedy_loop_equals_generate_tokens_and_stats(tiny_tokenizer, prompts, seed, chat):
    """Chat prompts share the template's opening (prefix run once); plain strings share nothing."""
    model = _varied_model(tiny_tokenizer, seed)
    if not chat:
        prompts = [p[-1]["content"] for p in prompts]
        assert len({p[0] for p in prompts}) > 1
    ids = _ids(tiny_tokenizer, prompts)
    input_ids, attention_mask = _batch(tiny_tokenizer, prompts)
    assert len(set(attention_mask.sum(1).tolist())) > 1  # the batch is really left-padded
    steps = 12
    eos = _staggered_eos(model, input_ids, attention_mask, steps)
    pad = tiny_tokenizer.pad_token_id
    expected_tokens, expected_stats = _reference(model, input_ids, attention_mask, steps, eos, pad)
    with torch.inference_mode():
        tokens, stats = _greedy(model, ids, torch.device("cpu"), steps, eos, pad, with_stats=True)
    ended = (expected_tokens == eos).any(dim=1)
    assert 0 < int(ended.sum()) < len(prompts)  # rows that leave the batch early, and rows that run to the end
    assert torch.equal(tokens, expected_tokens)
    assert len(stats) == len(expected_stats)
    for row, expected in zip(stats, expected_stats):
        assert row.keys() == expected.keys()
        for name in expected:
            assert row[name] == pytest.approx(expected[name], rel=1e-6, abs=1e-6), name


def test_own_greedy_loop_stops_when_every_row_ended(tiny_tokenizer, prompts):
    model = _varied_model(tiny_tokenizer, 0)
    input_ids, attention_mask = _batch(tiny_tokenizer, prompts[:3])
    first, _ = _reference(model, input_ids, attention_mask, 1, None, 0)
    eos = first[0, 0].item()  # make every row's first token its EOS where it is row 0's
    expected_tokens, expected_stats = _reference(model, input_ids, attention_mask, 8, eos, 0)
    with torch.inference_mode():
        tokens, stats = _greedy(model, _ids(tiny_tokenizer, prompts[:3]), torch.device("cpu"), 8, eos, 0, True)
    assert tokens.shape == expected_tokens.shape and torch.equal(tokens, expected_tokens)
    assert stats[0]["n_tokens"] == 1.0  # an EOS first is scored as itself
    assert [s["n_tokens"] for s in stats] == [s["n_tokens"] for s in expected_stats]


def test_generate_greedy_matches_model_generate_texts_and_stats(tiny_tokenizer, prompts):
    model = _varied_model(tiny_tokenizer, 1)
    tokenizer = copy.deepcopy(tiny_tokenizer)
    input_ids, attention_mask = _batch(tokenizer, prompts)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(_staggered_eos(model, input_ids, attention_mask, 10))
    eos = tokenizer.eos_token_id
    texts, stats = generate(model, tokenizer, prompts, max_new_tokens=10, batch_size=4, with_stats=True)
    ended = 0
    for start in (0, 4):
        input_ids, attention_mask = _batch(tokenizer, prompts[start : start + 4])
        tokens, expected_stats = _reference(model, input_ids, attention_mask, 10, eos, tokenizer.pad_token_id)
        ended += int((tokens == eos).any(dim=1).sum())
        decoded = [t.strip() for t in tokenizer.batch_decode(tokens, skip_special_tokens=True)]
        assert [t[0] for t in texts[start : start + 4]] == decoded
        for (row,), expected in zip(stats[start : start + 4], expected_stats):
            assert row == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert ended > 0  # rows that left their batch early


def test_length_groups():
    # 14, 15 (within max(1, 14 // 8) = 1 of 14); 16, 16, 17 (within 2 of 16); 30; 38
    assert _length_groups([16, 14, 38, 17, 15, 16, 30]) == [[1, 4], [0, 5, 3], [6], [2]]
    assert _length_groups([5]) == [[0]]
    assert _length_groups([8, 9, 10]) == [[0, 1], [2]]  # within max(1, 8 // 8) = 1 of the shortest


def test_generation_config_that_changes_greedy_falls_back_to_model_generate(tiny_tokenizer, prompts):
    model = _varied_model(tiny_tokenizer, 0)
    assert _plain_greedy(model)
    model.generation_config.repetition_penalty = 5.0
    assert not _plain_greedy(model)
    texts = generate(model, tiny_tokenizer, prompts[:3], max_new_tokens=10, batch_size=3)
    input_ids, attention_mask = _batch(tiny_tokenizer, prompts[:3])
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=10, do_sample=False,
            pad_token_id=tiny_tokenizer.pad_token_id, eos_token_id=tiny_tokenizer.eos_token_id,
        )  # fmt: skip
    decoded = [t.strip() for t in tiny_tokenizer.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True)]
    assert [t[0] for t in texts] == decoded
    model.generation_config.repetition_penalty = 1.0
    plain = generate(model, tiny_tokenizer, prompts[:3], max_new_tokens=10, batch_size=3)
    assert plain != texts  # the penalty does change these outputs, so the comparison above tests the fallback


def test_sampling_is_reproducible_with_a_seed(tiny_tokenizer, prompts):
    model = _varied_model(tiny_tokenizer, 0)
    kwargs = {"max_new_tokens": 8, "do_sample": True, "num_return_sequences": 3, "batch_size": 4, "top_p": 0.9}
    a = generate(model, tiny_tokenizer, prompts[:5], seed=3, **kwargs)
    b = generate(model, tiny_tokenizer, prompts[:5], seed=3, **kwargs)
    c = generate(model, tiny_tokenizer, prompts[:5], seed=4, **kwargs)
    assert a == b and a != c
    assert [len(r) for r in a] == [3] * 5
