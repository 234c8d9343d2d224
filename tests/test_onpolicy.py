"""On-policy preference stage on a tiny model: pairs from the policy's own samples, ties, resume, the reference model,
the rankers (verifier, callable, judge, reward model) and the recipe's dispatch."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForSequenceClassification, TrainerCallback

import alignkit.onpolicy.collect as collect_module
from alignkit.config import parse_recipe_config
from alignkit.data.builtin import builtin_rows
from alignkit.errors import AlignkitError
from alignkit.onpolicy import (
    JudgeRanker,
    RewardModelRanker,
    build_pairs,
    concat_adapters,
    load_callable,
    run_onpolicy_preference_stage,
)
from alignkit.onpolicy.rankers import check_scores

from .test_recipe import run_recipe_in_process, tiny_args

RANKER = "tests.test_onpolicy:length_ranker"
IDS = torch.tensor([[5, 17, 42, 99, 150, 7, 3, 60]])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's ops are far too small to split over threads: with the 2 shared cores busy, 2 threads made a
    training step ~20x slower (0.33 s vs 0.015 s) than 1. Restored afterwards for the other test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def length_ranker(prompts, candidates, rows):
    """Test ranker: longer is better; capitals all tie (constant score); advice cannot be scored (None)."""
    scores = []
    for cands, row in zip(candidates, rows):
        if row["task"] == "capitals":
            scores.append([1.0] * len(cands))
        elif row["task"] == "advice":
            scores.append([None] * len(cands))
        else:
            scores.append([float(len(c)) for c in cands])
    return scores


def two_argument_ranker(prompts, candidates):
    return [[float(c.count("e")) for c in cands] for cands in candidates]


def sequence_logp(model) -> float:
    with torch.no_grad():
        logits = model(IDS).logits.float()
    return logits[:, :-1].log_softmax(-1).gather(-1, IDS[:, 1:, None]).sum().item()


# --- pairs, callables, scores


def test_build_pairs_counts_ties_and_unscored():
    rows = [{"prompt": "a", "id": 1}, {"prompt": "b", "id": 2}, {"prompt": "c", "id": 3}, {"prompt": "d", "id": 4}]
    candidates = [["x", "yy", "z"], ["p", "q"], ["s", "t"], ["same", "same"]]
    scores = [[0.5, 1.0, 0.0], [1.0, 1.0], [None, 2.0], [0.0, 1.0]]
    records, counts = build_pairs(rows, candidates, scores)
    assert counts == {"pair": 1, "tie": 2, "unscored": 1}
    assert (records[0]["chosen_index"], records[0]["rejected_index"]) == (1, 2)
    assert [r["status"] for r in records] == ["pair", "tie", "unscored", "tie"]  # identical texts are a tie


def test_load_callable(tmp_path):
    assert load_callable(RANKER) is length_ranker
    two = load_callable("tests.test_onpolicy:two_argument_ranker")  # called without the rows
    assert two(["p"], [["e", "eee"]], [{}]) == [[1.0, 3.0]]
    path = tmp_path / "my_ranker.py"
    path.write_text("def score(prompts, candidates, rows):\n    return [[1.0] * len(c) for c in candidates]\n")
    assert load_callable(f"{path}:score")(["p"], [["a", "b"]], [{}]) == [[1.0, 1.0]]
    for spec, message in [
        ("no_such_module_xyz:f", "cannot import"),
        ("tests.test_onpolicy:nope", "has no function 'nope'"),
        (f"{tmp_path}/missing.py:f", "does not exist"),
        ("justaname", "expected 'module:function'"),
    ]:
        with pytest.raises(AlignkitError, match=message):
            load_callable(spec)


def test_check_scores():
    assert check_scores([[1, float("nan"), None]], [["a", "b", "c"]], "r") == [[1.0, None, None]]
    with pytest.raises(AlignkitError, match="returned 2 score lists for 1 prompts"):
        check_scores([[1.0], [2.0]], [["a"]], "r")
    with pytest.raises(AlignkitError, match="for 2 candidates"):
        check_scores([[1.0]], [["a", "b"]], "r")
    with pytest.raises(AlignkitError, match="is not a number"):
        check_scores([["good", 1.0]], [["a", "b"]], "r")


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["--sampling", "online"], r"'sampling' is 'online'"),
        (["--onpolicy_num_samples", "1"], r"a pair needs at least 2 samples"),
        (["--onpolicy_mix_ratio", "1.0"], r"'onpolicy_mix_ratio' is 1.0"),
        (["--onpolicy_reference", "moving"], r"'onpolicy_reference' is 'moving'"),
        (["--sampling", "on_policy", "--ranker", "callable"], r"ranker 'callable' needs ranker_path"),
        (["--sampling", "on_policy", "--ranker", "callable", "--ranker_path", "mod.f"], r"'module:function'"),
        (["--sampling", "on_policy", "--ranker", "judge", "--ranker_path", "https://x/v1"], r"ranker_judge_model"),
        (["--sampling", "on_policy", "--ranker", "judge", "--ranker_path", "gpt-4o"], r"'local' or an OpenAI"),
        (["--sampling", "on_policy", "--onpolicy_rounds", "3", "--preference_max_steps", "2"], r"fewer than"),
        (["--sampling", "on_policy", "--generation_backend", "vllm"], r"generation_backend 'vllm' needs"),
    ],
)
def test_invalid_onpolicy_config(args, pattern):
    with pytest.raises(AlignkitError, match=pattern):
        parse_recipe_config(args)


def test_concat_adapters_equals_merging_in_turn(tiny_model_dir, tmp_path):
    """Two 'updated' rounds (adapter 2 trained on the merge of adapter 1) == one combined adapter of twice the rank."""
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    dirs = []
    for i in range(2):
        torch.manual_seed(i)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.5)  # B starts at 0; make the adapter do something
        model.save_pretrained(tmp_path / f"a{i}")
        dirs.append(tmp_path / f"a{i}")
    in_turn = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    for d in dirs:
        in_turn = PeftModel.from_pretrained(in_turn, d).merge_and_unload()
    combined = concat_adapters(dirs, tmp_path / "combined")
    once = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), combined).merge_and_unload()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.testing.assert_close(once(IDS).logits, in_turn(IDS).logits, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(base(IDS).logits, in_turn(IDS).logits, atol=1e-3)


# --- the stage on a tiny model


class ReferenceProbe(TrainerCallback):
    """Records log π_ref of a fixed sequence when each round's training begins (LoRA: the adapter disabled)."""

    def __init__(self):
        self.logps: list[float] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        with model.disable_adapter():
            self.logps.append(sequence_logp(model))


