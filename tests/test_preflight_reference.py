"""The pre-flight's pass as the preference stage's reference pass (alignkit/preflight/reference.py): on the tiny model,
DPO's loss and gradients with the pre-flight's reference log-probs equal those with TRL's own, and every case where
they would not is refused with a log line, TRL then computing its own."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignkit.config import parse_recipe_config
from alignkit.data import load_preference_data
from alignkit.models import load_tokenizer
from alignkit.preflight.recipe import after_sft, preference_pairs
from alignkit.preflight.reference import pair_tokens, trl_pair_ids
from alignkit.sequences import encode_pair
from alignkit.stages import REFERENCE_COLUMNS, StageResult, dpo_trainer, load_stage_model, pairs_for_steps

from .test_recipe import run_recipe_in_process, tiny_args


def _cfg(tiny_model_dir, out, **overrides):
    args = tiny_args(tiny_model_dir, out, probe_enabled=False, preflight="report", preflight_dynamics_pairs=0)
    return parse_recipe_config(args + [a for k, v in overrides.items() for a in (f"--{k}", str(v))])


def _trainer(cfg, tokenizer, pairs, folder):
    torch.manual_seed(0)  # the same LoRA initialisation for both trainers
    policy = load_stage_model(cfg, [])
    return dpo_trainer(policy, tokenizer, pairs, cfg, folder, cfg.preference.preference_max_steps)


def _loss_and_grads(trainer, rows: list[int]):
    trainer.model.train()
    trainer.model.zero_grad()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in rows])
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.fixture(scope="module")
def shared(tiny_model_dir, tmp_path_factory):
    """The recipe's path with sft_mode none (the pre-flight scores the base model, the stage's start and reference):
    its pairs with the pre-flight's reference log-probs, and the same pairs without."""
    out = tmp_path_factory.mktemp("shared")
    cfg = _cfg(tiny_model_dir, out, sft_mode="none")
    tokenizer = load_tokenizer(cfg.model)
    data = load_preference_data(cfg.data, seed=cfg.run.seed)
    result = after_sft(cfg, tokenizer, data, out, StageResult("sft", "off"), None)
    pairs = preference_pairs(cfg, data["train"], result)
    return cfg, tokenizer, data, result, pairs


def test_trl_tokens_extend_alignkits_by_the_chat_templates_tail(shared, tiny_tokenizer):
    cfg, tokenizer, data, _, _ = shared
    row = data["train"][0]
    prompt_ids, chosen_ids, _ = trl_pair_ids(tokenizer, row["prompt"], row["chosen"], row["rejected"])
    ours = encode_pair(tokenizer, row["prompt"], row["chosen"])
    assert ours.input_ids[: ours.prompt_len] == prompt_ids
    tail = chosen_ids[ours.response_len :]
    assert chosen_ids[: ours.response_len] == ours.input_ids[ours.prompt_len :]
    assert tokenizer.decode(tail) == "\n"  # ChatML's newline after <|im_end|>: TRL sums it, alignkit's scores do not
    tokens = pair_tokens(tokenizer, row["prompt"], row["chosen"], row["rejected"], cfg.data.max_length)
    assert tokens.digest is not None and tokens.n_chosen == ours.response_len
    # Too short a max_length for TRL's sequence: alignkit's tokens only, no reference log-probs.
    short = pair_tokens(tokenizer, row["prompt"], row["chosen"], row["rejected"], len(prompt_ids) + 2)
    assert short.digest is None


def test_shared_reference_gives_trls_loss_and_gradients(shared, tmp_path, caplog):
    cfg, tokenizer, data, result, pairs = shared
    assert set(REFERENCE_COLUMNS) <= set(pairs.column_names)
    # The scored pairs are the ones the stage would pick from the training split itself.
    assert pairs["prompt"] == pairs_for_steps(data["train"], cfg.preference.preference_max_steps, cfg)["prompt"]
    caplog.set_level("WARNING", logger="alignkit")
    ours = _trainer(cfg, tokenizer, pairs, tmp_path / "ours")
    assert "TRL's reference pass skipped" in caplog.text
    plain = pairs.remove_columns(list(REFERENCE_COLUMNS))
    trls = _trainer(cfg, tokenizer, plain, tmp_path / "trl")
    for name in ("ref_chosen_logps", "ref_rejected_logps"):
        assert ours.train_dataset[name] == pytest.approx(trls.train_dataset[name], abs=1e-4, rel=1e-5)
    for rows in ([0, 1], [2, 3, 4]):
        loss_a, grads_a = _loss_and_grads(ours, rows)
        loss_b, grads_b = _loss_and_grads(trls, rows)
        assert float(loss_a) == pytest.approx(float(loss_b), abs=1e-6)
        assert grads_a.keys() == grads_b.keys() and grads_a
        for n in grads_a:
            torch.testing.assert_close(grads_a[n], grads_b[n], atol=1e-6, rtol=1e-4)
    # alignkit's own scores are unchanged by scoring TRL's longer tokens: per-token values of y- sum to its logp.
    for record in result.records:
        assert record["ref_rejected_logps"] < record["rejected_logp"]  # the tail adds a (negative) log-prob


