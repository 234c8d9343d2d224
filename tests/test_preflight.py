"""The pre-flight on models: hand-computed scores through the batched pass, the one-step prediction, outputs, reuse,
bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import get_peft_model

from alignkit.config import parse_recipe_config
from alignkit.data import load_preference_data
from alignkit.dynamics import decompose
from alignkit.errors import AlignkitError
from alignkit.preflight.cli import main as cli_main
from alignkit.preflight.onestep import predict_offtarget
from alignkit.preflight.passes import score_pairs
from alignkit.preflight.recipe import check_preflight
from alignkit.preflight.run import DONE, run_preflight
from alignkit.sequences import encode_pair, score_responses
from alignkit.stages import lora_config

from .test_recipe import ENV, ROOT, tiny_args

PROMPTS = [[{"role": "user", "content": "What is 12 plus 30?"}], "Spell apple backwards:"]
CHOSEN = ["12 plus 30 is 42. The answer is 42.", "elppa"]
REJECTED = ["Bananas are purple.", "I do not know. Figure it out yourself."]


class EosLover(torch.nn.Module):
    """A model whose logits we control: at every position logit ln 3 on EOS and 0 elsewhere, so
    π(EOS) = 3 / (V + 2) and π(any other token) = 1 / (V + 2). Hidden state of a position: its token's embedding.
    Nothing depends on earlier tokens, so its key/value cache holds nothing."""

    def __init__(self, vocab: int, eos: int):
        super().__init__()
        self.vocab, self.eos = vocab, eos
        self.embed = torch.nn.Embedding(vocab, 3)

    def forward(self, input_ids, logits_to_keep=0, **kwargs):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.eos] = math.log(3)
        hidden = self.embed(input_ids)
        cache = SimpleNamespace(reorder_cache=lambda rows: None)
        return SimpleNamespace(
            logits=logits[:, -logits_to_keep:], hidden_states=(hidden, hidden), past_key_values=cache
        )


def test_valley_and_margin_by_hand_through_the_batched_pass(tiny_tokenizer):
    vocab = len(tiny_tokenizer)
    model = EosLover(vocab, tiny_tokenizer.eos_token_id)
    out = score_pairs(model, tiny_tokenizer, PROMPTS, CHOSEN, REJECTED, batch_size=1)
    for k, scored in enumerate(out):
        # A response of n text tokens + EOS: n tokens at -ln(V+2), EOS at ln 3 - ln(V+2).
        n_plus = len(tiny_tokenizer(CHOSEN[k], add_special_tokens=False)["input_ids"])
        n_minus = len(tiny_tokenizer(REJECTED[k], add_special_tokens=False)["input_ids"])
        deep = -math.log(vocab + 2)
        assert scored.chosen_logps == pytest.approx([deep] * n_plus + [math.log(3) + deep], abs=1e-5)
        assert sum(scored.rejected_logps) == pytest.approx((n_minus + 1) * deep + math.log(3), abs=1e-4)
        assert min(scored.rejected_logps) == pytest.approx(deep, abs=1e-5)
        # margin = (n+ - n-) * -ln(V+2): the EOS terms cancel
        margin = sum(scored.chosen_logps) - sum(scored.rejected_logps)
        assert margin == pytest.approx((n_plus - n_minus) * deep, abs=1e-4)
        # CHES (ln) from the states that predict the response: the last prompt token, then every response token but
        # the last (EOS).
        means = []
        for response in (CHOSEN[k], REJECTED[k]):
            pair = encode_pair(tiny_tokenizer, PROMPTS[k], response)
            ids = torch.tensor(pair.input_ids[pair.prompt_len - 1 : -1])
            means.append(model.embed.weight.detach()[ids].double().mean(0))
        expected = float(means[0] @ means[1] - means[0] @ means[0])
        assert scored.ches == pytest.approx(expected, abs=1e-5)


def test_batched_pass_equals_score_responses(tiny_model, tiny_tokenizer):
    prompts, chosen, rejected = PROMPTS * 2, CHOSEN * 2, REJECTED[::-1] * 2
    out = score_pairs(tiny_model, tiny_tokenizer, prompts, chosen, rejected, batch_size=3)
    expected_plus = score_responses(tiny_model, tiny_tokenizer, prompts, chosen, batch_size=1)
    expected_minus = score_responses(tiny_model, tiny_tokenizer, prompts, rejected, batch_size=1)
    for scored, plus, minus in zip(out, expected_plus, expected_minus):
        assert scored.chosen_logps == pytest.approx(plus, abs=1e-5)
        assert scored.rejected_logps == pytest.approx(minus, abs=1e-5)


def test_one_step_prediction_agrees_with_decompose(tiny_model, tiny_tokenizer):
    cfg = parse_recipe_config(["--lora_r", "4", "--lora_alpha", "8"])
    policy = get_peft_model(tiny_model, lora_config(cfg))
    torch.manual_seed(0)
    for name, p in policy.named_parameters():  # B = 0 would make the A gradients zero; any B works for this check
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    pair = {"prompt": PROMPTS[0], "chosen": CHOSEN[0], "rejected": REJECTED[0]}
    observed = (PROMPTS[1], CHOSEN[1])
    out = predict_offtarget(policy, tiny_tokenizer, pair, observed, "dpo", lr=1e-2, beta=0.1)
    d = decompose(policy, tiny_tokenizer, observed, pair, loss="dpo", lr=1e-2, beta=0.1, kernel_probes=0)
    assert out["offtarget_delta"] == pytest.approx(d.predicted / len(d.observed_tokens), rel=1e-3)
    assert out["offtarget_delta"] != 0


def _cfg(tiny_model_dir, out: Path, **overrides):
    return parse_recipe_config(tiny_args(tiny_model_dir, out, probe_enabled=False, **overrides))


def test_run_writes_ranked_table_figure_verdict_and_reuses_them(tiny_model_dir, tiny_tokenizer, tmp_path, caplog):
    cfg = _cfg(tiny_model_dir, tmp_path / "run", preflight_dynamics_pairs=2)
    data = load_preference_data(cfg.data, seed=cfg.run.seed)
    folder = tmp_path / "run" / "preflight"
    result = run_preflight(cfg, tiny_tokenizer, data["train"], data["test"], folder, None)
    # preference_max_steps 3 x batch 2: the stage trains on 6 of the 12 pairs, and those are scored
    assert len(result.records) == 6 and "the 6 of 12 training pairs" in result.header[0]
    depths = [r["rejected_logp_per_token"] for r in result.records]
    assert depths == sorted(depths) and [r["rank"] for r in result.records] == list(range(1, 7))
    predicted = {r["row"]: r["offtarget_delta"] for r in result.records if r["offtarget_delta"] is not None}
    assert len(predicted) == 2
    twin = run_preflight(cfg, tiny_tokenizer, data["train"], data["test"], tmp_path / "twin", None)
    assert {r["row"]: r["offtarget_delta"] for r in twin.records if r["offtarget_delta"] is not None} == predicted
    assert result.verdict.startswith(f"{len(result.risky_rows)} of 6 pairs")
    assert "under the base model" in result.verdict
    for name in ("preflight.jsonl", "preflight.md", "preflight_hist.png", DONE):
        assert (folder / name).stat().st_size > 0
    assert "**Verdict:**" in (folder / "preflight.md").read_text()

    # A rerun with another threshold reads the scores back (no model load) and re-applies the rule.
    median = sorted(depths)[3]
    cfg2 = _cfg(tiny_model_dir, tmp_path / "run", preflight_dynamics_pairs=2, preflight_threshold=median)
    again = run_preflight(cfg2, tiny_tokenizer, data["train"], data["test"], folder, None)
    assert "reusing its scores" in caplog.text
    assert len(again.risky_rows) == 3
    assert len(again.kept_pairs()) == 3 and "preflight_row" not in again.kept_pairs().column_names

    # A damaged table is an error naming the file and line, not a traceback.
    lines = (folder / "preflight.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    del record["ches"]
    (folder / "preflight.jsonl").write_text("\n".join([lines[0], json.dumps(record), *lines[2:]]) + "\n")
    with pytest.raises(AlignkitError, match=r"preflight\.jsonl:2: field 'ches' missing"):
        run_preflight(cfg2, tiny_tokenizer, data["train"], data["test"], folder, None)


def test_cli_scores_a_model_and_dataset(tiny_model_dir, tmp_path, capsys):
    rc = cli_main(["--model", str(tiny_model_dir), "--output_dir", str(tmp_path), "--max_train_samples", "8",
                   "--preflight_pairs", "all", "--preflight_dynamics_pairs", "0", "--cpu_threads", "1"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert " of 8 pairs " in printed and "under the base model" in printed
    assert (tmp_path / "preflight" / "preflight_hist.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "./no/such/model"], "alignkit-preflight: error: model path ./no/such/model does not exist"),
        (["--preflight_threshold", "0.5"], "it is a log-prob per token (nats), so it must be < 0"),
        (["--preflight", "on"], "config field 'preflight' is 'on'; it must be one of: off, report, act"),
    ],
)
def test_cli_bad_input_is_one_line(args, message, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "alignkit.preflight", *args, "--output_dir", str(tmp_path)],
                          env=ENV, capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_yaml_bare_off_is_explained(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("preflight: off\n")
    with pytest.raises(AlignkitError, match=r"r\.yaml: key 'preflight' is False; quote the word: preflight: \"off\""):
        parse_recipe_config(["--config", str(path)])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preflight", "report", "--sampling", "on_policy"], "the pre-flight scores the dataset's pairs"),
        (["--preflight", "act", "--sft_mode", "none"], "there is no SFT stage to extend"),
    ],
)
def test_recipe_settings_the_preflight_cannot_honour(args, message):
    with pytest.raises(AlignkitError, match=message):
        check_preflight(parse_recipe_config(args))