class SamplingSpy:
    """Wraps `sample_responses`: remembers what each round sampled and which policy it sampled from."""

    def __init__(self, real):
        self.real = real
        self.calls: list[dict] = []

    def __call__(self, model, tokenizer, prompts, **kwargs):
        samples = self.real(model, tokenizer, prompts, **kwargs)
        self.calls.append({"policy_logp": sequence_logp(model), "samples": samples})
        return samples


def stage_rows() -> Dataset:
    """12 prompts: 4 capitals (the test ranker ties them), 2 advice (unscored), 6 arithmetic (ranked by length)."""
    rows = builtin_rows()
    picked = [r for r in rows if r["task"] == "capitals"][:4] + [r for r in rows if r["task"] == "advice"][:2]
    picked += [r for r in rows if r["task"] == "arithmetic"][:6]
    return Dataset.from_list(picked)


def stage_cfg(model_dir, out, **overrides):
    args = {"sampling": "on_policy", "ranker": "callable", "ranker_path": RANKER, "onpolicy_rounds": 2,
            "onpolicy_prompts_per_round": 12, "onpolicy_num_samples": 3, "onpolicy_max_new_tokens": 8,
            "preference_max_steps": 4, "probe_enabled": False, "sft_mode": "none", **overrides}  # fmt: skip
    return parse_recipe_config(tiny_args(model_dir, out, **args))