@pytest.mark.parametrize("case", ["digest", "truncated", "missing"])
def test_reference_columns_that_would_not_match_are_refused(shared, tmp_path, caplog, case):
    cfg, tokenizer, _, _, pairs = shared
    if case == "digest":  # the tokens scored are not TRL's
        pairs = pairs.map(lambda row, i: {"ref_digest": "x" if i == 0 else row["ref_digest"]}, with_indices=True)
        why = "pair 0: TRL's tokens differ"
    elif case == "truncated":  # TRL would cut a sequence the pre-flight scored whole (but keep every prompt)
        ids = [trl_pair_ids(tokenizer, r["prompt"], r["chosen"], r["rejected"]) for r in pairs]
        limit = max(len(p) for p, _, _ in ids) + 2
        assert any(len(p) + len(c) > limit for p, c, _ in ids)
        cfg = _cfg(cfg.model.model_name_or_path, tmp_path / "short", sft_mode="none", max_length=limit)
        why = f"is truncated to max_length {limit}"
    else:
        pairs = pairs.map(lambda row, i: {"ref_chosen_logps": None if i == 1 else row["ref_chosen_logps"]},
                          with_indices=True)  # fmt: skip
        why = "pair 1 has none"
    caplog.set_level("WARNING", logger="alignkit")
    trainer = _trainer(cfg, tokenizer, pairs, tmp_path / "t")
    assert "not used (" in caplog.text and why in caplog.text and "TRL computes its own" in caplog.text
    plain = _trainer(cfg, tokenizer, pairs.remove_columns(list(REFERENCE_COLUMNS)), tmp_path / "p")
    assert trainer.train_dataset["ref_chosen_logps"] == pytest.approx(plain.train_dataset["ref_chosen_logps"])


def test_recipe_report_run_shares_the_reference_after_sft(tiny_model_dir, tmp_path, caplog):
    caplog.set_level("WARNING", logger="alignkit")
    args = tiny_args(tiny_model_dir, tmp_path / "out", probe_enabled=False, preflight="report",
                     preflight_dynamics_pairs=0)  # fmt: skip
    out = run_recipe_in_process(args)
    assert "reference log-probs of the 6 pairs handed to the preference stage" in caplog.text
    assert "TRL's reference pass skipped" in caplog.text
    assert json.loads((out / "metrics.json").read_text())["preference"]["rows"] == {"pairs": 6}
    # extend_sft scores the base model, not the stage's start: TRL computes the reference itself.
    caplog.clear()
    args = tiny_args(tiny_model_dir, tmp_path / "ext", probe_enabled=False, preflight="act", sft_mode="chosen",
                     preflight_dynamics_pairs=0)  # fmt: skip
    run_recipe_in_process(args)
    assert "TRL's reference pass skipped" not in caplog.text


def test_cost_bench_measures_side_by_side_through_the_recipes_path(tiny_model_dir, tmp_path):
    from .test_bench_paths import bench

    results_dir = bench("_results").results_dir

    argv = ["--model_name_or_path", str(tiny_model_dir), "--max_train_samples", "12", "--preference_max_steps", "2",
            "--per_device_train_batch_size", "2", "--preflight_dynamics_pairs", "1", "--cpu_threads", "1",
            "--use_cpu", "true", "--results", str(tmp_path / "res")]  # fmt: skip
    r = bench("preflight_cost").main(argv)
    assert r["reference_shared"] and r["pairs_scored"] == 4 and r["preference_steps"] == 2
    raw = r["raw_seconds"]  # measured, unrounded: the shown values are rounded to 0.1 s, a tiny pass can show 0.0
    assert raw["preference_stage_alone"] == pytest.approx(raw["preference_stage_shared"] + raw["trl_reference_pass"])
    assert r["settings"]["preflight_dynamics_pairs"] == 1 and raw["preflight_dynamics"] > 0  # it ran (0.0: skipped)
    durations = {k: v for k, v in raw.items() if k != "trl_reference_pass"}  # a difference of two timings
    assert all(isinstance(v, float) and math.isfinite(v) and v >= 0 for v in durations.values()), raw
    assert r["preflight_dynamics_seconds"] == round(raw["preflight_dynamics"], 1)
    assert json.loads((tmp_path / "res" / "preflight_cost.json").read_text())["share_added"] == r["share_added"]
    written = json.loads((results_dir("preflight_cost") / "result.json").read_text())
    assert written["figures"]["share_added"] == r["share_added"] and "--results" in written["command"]
    assert "pre-flight's added cost" in (tmp_path / "res" / "preflight_cost.md").read_text()
