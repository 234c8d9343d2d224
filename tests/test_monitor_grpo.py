"""GRPO probes: sampled completions split by the trainer's own reward functions into correct and wrong ones."""

from __future__ import annotations

import types

import pytest
import torch

import alignkit.monitors.grpo as grpo
from alignkit.errors import AlignkitError

ROWS = [
    {"prompt": [{"role": "user", "content": "What is 2 plus 2?"}], "reference_answer": "4", "id": "a"},
    {"prompt": [{"role": "user", "content": "What is 3 plus 3?"}], "reference_answer": "6", "id": "b"},
    {"prompt": [{"role": "user", "content": "What is 5 plus 5?"}], "reference_answer": "10", "id": "c"},
]
SAMPLES = {  # what the fake sampler "draws" for each prompt
    "What is 2 plus 2?": ["5", "4", "It is 4.", "3"],
    "What is 3 plus 3?": ["6", "6", "6", "6"],  # no contrast: chosen only
    "What is 5 plus 5?": ["11", "12", "9", "7"],  # nothing correct: left out
}


def exact(prompts, completions, reference_answer, **kwargs):
    assert isinstance(completions[0], list) and completions[0][0]["role"] == "assistant"  # as TRL passes them
    assert len(kwargs["completion_ids"]) == len(completions) and "id" in kwargs
    return [float(c[0]["content"].strip(" .").split()[-1] == a) for c, a in zip(completions, reference_answer)]


def no_answer(prompts, completions, **kwargs):
    return [None if c[0]["content"] == "3" else 0.0 for c in completions]


def fake_generate(model, tokenizer, prompts, num_return_sequences, **kwargs):
    return [SAMPLES[p[0]["content"]][:num_return_sequences] for p in prompts]


def _trainer(funcs, weights):
    return types.SimpleNamespace(reward_funcs=funcs, reward_weights=torch.tensor(weights), state=None)


def test_completions_split_by_the_trainers_weighted_rewards(tiny_tokenizer, tiny_model, monkeypatch):
    monkeypatch.setattr(grpo, "generate", fake_generate)
    trainer = _trainer([exact, no_answer], [2.0, 1.0])
    rows, note = grpo.grpo_probe_rows(trainer, tiny_model, tiny_tokenizer, ROWS, num_prompts=3, max_new_tokens=8,
                                      batch_size=4, seed=0)  # fmt: skip
    # rewards of prompt a: 2*0+0, 2*1+0, 2*1+0, NaN ("3": a function without an answer): top 2, bottom 0
    assert rows == [
        {"prompt": ROWS[0]["prompt"], "chosen": "4", "rejected": "5", "id": "a"},
        {"prompt": ROWS[1]["prompt"], "chosen": "6", "id": "b"},
    ]
    assert "top reward (2)" in note and "lowest (0)" in note
    assert "2 prompts with a correct completion, 1 of them with a wrong one" in note


def test_reward_models_are_refused_with_a_clear_error(tiny_tokenizer, tiny_model, monkeypatch):
    monkeypatch.setattr(grpo, "generate", fake_generate)
    with pytest.raises(AlignkitError, match="reward model is not supported yet"):
        grpo.grpo_probe_rows(_trainer([torch.nn.Linear(2, 1)], [1.0]), tiny_model, tiny_tokenizer, ROWS, 2, 8, 4, 0)
    with pytest.raises(AlignkitError, match="needs 'prompt'"):
        grpo.grpo_probe_rows(_trainer([exact], [1.0]), tiny_model, tiny_tokenizer, [{"text": "x"}], 2, 8, 4, 0)