def run_stage(model_dir, out, tokenizer, spy=None, callbacks=(), **overrides) -> tuple:
    cfg = stage_cfg(model_dir, out, **overrides)
    with pytest.MonkeyPatch.context() as mp:
        if spy is not None:
            mp.setattr(collect_module, "sample_responses", spy)
        result = run_onpolicy_preference_stage(tokenizer, stage_rows(), cfg, out / "preference", [], callbacks)
    return cfg, result


@pytest.fixture(scope="module", params=["fixed", "updated"])
def reference_run(request, tiny_model_dir, tiny_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"onpolicy-{request.param}")
    spy, probe = SamplingSpy(collect_module.sample_responses), ReferenceProbe()
    _, result = run_stage(tiny_model_dir, out, tiny_tokenizer, spy, [probe], onpolicy_reference=request.param)
    return {"mode": request.param, "out": out, "result": result, "spy": spy, "probe": probe}


def test_pairs_come_from_the_policys_own_samples(reference_run, tiny_model_dir):
    out, spy = reference_run["out"], reference_run["spy"]
    assert len(spy.calls) == 2  # one sampling pass per round
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert spy.calls[0]["policy_logp"] == pytest.approx(sequence_logp(base))  # round 1 samples the start model
    # round 2 samples the policy that round 1 trained, not the start model
    round1 = PeftModel.from_pretrained(base, out / "preference" / "round-1" / "adapter")
    assert spy.calls[1]["policy_logp"] == pytest.approx(sequence_logp(round1), abs=1e-4)
    assert abs(spy.calls[1]["policy_logp"] - spy.calls[0]["policy_logp"]) > 1e-3
    for r, call in enumerate(spy.calls, start=1):
        records = [json.loads(line) for line in (out / "preference" / f"round-{r}" / "pairs.jsonl").open()]
        assert [rec["candidates"] for rec in records] == call["samples"]
        for rec in records:
            if rec["status"] == "pair":
                chosen, rejected = rec["candidates"][rec["chosen_index"]], rec["candidates"][rec["rejected_index"]]
                assert len(chosen) == max(map(len, rec["candidates"])) and len(rejected) == min(
                    map(len, rec["candidates"])
                )


def test_ties_and_unscored_prompts_are_skipped_and_counted(reference_run):
    out, result = reference_run["out"], reference_run["result"]
    expected = {"pair": 0, "tie": 0, "unscored": 0}
    for r in (1, 2):
        for rec in map(json.loads, (out / "preference" / f"round-{r}" / "pairs.jsonl").open()):
            scores = [s for s in rec["scores"] if s is not None]
            status = "unscored" if len(scores) < 2 else "tie" if len(set(scores)) == 1 else "pair"
            assert rec["status"] == status
            expected[status] += 1
            if rec["task"] == "capitals":
                assert status == "tie"
            if rec["task"] == "advice":
                assert status == "unscored"
    assert expected["tie"] >= 8 and expected["unscored"] == 4  # 4 capitals and 2 advice prompts per round
    rows = result.rows
    assert (rows["tied_prompts"], rows["unscored_prompts"], rows["on_policy_pairs"]) == (
        expected["tie"], expected["unscored"], expected["pair"]
    )  # fmt: skip
    assert rows["prompts"] == 24 and result.steps == 4


def test_reference_fixed_or_updated(reference_run):
    """fixed: the reference (adapter disabled) is the start model in both rounds; updated: round 2's reference is
    round 1's policy. TRL's logged rewards agree: at the first step of round 2 policy == reference only if updated."""
    logps, out = reference_run["probe"].logps, reference_run["out"]
    assert len(logps) == 2
    history = json.loads((out / "preference" / "metrics.json").read_text())
    first_round2 = next(e for e in history if e.get("round") == 2 and "rewards/chosen" in e)
    assert first_round2["step"] == 1
    if reference_run["mode"] == "fixed":
        assert logps[1] == logps[0]  # bit for bit: the SFT weights are never touched
        assert abs(first_round2["rewards/chosen"]) > 1e-4
    else:
        assert abs(logps[1] - logps[0]) > 1e-3
        assert abs(first_round2["rewards/chosen"]) < 1e-5


