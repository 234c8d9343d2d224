"""A rerun into a run folder reuses a stage only when it was made with the same settings (alignkit/fingerprint.py):
a changed field, a changed data file or a changed upstream stage stops the run before any work, naming what changed,
unless `--overwrite` asks for it to be trained again; `config.yaml` keeps the history of the runs."""

from __future__ import annotations

import json
import logging

import pytest
import yaml
from transformers import TrainerCallback

from alignkit.config import parse_recipe_config
from alignkit.data import load_builtin
from alignkit.errors import AlignkitError
from alignkit.fingerprint import FINGERPRINT, changed_fields, rows_digest
from alignkit.models import load_model
from alignkit.onpolicy.sampling import sample_responses
from alignkit.recipe import main, run_recipe
from alignkit.rerun import HISTORY
from alignkit.stages import STAGE_DONE, run_sft_stage


def args(model_dir, out, **overrides) -> list[str]:
    """A tiny run: 4 pairs, 2 SFT and 2 DPO steps of batch 2, probes off (they play no part here)."""
    values = {
        "model_name_or_path": model_dir, "output_dir": out, "max_train_samples": 4, "max_length": 128,
        "per_device_train_batch_size": 2, "sft_max_steps": 2, "sft_learning_rate": 1e-2, "preference_max_steps": 2,
        "preference_learning_rate": 1e-2, "logging_steps": 1, "save_steps": 1, "probe_enabled": False,
        "use_cpu": True, "cpu_threads": 1,
    } | overrides  # fmt: skip
    return [s for k, v in values.items() for s in (f"--{k}", str(v))]


def statuses(out) -> dict[str, str]:
    return {stage: v["status"] for stage, v in json.loads((out / "metrics.json").read_text()).items()}


def mtime(path) -> int:
    return path.stat().st_mtime_ns


