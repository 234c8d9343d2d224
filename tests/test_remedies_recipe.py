"""The remedies through the whole recipe on the tiny model: the report names each remedy with its logged terms, and
pre-flight filtering drops the riskiest share of the pairs by the pre-flight's ranking and lists them."""

from __future__ import annotations

import json

import pytest

from alignkit.config import parse_recipe_config
from alignkit.errors import AlignkitError
from alignkit.jsonl import read_jsonl
from alignkit.preflight.recipe import check_preflight

from .test_recipe import run_recipe_in_process, tiny_args


def test_recipe_with_dpop_floor_sft_mix_and_preflight_filtering(tiny_model_dir, tmp_path):
    args = tiny_args(
        tiny_model_dir, tmp_path / "out", probe_enabled=False, loss="dpop", negative_floor=0.5, sft_weight=0.2,
        preflight_filter_fraction=0.5, preflight_dynamics_pairs=0,
    )  # fmt: skip
    out = run_recipe_in_process(args)
    report = (out / "report.md").read_text()
    line = next(x for x in report.splitlines() if x.startswith("- squeezing remedies"))
    for part in ("DPOP (dpop_lambda 50)", "negative-gradient floor 0.5 nats/token", "SFT mix (sft_weight 0.2)",
                 "preflight_filter_fraction 0.5", "`loss/dpop_penalty`", "`loss/negative_floor_active`"):  # fmt: skip
        assert part in line
    # the 6 pairs the 3 steps of 2 use are scored; the 3 deepest y- are dropped, the stage trains on the other 3
    records = [r for _, r in read_jsonl(out / "preflight" / "preflight.jsonl")]
    assert len(records) == 6
    deepest = sorted(records, key=lambda r: (r["rejected_logp_per_token"], r["rejected_min_logp"]))[:3]
    assert "the 3 riskiest of the 6 scored pairs dropped from the preference stage" in report
    for r in deepest:
        assert f"row {r['row']}" in report
    assert json.loads((out / "metrics.json").read_text())["preference"]["rows"] == {"pairs": 3}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"preflight_filter_fraction": 1.0}, "'preflight_filter_fraction' is 1.0; it must be in"),
        ({"preflight_filter_fraction": 0.2, "preflight": "act"}, "both choose pairs to act on"),
    ],
)
def test_filter_fraction_config_errors(tiny_model_dir, tmp_path, overrides, message):
    with pytest.raises(AlignkitError, match=message):
        parse_recipe_config(tiny_args(tiny_model_dir, tmp_path, **overrides))


def test_filter_fraction_needs_the_datasets_pairs(tiny_model_dir, tmp_path):
    cfg = parse_recipe_config(tiny_args(tiny_model_dir, tmp_path, preflight_filter_fraction=0.2, sampling="on_policy"))
    with pytest.raises(AlignkitError, match="'preflight_filter_fraction' is 0.2 with sampling 'on_policy'"):
        check_preflight(cfg)


def test_guard_turns_on_the_floor_from_the_step_it_fires(tiny_model_dir, tmp_path):
    """An alert threshold below any reading: the alert fires at the first evaluation after the start (step 2), and
    the floor (0 nats/token: no y- below the reference keeps its gradient) is on from step 3; the report says so."""
    args = tiny_args(
        tiny_model_dir, tmp_path / "out", sft_mode="none", preference_max_steps=4, squeeze_threshold=-100.0,
        squeeze_metric="off_target_fall",
        guard_action="mitigate", guard_mitigation="negative_floor", guard_negative_floor=0.0,
    )  # fmt: skip
    out = run_recipe_in_process(args)
    history = json.loads((out / "metrics.json").read_text())["preference"]["log_history"]
    active = {h["step"]: h["loss/negative_floor_active"] for h in history if "loss/negative_floor_active" in h}
    assert active[1] == active[2] == 0.0  # plain DPO until the alert
    assert max(active[3], active[4]) > 0.0  # from then on, y- below the reference gets no gradient
    report = (out / "report.md").read_text()
    assert "turned on the negative-gradient floor at 0 nats/token (was off)" in report
    assert "guard_mitigation negative_floor" in report


def test_guard_floor_needs_a_floor_capable_loss(tiny_model_dir, tmp_path):
    with pytest.raises(AlignkitError, match="'guard_mitigation' is 'negative_floor' with loss 'ipo'"):
        parse_recipe_config(
            tiny_args(tiny_model_dir, tmp_path, loss="ipo", guard_action="mitigate", guard_mitigation="negative_floor")
        )


def test_remedies_bench_arms_differ_only_in_their_remedy(tmp_path, monkeypatch):
    """bench/remedies.py trains through the recipe's own config path (bench/_recipe.py): float32 on a CPU, and each
    arm's config is plain DPO's with only the arm's own fields changed."""
    import torch

    from alignkit.stages import dpo_config

    from .test_bench_paths import bench

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    module = bench("remedies")
    args = module.build_parser().parse_args([])
    plain = module.config(args, 0, tmp_path).to_dict()
    for name, fields in module.ARMS.items():
        cfg = module.config(args, 0, tmp_path, **fields)
        assert {k for k, v in cfg.to_dict().items() if plain[k] != v} == set(fields), name
        trl = dpo_config(cfg, tmp_path / name, cfg.preference.preference_max_steps)
        assert (trl.bf16, trl.fp16, trl.use_cpu, trl.max_steps) == (False, False, True, args.steps)