def test_stage_weights_reproduce_the_trained_policy(reference_run, tiny_model_dir):
    """The stage's single `weights` folder applied to the start model == the policy after the last round."""
    out, result = reference_run["out"], reference_run["result"]
    final = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), result.weights)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rounds = [out / "preference" / f"round-{r}" / "adapter" for r in (1, 2)]
    for adapter in rounds if reference_run["mode"] == "updated" else rounds[-1:]:
        policy = PeftModel.from_pretrained(policy, adapter).merge_and_unload()
    assert sequence_logp(final.merge_and_unload()) == pytest.approx(sequence_logp(policy), abs=1e-4)


def test_rounds_resume_from_saved_pairs(reference_run, tiny_model_dir, tiny_tokenizer, tmp_path, caplog):
    if reference_run["mode"] != "fixed":
        pytest.skip("one reference mode is enough")
    out = tmp_path / "out"
    shutil.copytree(reference_run["out"], out)
    stage = out / "preference"
    pairs_before = (stage / "round-2" / "pairs.jsonl").read_text()
    round1_marker = (stage / "round-1" / "round_complete.json").read_text()
    # a crash after round 2's sampling and ranking, before its training finished
    for path in ["stage_complete.json", "adapter", "round-2/round_complete.json", "round-2/adapter"]:
        shutil.rmtree(stage / path) if (stage / path).is_dir() else (stage / path).unlink()
    for checkpoint in (stage / "round-2").glob("checkpoint-*"):
        shutil.rmtree(checkpoint)

    def no_sampling(*args, **kwargs):
        raise AssertionError("a finished round or saved pairs must not be sampled again")

    with caplog.at_level(logging.WARNING):
        _, result = run_stage(tiny_model_dir, out, tiny_tokenizer, no_sampling)
    assert "round 1 already complete" in caplog.text
    assert "reusing the ranked samples" in caplog.text
    assert (stage / "round-2" / "pairs.jsonl").read_text() == pairs_before
    assert (stage / "round-1" / "round_complete.json").read_text() == round1_marker
    assert result.status == "resumed after round 1" and result.steps == 4
    assert result.rows == reference_run["result"].rows

    # a crash during ranking: the samples are kept and ranked again, still without sampling
    for path in ["stage_complete.json", "round-2/round_complete.json", "round-2/pairs.jsonl"]:
        (stage / path).unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run_stage(tiny_model_dir, out, tiny_tokenizer, no_sampling)
    assert "reusing the samples" in caplog.text
    assert (stage / "round-2" / "pairs.jsonl").read_text() == pairs_before

    # a finished stage is skipped as a whole
    _, again = run_stage(tiny_model_dir, out, tiny_tokenizer, no_sampling)
    assert again.status == "skipped (already complete)" and again.weights == stage / "adapter"


def test_mixed_adds_dataset_pairs_in_ratio(tiny_model_dir, tiny_tokenizer, tmp_path):
    _, result = run_stage(
        tiny_model_dir, tmp_path, tiny_tokenizer, sampling="mixed", onpolicy_rounds=1, onpolicy_mix_ratio=0.6,
        preference_max_steps=1,
    )  # fmt: skip
    on_policy = result.rows["on_policy_pairs"]
    assert on_policy > 0
    assert result.rows["dataset_pairs"] == round(on_policy * 0.4 / 0.6)
    assert result.rows["pairs"] == on_policy + result.rows["dataset_pairs"]


