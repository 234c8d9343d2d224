"""One probe evaluation of a stage and the numbers it yields: every probe scored once across the ranks, or the
previous stage's end evaluation taken over when the model has not changed since.

The callback (`alignkit.monitors.callback`) decides when to evaluate and what the numbers mean for the alert and the
guard; this module only produces them.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from alignkit.monitors.config import MonitorConfig
from alignkit.monitors.evaluate import evaluate_probes
from alignkit.monitors.probes import SPLITS, ProbeSet
from alignkit.monitors.scoring import (
    FIXED_GREEDY,
    MECHANISM_METRICS,
    Squeeze,
    family_metrics,
    mechanism_per_probe,
    mechanism_summary,
    merge_shards,
    metric_key,
    probe_values,
    shard,
    squeezing_score,
)

GREEDY_SAMPLES = 2  # greedy decodings per split kept in each JSONL record, to read what "greedy" was
FINGERPRINT_PROBES = 2  # probes re-scored to check that a stage starts from the model the last one ended with
# A stage's end evaluation also scores its own greedy decodings as fixed text, under this name: the next stage's
# `greedy_start` when the end evaluation is handed over to it.
HANDOVER_GREEDY = "greedy_end"


@dataclass
class Measurement:
    """What one evaluation measured, per probe."""

    stats: list[dict[str, dict[str, float]]]  # per probe: family -> response_token_stats sums
    texts: list[str | None]  # per probe: the greedy decoding at that evaluation
    greedy_samples: dict[str, list[str]]
    fingerprint: list[float] | None  # `chosen` log-probs of the first FINGERPRINT_PROBES probes; None: taken over


@dataclass
class Handover:
    """A stage's last evaluation, offered to the next stage as its first (see `check_handover`)."""

    stage: str
    stats: list[dict[str, dict[str, float]]]  # per probe: family -> response_token_stats sums
    texts: list[str | None]  # per probe: the greedy decoding at that evaluation
    greedy_samples: dict[str, list[str]]
    fingerprint: list[float]  # `chosen` log-probs of the first FINGERPRINT_PROBES probes
    seconds: float  # what the evaluation cost


def measure(
    model,
    tokenizer,
    probe_set: ProbeSet,
    config: MonitorConfig,
    args,
    event: str,
    start_texts: list[str | None] | None,
    progress: str | None,
) -> Measurement:
    """Score the probes now: every tracked family at a stage's ends, `config.probe_step_families` at mid-stage
    (`event == "step"`) evaluations. `start_texts` (the stage's first greedy decodings, None at the stage's first
    evaluation) are scored again as fixed text when `greedy` is scored, and at the stage's end the new decodings are
    scored as fixed text too, for the next stage to take over."""
    families = step_families(probe_set, config) if event == "step" else list(probe_set.families)
    fixed, greedy_as = None, None
    if "greedy" in families:
        if start_texts is None:
            greedy_as = FIXED_GREEDY
        else:
            fixed = [{FIXED_GREEDY: t} if t is not None else {} for t in start_texts]
            greedy_as = HANDOVER_GREEDY if event == "end" else None
    merged = score_probes(model, tokenizer, probe_set, config, args, progress, fixed, greedy_as, families)
    stats = [r["stats"] for r in merged]
    texts = [r["greedy"] for r in merged]  # None throughout when this evaluation decoded nothing
    greedy_samples = {
        s: [r["greedy"] for p, r in zip(probe_set.probes, merged) if p.split == s and r["greedy"] is not None][
            :GREEDY_SAMPLES
        ]
        for s in SPLITS
    }
    chosen = "chosen" in probe_set.families
    fingerprint = [d["chosen"]["logp"] for d in stats[:FINGERPRINT_PROBES]] if chosen else None
    return Measurement(stats, texts, greedy_samples, fingerprint)


def taken_over(handover: Handover) -> Measurement:
    """The last stage's end evaluation as this stage's first: its end decodings, scored there as fixed text, are
    this stage's starting decodings."""
    stats = [
        {(FIXED_GREEDY if f == HANDOVER_GREEDY else f): v for f, v in d.items() if f != FIXED_GREEDY}
        for d in handover.stats
    ]
    return Measurement(stats, handover.texts, handover.greedy_samples, None)


