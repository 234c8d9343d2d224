"""The remedies' losses inside the preference stage (alignkit/objectives.py) on the tiny model: they read TRL's own
log-probs, change the loss (and only where their formula says), log their terms, train under LoRA and full
fine-tuning with and without precomputed reference log-probs, and stop loudly if TRL's internals change."""

from __future__ import annotations

import math

import pytest
import torch
from trl import DPOTrainer

from alignkit.config import parse_recipe_config
from alignkit.data import load_preference_data
from alignkit.errors import AlignkitError
from alignkit.models import load_tokenizer
from alignkit.stages import dpo_trainer, load_stage_model, run_preference_stage

from .test_recipe import tiny_args


def _cfg(tiny_model_dir, out, **overrides):
    args = tiny_args(tiny_model_dir, out, probe_enabled=False, sft_mode="none", **overrides)
    return parse_recipe_config(args)


def _trainer(cfg, folder):
    torch.manual_seed(0)  # the same LoRA initialisation for every trainer
    tokenizer = load_tokenizer(cfg.model)
    pairs = load_preference_data(cfg.data, seed=cfg.run.seed)["train"]
    return dpo_trainer(load_stage_model(cfg, []), tokenizer, pairs, cfg, folder, cfg.preference.preference_max_steps)


def _loss_and_grads(trainer, rows, ref_chosen_shift: float = 0.0):
    """Loss and LoRA gradients of one batch; `ref_chosen_shift` raises the reference's log π(y+) by that many nats,
    so that y+ sits below the reference (as after DPO has pushed it down)."""
    trainer.model.train()
    trainer.model.zero_grad()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in rows])
    batch["ref_chosen_logps"] = batch["ref_chosen_logps"] + ref_chosen_shift
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return float(loss), grads


def test_dpo_through_the_hook_is_trls_dpo(tiny_model_dir, tmp_path):
    """A floor that never triggers: alignkit's loss path gives TRL's sigmoid loss and gradients exactly."""
    plain = _trainer(_cfg(tiny_model_dir, tmp_path / "p"), tmp_path / "p")
    ours = _trainer(_cfg(tiny_model_dir, tmp_path / "o", negative_floor=1e6), tmp_path / "o")
    assert plain.objective is None and ours.objective is not None
    assert ours.loss_types == ["sigmoid"] and ours.loss_weights == [0.0]  # TRL's own term is kept at weight 0
    loss_a, grads_a = _loss_and_grads(plain, [0, 1, 2], ref_chosen_shift=1.0)
    loss_b, grads_b = _loss_and_grads(ours, [0, 1, 2], ref_chosen_shift=1.0)
    assert loss_b == pytest.approx(loss_a, abs=1e-6)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-6, rtol=1e-4)
    assert ours._metrics["train"]["loss/negative_floor_active"] == [0.0]


def test_dpop_differs_from_dpo_when_y_plus_is_below_the_reference(tiny_model_dir, tmp_path):
    """At step 0 the policy is the reference (LoRA B = 0), so with the reference's log π(y+) raised by 3 nats every
    pair has h+ = -3, h- = 0 and a DPOP penalty of exactly 3: DPO's loss is -log σ(-0.3), DPOP's -log σ(0.1(-3 -
    50·3)) (β = 0.1, λ = 50)."""
    beta, lam, shift = 0.1, 50.0, 3.0
    dpo = _trainer(_cfg(tiny_model_dir, tmp_path / "d"), tmp_path / "d")
    dpop = _trainer(_cfg(tiny_model_dir, tmp_path / "q", loss="dpop"), tmp_path / "q")
    assert dpop.objective.loss == "dpop" and dpop.objective.dpop_lambda == lam
    loss_dpo, grads_dpo = _loss_and_grads(dpo, [0, 1], ref_chosen_shift=shift)
    loss_dpop, grads_dpop = _loss_and_grads(dpop, [0, 1], ref_chosen_shift=shift)
    assert loss_dpo == pytest.approx(math.log(1 + math.exp(beta * shift)), abs=1e-4)
    assert loss_dpop == pytest.approx(math.log(1 + math.exp(beta * (shift + lam * shift))), abs=1e-4)
    assert dpop._metrics["train"]["loss/dpop_penalty"] == [pytest.approx(shift, abs=1e-4)]
    assert dpop._metrics["train"]["loss/dpop"] == [pytest.approx(loss_dpop, abs=1e-6)]
    # TRL's own metrics are still there, and unchanged by the objective
    assert dpop._metrics["train"]["rewards/chosen"] == [pytest.approx(-beta * shift, abs=1e-4)]
    assert any(not torch.allclose(grads_dpo[n], grads_dpop[n]) for n in grads_dpo)