@pytest.fixture()
def finished_run(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    run_recipe(parse_recipe_config(args(tiny_model_dir, out)))
    return out


def test_same_settings_skip_and_a_changed_field_stops_before_any_work(finished_run, tiny_model_dir, capsys):
    out = finished_run
    adapters = {stage: mtime(out / stage / "adapter" / "adapter_model.safetensors") for stage in ("sft", "preference")}
    run_recipe(parse_recipe_config(args(tiny_model_dir, out, logging_steps=2)))  # logging: not a result setting
    assert statuses(out) == {"sft": "skipped (already complete)", "preference": "skipped (already complete)"}

    config_before = (out / "config.yaml").read_text()
    with pytest.raises(SystemExit) as exit_:
        main(args(tiny_model_dir, out, sft_learning_rate=1e-6))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "stage 'sft' in" in err and "sft_learning_rate: 0.01 -> 1e-06" in err
    assert "stage 'preference' in" in err and "starts from stage 'sft', which changed" in err
    assert "--output_dir" in err and "--overwrite" in err and "Traceback" not in err
    # nothing was touched: not the models, not config.yaml
    assert (out / "config.yaml").read_text() == config_before
    assert {s: mtime(out / s / "adapter" / "adapter_model.safetensors") for s in adapters} == adapters


def test_overwrite_retrains_the_changed_stage_and_every_later_one(finished_run, tiny_model_dir, caplog):
    out = finished_run
    old_sft = (out / "sft" / "adapter" / "adapter_model.safetensors").read_bytes()
    with caplog.at_level(logging.WARNING):
        run_recipe(parse_recipe_config(args(tiny_model_dir, out, sft_learning_rate=1e-3, overwrite=True)))
    assert statuses(out) == {"sft": "trained", "preference": "trained"}
    assert "overwrite is set: these stages are trained again" in caplog.text
    assert (out / "sft" / "adapter" / "adapter_model.safetensors").read_bytes() != old_sft
    done = json.loads((out / "sft" / STAGE_DONE).read_text())
    assert done["fingerprint"]["sft_learning_rate"] == 1e-3
    # config.yaml is the latest run; the history has both runs and what changed between them
    assert yaml.safe_load((out / "config.yaml").read_text())["sft_learning_rate"] == 1e-3
    history = [json.loads(line) for line in (out / HISTORY).read_text().splitlines()]
    assert len(history) == 2 and "changed" not in history[0]
    assert history[1]["changed"]["sft_learning_rate"] == [0.01, 0.001] and history[1]["overwrite"] is True
    assert history[0]["config"]["sft_learning_rate"] == 0.01


def test_a_changed_preference_field_keeps_sft_and_names_the_field(finished_run, tiny_model_dir):
    out = finished_run
    with pytest.raises(AlignkitError) as err:
        run_recipe(parse_recipe_config(args(tiny_model_dir, out, beta=0.5)))
    assert "stage 'preference'" in str(err.value) and "beta: 0.1 -> 0.5" in str(err.value)
    assert "stage 'sft'" not in str(err.value)


def test_a_changed_data_file_is_found_by_its_digest(tiny_model_dir, tmp_path):
    rows = [{"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.", "rejected": f"It is {2 * i + 1}."}
            for i in range(4)]  # fmt: skip
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    argv = args(tiny_model_dir, out, dataset_name=data, test_fraction=0.25, sft_mode="chosen")
    run_recipe(parse_recipe_config(argv))
    for row in rows:  # the same file name, other content
        row["chosen"] += " (edited)"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = {name: (out / name).read_text() for name in ("config.yaml", HISTORY)}
    with pytest.raises(AlignkitError) as err:
        run_recipe(parse_recipe_config(argv))
    message = str(err.value)
    assert "stage 'sft'" in message and "data: 3 rows, sha256 " in message and " -> 3 rows, sha256 " in message
    assert json.loads((out / "sft" / STAGE_DONE).read_text())["status"] == "trained"  # still the old one
    # found only once the data was read, after this run had recorded its config: the record is taken back
    assert {name: (out / name).read_text() for name in records} == records


class CrashAfterSave(TrainerCallback):
    """Ends the process's training like a kill would, right after checkpoint `step` is complete on disk."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_an_interrupted_stage_is_not_resumed_with_other_settings(tiny_model_dir, tiny_tokenizer, tmp_path):
    out = tmp_path / "out"
    cfg = parse_recipe_config(args(tiny_model_dir, out, sft_max_steps=4))
    pairs = load_builtin()["train"].select(range(4))
    with pytest.raises(KeyboardInterrupt):
        run_sft_stage(load_model(cfg.model), tiny_tokenizer, pairs, cfg, out / "sft", [CrashAfterSave(2)])
    assert (out / "sft" / "checkpoint-2" / "trainer_state.json").exists() and (out / "sft" / FINGERPRINT).exists()
    assert not (out / "sft" / STAGE_DONE).exists()

    other = parse_recipe_config(args(tiny_model_dir, out, sft_max_steps=4, sft_learning_rate=1e-3))
    with pytest.raises(AlignkitError) as err:  # the run's own check, before anything is loaded
        run_recipe(other)
    assert "sft_learning_rate: 0.01 -> 0.001" in str(err.value)
    with pytest.raises(AlignkitError) as err:  # and the stage's own, for callers of the stage functions
        run_sft_stage(None, tiny_tokenizer, pairs, other, out / "sft")
    assert "(interrupted, at checkpoint-2)" in str(err.value) and "sft_learning_rate: 0.01 -> 0.001" in str(err.value)

    result = run_sft_stage(load_model(cfg.model), tiny_tokenizer, pairs, cfg, out / "sft")  # same settings: resumes
    assert result.status == "resumed from checkpoint-2" and result.steps == 4


def test_changed_fields_names_old_and_new():
    assert changed_fields({"a": 1, "b": [1, 2], "gone": 3}, {"a": 1.0, "b": (1, 2), "new": 4}) == [
        ("new", "(not recorded)", 4), ("gone", 3, "(not recorded)")
    ]  # fmt: skip
    assert rows_digest([{"a": 1}]) != rows_digest([{"a": 2}]) and rows_digest([]).startswith("0 rows")


def test_an_onpolicy_round_is_reused_only_with_the_same_settings(tiny_model_dir, tiny_tokenizer, tmp_path):
    from .test_onpolicy import run_stage

    out = tmp_path / "out"
    stage = out / "preference"
    run_stage(tiny_model_dir, out, tiny_tokenizer, onpolicy_rounds=2)
    round1 = (stage / "round-1" / "round_complete.json").read_text()
    assert json.loads(round1)["fingerprint"]["round"] == 1
    # a run that died in round 2: round 1 is finished, the stage is not
    for path in ["stage_complete.json", "round-2/round_complete.json"]:
        (stage / path).unlink()

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled although the run was refused")

    with pytest.raises(AlignkitError) as err:
        run_stage(tiny_model_dir, out, tiny_tokenizer, no_sampling, onpolicy_rounds=2, onpolicy_temperature=0.7)
    assert "onpolicy_temperature: 1.0 -> 0.7" in str(err.value) and "(interrupted" in str(err.value)
    assert (stage / "round-1" / "round_complete.json").read_text() == round1

    spy_calls = []

    def counting(model, tokenizer, prompts, **kwargs):
        spy_calls.append(len(prompts))
        return sample_responses(model, tokenizer, prompts, **kwargs)

    _, result = run_stage(tiny_model_dir, out, tiny_tokenizer, counting, onpolicy_rounds=2, onpolicy_temperature=0.7,
                          overwrite=True)  # fmt: skip
    assert len(spy_calls) == 2 and result.status == "trained"  # both rounds sampled and trained again
    marker = json.loads((stage / "round-1" / "round_complete.json").read_text())
    assert marker["fingerprint"]["onpolicy_temperature"] == 0.7

    _, again = run_stage(tiny_model_dir, out, tiny_tokenizer, no_sampling, onpolicy_rounds=2, onpolicy_temperature=0.7)
    assert again.status == "skipped (already complete)"


def test_a_study_run_is_reused_only_with_the_same_settings(tiny_model_dir, tmp_path, caplog):
    from .test_squeezing_study import load_study_recipe, tiny_args

    study_dir = tmp_path / "study"
    argv = [*tiny_args(tiny_model_dir, study_dir), "--arms", "A_near"]
    study = load_study_recipe()
    study.main(argv)
    meta = study_dir / "runs" / "s0" / "A_near.json"
    first = json.loads(meta.read_text())
    assert first["fingerprint"]["dpo_learning_rate"] == 0.01 and first["fingerprint"]["data"].startswith("4 rows")

    with pytest.raises(AlignkitError) as err:
        study.main([*argv, "--dpo_learning_rate", "0.001"])
    assert "seed 0, arm A_near" in str(err.value) and "dpo_learning_rate: 0.01 -> 0.001" in str(err.value)
    assert "--study_dir" in str(err.value) and json.loads(meta.read_text()) == first

    caplog.set_level("WARNING", logger="alignkit")
    study.main([*argv, "--dpo_learning_rate", "0.001", "--overwrite", "true"])
    assert "overwrite is set: these runs are run again" in caplog.text
    assert json.loads(meta.read_text())["fingerprint"]["dpo_learning_rate"] == 0.001

    caplog.clear()
    study.main([*argv, "--dpo_learning_rate", "0.001", "--cpu_threads", "2"])  # speed only: reused
    assert "1 of 1 runs already finished" in caplog.text


def test_the_calibration_bench_reuses_a_run_only_with_the_same_settings(tmp_path):
    import argparse
    import sys

    from .conftest import load_bench

    module = load_bench("detector_calibration")
    sys.modules.pop("detector_calibration", None)
    args = argparse.Namespace(seeds=[0], conditions=["null_sft", "far_lr1e-4"], steps=24, batch=2, probes=8,
                              probe_every=0)  # fmt: skip
    per_run = tmp_path / "per_run"
    per_run.mkdir()
    (per_run / "null_sft_s0.json").write_text(json.dumps({"fingerprint": module.run_fingerprint(args, "null_sft", 0)}))
    legacy = {"condition": "far_lr1e-4", "kind": "far", "learning_rate": 1e-4, "seed": 0, "steps": 24}
    (per_run / "far_lr1e-4_s0.json").write_text(json.dumps(legacy))  # written before runs kept a fingerprint
    assert module.stale_runs(args, tmp_path) == []
    args.batch, args.steps = 4, 30
    stale = dict(module.stale_runs(args, tmp_path))
    assert stale[per_run / "null_sft_s0.json"] == "  steps: 24 -> 30\n  batch: 2 -> 4"
    assert stale[per_run / "far_lr1e-4_s0.json"] == "  steps: 24 -> 30"  # only what it recorded


def test_preflight_scores_are_reused_only_for_the_same_pairs_and_model(tiny_model_dir, tiny_tokenizer, tmp_path,
                                                                         caplog):  # fmt: skip
    from alignkit.data import load_preference_data
    from alignkit.preflight.run import run_preflight

    folder = tmp_path / "preflight"
    for max_length, expected in ((128, None), (128, "reusing its scores"), (96, "max_length: 128 -> 96")):
        cfg = parse_recipe_config(args(tiny_model_dir, tmp_path / "run", max_length=max_length))
        data = load_preference_data(cfg.data, seed=cfg.run.seed)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            run_preflight(cfg, tiny_tokenizer, data["train"], None, folder, None)
        if expected:
            assert expected in caplog.text
    assert json.loads((folder / "preflight_complete.json").read_text())["fingerprint"]["max_length"] == 96


def test_the_guard_state_is_one_record_saved_and_restored_whole(tmp_path):
    from dataclasses import asdict, fields

    from alignkit.monitors.stage_files import GUARD_STATE, GuardState, load_guard_state, save_guard_state

    state = GuardState(stage="preference", offset=8, start_metrics={"mech/off_target_fall": 0.0}, above=True,
                       guard_acted=True, stopped_early=True, sft_weight=1.0, probe_keep=[0, 2],
                       events=[{"stage": "preference", "step": 2}])  # fmt: skip
    save_guard_state(tmp_path, state)
    assert set(json.loads((tmp_path / GUARD_STATE).read_text())) == {f.name for f in fields(GuardState)}
    assert load_guard_state(tmp_path) == state and load_guard_state(tmp_path / "none") is None
    # a file from before a field existed: that field takes its default
    older = {k: v for k, v in asdict(state).items() if k not in ("negative_floor", "probe_keep")}
    (tmp_path / GUARD_STATE).write_text(json.dumps(older))
    assert load_guard_state(tmp_path).probe_keep is None
    # a field this version does not know: refused, not restored in part
    (tmp_path / GUARD_STATE).write_text(json.dumps({**asdict(state), "future_field": 1}))
    with pytest.raises(AlignkitError, match="field 'future_field'"):
        load_guard_state(tmp_path)
