"""Configs: every shipped YAML loads, defaults match default.yaml, and bad keys/values give clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from alignkit.config import config_keys, parse_recipe_config
from alignkit.errors import AlignkitError

RECIPES = Path(__file__).parents[1] / "recipes"
RECIPE_YAMLS = sorted((RECIPES / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPE_YAMLS, ids=lambda p: p.name)
def test_every_recipe_yaml_loads(path):
    keys = set(yaml.safe_load(path.read_text()))
    assert keys <= config_keys(), f"{path.name} has keys that are not config fields: {keys - config_keys()}"
    cfg = parse_recipe_config(["--config", str(path)])
    flat = cfg.to_dict()
    for key, value in yaml.safe_load(path.read_text()).items():
        assert flat[key] == value, key


def test_default_yaml_is_the_dataclass_defaults():
    assert parse_recipe_config(["--config", str(RECIPES / "configs" / "default.yaml")]) == parse_recipe_config([])


def test_cli_overrides_yaml():
    cfg = parse_recipe_config(
        ["--config", str(RECIPES / "configs" / "ipo.yaml"), "--beta", "0.3", "--use_lora", "false"]
    )
    assert (cfg.preference.loss, cfg.preference.beta, cfg.model.use_lora) == ("ipo", 0.3, False)
    assert cfg.preference.trl_loss_type == "ipo"
    assert parse_recipe_config(["--loss", "dpo"]).preference.trl_loss_type == "sigmoid"


def test_unknown_yaml_key_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("loss: dpo\nbeta_value: 0.2\n")
    with pytest.raises(AlignkitError, match=r"bad\.yaml: unknown key 'beta_value'"):
        parse_recipe_config(["--config", str(path)])
    path.write_text("sft_mod: chosen\n")
    with pytest.raises(AlignkitError, match=r"did you mean 'sft_mode'"):
        parse_recipe_config(["--config", str(path)])


def test_unknown_cli_argument():
    with pytest.raises(AlignkitError, match=r"unknown command-line argument '--bta'.*'--beta'"):
        parse_recipe_config(["--bta", "0.2"])


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--sft_mode", "both"], r"'sft_mode' is 'both'; it must be one of: extended, chosen, none"),
        (["--loss", "kto"], r"'loss' is 'kto'"),
        (["--beta", "0"], r"'beta' is 0.0; it must be > 0"),
        (["--preference_max_steps", "0"], r"'preference_max_steps' is 0"),
        (["--probe_families", "chosen", "vibes"], r"'probe_families' has unknown families \['vibes'\]"),
        (["--guard_action", "panic"], r"guard_action"),
        (["--cpu_threads", "-1"], r"'cpu_threads' is -1; it must be >= 0"),
        (["--probe_generate_batch_size", "0"], r"'probe_generate_batch_size' is 0; it must be >= 1"),
    ],
)
def test_invalid_values_name_the_field(args, pattern):
    with pytest.raises(AlignkitError, match=pattern):
        parse_recipe_config(args)


def test_yaml_value_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sft_mode: both\n")
    with pytest.raises(AlignkitError, match=r"sft_mode"):
        parse_recipe_config(["--config", str(path)])
    path.write_text("beta: high\n")
    with pytest.raises(AlignkitError, match=r"bad\.yaml: key 'beta' is 'high'; expected <class 'float'>"):
        parse_recipe_config(["--config", str(path)])
    path.write_text("lora_target_modules: q_proj\n")
    with pytest.raises(AlignkitError, match=r"key 'lora_target_modules' is 'q_proj'; expected list\[str\]"):
        parse_recipe_config(["--config", str(path)])
    path.write_text("- just\n- a list\n")
    with pytest.raises(AlignkitError, match=r"bad\.yaml must be a mapping"):
        parse_recipe_config(["--config", str(path)])
    with pytest.raises(AlignkitError, match=r"missing\.yaml does not exist"):
        parse_recipe_config(["--config", str(tmp_path / "missing.yaml")])


def test_resolved_config_round_trips(tmp_path):
    cfg = parse_recipe_config(["--loss", "ipo", "--lora_target_modules", "q_proj", "v_proj"])
    cfg.save_yaml(tmp_path / "config.yaml")
    assert parse_recipe_config(["--config", str(tmp_path / "config.yaml")]) == cfg