def test_a_changed_trl_stops_training_instead_of_training_plain_dpo(tiny_model_dir, tmp_path, monkeypatch):
    trainer = _trainer(_cfg(tiny_model_dir, tmp_path / "c", loss="cal_dpo"), tmp_path / "c")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in (0, 1)])
    # TRL's log-probs no longer come from a fused forward of the policy: nothing is recorded
    with pytest.raises(AlignkitError, match="expected 1 fused log-prob forward"):
        trainer._objective_loss(batch, [])
    # TRL's sums no longer match what the hook reads (e.g. a new length normalisation)
    original = DPOTrainer._compute_loss

    def changed(self, model, inputs, return_outputs):
        loss = original(self, model, inputs, return_outputs)
        self._metrics["train"]["logps/chosen"][-1] /= 2
        return loss

    monkeypatch.setattr(DPOTrainer, "_compute_loss", changed)
    trainer.model.train()
    with pytest.raises(AlignkitError, match="DPOTrainer._compute_loss internals"):
        trainer.compute_loss(trainer.model, batch)


@pytest.mark.parametrize(
    "loss, use_lora, precompute",
    [("dpop", True, True), ("cal_dpo", True, False), ("dpop", False, False), ("cal_dpo", False, True)],
)
def test_one_stage_step_logs_the_remedys_terms(tiny_model_dir, tmp_path, loss, use_lora, precompute):
    cfg = _cfg(
        tiny_model_dir, tmp_path / "out", loss=loss, negative_floor=0.0, use_lora=use_lora,
        precompute_ref_log_probs=precompute, preference_max_steps=2,
    )  # fmt: skip
    tokenizer = load_tokenizer(cfg.model)
    pairs = load_preference_data(cfg.data, seed=cfg.run.seed)["train"]
    result = run_preference_stage(load_stage_model(cfg, []), tokenizer, pairs, cfg, tmp_path / "out" / "preference")
    assert result.status == "trained" and result.steps == 2
    logged = result.log_history[-2]  # the last step's training log (the last entry is the run's summary)
    expected = {"loss/dpop", "loss/dpop_penalty"} if loss == "dpop" else {"loss/cal_dpo", "loss/cal_dpo_calibration"}
    assert expected | {"loss/negative_floor_active", "rewards/margins", "logps/chosen"} <= logged.keys()
    assert all(math.isfinite(logged[k]) for k in expected)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"loss": "ipo", "negative_floor": 0.5}, "the floor works with loss dpo, dpop or cal_dpo"),
        ({"negative_floor": -1}, "'negative_floor' is -1"),
        ({"dpop_lambda": -2}, "'dpop_lambda' is -2"),
        ({"loss": "dpop", "preference_trainer_args": '{"ld_alpha": 0.5}'}, "sets 'ld_alpha'"),
        ({"loss": "cal_dpo", "preference_trainer_args": '{"use_weighting": true}'}, "sets 'use_weighting'"),
    ],
)
def test_config_refuses_what_the_remedies_cannot_honour(tiny_model_dir, tmp_path, overrides, message):
    with pytest.raises(AlignkitError, match=message):
        _cfg(tiny_model_dir, tmp_path, **overrides)
