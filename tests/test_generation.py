"""`alignkit.generation.generate` on a tiny model: greedy statistics on rows that end at different steps, sampling."""

from __future__ import annotations

import copy

import pytest
import torch

from alignkit.data.builtin import load_builtin
from alignkit.generation import generate
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


def _staggered_eos(model, tokenizer, prompts, steps):
    """A token id that greedy decoding emits first at different steps in different rows, and never in some: an EOS
    stand-in that ends rows at different times (the random tiny model rarely emits its real EOS)."""
    input_ids, attention_mask = left_pad(_ids(tokenizer, prompts), tokenizer.pad_token_id)
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=steps, do_sample=False,
                             pad_token_id=0, eos_token_id=None)  # fmt: skip
    rows = out[:, input_ids.shape[1] :].tolist()
    best, best_spread = None, 0
    for token in {t for row in rows for t in row}:
        firsts = {row.index(token) for row in rows if token in row}
        ends = sum(token in row for row in rows)
        if 0 < ends < len(rows) and len(firsts) > best_spread:
            best, best_spread = token, len(firsts)
    assert best is not None and best_spread >= 2
    return best


def _model_with_staggered_eos(tiny_tokenizer, prompts, steps: int):
    """The varied tiny model and a tokenizer whose EOS is `_staggered_eos`'s token."""
    model = _varied_model(tiny_tokenizer, 1)
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(_staggered_eos(model, tokenizer, prompts, steps))
    return model, tokenizer


def test_greedy_stats_are_a_teacher_forced_pass_over_each_row_up_to_its_eos(tiny_tokenizer, prompts):
    steps = 10
    model, tokenizer = _model_with_staggered_eos(tiny_tokenizer, prompts, steps)
    eos = tokenizer.eos_token_id
    texts, stats = generate(model, tokenizer, prompts, max_new_tokens=steps, batch_size=4, with_stats=True)
    kept = []
    for prompt_ids, (row,) in zip(_ids(tokenizer, prompts), stats):
        with torch.inference_mode():  # each prompt alone: its greedy tokens, then one teacher-forced pass over them
            full = model.generate(torch.tensor([prompt_ids]), max_new_tokens=steps, do_sample=False,
                                  pad_token_id=eos, eos_token_id=eos)  # fmt: skip
            new = full[0, len(prompt_ids) :].tolist()
            logp = torch.log_softmax(model(full).logits[0, len(prompt_ids) - 1 : -1].float(), dim=-1)
        keep = max(new.index(eos), 1) if eos in new else len(new)  # before the EOS; an EOS first counts as itself
        kept.append(keep)
        assert row["n_tokens"] == keep
        assert row["logp"] == pytest.approx(logp[torch.arange(keep), torch.tensor(new[:keep])].sum().item(), abs=1e-4)
        assert row["argmax_logp"] == pytest.approx(logp[:keep].max(-1).values.sum().item(), abs=1e-4)
    assert len(set(kept)) > 1 and max(kept) == steps  # rows ended at different steps, and some never did
    assert [len(t) for t in texts] == [1] * len(prompts)


def test_sampling_is_reproducible_with_a_seed(tiny_tokenizer, prompts):
    model = _varied_model(tiny_tokenizer, 0)
    kwargs = {"max_new_tokens": 8, "do_sample": True, "num_return_sequences": 3, "batch_size": 4, "top_p": 0.9}
    a = generate(model, tiny_tokenizer, prompts[:5], seed=3, **kwargs)
    b = generate(model, tiny_tokenizer, prompts[:5], seed=3, **kwargs)
    c = generate(model, tiny_tokenizer, prompts[:5], seed=4, **kwargs)
    assert a == b and a != c
    assert [len(r) for r in a] == [3] * 5


def test_cap_hit_is_true_exactly_for_rows_that_never_produced_eos(tiny_tokenizer, prompts):
    steps = 10
    model, tokenizer = _model_with_staggered_eos(tiny_tokenizer, prompts, steps)
    eos = tokenizer.eos_token_id
    texts, caps = generate(model, tokenizer, prompts, max_new_tokens=steps, batch_size=4, with_cap_hit=True)
    expected = []
    for prompt_ids in _ids(tokenizer, prompts):
        with torch.inference_mode():
            full = model.generate(torch.tensor([prompt_ids]), max_new_tokens=steps, do_sample=False,
                                  pad_token_id=eos, eos_token_id=eos)  # fmt: skip
        expected.append([eos not in full[0, len(prompt_ids) :].tolist()])
    assert caps == expected and {c for (c,) in caps} == {True, False}  # some rows ended, some hit the cap
    assert texts == generate(model, tokenizer, prompts, max_new_tokens=steps, batch_size=4)
    with pytest.raises(ValueError, match="not both"):
        generate(model, tokenizer, prompts, max_new_tokens=2, with_stats=True, with_cap_hit=True)
