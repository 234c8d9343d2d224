"""What the squeezing alert says, and how the `mitigate` guard reaches the SFT loss weight of a running DPOTrainer
(or, with `guard_mitigation: negative_floor`, the negative-gradient floor of alignkit's preference loss).

TRL 1.16's `DPOTrainer.__init__` keeps `self.loss_types = args.loss_type` and
`self.loss_weights = args.loss_weights or [1.0] * len(self.loss_types)`, and `_compute_loss` reads both at every step
(`for loss_type, loss_weight in zip(self.loss_types, self.loss_weights)`). So changing the weight in that list takes
effect from the next optimizer step. When the config passes `loss_weights` explicitly, the trainer's list *is*
`args.loss_weights` (the `or` returns the same object), which the callback sees in every event; otherwise the
callback needs the trainer itself (`SqueezingCallback.attach(trainer)`).

The floor lives on the trainer as `trainer.objective.negative_floor` (alignkit/objectives.py, which reads it at every
step); the recipe's preference stage computes its loss itself from the start when the guard may turn it on.
"""

from __future__ import annotations

import math

from alignkit.errors import AlignkitError
from alignkit.monitors.config import ALERT_METRICS, MODEL_FAMILIES
from alignkit.monitors.scoring import Squeeze


def alert_message(
    stage: str,
    step: int,
    metric: str,
    value: float,
    threshold: float,
    metrics: dict[str, float],
    squeeze: Squeeze | None = None,
    bound: str = "mean",
    top: int = 6,
) -> str:
    """One line naming the alert metric and value, the mechanism metrics, and the families that fell most."""
    what = f"{metric} {'(lower 95% bound) ' if bound == 'lower' and metric != 'score' else ''}{value:.3f}"
    mech = ", ".join(
        f"{name} {metrics[f'mech/{name}']:+.3f} [{metrics.get(f'mech/{name}_lo', math.nan):+.3f}, "
        f"{metrics.get(f'mech/{name}_hi', math.nan):+.3f}]"
        for name in ALERT_METRICS
        if name != "score" and math.isfinite(metrics.get(f"mech/{name}", math.nan))
    )
    line = (
        f"squeezing alert in stage '{stage}' at step {step}: {what} >= threshold {threshold:g} (since the stage "
        f"began). Mechanism: {mech or 'not measured'}."
    )
    if squeeze is not None:
        argmax_side = ", ".join(
            f"{k} {d:+.3f}" for k, d in squeeze.deltas.items() if k.split("/")[1] in MODEL_FAMILIES
        )
        fell = squeeze.fell()
        listed = ", ".join(f"{k} {d:+.3f}" for k, d in fell[:top]) or "none"
        more = f" and {len(fell) - top} more" if len(fell) > top else ""
        line += f" Score {squeeze.score:.3f}; greedy/argmax: {argmax_side}. Fell: {listed}{more}."
    return line


def sft_weight_slot(trainer, args) -> tuple[list[float], int] | None:
    """The list the trainer reads the 'sft' loss weight from at each step, and the index of that weight.

    None when the stage's loss has no separate SFT term (an SFT stage, or a preference loss without 'sft').
    """
    if trainer is not None and hasattr(trainer, "loss_weights"):
        loss_types, weights = trainer.loss_types, trainer.loss_weights
    else:
        loss_types, weights = getattr(args, "loss_type", None), getattr(args, "loss_weights", None)
    if isinstance(loss_types, list | tuple) and "sft" in loss_types and isinstance(weights, list):
        return weights, list(loss_types).index("sft")
    return None


def check_mitigation(trainer, args, stage: str, mitigation: str = "sft_weight") -> str | None:
    """Fail early when `mitigate` could not act in a preference stage; returns a note when it does not apply at all."""
    if mitigation == "negative_floor":
        return _check_floor(trainer, args, stage)
    if sft_weight_slot(trainer, args) is not None:
        return None
    loss_types = getattr(args, "loss_type", None)
    if isinstance(loss_types, list | tuple):  # a DPO-style multi-loss stage that cannot be mitigated as configured
        if "sft" in loss_types:
            raise AlignkitError(
                f"guard_action='mitigate' in stage '{stage}': the 'sft' loss weight is out of reach because "
                "loss_weights is unset; pass loss_weights explicitly (e.g. [1.0, 0.0]) or call "
                "SqueezingCallback.attach(trainer)"
            )
        raise AlignkitError(
            f"guard_action='mitigate' in stage '{stage}' needs an SFT term on y+ to raise: set loss_type to "
            f"{list(loss_types) + ['sft']} with loss_weights {[1.0] * len(loss_types) + [0.0]} (weight 0 until the "
            "guard raises it), or choose guard_action 'warn' or 'stop'"
        )
    return f"stage '{stage}' has no SFT-on-y+ loss term to raise, so 'mitigate' only warns there"


def _check_floor(trainer, args, stage: str) -> str | None:
    if getattr(trainer, "objective", None) is not None:
        return None
    if isinstance(getattr(args, "loss_type", None), list | tuple):  # a preference stage the floor cannot reach
        raise AlignkitError(
            f"guard_mitigation='negative_floor' in stage '{stage}' needs alignkit's preference loss on the trainer "
            "(the recipe's preference stage with loss dpo, dpop or cal_dpo; alignkit.stages.dpo_trainer), and a "
            "callback that has the trainer (SqueezingCallback.attach(trainer))"
        )
    return f"stage '{stage}' has no preference loss to put a floor under, so 'mitigate' only warns there"


def switch_on_floor(trainer, floor: float) -> tuple[float | None, float] | None:
    """Set the negative-gradient floor of the trainer's preference loss to `floor` (or keep a tighter one) for the
    rest of the stage; returns (old, new) or None when the trainer has no such loss."""
    objective = getattr(trainer, "objective", None)
    if objective is None:
        return None
    old = objective.negative_floor
    objective.negative_floor = floor if old is None else min(old, floor)
    return old, objective.negative_floor


def mitigate(trainer, args, config) -> str | None:
    """Switch on `config.guard_mitigation` (a MonitorConfig) for the rest of the stage: the action in words, or None
    when it cannot act here."""
    if config.guard_mitigation == "negative_floor":
        changed = switch_on_floor(trainer, config.guard_negative_floor)
        if changed is None:
            return None
        was = "off" if changed[0] is None else f"{changed[0]:g}"
        return (f"turned on the negative-gradient floor at {changed[1]:g} nats/token (was {was}) for the rest of the "
                "stage (guard_mitigation negative_floor)")  # fmt: skip
    changed = raise_sft_weight(trainer, args, config.guard_sft_weight)
    if changed is None:
        return None
    return (f"raised the SFT-on-y+ loss weight from {changed[0]:g} to {changed[1]:g} for the rest of the stage "
            "(guard_mitigation sft_weight)")  # fmt: skip


def raise_sft_weight(trainer, args, weight: float) -> tuple[float, float] | None:
    """Set the 'sft' loss weight to at least `weight` for the rest of the stage; returns (old, new) or None."""
    slot = sft_weight_slot(trainer, args)
    if slot is None:
        return None
    weights, index = slot
    old = weights[index]
    weights[index] = max(old, weight)  # in place: the trainer holds this very list
    return old, weights[index]
