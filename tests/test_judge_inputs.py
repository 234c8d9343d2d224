"""Inputs, configs, the cache and the CLI's error path: bad input names file, line and field; no tracebacks."""

from __future__ import annotations

import json

import pytest

from alignkit.errors import AlignkitError
from alignkit.judge import JudgeConfig, WinRateConfig
from alignkit.judge.cache import JudgmentCache, cache_key
from alignkit.judge.cli import main, parse_args
from alignkit.judge.config import redact_url
from alignkit.judge.inputs import load_prompts, prompt_key, read_outputs_jsonl


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"prompt": "a", "output": "x"}', "{not json", '{"prompt": "b", "output": "y"}'], r":2: invalid JSON"),
        (['{"prompt": "a", "output": "x"}', '["a", "x"]'], r":2: expected a JSON object"),
        (['{"prompt": "a", "output": "x"}', '{"prompt": "b"}'], r":2: missing field 'output'"),
        (['{"output": "x"}'], r":1: missing field 'prompt'"),
        (['{"prompt": 3, "output": "x"}'], r":1: field 'prompt' must be a string or"),
        (['{"prompt": [{"role": "user"}], "output": "x"}'], r":1: field 'prompt' must be"),
        (['{"prompt": "a", "output": {"text": "x"}}'], r":1: field 'output' must be a string"),
        (
            ['{"prompt": "a", "output": "x"}', "", '{"prompt": "a", "output": "z"}'],
            r":3: field 'prompt' repeats .* line 1",
        ),
        ([], r"has no rows"),
    ],
)
def test_bad_outputs_jsonl_names_file_line_and_field(tmp_path, lines, message):
    path = write_lines(tmp_path / "outs.jsonl", lines)
    with pytest.raises(AlignkitError, match=message) as error:
        read_outputs_jsonl(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("reader", [read_outputs_jsonl, load_prompts])
def test_non_utf8_outputs_and_prompts_name_the_line(tmp_path, reader):
    text = '{"prompt": "a", "output": "x"}\n{"prompt": "caf\u00e9", "output": "y"}\n'
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(text.encode("latin-1"))  # a file saved in Latin-1: no traceback, the file and its line
    with pytest.raises(AlignkitError, match=r"latin1\.jsonl:2: not UTF-8 text \(byte 0xe9 at column \d+\)"):
        reader(path)


def test_outputs_jsonl_accepts_aliases_and_chat_forms(tmp_path):
    path = write_lines(
        tmp_path / "o.jsonl",
        [
            json.dumps({"instruction": "q1", "response": "r1"}),
            json.dumps(
                {"prompt": [{"role": "user", "content": "q2"}], "output": [{"role": "assistant", "content": "r2"}]}
            ),
        ],
    )
    rows = read_outputs_jsonl(path)
    assert [r["output"] for r in rows] == ["r1", "r2"]
    assert prompt_key(rows[1]["prompt"]) == "q2" == prompt_key("q2")  # chat and plain forms of a prompt match


def test_prompts_from_jsonl_list_and_builtin(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", ['{"prompt": "one"}', '{"instruction": "two"}'])
    assert load_prompts(str(path)) == ["one", "two"]
    assert load_prompts(["x", [{"role": "user", "content": "y"}]])[1][0]["content"] == "y"
    with pytest.raises(AlignkitError, match=r"p2.jsonl:1: missing field 'prompt'"):
        load_prompts(str(write_lines(tmp_path / "p2.jsonl", ['{"text": "one"}'])))
    builtin = load_prompts(None)
    assert len(builtin) > 10 and builtin[0][0]["role"] == "user"


def test_judge_config_validation():
    assert JudgeConfig().is_local and JudgeConfig().model  # local judge gets the server's model alias
    with pytest.raises(AlignkitError, match="judge.model is required"):
        JudgeConfig(base_url="https://api.openai.com/v1")
    with pytest.raises(AlignkitError, match="judge.base_url is 'api.openai.com'; it must be 'local', 'verifier' or"):
        JudgeConfig(base_url="api.openai.com", model="m")
    with pytest.raises(AlignkitError, match="NAME of an environment variable"):
        JudgeConfig(base_url="http://x/v1", model="m", api_key_env="sk-proj-abc123")
    with pytest.raises(AlignkitError, match="concurrency"):
        JudgeConfig(concurrency=0)
    with pytest.raises(AlignkitError, match="limit"):
        WinRateConfig(limit=0)


def test_api_key_is_read_from_the_environment_and_never_described(monkeypatch):
    monkeypatch.setenv("ALIGNKIT_TEST_KEY", "sk-test-very-secret")
    config = JudgeConfig(base_url="https://user:pw@example.com/v1?key=abc", model="m", api_key_env="ALIGNKIT_TEST_KEY")
    assert config.api_key() == "sk-test-very-secret"
    described = json.dumps(config.describe())
    assert "sk-test-very-secret" not in described and "pw" not in described and "abc" not in described
    assert redact_url("https://user:pw@example.com:8443/v1?key=abc") == "https://example.com:8443/v1"
    monkeypatch.delenv("ALIGNKIT_TEST_KEY")
    with pytest.raises(AlignkitError, match="ALIGNKIT_TEST_KEY: that environment variable is not set"):
        config.api_key()


def test_cache_survives_a_torn_last_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    cache = JudgmentCache(path)
    cache.put("k1", {"status": "ok", "verdict": "A"})
    cache.close()
    with open(path, "a") as f:
        f.write('{"key": "k2", "status": "o')  # killed mid-write
    cache = JudgmentCache(path)
    assert "k1" in cache and "k2" not in cache and cache.skipped_lines == 1
    cache.put("k3", {"status": "ok", "verdict": "B"})  # must start on a fresh line, not glue onto the torn one
    cache.close()
    reloaded = JudgmentCache(path)
    assert reloaded.get("k3")["verdict"] == "B" and len(reloaded) == 2


def test_cache_key_covers_order_model_template_and_params():
    base = dict(judge_model="m", template_sha256="t", params={"temperature": 0}, instruction="q")
    k = cache_key(**base, output_a="x", output_b="y")
    assert k != cache_key(**base, output_a="y", output_b="x")  # order
    assert k != cache_key(**{**base, "judge_model": "m2"}, output_a="x", output_b="y")
    assert k != cache_key(**{**base, "template_sha256": "t2"}, output_a="x", output_b="y")
    assert k != cache_key(**{**base, "params": {"temperature": 1}}, output_a="x", output_b="y")
    assert k == cache_key(**base, output_a="x", output_b="y")


def test_cli_prints_alignkit_errors_without_traceback(tmp_path, capsys):
    good = write_lines(tmp_path / "good.jsonl", ['{"prompt": "a", "output": "x"}'])
    bad = write_lines(tmp_path / "bad.jsonl", ['{"prompt": "a", "output": "x"}', '{"prompt": "b", "outptu": "y"}'])
    code = main(["--candidate", str(good), "--baseline", str(bad), "--judge-base-url", "http://127.0.0.1:9/v1",
                 "--judge-model", "m", "--output-dir", str(tmp_path / "out"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}:2: missing field 'output'" in err and "Traceback" not in err


def test_cli_missing_prompt_in_baseline_is_named(tmp_path, capsys):
    cand = write_lines(tmp_path / "c.jsonl", ['{"prompt": "a", "output": "x"}', '{"prompt": "b", "output": "y"}'])
    base = write_lines(tmp_path / "b.jsonl", ['{"prompt": "a", "output": "z"}'])
    code = main(["--candidate", str(cand), "--baseline", str(base), "--judge", "http://127.0.0.1:9/v1",
                 "--judge-model", "m", "--output-dir", str(tmp_path / "out"), "--quiet"])  # fmt: skip
    assert code == 2
    assert (
        "b.jsonl: field 'prompt': no row for 1 of the 2 evaluation prompts (first: #1 'b')" in capsys.readouterr().err
    )


def test_cli_flags_and_yaml_config(tmp_path):
    config = tmp_path / "wr.yaml"
    config.write_text("candidate: c.jsonl\nbaseline: b.jsonl\nlimit: 5\njudge:\n  model: gpt-4o\n  concurrency: 3\n")
    run, wr, judge = parse_args(["--config", str(config), "--judge", "https://api.openai.com/v1", "--limit", "7"])
    assert run.candidate == "c.jsonl" and wr.limit == 7  # the flag overrides the file
    assert judge.base_url == "https://api.openai.com/v1" and judge.model == "gpt-4o" and judge.concurrency == 3
    config.write_text("candidate: c\nbaseline: b\njudge:\n  modle: x\n")
    with pytest.raises(AlignkitError, match=r"wr\.yaml: unknown key 'judge_modle'"):
        parse_args(["--config", str(config)])
    _, _, judge = parse_args(["--candidate", "c", "--baseline", "b"])
    assert (
        judge.is_local and judge.template == "pairwise_small"
    )  # 'auto' picks the template the small judge can follow
    _, _, judge = parse_args(["--candidate", "c", "--baseline", "b", "--judge", "http://h/v1", "--judge-model", "m"])
    assert judge.template == "pairwise"


def test_load_model_from_folder_and_from_a_peft_adapter(tiny_model_dir, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from alignkit.judge.inputs import load_model

    model, tokenizer = load_model(tiny_model_dir)
    assert model.config.hidden_size == 32 and tokenizer.pad_token_id is not None
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapter = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "adapter")  # records base_model_name_or_path = tiny_model_dir
    loaded, _ = load_model(tmp_path / "adapter")  # the adapter comes merged into its base
    ids = torch.tensor([[5, 17, 42, 99]])
    torch.testing.assert_close(loaded(ids).logits, adapter(ids).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(AlignkitError, match="does not exist"):
        load_model(tmp_path / "no-such-model")


def test_load_model_that_cannot_be_fetched_names_the_spec(monkeypatch):
    import alignkit.models
    from alignkit.judge.inputs import load_model

    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(alignkit.models.AutoTokenizer, "from_pretrained", unreachable)
    monkeypatch.setattr(alignkit.models.AutoModelForCausalLM, "from_pretrained", unreachable)
    with pytest.raises(AlignkitError, match=r"could not load the tokenizer of model 'someone/some-model': .*connect"):
        load_model("someone/some-model")  # a hub id: an OSError from the hub, not a traceback
    cfg = alignkit.models.ModelConfig(model_name_or_path="someone/some-model")
    with pytest.raises(AlignkitError, match=r"could not load model 'someone/some-model': .*connect"):
        alignkit.models.load_model(cfg)