def score_probes(
    model,
    tokenizer,
    probe_set: ProbeSet,
    config: MonitorConfig,
    args,
    progress: str | None,
    fixed: list[dict[str, str]] | None = None,
    greedy_as: str | None = None,
    families: list[str] | None = None,
) -> list[dict]:
    """Every probe scored once across the ranks (`families`, default all the probe set's); the merged results, in
    probe order, on every rank."""
    probes = probe_set.probes
    mine = shard(probes, args.process_index, args.world_size)
    with eval_mode(model):
        results = evaluate_probes(
            model,
            tokenizer,
            [p for _, p in mine],
            families if families is not None else probe_set.families,
            batch_size=config.probe_batch_size,
            max_length=config.probe_max_length,
            max_new_tokens=config.probe_max_new_tokens,
            generate_batch_size=config.probe_generate_batch_size,
            progress=progress,
            fixed=[fixed[i] for i, _ in mine] if fixed is not None else None,
            greedy_as=greedy_as,
        )
    part = [(i, {"stats": r.stats, "greedy": r.greedy}) for (i, _), r in zip(mine, results)]
    return merge_shards(gather(part, args.world_size), len(probes))  # all ranks get all, so all decide alike


def step_families(probe_set: ProbeSet, config: MonitorConfig) -> list[str]:
    """The families a mid-stage evaluation scores: those of `probe_step_families` that the probe set has."""
    return [f for f in probe_set.families if f in config.probe_step_families]


def check_handover(handover: Handover, model, tokenizer, probe_set: ProbeSet, config: MonitorConfig, args):
    """`handover` when this stage starts from the very model it measured, else None.

    A recipe hands each stage the merged result of the last one with a fresh (zero) LoRA adapter: the same
    function, so a second full evaluation at the boundary would cost minutes on a CPU and measure nothing new.
    The claim is checked, not assumed: the first probes' `chosen` log-probs must match what was recorded.
    """
    probes = probe_set.probes[:FINGERPRINT_PROBES]
    with eval_mode(model):
        results = evaluate_probes(model, tokenizer, probes, ["chosen"], max_length=config.probe_max_length)
    now = [r.stats["chosen"]["logp"] for r in results]
    same = [all(abs(a - b) <= 1e-3 * max(1.0, abs(b)) for a, b in zip(now, handover.fingerprint))]
    if args.world_size > 1:  # every rank must take the same branch: the full evaluation gathers across ranks
        torch.distributed.broadcast_object_list(same, src=0)
    return handover if same[0] else None


def family_values(probe_set: ProbeSet, stats: list[dict]) -> tuple[dict[str, float], list[dict[str, dict]]]:
    """(the means over probes per split and family, each probe's compact values) of one evaluation."""
    argmax = "argmax" in probe_set.families
    scored = [(p.split, f, st) for p, d in zip(probe_set.probes, stats) for f, st in d.items() if f != HANDOVER_GREEDY]
    return family_metrics(scored, argmax=argmax), [_probe_values(d, argmax) for d in stats]


def change_metrics(
    metrics: dict[str, float],
    start_metrics: dict[str, float],
    start_values: list[dict[str, dict]],
    values: list[dict[str, dict]],
    splits: list[str],
    bootstrap: int,
    seed: int,
) -> Squeeze | None:
    """Add the change since the stage began to `metrics`: the squeezing score and the mechanism metrics with their
    bootstrap intervals over probes. Returns the score's detail (None before there is a change to score)."""
    squeeze = squeezing_score(start_metrics, metrics)
    if squeeze is not None:
        metrics.update({"squeeze/score": squeeze.score, "squeeze/rise": squeeze.rise, "squeeze/fall": squeeze.fall})
    per_probe = mechanism_per_probe(start_values, values, splits)
    for name, interval in mechanism_summary(per_probe, bootstrap, seed=seed).items():
        metrics[f"mech/{name}"] = interval.mean
        metrics[f"mech/{name}_lo"] = interval.lo
        metrics[f"mech/{name}_hi"] = interval.hi
    return squeeze


def headline(metrics: dict[str, float]) -> str:
    """The evaluation's log line: the training split's main families, the score and the mechanism metrics."""
    keys = [metric_key("train", f, "logp") for f in ("chosen", "rejected", "greedy", "argmax")]
    keys += ["squeeze/score", *(f"mech/{m}" for m in MECHANISM_METRICS)]
    return ", ".join(f"{k.removeprefix('probe/train/')} {metrics[k]:.2f}" for k in keys if k in metrics)


@contextmanager
def eval_mode(model):
    """No dropout while probing; the trainer's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


def gather(part: list, world: int) -> list[list]:
    """Every rank's shard, on every rank (a list with this rank's shard alone when not distributed)."""
    if world == 1:
        return [part]
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, part)
    return parts


def _probe_values(stats: dict[str, dict[str, float]], argmax: bool) -> dict[str, dict]:
    """One probe's compact records: every scored family, and `argmax` read off the `chosen` pass."""
    out = {f: probe_values(f, st) for f, st in stats.items()}
    if argmax and "chosen" in stats:
        out["argmax"] = probe_values("argmax", stats["chosen"])
    return out
