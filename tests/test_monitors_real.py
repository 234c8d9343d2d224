"""The probe families on the real SmolLM2-135M-Instruct: a trained model must rank them the way the paper's do."""

from __future__ import annotations

import math

import pytest

from alignkit.data.builtin import load_builtin
from alignkit.monitors import MonitorConfig, build_probe_set, family_metrics
from alignkit.monitors.evaluate import evaluate_probes

from .conftest import smollm2_or_skip


@pytest.mark.real_model
def test_real_model_orders_the_families():
    from alignkit.config import ModelConfig
    from alignkit.models import load_model, load_tokenizer

    cfg = ModelConfig(model_name_or_path=str(smollm2_or_skip()), torch_dtype="float32")
    model, tokenizer = load_model(cfg).eval(), load_tokenizer(cfg)
    data = load_builtin()
    probes = build_probe_set(data["train"], data["test"], MonitorConfig(probe_num_prompts=2), seed=0)
    results = evaluate_probes(model, tokenizer, probes.probes, probes.families, max_new_tokens=16)
    scored = [(p.split, f, s) for p, r in zip(probes.probes, results) for f, s in r.stats.items()]
    m = family_metrics(scored)
    for split in ("train", "test"):
        per_token = {f: m[f"probe/{split}/{f}/logp_per_token"] for f in probes.families}
        assert all(math.isfinite(v) for v in per_token.values())
        # Fluent, on-topic answers beat scrambled words by a wide margin; the model's own choices beat both.
        assert per_token["chosen"] > per_token["shuffled"] + 1 and per_token["chosen"] > per_token["non_human"] + 1
        assert per_token["argmax"] >= per_token["chosen"] and per_token["greedy"] > per_token["irrelevant_test"]
        assert 0 < m[f"probe/{split}/chosen/argmax_prob"] < 1
