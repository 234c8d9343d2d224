"""`MonitorConfig`: the probe, squeezing-score and guard settings, as one dataclass of the recipe's flat namespace.

Field names carry a `probe_`, `squeeze_` or `guard_` prefix because the recipe parses several dataclasses into one
YAML namespace, where every key must be unique.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from alignkit.endpoint import JudgeEndpoint
from alignkit.errors import AlignkitError

# Response families, in the paper's terms. The order is the order of plots and tables.
PAIR_FAMILIES = ("chosen", "rejected")
REWRITE_FAMILIES = ("chosen_rephrase", "rejected_rephrase", "chosen_reformat", "rejected_reformat")
IRRELEVANT_FAMILIES = ("irrelevant_train", "irrelevant_test", "irrelevant_human")
NOISE_FAMILIES = ("shuffled", "non_human")
MODEL_FAMILIES = ("greedy", "argmax")  # derived from the model at each evaluation, not stored in the probe set
ALL_FAMILIES = PAIR_FAMILIES + REWRITE_FAMILIES + IRRELEVANT_FAMILIES + NOISE_FAMILIES + MODEL_FAMILIES
GUARD_ACTIONS = ("warn", "stop", "mitigate")
GUARD_MITIGATIONS = ("sft_weight", "negative_floor")  # what `mitigate` switches on (docs/remedies.md)
# What the alert can read (docs/monitors.md): the original score, or a mechanism metric (alignkit.monitors.scoring).
ALERT_METRICS = (
    "score", "off_target_fall", "collateral_ratio", "concentration_alt", "concentration_top", "greedy_start_rise",
    "rejected_fall",
)  # fmt: skip
ALERT_BOUNDS = ("mean", "lower")
# Responses no stage trains directly: not y+ or y- of any training row (irrelevant_train is another row's y+, and the
# rewrites share y+'s or y-'s words and meaning, so direct training reaches them too).
OFF_TARGET_FAMILIES = ("irrelevant_test", "irrelevant_human", "shuffled", "non_human")
# Mid-stage evaluations by default: what the alert reads (the off-target families) and the trained pair (argmax comes
# free with chosen). No greedy decoding, the costliest family: a full evaluation stays at each stage's ends.
STEP_FAMILIES = ("chosen", "rejected", *OFF_TARGET_FAMILIES, "argmax")


def alert_unavailable(metric: str, families: Sequence[str]) -> str | None:
    """Why `metric` cannot be computed from the tracked `families`, or None when it can."""
    has = set(families)
    need: list[str] = []
    if metric == "score" and not (has & set(MODEL_FAMILIES) and has - set(MODEL_FAMILIES)):
        need.append("greedy or argmax, and at least one other family")
    if metric in ("off_target_fall", "collateral_ratio") and not has & set(OFF_TARGET_FAMILIES):
        need.append(f"one of {', '.join(OFF_TARGET_FAMILIES)}")
    along_rejected = ("collateral_ratio", "concentration_alt", "concentration_top", "rejected_fall")
    if metric in along_rejected and "rejected" not in has:
        need.append("rejected")
    if metric == "greedy_start_rise" and "greedy" not in has:
        need.append("greedy")
    return f"squeeze_metric '{metric}' needs the probe families {' and '.join(need)}" if need else None


def alert_families(metric: str) -> tuple[str, ...]:
    """The families `metric` is computed from (any one of them suffices for the off-target metrics)."""
    if metric in ("off_target_fall", "collateral_ratio"):
        return OFF_TARGET_FAMILIES + (("rejected",) if metric == "collateral_ratio" else ())
    if metric in ("concentration_alt", "concentration_top", "rejected_fall"):
        return ("rejected",)
    if metric == "greedy_start_rise":
        return ("greedy",)
    return ALL_FAMILIES  # score


@dataclass
class MonitorConfig:
    probe_enabled: bool = field(
        default=True,
        metadata={"help": "Track the probe families through every stage (squeezing monitor). False turns it off."},
    )
    probe_families: list[str] = field(
        default_factory=lambda: list(ALL_FAMILIES),
        metadata={
            "help": "Response families to track: chosen, rejected, chosen_rephrase, rejected_rephrase, "
            "chosen_reformat, rejected_reformat, irrelevant_train, irrelevant_test, irrelevant_human, shuffled, "
            "non_human, greedy (the model's own greedy answer, regenerated at each evaluation), argmax (the "
            "teacher-forced per-token argmax along the chosen answer; it implies chosen)."
        },
    )
    probe_num_prompts: int = field(
        default=32,
        metadata={"help": "Probe prompts drawn from the training split, and as many from the held-out one."},
    )
    probe_every: int = field(
        default=0,
        metadata={
            "help": "Evaluate the probes every N optimizer steps (besides each stage's first and last step). 0 = "
            "automatic: probe_min_evaluations evenly spaced evaluations per stage, and more as long as probing stays "
            "within probe_time_budget of the stage's training time."
        },
    )
    probe_min_evaluations: int = field(
        default=4,
        metadata={
            "help": "With probe_every=0, at least this many evaluations per stage, its first and last included, "
            "evenly spaced in steps (a 24-step stage: steps 0, 8, 16, 24); probe_time_budget may add more. 2 = the "
            "ends only."
        },
    )
    probe_step_families: list[str] = field(
        default_factory=lambda: list(STEP_FAMILIES),
        metadata={
            "help": "Families scored at mid-stage evaluations (of those tracked in probe_families), plus whatever "
            "squeeze_metric reads (every family for 'score'); each stage's first and last evaluation score every "
            "tracked family. 'all' = every tracked family at every evaluation. The default (the trained pair, argmax "
            "and the off-target families the alert reads) leaves out the greedy decoding and the rewrites, most of "
            "an evaluation's cost."
        },
    )
    probe_time_budget: float = field(
        default=0.05,
        metadata={
            "help": "With probe_every=0, the largest share of training wall time that probing may take, counting the "
            "stage's first and last evaluation (which always run, so very short stages can exceed it)."
        },
    )
    probe_max_overhead: float = field(
        default=0.0,
        metadata={
            "help": "A hard cap on the monitor's cost, e.g. 0.05: the largest share of a stage's training time that "
            "probing may take, its first and last evaluation included. Evaluations are spaced to fit (from the "
            "measured cost of the stage's first evaluation and the measured time of its steps; probe_min_evaluations "
            "is not forced), and when even the last evaluation would not fit, fewer probes are scored from then on "
            "(at least 2 per split). The report gives the realised share and the evaluation steps. 0 = off: the "
            "schedule of probe_every, probe_min_evaluations and probe_time_budget."
        },
    )
    probe_max_new_tokens: int = field(
        default=32, metadata={"help": "Longest greedy decoding for the `greedy` family, in new tokens."}
    )
    probe_batch_size: int = field(default=16, metadata={"help": "(prompt, response) pairs per forward pass."})
    probe_generate_batch_size: int = field(
        default=64,
        metadata={
            "help": "Prompts per greedy-generation batch. Decoding costs little per token, so one large batch is "
            "faster than several small ones (on CPU, 64 prompts: 24 s in one batch vs 42 s in batches of 16)."
        },
    )
    probe_max_length: int = field(
        default=512, metadata={"help": "Truncate probe sequences (prompt + response) to this many tokens."}
    )
    probe_set_path: str | None = field(
        default=None,
        metadata={
            "help": "Load this saved probe set (probe_set.jsonl of an earlier run) instead of building one, so that "
            "two runs are compared on exactly the same probes."
        },
    )
    probe_rephrase_base_url: str | None = field(
        default=None,
        metadata={
            "help": "OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1) that writes the rephrase/reformat "
            "families when the data has no such columns. Unset: those families are left out, with a note."
        },
    )
    probe_rephrase_model: str | None = field(
        default=None, metadata={"help": "Model name sent to the rephrase endpoint (required with a base URL)."}
    )
    probe_rephrase_api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "Environment variable holding the endpoint's API key (local servers accept any key)."},
    )
    probe_rephrase_cache: str | None = field(
        default=None,
        metadata={"help": "JSONL cache of generated rewrites (default: ~/.cache/alignkit/rephrase_cache.jsonl)."},
    )
    squeeze_metric: str = field(
        default="collateral_ratio",
        metadata={
            "help": "The metric the alert and the guard read (docs/monitors.md, 'Mechanism metrics' and "
            f"'Calibration'): one of {', '.join(ALERT_METRICS)}. 'score' is the original min(rise, fall)."
        },
    )
    squeeze_threshold: float = field(
        default=0.183,
        metadata={
            "help": "Alert when squeeze_metric (since the stage's first evaluation) reaches this value; its unit is "
            "the metric's (nats/token, log-odds/token, or nats per nat for collateral_ratio). The default 0.183 "
            "nats of off-target fall per nat of y- fall was frozen on development runs and tested on 24 held-out "
            "runs (docs/monitors.md, 'Detector v2'); the earlier alert was off_target_fall >= 0.075."
        },
    )
    squeeze_alert_on: str = field(
        default="mean",
        metadata={
            "help": "'mean': the metric's mean over the probes reaches the threshold; 'lower': the lower end of its "
            "95% bootstrap interval over probes does (fewer false alarms on few probes, later detection)."
        },
    )
    probe_bootstrap: int = field(
        default=1000,
        metadata={"help": "Bootstrap replicates (over probes) for the 95% intervals of the mechanism metrics."},
    )
    guard_action: str = field(
        default="warn",
        metadata={
            "help": "What an alert does: 'warn' (log and report), 'stop' (save a checkpoint and end the stage), "
            "'mitigate' (switch on the remedy guard_mitigation names for the rest of the stage: raise the weight of "
            "the SFT term on y+ to guard_sft_weight, for which the preference stage must have 'sft' in loss_type, "
            "with weight 0 until then; or turn on the negative-gradient floor)."
        },
    )
    guard_sft_weight: float = field(
        default=1.0, metadata={"help": "The SFT-on-y+ loss weight that guard_action='mitigate' raises to."}
    )
    guard_mitigation: str = field(
        default="sft_weight",
        metadata={
            "help": "What guard_action='mitigate' switches on from the step the alert fires: 'sft_weight' (the SFT "
            "mix, raised to guard_sft_weight) or 'negative_floor' (the negative-gradient floor at "
            "guard_negative_floor; preference loss dpo, dpop or cal_dpo). docs/remedies.md."
        },
    )
    guard_negative_floor: float = field(
        default=0.5,
        metadata={"help": "The negative_floor (nats per token) that guard_mitigation='negative_floor' turns on."},
    )

    def __post_init__(self):
        if isinstance(self.probe_families, str):
            self.probe_families = [f.strip() for f in self.probe_families.split(",") if f.strip()]
        unknown = [f for f in self.probe_families if f not in ALL_FAMILIES]
        if unknown:
            raise AlignkitError(
                f"config field 'probe_families' has unknown families {unknown}; known: {', '.join(ALL_FAMILIES)}"
            )
        if self.probe_enabled and not self.probe_families:
            raise AlignkitError(
                "config field 'probe_families' is empty; list at least one family or set probe_enabled"
            )
        if "argmax" in self.probe_families and "chosen" not in self.probe_families:
            self.probe_families.append("chosen")  # the argmax family is read off the forward pass along y+
        self.probe_families = [f for f in ALL_FAMILIES if f in self.probe_families]  # canonical order, no repeats
        self._check_step_families()
        positive = ("probe_num_prompts", "probe_max_new_tokens", "probe_batch_size", "probe_generate_batch_size")
        for name in (*positive, "probe_max_length"):
            if getattr(self, name) < 1:
                raise AlignkitError(f"config field '{name}' is {getattr(self, name)}; it must be >= 1")
        if self.probe_min_evaluations < 2:
            raise AlignkitError(
                f"config field 'probe_min_evaluations' is {self.probe_min_evaluations}; it must be >= 2 (a stage's "
                "first and last evaluation always run)"
            )
        if self.probe_every < 0:
            raise AlignkitError(
                f"config field 'probe_every' is {self.probe_every}; use N > 0 steps, or 0 for the automatic schedule"
            )
        if not 0 <= self.probe_max_overhead < 1:
            raise AlignkitError(
                f"config field 'probe_max_overhead' is {self.probe_max_overhead}; it must be a fraction in [0, 1)"
            )
        if self.probe_max_overhead > 0 and self.probe_every > 0:
            raise AlignkitError(
                f"config fields 'probe_max_overhead' ({self.probe_max_overhead}) and 'probe_every' "
                f"({self.probe_every}) both set the schedule; set one of them"
            )
        if not 0 < self.probe_time_budget < 1:
            raise AlignkitError(
                f"config field 'probe_time_budget' is {self.probe_time_budget}; it must be a fraction in (0, 1)"
            )
        if not math.isfinite(self.squeeze_threshold):
            raise AlignkitError(f"config field 'squeeze_threshold' is {self.squeeze_threshold}; it must be finite")
        if self.squeeze_metric not in ALERT_METRICS:
            raise AlignkitError(
                f"config field 'squeeze_metric' is {self.squeeze_metric!r}; it must be one of: "
                f"{', '.join(ALERT_METRICS)}"
            )
        if self.squeeze_alert_on not in ALERT_BOUNDS:
            raise AlignkitError(
                f"config field 'squeeze_alert_on' is {self.squeeze_alert_on!r}; it must be one of: "
                f"{', '.join(ALERT_BOUNDS)}"
            )
        if self.probe_bootstrap < 0:
            raise AlignkitError(f"config field 'probe_bootstrap' is {self.probe_bootstrap}; it must be >= 0")
        if self.guard_action not in GUARD_ACTIONS:
            raise AlignkitError(
                f"config field 'guard_action' is {self.guard_action!r}; it must be one of: {', '.join(GUARD_ACTIONS)}"
            )
        if self.guard_sft_weight <= 0:
            raise AlignkitError(f"config field 'guard_sft_weight' is {self.guard_sft_weight}; it must be > 0")
        if self.guard_mitigation not in GUARD_MITIGATIONS:
            raise AlignkitError(f"config field 'guard_mitigation' is {self.guard_mitigation!r}; it must be one of: "
                                f"{', '.join(GUARD_MITIGATIONS)}")  # fmt: skip
        if not self.guard_negative_floor >= 0 or self.guard_negative_floor == math.inf:
            raise AlignkitError(
                f"config field 'guard_negative_floor' is {self.guard_negative_floor}; it must be >= 0 nats per token"
            )
        if self.rephrase_endpoint is not None:
            # Only a URL: the rephraser starts no local server and has no verifier.
            self.rephrase_endpoint.validate("probe_rephrase_", kinds=())

    def _check_step_families(self) -> None:
        """Normalise `probe_step_families` ('all' or a comma list as from the command line) and add what the alert
        reads, so that it is measured at every evaluation."""
        step = self.probe_step_families
        if isinstance(step, str):
            step = [f.strip() for f in step.split(",") if f.strip()]
        unknown = [f for f in step if f not in (*ALL_FAMILIES, "all")]
        if unknown:
            raise AlignkitError(
                f"config field 'probe_step_families' has unknown families {unknown}; known: all, "
                f"{', '.join(ALL_FAMILIES)}"
            )
        needed = set(alert_families(self.squeeze_metric))
        if "all" in step or not step or self.squeeze_metric == "score":  # the score averages every tracked family
            needed = set(ALL_FAMILIES)
        self.probe_step_families = [f for f in self.probe_families if f in step or f in needed]

    @property
    def rephrase_endpoint(self) -> JudgeEndpoint | None:
        """The endpoint that writes the rewrite families; None when `probe_rephrase_base_url` is unset."""
        if not self.probe_rephrase_base_url:
            return None
        return JudgeEndpoint(self.probe_rephrase_base_url, self.probe_rephrase_model, self.probe_rephrase_api_key_env)
