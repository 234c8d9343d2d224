"""The preference stage's own objectives (DPOP, Cal-DPO, the negative-gradient floor) on TRL's DPOTrainer.

alignkit/losses.py has the formulas; this module feeds them the log-probs TRL computes, without a copy of TRL's
forward pass.

How it couples to TRL 1.16 (trl/trainer/dpo_trainer.py, `DPOTrainer._compute_loss`), and why it is safe:

1. `_compute_loss` runs the policy as `model(**model_kwargs, labels=labels, fused_lm_head=True)` and reads the
   per-token log-probs from `outputs.log_probs[:, -seq_len:]` (seq_len = the shifted completion mask's width); without
   `precompute_ref_log_probs` it then runs the reference the same way (the policy with its adapter disabled under
   LoRA, else `ref_model`); with it, the reference log-probs are the batch's `ref_chosen_logps`/`ref_rejected_logps`.
   The batch is [chosen; rejected]. `ObjectiveDPOTrainer._compute_loss` calls TRL's unchanged, with a forward hook
   on the policy (and on `ref_model`) that records the `log_probs` of every `fused_lm_head=True` call, in order.
2. TRL sums the loss terms of `self.loss_types` weighted by `self.loss_weights`. The stage configures
   `["sigmoid", ...]` with weight 0 for the sigmoid term (alignkit/stages.py `preference_loss`), so TRL's own
   preference term contributes nothing while its metrics (`rewards/*`, `logps/*`) and any `sft` term stay TRL's;
   alignkit/losses.py's per-pair loss is added to what TRL returns, and its terms are logged in TRL's `_metrics`
   under `loss/*` (TRL's `log` averages them over the logging window).
3. Every step checks the coupling: the sums of the recorded log-probs must reproduce the `logps/chosen`,
   `logps/rejected`, `rewards/chosen` and `rewards/rejected` that TRL has just appended to `_metrics`, and the hook
   must have seen one forward (precomputed reference) or two. If TRL's internals change, training stops with an
   AlignkitError that says so, instead of silently training plain DPO (tests/test_objectives.py trains a step).

Not supported with these objectives (the config refuses them): `ld_alpha`, `f_divergence_type` other than
reverse_kl, `use_weighting` (each changes what TRL's sums mean).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from trl import DPOTrainer

from alignkit.errors import AlignkitError
from alignkit.losses import DPOP_LAMBDA, pair_loss

COUPLING = "alignkit/objectives.py relies on TRL 1.16's DPOTrainer._compute_loss internals"


@dataclass
class Objective:
    """The stage's loss when alignkit computes it. `negative_floor` may change mid-stage (the guard's mitigation)."""

    loss: str  # alignkit.losses.LOSSES: "dpo" (with a floor), "dpop", "cal_dpo"
    beta: float
    dpop_lambda: float = DPOP_LAMBDA
    negative_floor: float | None = None
    floor_later: bool = False  # the guard may set negative_floor mid-stage: log its metric (0) from the start


def objective_for(preference, floor_later: bool = False) -> Objective | None:
    """The Objective of a PreferenceStageConfig, or None when TRL's own loss is used unchanged. `floor_later`: the
    guard may turn the floor on mid-stage, so alignkit computes the loss from the start (plain DPO until then)."""
    p = preference
    if p.loss not in ("dpop", "cal_dpo") and p.negative_floor is None and not floor_later:
        return None
    return Objective(p.loss, p.beta, p.dpop_lambda, p.negative_floor, floor_later)


def _close(ours: float, trls: float) -> bool:
    return math.isclose(ours, trls, rel_tol=1e-4, abs_tol=1e-3)


class ObjectiveDPOTrainer(DPOTrainer):
    """TRL's DPOTrainer whose loss is `objective` (alignkit/losses.py) when one is set; TRL's own otherwise."""

    objective: Objective | None = None

    def _compute_loss(self, model, inputs, return_outputs):
        if self.objective is None:
            return super()._compute_loss(model, inputs, return_outputs)
        recorded: list[torch.Tensor] = []

        def record(module, args, kwargs, output):
            if kwargs.get("fused_lm_head"):
                recorded.append(output.log_probs)

        modules = [self.accelerator.unwrap_model(self.model)]
        if self.ref_model is not None:
            modules.append(self.accelerator.unwrap_model(self.ref_model))
        handles = [m.register_forward_hook(record, with_kwargs=True) for m in modules]
        try:
            result = super()._compute_loss(model, inputs, return_outputs)
        finally:
            for handle in handles:
                handle.remove()
        loss, outputs = result if return_outputs else (result, None)
        loss = loss + self._objective_loss(inputs, recorded)
        return (loss, outputs) if return_outputs else loss

    def _objective_loss(self, inputs, recorded: list[torch.Tensor]) -> torch.Tensor:
        expected = 1 if self.precompute_ref_logps else 2
        if len(recorded) != expected:
            raise AlignkitError(
                f"{COUPLING}: expected {expected} fused log-prob forward(s) per step, saw {len(recorded)}; the "
                f"installed TRL computes its loss differently, so loss '{self.objective.loss}' cannot be applied"
            )
        mask = inputs["completion_mask"][..., 1:]
        logps = recorded[0][:, -mask.size(1) :].sum(dim=1)
        chosen, rejected = logps.chunk(2, dim=0)
        if self.precompute_ref_logps:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = recorded[1][:, -mask.size(1) :].sum(dim=1).detach().chunk(2, dim=0)
        _, rejected_tokens = mask.sum(dim=1).chunk(2, dim=0)
        mode = "train" if self.model.training else "eval"
        self._check_coupling(mode, chosen, rejected, ref_chosen, ref_rejected)
        o = self.objective
        out = pair_loss(
            o.loss, chosen, rejected, ref_chosen, ref_rejected, rejected_tokens,
            beta=o.beta, dpop_lambda=o.dpop_lambda, negative_floor=o.negative_floor,
        )  # fmt: skip
        terms = {f"loss/{o.loss}": out.per_pair.detach(), **out.terms}
        if o.negative_floor is None and o.floor_later:
            terms["loss/negative_floor_active"] = torch.zeros_like(chosen.detach())
        for name, values in terms.items():
            self._metrics[mode][name].append(self.accelerator.gather(values).float().mean().item())
        return out.per_pair.mean()

    def _check_coupling(self, mode: str, chosen, rejected, ref_chosen, ref_rejected) -> None:
        """Our sums against the metrics TRL appended this very step (both gathered over processes)."""
        beta = self.beta
        values = torch.stack([chosen.detach(), rejected.detach(), beta * (chosen.detach() - ref_chosen),
                              beta * (rejected.detach() - ref_rejected)], dim=1)  # fmt: skip
        ours = self.accelerator.gather(values).float().mean(dim=0).tolist()
        names = ("logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected")
        for name, value in zip(names, ours):
            trls = self._metrics[mode].get(name)
            if not trls or not _close(value, trls[-1]):
                raise AlignkitError(
                    f"{COUPLING}: the log-probs it reads give {name} = {value:.6g}, TRL logged "
                    f"{trls[-1] if trls else 'nothing'}; the installed TRL computes its loss differently, so loss "
                    f"'{self.objective.loss}' cannot be applied"
                )