def test_recipe_dispatches_on_sampling_and_monitors_every_round(tiny_model_dir, tmp_path):
    out = run_recipe_in_process(
        tiny_args(
            tiny_model_dir,
            tmp_path / "out",
            sampling="on_policy",
            ranker="callable",
            ranker_path=RANKER,
            onpolicy_prompts_per_round=4,
            onpolicy_num_samples=2,
            onpolicy_max_new_tokens=6,
            preference_max_steps=4,
            probe_every=1000,
            sft_max_steps=2,
        )
    )
    report = (out / "report.md").read_text()
    assert "| preference | trained | 4 |" in report
    assert (out / "final" / "model.safetensors").exists() and (out / "squeezing.png").exists()
    sft_records = [json.loads(line) for line in (out / "sft" / "probes.jsonl").open()]
    previous_end = sft_records[-1]["global_step"]
    for r in (1, 2):
        records = [json.loads(line) for line in (out / "preference" / f"round-{r}" / "probes.jsonl").open()]
        assert {rec["stage"] for rec in records} == {f"preference round {r}"}
        assert records[0]["global_step"] == previous_end  # one step axis across rounds
        previous_end = records[-1]["global_step"]
    assert previous_end == sft_records[-1]["global_step"] + 4


# --- the judge and reward-model rankers


def test_judge_ranker_pairwise_and_pointwise(tmp_path):
    from alignkit.judge.config import JudgeConfig
    from tests.fake_judge_server import FakeJudgeServer, prefer_marker

    def grader(messages):  # pointwise: good when the response contains GOOD, partly with "meh", else bad
        text = messages[-1]["content"]
        response = text.split("<response_a>")[1].split("</response_a>")[0]
        return "Fine.\n[[A]]" if "GOOD" in response else "Partly.\n[[C]]" if "meh" in response else "No.\n[[B]]"

    candidates = [["GOOD one", "bad", "GOOD one", "also bad"], ["x", "x"]]
    prompts = ["Say something good.", "Say x."]
    with FakeJudgeServer(policy=prefer_marker("GOOD")) as server:
        judge = JudgeConfig(base_url=server.base_url, model="fake", concurrency=4)
        ranker = JudgeRanker(judge, "pairwise", tmp_path / "pairwise.jsonl")
        scores = ranker(prompts, candidates, [{}, {}])
        # 3 distinct texts -> 3 games x 2 orders; identical "x" twice -> one text, nothing to ask
        assert server.requests == 6
        assert scores[0] == [1.0, 0.25, 1.0, 0.25] and scores[1] == [0.5, 0.5]
        ranker(prompts, candidates, [{}, {}])
        assert server.requests == 6  # the second pass is served from the cache
        ranker.close()
    with FakeJudgeServer(policy=grader) as server:
        judge = JudgeConfig(base_url=server.base_url, model="fake")
        ranker = JudgeRanker(judge, "pointwise", tmp_path / "pointwise.jsonl")
        scores = ranker(["q"], [["GOOD", "meh", "bad"]], [{"reference_answer": "GOOD"}])
        assert scores == [[1.0, 0.5, 0.0]] and server.requests == 3
        ranker.close()


def test_reward_model_ranker(tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tiny_tokenizer.pad_token_id)  # fmt: skip
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tiny_tokenizer.save_pretrained(tmp_path / "rm")
    ranker = RewardModelRanker(str(tmp_path / "rm"), batch_size=2, device="cpu")
    prompts = [[{"role": "user", "content": "What is 2 plus 2?"}], "plain prompt"]
    candidates = [["4", "The answer is 4.", "5"], ["a", "b"]]
    scores = ranker(prompts, candidates)
    assert [len(s) for s in scores] == [3, 2] and all(isinstance(v, float) for s in scores for v in s)
    assert len({round(v, 6) for v in scores[0]}) == 3
    # batching and padding do not change a score
    assert ranker(prompts[:1], [candidates[0][1:2]])[0][0] == pytest.approx(scores[0][1], abs=1e-5)
    with pytest.raises(AlignkitError, match="cannot load a reward model"):
        RewardModelRanker(str(tmp_path / "missing"))
