"""`MonitorConfig`: the probe, squeezing-score and guard settings, as one dataclass of the recipe's flat namespace.

Field names carry a `probe_`, `squeeze_` or `guard_` prefix because the recipe parses several dataclasses into one
YAML namespace, where every key must be unique.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from alignkit.errors import AlignkitError

# Response families, in the paper's terms. The order is the order of plots and tables.
PAIR_FAMILIES = ("chosen", "rejected")
REWRITE_FAMILIES = ("chosen_rephrase", "rejected_rephrase", "chosen_reformat", "rejected_reformat")
IRRELEVANT_FAMILIES = ("irrelevant_train", "irrelevant_test", "irrelevant_human")
NOISE_FAMILIES = ("shuffled", "non_human")
MODEL_FAMILIES = ("greedy", "argmax")  # derived from the model at each evaluation, not stored in the probe set
ALL_FAMILIES = PAIR_FAMILIES + REWRITE_FAMILIES + IRRELEVANT_FAMILIES + NOISE_FAMILIES + MODEL_FAMILIES
GUARD_ACTIONS = ("warn", "stop", "mitigate")


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
            "automatic: evaluate as often as keeps probing within probe_time_budget of the stage's training time."
        },
    )
    probe_time_budget: float = field(
        default=0.05,
        metadata={
            "help": "With probe_every=0, the largest share of training wall time that probing may take, counting the "
            "stage's first and last evaluation (which always run, so very short stages can exceed it)."
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
    squeeze_threshold: float = field(
        default=0.05,
        metadata={
            "help": "Alert when the squeezing score (nats/token, see docs/monitors.md) reaches this value: the "
            "smaller of the greedy/argmax rise and the other families' fall since the stage's first evaluation."
        },
    )
    guard_action: str = field(
        default="warn",
        metadata={
            "help": "What an alert does: 'warn' (log and report), 'stop' (save a checkpoint and end the stage), "
            "'mitigate' (raise the weight of the SFT term on y+ to guard_sft_weight for the rest of the stage; the "
            "preference stage must have 'sft' in loss_type, with weight 0 until then)."
        },
    )
    guard_sft_weight: float = field(
        default=1.0, metadata={"help": "The SFT-on-y+ loss weight that guard_action='mitigate' raises to."}
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
        positive = ("probe_num_prompts", "probe_max_new_tokens", "probe_batch_size", "probe_generate_batch_size")
        for name in (*positive, "probe_max_length"):
            if getattr(self, name) < 1:
                raise AlignkitError(f"config field '{name}' is {getattr(self, name)}; it must be >= 1")
        if self.probe_every < 0:
            raise AlignkitError(
                f"config field 'probe_every' is {self.probe_every}; use N > 0 steps, or 0 for the automatic schedule"
            )
        if not 0 < self.probe_time_budget < 1:
            raise AlignkitError(
                f"config field 'probe_time_budget' is {self.probe_time_budget}; it must be a fraction in (0, 1)"
            )
        if not math.isfinite(self.squeeze_threshold):
            raise AlignkitError(f"config field 'squeeze_threshold' is {self.squeeze_threshold}; it must be finite")
        if self.guard_action not in GUARD_ACTIONS:
            raise AlignkitError(
                f"config field 'guard_action' is {self.guard_action!r}; it must be one of: {', '.join(GUARD_ACTIONS)}"
            )
        if self.guard_sft_weight <= 0:
            raise AlignkitError(f"config field 'guard_sft_weight' is {self.guard_sft_weight}; it must be > 0")
        if self.probe_rephrase_base_url and not self.probe_rephrase_model:
            raise AlignkitError(
                "config field 'probe_rephrase_model' is not set; it is required with 'probe_rephrase_base_url' "
                f"({self.probe_rephrase_base_url})"
            )
