"""Configs: every shipped YAML loads, defaults match default.yaml, bad keys/values give clear errors, and every judge
endpoint is checked and built one way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alignkit.config import config_keys, parse_recipe_config
from alignkit.endpoint import JudgeEndpoint
from alignkit.errors import AlignkitError
from alignkit.evaluation import eval_judge
from alignkit.judge.config import JudgeConfig
from alignkit.monitors.rephrase import Rephraser
from alignkit.onpolicy.rankers import JudgeRanker, ranker_from_config

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
    with pytest.raises(AlignkitError, match=r"bad\.yaml: key 'beta' is 'high'; expected float"):
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


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--warmup_ratio", "5"], r"'warmup_ratio' is 5.0; it must be in \[0, 1\)"),
        (["--warmup_ratio", "-0.1"], r"'warmup_ratio' is -0.1"),
        (["--lora_alpha", "0"], r"'lora_alpha' is 0; it must be > 0"),
        (["--lora_dropout", "1"], r"'lora_dropout' is 1.0; it must be in \[0, 1\)"),
        (["--lora_dropout", "-0.5"], r"'lora_dropout' is -0.5"),
        (["--sft_num_train_epochs", "0"], r"'sft_num_train_epochs' is 0.0; it must be > 0"),
        (["--preference_num_train_epochs", "-1"], r"'preference_num_train_epochs' is -1.0; it must be > 0"),
        (["--save_total_limit", "0"], r"'save_total_limit' is 0; it must be > 0"),
        (["--dataloader_num_workers", "-1"], r"'dataloader_num_workers' is -1; it must be >= 0"),
        (["--eval_max_new_tokens", "0"], r"'eval_max_new_tokens' is 0; it must be > 0"),
    ],
)
def test_fields_validated_since_issue_16(args, pattern):
    with pytest.raises(AlignkitError, match=pattern):
        parse_recipe_config(args)


def test_boundary_values_still_accepted():
    cfg = parse_recipe_config(["--warmup_ratio", "0", "--lora_dropout", "0.05", "--dataloader_num_workers", "0"])
    assert (cfg.run.warmup_ratio, cfg.model.lora_dropout) == (0.0, 0.05)


def test_invalid_yaml_value_names_the_file_unless_the_command_line_set_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("beta: -1\n")
    with pytest.raises(AlignkitError, match=r"^config file .*bad\.yaml: config field 'beta' is -1; it must be > 0$"):
        parse_recipe_config(["--config", str(path)])
    path.write_text("warmup_ratio: 5\n")
    with pytest.raises(AlignkitError, match=r"^config file .*bad\.yaml: config field 'warmup_ratio' is 5"):
        parse_recipe_config(["--config", str(path)])
    path.write_text("beta: 0.2\n")  # the bad value comes from the command line: the file is not to blame
    with pytest.raises(AlignkitError, match=r"^config field 'beta' is -1\.0"):
        parse_recipe_config(["--config", str(path), "--beta", "-1"])
    path.write_text("env: 3\n")
    with pytest.raises(AlignkitError, match=r"bad\.yaml: key 'env' is 3; expected a mapping"):
        parse_recipe_config(["--config", str(path)])


def test_scientific_notation_in_yaml_is_a_float(tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text("sft_learning_rate: 2e-4\npreference_learning_rate: 5.0e-7\nbeta: 1E-1\nwarmup_ratio: 0\n")
    cfg = parse_recipe_config(["--config", str(path)])
    assert (cfg.sft.sft_learning_rate, cfg.preference.preference_learning_rate) == (2e-4, 5e-7)
    assert cfg.preference.beta == 0.1 and isinstance(cfg.preference.beta, float)
    path.write_text("sft_max_steps: 1e3\n")  # an integer field stays strict
    with pytest.raises(AlignkitError, match=r"lr\.yaml: key 'sft_max_steps' is '1e3'; expected int"):
        parse_recipe_config(["--config", str(path)])
    path.write_text("beta: 2e-4x\n")
    with pytest.raises(AlignkitError, match=r"lr\.yaml: key 'beta' is '2e-4x'"):
        parse_recipe_config(["--config", str(path)])


@pytest.mark.parametrize("args", [["--config"], ["--config", "--beta", "0.2"]])
def test_config_flag_without_a_file(args):
    with pytest.raises(AlignkitError, match=r"--config needs a YAML file after it"):
        parse_recipe_config(args)


def test_removed_probe_split_keys_say_so(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("probe_heldout_split: test\n")
    with pytest.raises(AlignkitError, match=r"old\.yaml: key 'probe_heldout_split' was removed: probes always come"):
        parse_recipe_config(["--config", str(path)])
    assert not {"probe_train_split", "probe_heldout_split"} & config_keys()


def test_config_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"output_dir: caf\xe9\n")
    with pytest.raises(AlignkitError, match=r"config file .*latin1\.yaml is not UTF-8 text"):
        parse_recipe_config(["--config", str(path)])


# The three judge endpoints of a recipe (the win-rate judge, the on-policy ranker, the rephraser): each section's
# (arguments it needs first, the URL's field, the fields' prefix, its endpoint).
ENDPOINT_SECTIONS = {
    "evaluation": ([], "eval_judge_base_url", "eval_judge_", lambda cfg: cfg.evaluation.judge_endpoint),
    "ranker": (
        ["--sampling", "on_policy", "--ranker", "judge"], "ranker_path", "ranker_judge_",
        lambda cfg: cfg.preference.ranker_endpoint,
    ),
    "rephraser": ([], "probe_rephrase_base_url", "probe_rephrase_", lambda cfg: cfg.monitor.rephrase_endpoint),
}  # fmt: skip


@pytest.mark.parametrize("section", ENDPOINT_SECTIONS)
def test_every_judge_endpoint_is_checked_by_the_one_validator(section):
    before, url_field, prefix, endpoint_of = ENDPOINT_SECTIONS[section]
    url = "https://user:secret@judge.example/v1"
    message = (
        "{model} is required when {url} is a URL (https://judge.example/v1): the model name the endpoint serves, "
        "e.g. gpt-4o"
    )
    with pytest.raises(AlignkitError) as missing_model:
        parse_recipe_config([*before, f"--{url_field}", url])
    assert str(missing_model.value) == message.format(model=f"config field '{prefix}model'", url=url_field)
    with pytest.raises(AlignkitError) as runtime:  # the judge's own config: the same check under its own names
        JudgeConfig(base_url=url)
    assert str(runtime.value) == message.format(model="judge.model", url="judge.base_url")
    with_model = [*before, f"--{url_field}", url, f"--{prefix}model", "m"]
    key = rf"^config field '{prefix}api_key_env' must be the NAME of an environment variable"
    with pytest.raises(AlignkitError, match=key):
        parse_recipe_config([*with_model, f"--{prefix}api_key_env", "sk-1"])
    with pytest.raises(AlignkitError, match=rf"^config field '{url_field}' is 'judge.example/v1'; it must be "):
        parse_recipe_config([*before, f"--{url_field}", "judge.example/v1", f"--{prefix}model", "m"])
    cfg = parse_recipe_config([*with_model, f"--{prefix}api_key_env", "JUDGE_KEY"])
    assert endpoint_of(cfg) == JudgeEndpoint(url, "m", "JUDGE_KEY")


def test_evaluation_ranker_and_rephraser_are_built_from_their_sections_endpoint(tmp_path, monkeypatch):
    built = []
    from_endpoint = JudgeConfig.from_endpoint.__func__

    def recording(cls, endpoint, **options):
        built.append(endpoint)
        return from_endpoint(cls, endpoint, **options)

    monkeypatch.setattr(JudgeConfig, "from_endpoint", classmethod(recording))
    cfg = parse_recipe_config([
        "--eval_judge_base_url", "https://judge.example/v1", "--eval_judge_model", "judge-m",
        "--sampling", "on_policy", "--ranker", "judge", "--ranker_path", "local",
        "--probe_rephrase_base_url", "http://127.0.0.1:1/v1", "--probe_rephrase_model", "rewrite-m",
    ])  # fmt: skip
    judge = eval_judge(cfg)
    assert (judge.base_url, judge.model) == ("https://judge.example/v1", "judge-m")
    ranker = ranker_from_config(cfg.preference, tmp_path)
    assert isinstance(ranker, JudgeRanker) and ranker.judge.is_local
    ranker.close()
    assert built == [cfg.evaluation.judge_endpoint, cfg.preference.ranker_endpoint]
    rephraser = Rephraser.from_config(cfg.monitor, tmp_path)  # the judge's config and client at the section's endpoint
    assert (built[2].base_url, built[2].model) == ("http://127.0.0.1:1/v1", "rewrite-m") and len(built) == 3
    assert rephraser.model == "rewrite-m" and rephraser.runner.base_url == "http://127.0.0.1:1/v1"


def test_the_recipe_config_imports_no_higher_layer():
    # The config is imported by every entry point: it must not load the on-policy stage or the judge's HTTP client.
    # It imports PreflightConfig from alignkit/preflight/config.py (the one upward arrow): the package's __init__
    # must stay empty, or that import would load run/stages/models, which import alignkit.config.
    code = (
        "import sys, alignkit.config; "
        "print(sorted(m for m in sys.modules if m.startswith(('alignkit.onpolicy', 'alignkit.judge', 'openai', "
        "'alignkit.preflight', 'alignkit.stages'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['alignkit.preflight', 'alignkit.preflight.config']"
