"""`PreflightConfig`: the pre-flight's settings, one dataclass of the recipe's flat namespace (keys `preflight*`).

Only the error type is imported here, so `alignkit.config` can import this module without pulling in torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from alignkit.errors import AlignkitError

PREFLIGHT_MODES = ("off", "report", "act")
PREFLIGHT_ACTIONS = ("extend_sft", "drop")
PREFLIGHT_PAIRS = ("stage", "all")


@dataclass
class PreflightConfig:
    preflight: str = field(
        default="off",
        metadata={
            "help": "Score the training pairs before the preference stage (docs/preflight.md). 'off'; 'report': add "
            "the pre-flight section (ranked pairs, verdict) to report.md; 'act': also apply preflight_action to the "
            'pairs at risk. In YAML write it quoted ("off"): YAML 1.1 reads a bare off as false.'
        },
    )
    preflight_action: str = field(
        default="extend_sft",
        metadata={
            "help": "preflight=act: 'extend_sft' trains the SFT stage on y- of the pairs at risk too (scored under "
            "the base model, since the decision comes before SFT; a no-op with sft_mode=extended, which already "
            "trains on every y-); 'drop' removes them from the preference stage (scored under the SFT model)."
        },
    )
    preflight_threshold: float = field(
        default=-2.5,
        metadata={
            "help": "A pair is at risk when its rejected response's mean per-token log-prob under the preference "
            "stage's starting model is below this (nats/token): y- sits in a low-probability valley, where DPO's "
            "negative gradient squeezes mass onto the argmax. Validated for runs, not pairs: on far-y- data, where "
            "most pairs fall below -2.5, act at -2.5 halved the measured off-target fall (3 seeds) at equal "
            "verifier accuracy; within a run, depth does not rank which pairs squeeze (docs/preflight.md)."
        },
    )
    preflight_pairs: str = field(
        default="stage",
        metadata={
            "help": "'stage': the pairs the preference stage will train on (a seeded subset when preference_max_steps "
            "uses fewer than all); 'all': every training pair."
        },
    )
    preflight_filter_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Pre-flight filtering (Razin et al., ICLR 2025): drop this fraction of the scored pairs, the "
            "riskiest by the pre-flight's ranking (deepest y- under the preference stage's starting model), from the "
            "preference stage; 0 = off. It scores after SFT even with preflight 'off', and the report lists every "
            "dropped pair. Not with preflight 'act' (which drops or extends by preflight_threshold instead)."
        },
    )
    preflight_batch_size: int = field(
        default=16,
        metadata={"help": "Pairs per scoring batch (each pair: its prompt once, then y+ and y- against it)."},
    )
    preflight_dynamics_pairs: int = field(
        default=2,
        metadata={
            "help": "Pairs (a seeded sample) whose one-step predicted change of an off-target response (a held-out "
            "y+) is computed with alignkit.dynamics. Each costs a backward and a forward-mode pass; 0 skips it."
        },
    )

    def __post_init__(self):
        choices_of = {
            "preflight": PREFLIGHT_MODES, "preflight_action": PREFLIGHT_ACTIONS, "preflight_pairs": PREFLIGHT_PAIRS,
        }  # fmt: skip
        for name, choices in choices_of.items():
            if getattr(self, name) not in choices:
                raise AlignkitError(
                    f"config field '{name}' is {getattr(self, name)!r}; it must be one of: {', '.join(choices)}"
                )
        if not math.isfinite(self.preflight_threshold):
            raise AlignkitError(f"config field 'preflight_threshold' is {self.preflight_threshold}; it must be finite")
        if self.preflight_threshold >= 0:
            raise AlignkitError(
                f"config field 'preflight_threshold' is {self.preflight_threshold}; it is a log-prob per token "
                "(nats), so it must be < 0"
            )
        if not 0 <= self.preflight_filter_fraction < 1:
            raise AlignkitError(
                f"config field 'preflight_filter_fraction' is {self.preflight_filter_fraction}; it must be in [0, 1)"
            )
        if self.preflight_filter_fraction > 0 and self.preflight == "act":
            raise AlignkitError(
                "config fields 'preflight_filter_fraction' and preflight 'act' both choose pairs to act on; use one "
                "(preflight_filter_fraction drops a share by rank, act applies preflight_action below the threshold)"
            )
        if self.preflight_batch_size < 1:
            raise AlignkitError(f"config field 'preflight_batch_size' is {self.preflight_batch_size}; it must be >= 1")
        if self.preflight_dynamics_pairs < 0:
            raise AlignkitError(
                f"config field 'preflight_dynamics_pairs' is {self.preflight_dynamics_pairs}; it must be >= 0"
            )

    @property
    def mode(self) -> str:
        return self.preflight

    @property
    def runs(self) -> bool:
        """Whether the recipe scores the pairs at all: a mode other than 'off', or pre-flight filtering."""
        return self.preflight != "off" or self.preflight_filter_fraction > 0
