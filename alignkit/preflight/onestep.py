"""One-step predicted change of an off-target response, for a sample of pairs (`alignkit.dynamics`).

For a training pair (x, y+, y-) and an off-target response (x_o, y_o) no stage trains on (a held-out y+ under its
own prompt: the monitor's `irrelevant_test` family), `distribution_change` gives the first-order change of log π(v)
at every position of y_o after one SGD step of the preference loss on the pair. Two numbers per pair come out:

* `offtarget_delta`: Σ_m Δ log π(y_o,m) / |y_o|, the predicted change of the off-target response (nats/token; < 0:
  the step pushes an untrained answer down),
* `offtarget_argmax_delta`: the mean over positions of Δ log π(argmax_v π(v)), the squeezing signature (> 0 while the
  rest falls: mass moves onto the argmax).

The step is the preference stage's first: a fresh LoRA adapter (B = 0, the recipe's LoRA settings) on the starting
model, which is then its own reference (log-ratios 0), at the stage's learning rate. Plain SGD, not the stage's
AdamW: the sign and the ranking across pairs carry over, the size does not.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from alignkit.dynamics import distribution_change
from alignkit.errors import AlignkitError


def sample_pairs(n_pairs: int, n_sample: int, seed: int) -> list[int]:
    """`n_sample` pair indices out of `n_pairs`, a seeded draw in increasing order."""
    return sorted(random.Random(seed).sample(range(n_pairs), min(n_sample, n_pairs)))


def offtarget_probes(pool: Sequence[dict], n: int, seed: int) -> list[tuple]:
    """`n` off-target (prompt, response) pairs: y+ of seeded rows of `pool` (rows with `prompt` and `chosen`)."""
    if not pool:
        raise AlignkitError("the pre-flight's one-step prediction needs off-target answers; the data has none")
    rng = random.Random(seed + 1)
    return [(row["prompt"], row["chosen"]) for row in (pool[rng.randrange(len(pool))] for _ in range(n))]


def summarize(change) -> dict[str, float]:
    """The two per-pair numbers from one `DistributionChange` (see the module docstring)."""
    positions = torch.arange(len(change.targets))
    observed = change.delta_logprobs[positions, change.targets]
    argmax = change.delta_logprobs[positions, change.probs.argmax(dim=-1)]
    return {"offtarget_delta": float(observed.mean()), "offtarget_argmax_delta": float(argmax.mean())}


def predict_offtarget(model, tokenizer, pair: dict, observed: tuple, loss: str, lr: float, beta: float) -> dict:
    """`summarize` of the predicted change of `observed` after one step on `pair` ({prompt, chosen, rejected})."""
    update = {"prompt": pair["prompt"], "chosen": pair["chosen"], "rejected": pair["rejected"]}
    change = distribution_change(model, tokenizer, observed, update, loss=loss, lr=lr, beta=beta)
    return summarize(change)
