"""The one dataclass command line (alignkit.cli.parse_dataclasses) as the evaluator and the dynamics CLI use it: a
prefixed config (`--judge_model`, a `judge:` section in YAML), aliases, and errors that name the file and key."""

from __future__ import annotations

import pytest

from alignkit.cli import parse_dataclasses
from alignkit.dynamics.cli import parse_args as dynamics_args
from alignkit.errors import AlignkitError
from alignkit.judge.cli import parse_args as win_rate_args
from alignkit.judge.config import JudgeConfig


def test_prefixed_flags_dashes_and_the_judge_alias():
    run, config, judge = win_rate_args(
        ["--candidate", "c", "--baseline", "b", "--judge", "http://h/v1", "--judge-model", "m",
         "--judge_concurrency", "3", "--max-new-tokens", "7", "--do-sample", "--quiet"]
    )  # fmt: skip
    assert (run.candidate, run.baseline, run.quiet) == ("c", "b", True)
    assert config.max_new_tokens == 7 and config.do_sample and config.temperature == 0.7
    assert isinstance(judge, JudgeConfig) and (judge.base_url, judge.model, judge.concurrency) == (
        "http://h/v1",
        "m",
        3,
    )
    assert judge.temperature == 0.0  # the judge's own temperature: a prefix keeps the two apart


@pytest.mark.parametrize(
    "judge, pattern",
    [
        ("judge_model: x\njudge:\n  model: y\n", r"e\.yaml: 'judge: model' and 'judge_model' are the same key"),
        ("judge: local\n", r"e\.yaml: key 'judge' is 'local'; expected a mapping"),
        ("judge:\n  concurrency: many\n", r"e\.yaml: key 'judge_concurrency' is 'many'; expected int"),
    ],
)
def test_a_bad_judge_section_names_the_file_and_key(tmp_path, judge, pattern):
    path = tmp_path / "e.yaml"
    path.write_text("candidate: c\nbaseline: b\n" + judge)
    with pytest.raises(AlignkitError, match=pattern):
        win_rate_args(["--config", str(path)])


def test_a_check_of_a_prefixed_config_names_the_file_that_set_it(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("candidate: c\nbaseline: b\njudge:\n  base_url: http://h/v1\n")  # a URL without a model
    with pytest.raises(AlignkitError, match=r"e\.yaml: judge\.model is required"):
        win_rate_args(["--config", str(path)])
    with pytest.raises(AlignkitError, match=r"^--candidate is required"):
        win_rate_args(["--baseline", "b"])


def test_unknown_flag_suggests_the_prefixed_name():
    with pytest.raises(AlignkitError, match=r"unknown command-line argument '--judge-modle' \(did you mean"):
        win_rate_args(["--candidate", "c", "--baseline", "b", "--judge-modle", "m"])


def test_dynamics_config_from_flags_and_yaml(tmp_path):
    config = dynamics_args(
        ["--prompt", "p", "--response", "r", "--loss", "sft", "--chosen", "c", "--kernel-probes", "0"]
    )
    assert (config.loss, config.kernel_probes, config.update_prompt, config.check) == ("sft", 0, None, False)
    path = tmp_path / "d.yaml"
    path.write_text("prompt: p\nresponse: r\nchosen: c\nrejected: d\nlr: 1e-3\ntop: 3\n")
    config = dynamics_args(["--config", str(path), "--top", "4"])
    assert (config.lr, config.top, config.loss) == (1e-3, 4, "dpo")
    with pytest.raises(AlignkitError, match=r"--loss dpo needs --rejected"):
        dynamics_args(["--prompt", "p", "--response", "r", "--chosen", "c"])
    with pytest.raises(AlignkitError, match=r"d\.yaml: key 'loss' is 'kto'"):
        path.write_text("prompt: p\nresponse: r\nloss: kto\n")
        dynamics_args(["--config", str(path)])
    with pytest.raises(AlignkitError, match=r"--top must be >= 1"):
        dynamics_args(["--prompt", "p", "--response", "r", "--loss", "negative", "--rejected", "d", "--top", "0"])


def test_help_names_the_program_and_lists_config(capsys):
    with pytest.raises(SystemExit) as done:
        parse_dataclasses((JudgeConfig,), ["--help"], prefixes={JudgeConfig: "judge_"}, prog="judge-thing")
    out = capsys.readouterr().out
    assert done.value.code == 0 and out.startswith("usage: judge-thing") and "--config FILE.yaml" in out
    assert "--judge_timeout_s" in out and "--judge-timeout-s" in out
