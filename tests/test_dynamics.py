"""The learning-dynamics decomposition against autograd, against its own factorised form, and against a real step."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from alignkit.dynamics import actual_change, decompose, distribution_change
from alignkit.dynamics.cli import main
from alignkit.dynamics.model import load_model_for_dynamics
from alignkit.dynamics.residuals import loss_value, residual_coefficients
from alignkit.errors import AlignkitError
from alignkit.models import add_lora

from .conftest import build_tiny_model, smollm2_or_skip

PROMPT = "What is the capital of France?"
OBSERVED = (PROMPT, "The capital of France is Paris.")
UPDATE = {"prompt": "What is 12 plus 30?", "chosen": "12 plus 30 is 42.", "rejected": "Bananas are purple."}
SHORT_OBSERVED = (PROMPT, "Paris.")
SHORT_UPDATE = {"prompt": "What is 12 plus 30?", "chosen": "42.", "rejected": "Bananas."}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and idle threads spin when other jobs share the cores: the
    forward+backward of the tiny model took 70 ms with 2 threads under load and 12 ms with 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def exact_float64(monkeypatch):
    """Make a float64 Llama float64 end to end.

    transformers' LlamaRMSNorm casts activations to float32 and back, which adds ~1e-7 relative noise to every
    forward pass: enough to swamp the O(lr²) error that the first-order tests measure at small lr.
    """
    from transformers.models.llama import modeling_llama

    def forward(self, hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", forward)


@pytest.fixture()
def model64(tiny_tokenizer, exact_float64):
    return build_tiny_model(tiny_tokenizer, dtype=torch.float64)


def _relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# ----------------------------------------------------------------------------------------------------------------
# Residuals: pure functions


@pytest.mark.parametrize("loss", ["sft", "dpo", "ipo", "negative"])
def test_residual_coefficients_are_minus_the_loss_gradient(loss):
    torch.manual_seed(0)
    chosen = (-torch.rand(5, dtype=torch.float64) * 3).requires_grad_()
    rejected = (-torch.rand(3, dtype=torch.float64) * 3).requires_grad_()
    ref_chosen, ref_rejected, beta = -6.0, -4.0, 0.3
    value = loss_value(loss, chosen, rejected, ref_chosen, ref_rejected, beta)
    grad_c, grad_r = torch.autograd.grad(value, [chosen, rejected], allow_unused=True, materialize_grads=True)
    c_plus, c_minus, _ = residual_coefficients(
        loss, chosen.detach(), rejected.detach(), ref_chosen, ref_rejected, beta
    )
    # every token of a side has the same c = −∂L/∂log π(y_l)
    torch.testing.assert_close(grad_c, torch.full_like(grad_c, -c_plus))
    torch.testing.assert_close(grad_r, torch.full_like(grad_r, -c_minus))


def test_residual_coefficients_by_hand():
    chosen = torch.tensor([-1.0, -1.0])  # summed -2
    rejected = torch.tensor([-3.0, -3.0, -3.0, -3.0])  # summed -12
    # dpo at the reference (ratios 0): a = 1/2, c = ±β/2
    c_plus, c_minus, terms = residual_coefficients("dpo", chosen, rejected, -2.0, -12.0, beta=0.1)
    assert terms["a"] == pytest.approx(0.5) and c_plus == pytest.approx(0.05) and c_minus == pytest.approx(-0.05)
    # dpo with margin (−2+4) − (−12+10) = 4, β = 0.5: a = σ(2) = 0.880797, c = 0.5·0.119203
    c_plus, c_minus, terms = residual_coefficients("dpo", chosen, rejected, -4.0, -10.0, beta=0.5)
    assert terms["margin"] == pytest.approx(4.0)
    assert c_plus == pytest.approx(0.0596014, rel=1e-5) and c_minus == pytest.approx(-0.0596014, rel=1e-5)
    # ipo: h = (−2+4)/2 − (−12+10)/4 = 1.5, target 1/(2·0.25) = 2: c⁺ = 2·0.5/2 = 0.5, c⁻ = −2·0.5/4 = −0.25
    c_plus, c_minus, terms = residual_coefficients("ipo", chosen, rejected, -4.0, -10.0, beta=0.25)
    assert terms["h"] == pytest.approx(1.5) and c_plus == pytest.approx(0.5) and c_minus == pytest.approx(-0.25)


# ----------------------------------------------------------------------------------------------------------------
# First order: predicted vs a real SGD step


@pytest.mark.parametrize("loss", ["sft", "dpo", "ipo"])
def test_predicted_matches_a_real_step_to_first_order(tiny_tokenizer, model64, loss):
    # a different reference makes the DPO/IPO log-ratios non-zero, so a ≠ 1/2 and h ≠ 0 are exercised
    ref = build_tiny_model(tiny_tokenizer, seed=1, dtype=torch.float64) if loss != "sft" else None
    lr = 1e-4
    d = decompose(
        model64, tiny_tokenizer, OBSERVED, UPDATE, loss=loss, lr=lr, params="all", ref_model=ref, kernel_probes=0
    )
    assert d.per_token.shape == (len(d.observed_tokens), len(d.update_tokens))
    assert d.per_token.sum().item() == pytest.approx(d.predicted, rel=1e-12)
    if loss != "sft":
        assert d.residual.sides.count("rejected") > 0 and abs(d.terms["logratio_chosen"]) > 1e-3
    actual = actual_change(model64, tiny_tokenizer, OBSERVED, UPDATE, loss=loss, lr=lr, params="all", ref_model=ref)
    actual_small = actual_change(
        model64, tiny_tokenizer, OBSERVED, UPDATE, loss=loss, lr=lr / 10, params="all", ref_model=ref
    )
    err = abs(d.predicted - actual)
    err_small = abs(d.predicted / 10 - actual_small)
    assert err / abs(actual) < 0.01
    assert err_small / abs(actual_small) < 0.01
    # first order: the error is O(lr²), so the absolute error drops ~100x and the relative error ~10x
    assert 5 < (err / abs(actual)) / (err_small / abs(actual_small)) < 20


def test_per_position_matches_the_real_per_token_change(tiny_tokenizer, model64):
    d = decompose(model64, tiny_tokenizer, OBSERVED, UPDATE, loss="dpo", lr=1e-5, params="all", kernel_probes=0)
    actual = actual_change(
        model64, tiny_tokenizer, OBSERVED, UPDATE, loss="dpo", lr=1e-5, params="all", per_position=True
    )
    torch.testing.assert_close(d.per_position, actual, rtol=1e-2, atol=1e-3 * actual.abs().max().item())


def test_actual_change_restores_parameters_and_flags(tiny_tokenizer, model64):
    model64.model.embed_tokens.weight.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model64.named_parameters()}
    actual_change(model64, tiny_tokenizer, OBSERVED, UPDATE, loss="dpo", lr=1e-2, params="all")
    for n, p in model64.named_parameters():
        assert torch.equal(p, before[n]), n
    assert not model64.model.embed_tokens.weight.requires_grad and model64.training


# ----------------------------------------------------------------------------------------------------------------
# The factorised form A·K·G, materialised, against the efficient modes


def _lora(model):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    # init_lora_weights=False: B ≠ 0, so the adapter changes the outputs and both A and B have gradients
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(model, config)


def test_explicit_factors_equal_the_efficient_computation(tiny_tokenizer, model64):
    # the adapter's parameters keep the V×P Jacobian products cheap; A, K and G are still full V×V / V tensors
    model = _lora(model64)
    kw = {"loss": "dpo", "lr": 1e-3, "beta": 0.2}
    explicit = decompose(model, tiny_tokenizer, SHORT_OBSERVED, SHORT_UPDATE, explicit=True, **kw)
    f = explicit.factors
    vocab = len(tiny_tokenizer)
    m_len, l_len = explicit.per_token.shape
    assert explicit.residual.sides.count("rejected") >= 2 and explicit.residual.sides.count("chosen") >= 2
    assert f.kernel.shape == (m_len, l_len, vocab, vocab) and f.adaptation.shape == (m_len, vocab, vocab)
    # −η e_yᵀ A_m K_ml G_l from the stored factors, for a chosen and a rejected column
    for m, j in [(0, 0), (m_len - 1, l_len - 1)]:
        y = explicit.observed_tokens[m]
        by_hand = -kw["lr"] * f.adaptation[m, y] @ f.kernel[m, j] @ f.residual[j]
        assert by_hand.item() == pytest.approx(explicit.per_token[m, j].item(), rel=1e-10)
    assert torch.allclose(f.residual, explicit.residual.dense())
    scale = explicit.per_token.abs().max().item()
    for method in ("gram", "jvp"):
        efficient = decompose(
            model, tiny_tokenizer, SHORT_OBSERVED, SHORT_UPDATE, method=method, kernel_probes=0, **kw
        )
        assert efficient.method == method
        torch.testing.assert_close(efficient.per_token, explicit.per_token, rtol=1e-9, atol=1e-12 * scale)
    # the full rows −η Σ_l A_m K_ml G_l = the forward-mode distribution change
    change = distribution_change(model, tiny_tokenizer, SHORT_OBSERVED, SHORT_UPDATE, **kw)
    torch.testing.assert_close(change.delta_logprobs, f.delta_logprobs, rtol=1e-9, atol=1e-12)
    # the random-projection estimate of ‖K_ml‖_F against the exact norms of the materialised blocks
    probes = 64
    estimate = decompose(model, tiny_tokenizer, SHORT_OBSERVED, SHORT_UPDATE, kernel_probes=probes, **kw)
    rel = (estimate.kernel_norm / explicit.kernel_norm - 1).abs()
    # per entry the relative standard error of the norm is at most sqrt(2/k)/2 ≈ 0.09
    assert estimate.kernel_probes == probes and rel.mean() < 0.1 and rel.max() < 0.35


def test_explicit_with_all_parameters_sft(tiny_tokenizer, model64):
    kw = {"loss": "sft", "lr": 1e-3, "params": "all"}
    update = {"prompt": SHORT_UPDATE["prompt"], "chosen": "42"}
    explicit = decompose(model64, tiny_tokenizer, SHORT_OBSERVED, update, explicit=True, **kw)
    efficient = decompose(model64, tiny_tokenizer, SHORT_OBSERVED, update, kernel_probes=0, **kw)
    scale = explicit.per_token.abs().max().item()
    torch.testing.assert_close(efficient.per_token, explicit.per_token, rtol=1e-9, atol=1e-12 * scale)


# ----------------------------------------------------------------------------------------------------------------
# Parameter sets and peft


def test_lora_trainable_params_and_adapter_disabled_reference(tiny_tokenizer, model64):
    peft_model = _lora(model64)
    lr = 1e-3
    d = decompose(peft_model, tiny_tokenizer, OBSERVED, UPDATE, loss="dpo", lr=lr, kernel_probes=2)
    n_lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    assert d.n_params == n_lora and d.params == "trainable" and d.method == "gram"
    # the reference is the adapter-disabled base model, so the log-ratios are not zero
    assert abs(d.terms["margin"]) > 1e-3 and d.terms["a"] != pytest.approx(0.5)
    assert d.kernel_norm.shape == d.per_token.shape and (d.kernel_norm > 0).all()
    base = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" not in n}
    actual = actual_change(peft_model, tiny_tokenizer, OBSERVED, UPDATE, loss="dpo", lr=lr)
    assert _relative(d.predicted, actual) < 0.01
    assert all(torch.equal(p, base[n]) for n, p in peft_model.named_parameters() if "lora_" not in n)
    # params="all" on the peft model moves the frozen base too, and gives their requires_grad back afterwards
    d_all = decompose(
        peft_model, tiny_tokenizer, OBSERVED, UPDATE, loss="dpo", lr=lr / 10, params="all", kernel_probes=0
    )
    assert d_all.n_params > d.n_params
    assert not any(p.requires_grad for n, p in peft_model.named_parameters() if "lora_" not in n)
    actual_all = actual_change(peft_model, tiny_tokenizer, OBSERVED, UPDATE, loss="dpo", lr=lr / 10, params="all")
    assert _relative(d_all.predicted, actual_all) < 0.01


def test_trainable_without_trainable_params_is_a_clear_error(tiny_tokenizer, tiny_model):
    tiny_model.requires_grad_(False)
    with pytest.raises(AlignkitError, match='params="all"'):
        decompose(tiny_model, tiny_tokenizer, OBSERVED, UPDATE, params="trainable")


# ----------------------------------------------------------------------------------------------------------------
# Squeezing: a negative gradient on an unlikely token raises the argmax and lowers almost everything else


def _peaked(model):
    """A random tiny model is nearly uniform; scaling the final norm by 16 (temperature 1/16) makes every position's
    distribution peaked like a trained model's, the regime the paper's squeezing argument is about."""
    with torch.no_grad():
        model.model.norm.weight.mul_(16)
    return model


@pytest.mark.parametrize("loss", ["negative", "dpo"])
def test_squeezing_effect_in_one_step(tiny_tokenizer, model64, loss):
    rejected = "Bananas are purple and the sky is green."
    update = {"prompt": PROMPT, "chosen": "The capital of France is Paris.", "rejected": rejected}
    change = distribution_change(
        _peaked(model64), tiny_tokenizer, (PROMPT, rejected), update, loss=loss, lr=1e-3, params="all"
    )
    stats = [change.squeezing(m) for m in range(len(change.targets))]
    # positions where y⁻ is unlikely and the model is confident in something else
    squeezable = [s for s in stats if s["observed_prob"] < 0.01 and s["argmax_prob"] > 0.8]
    assert len(squeezable) >= 5
    squeezed = [s for s in squeezable if s["argmax_delta_logprob"] > 0 and s["fraction_others_down"] > 0.9]
    assert all(s["observed_delta_logprob"] < 0 for s in squeezable)
    if loss == "negative":
        assert len(squeezed) == len(squeezable)
    else:
        # DPO's chosen side pulls other tokens up where chosen and rejected share a context (the first position)
        assert len(squeezed) >= 0.7 * len(squeezable)


# ----------------------------------------------------------------------------------------------------------------
# Input errors and the command line


def test_input_errors(tiny_tokenizer, tiny_model, monkeypatch):
    with pytest.raises(AlignkitError, match="empty"):
        decompose(tiny_model, tiny_tokenizer, (PROMPT, "  "), UPDATE)
    with pytest.raises(AlignkitError, match="rejected"):
        decompose(tiny_model, tiny_tokenizer, OBSERVED, {"prompt": PROMPT, "chosen": "x"}, loss="dpo")
    with pytest.raises(AlignkitError, match="loss"):
        decompose(tiny_model, tiny_tokenizer, OBSERVED, UPDATE, loss="kto")
    monkeypatch.setattr(importlib.import_module("alignkit.dynamics.decompose"), "EXPLICIT_BUDGET_BYTES", 10**6)
    with pytest.raises(AlignkitError, match="explicit"):
        decompose(tiny_model, tiny_tokenizer, OBSERVED, UPDATE, params="all", explicit=True, loss="dpo")
    # SFT ignores a given rejected response: the update columns are the chosen tokens only
    d = decompose(tiny_model, tiny_tokenizer, OBSERVED, UPDATE, loss="sft", kernel_probes=0)
    assert set(d.residual.sides) == {"chosen"}


def test_cli_bad_model_path_exits_2_without_traceback(tmp_path, capsys):
    code = main(
        ["--model", str(tmp_path / "missing"), "--prompt", "p", "--response", "r", "--chosen", "c", "--rejected", "d"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "missing" in err and "Traceback" not in err


def test_cli_on_a_tiny_model_folder(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "--model",
            str(tiny_model_dir),
            "--prompt",
            PROMPT,
            "--response",
            "Paris.",
            "--update-prompt",
            "What is 12 plus 30?",
            "--chosen",
            "42.",
            "--rejected",
            "Bananas.",
            "--loss",
            "dpo",
            "--lr",
            "1e-3",
            "--check",
            "--top",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "result.json").read_text())
    assert printed["predicted"] == saved["predicted"] and printed["relative_error"] < 0.05
    assert len(printed["top_pairs"]) == 3 and {"observed_token", "update_token"} <= set(printed["top_pairs"][0])
    assert len(printed["biggest_position"]["adaptation_topk"]) == 3
    assert (out / "per_token.png").stat().st_size > 1000
    code = main(
        ["--model", str(tiny_model_dir), "--prompt", PROMPT, "--response", "", "--chosen", "42.", "--loss", "sft"]
    )
    assert code == 2 and "empty" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# The real SmolLM2-135M model


@pytest.mark.real_model
def test_real_model_lora_prediction_and_squeezing():
    model, tokenizer = load_model_for_dynamics(smollm2_or_skip())
    model = add_lora(model)
    prompt = [{"role": "user", "content": PROMPT}]
    update = {"prompt": prompt, "chosen": "The capital of France is Paris.", "rejected": "Bananas are purple."}
    observed = (prompt, "Paris is the capital of France.")
    d = decompose(model, tokenizer, observed, update, loss="dpo", lr=1e-3, kernel_probes=1)
    actual = actual_change(model, tokenizer, observed, update, loss="dpo", lr=1e-3)
    assert d.terms["a"] == pytest.approx(0.5)  # fresh LoRA (B = 0): the adapter-disabled reference is the model
    assert _relative(d.predicted, actual) < 0.05
    change = distribution_change(
        model, tokenizer, (prompt, update["rejected"]), update, loss="negative", lr=1e-5, params="all"
    )
    stats = [change.squeezing(m) for m in range(len(change.targets))]
    # the most confident position among those where y⁻ is unlikely ("anas" after "Ban": argmax "que", p ≈ 0.56)
    peak = max((s for s in stats if s["observed_prob"] < 0.01), key=lambda s: s["argmax_prob"])
    assert peak["argmax_delta_logprob"] > 0 and peak["fraction_others_down"] > 0.9
