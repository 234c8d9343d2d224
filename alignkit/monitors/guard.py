"""What the squeezing alert says, and how the `mitigate` guard reaches the SFT loss weight of a running DPOTrainer.

TRL 1.16's `DPOTrainer.__init__` keeps `self.loss_types = args.loss_type` and
`self.loss_weights = args.loss_weights or [1.0] * len(self.loss_types)`, and `_compute_loss` reads both at every step
(`for loss_type, loss_weight in zip(self.loss_types, self.loss_weights)`). So changing the weight in that list takes
effect from the next optimizer step. When the config passes `loss_weights` explicitly, the trainer's list *is*
`args.loss_weights` (the `or` returns the same object), which the callback sees in every event; otherwise the
callback needs the trainer itself (`SqueezingCallback.attach(trainer)`).
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


def check_mitigation(trainer, args, stage: str) -> str | None:
    """Fail early when `mitigate` could not act in a preference stage; returns a note when it does not apply at all."""
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


def raise_sft_weight(trainer, args, weight: float) -> tuple[float, float] | None:
    """Set the 'sft' loss weight to at least `weight` for the rest of the stage; returns (old, new) or None."""
    slot = sft_weight_slot(trainer, args)
    if slot is None:
        return None
    weights, index = slot
    old = weights[index]
    weights[index] = max(old, weight)  # in place: the trainer holds this very list
    return old, weights[index]
