"""bench/probe_scoring_floor.py: the floor runs exactly the evaluation's (prompt, response) tokens, and the forward
counter counts what the model is given (tiny model, CPU)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

from alignkit.data.builtin import load_builtin
from alignkit.monitors import MonitorConfig, build_probe_set
from alignkit.monitors.evaluate import evaluate_probes
from alignkit.sequences import pad_id, score_responses

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def floor():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("probe_scoring_floor")


@pytest.fixture(scope="module")
def probes():
    data = load_builtin()
    return build_probe_set(data["train"], data["test"], MonitorConfig(probe_num_prompts=3), seed=0)


def test_floor_scores_the_evaluations_pairs(floor, probes, tiny_model, tiny_tokenizer):
    families = [f for f in probes.families if f != "greedy"]
    pairs = floor.scored_pairs(tiny_tokenizer, probes.probes, families, 512)
    tiny_model.eval()
    results = evaluate_probes(tiny_model, tiny_tokenizer, probes.probes, families, 16, 512)
    scored = [(p.prompt, p.responses[f], r.stats[f]) for p, r in zip(probes.probes, results) for f in r.stats]
    assert len(pairs) == len(scored) > 0
    # the same pairs in the same order: each pair's response length is what the evaluation counted
    assert [p.response_len for p in pairs] == [s["n_tokens"] for _, _, s in scored]
    reference = score_responses(tiny_model, tiny_tokenizer, [x for x, _, _ in scored], [y for _, y, _ in scored])
    assert [s["logp"] for _, _, s in scored] == pytest.approx([sum(r) for r in reference], abs=1e-4)

    batches = floor.floor_batches(pairs, 4, pad_id(tiny_tokenizer))
    assert [b["input_ids"].shape[0] for b in batches] == [4] * (len(pairs) // 4) + (
        [len(pairs) % 4] if len(pairs) % 4 else []
    )
    widths = [b["input_ids"].shape[1] for b in batches]
    assert widths == sorted(widths, reverse=True)  # longest first
    real = sorted(
        b["input_ids"][r][b["attention_mask"][r].bool()].tolist() for b in batches for r in range(len(b["input_ids"]))
    )
    assert real == sorted(p.input_ids for p in pairs)  # every token once, nothing else unmasked


def test_forward_counter_counts_every_calls_input_positions(floor, probes, tiny_model, tiny_tokenizer):
    families = ["chosen", "rejected"]
    pairs = floor.scored_pairs(tiny_tokenizer, probes.probes, families, 512)
    batches = floor.floor_batches(pairs, 4, pad_id(tiny_tokenizer))
    counter = floor.ForwardCounter(tiny_model)
    floor.floor_pass(tiny_model, batches)
    assert counter.reset() == (sum(b["input_ids"].numel() for b in batches), len(batches))
    with torch.inference_mode():
        evaluate_probes(tiny_model, tiny_tokenizer, probes.probes, families, 16, 512)
    positions, calls = counter.reset()
    # shared prompts: one pass over the prompts, one over the responses, per batch of probes
    assert calls % 2 == 0 and calls > 0 and positions > 0
    assert counter.reset() == (0, 0)
