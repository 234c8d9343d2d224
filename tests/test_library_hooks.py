"""One test per internal hook of TRL, transformers, peft and openai that alignkit relies on.

pyproject.toml bounds TRL, transformers and peft to the minor release these tests pass on. Before widening a bound,
run this file against the new release: a test that fails names the hook, where alignkit uses it, and what the
installed release does instead, rather than letting a run silently train something else.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from packaging.requirements import Requirement
from transformers import Trainer, TrainerCallback, TrainerState, TrainingArguments
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from alignkit.callbacks import STOP_REASON

from .conftest import build_tiny_model


def require(ok: bool, hook: str, used_by: str, package: str, found: str = "") -> None:
    """Fail with a message naming the hook, its user and the installed release."""
    if not ok:
        pytest.fail(
            f"{package} {version(package)} lacks the hook {hook}, which {used_by} relies on"
            f"{': ' + found if found else ''}. Keep {package} in the range pyproject.toml allows, or adapt {used_by}."
        )


def params(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def source(function) -> str:
    return inspect.getsource(function)


@pytest.fixture(scope="module")
def dpo_trainer(tiny_tokenizer, tmp_path_factory):
    """A tiny TRL DPOTrainer with the loss list the recipe builds for an SFT term (weights passed explicitly)."""
    pairs = Dataset.from_list([{"prompt": f"What is {i} plus {i}?", "chosen": f" {2 * i}.", "rejected": f" {i}."}
                               for i in range(2)])  # fmt: skip
    args = DPOConfig(output_dir=str(tmp_path_factory.mktemp("dpo")), loss_type=["sigmoid", "sft"],
                     loss_weights=[1.0, 0.0], per_device_train_batch_size=2, max_steps=1, report_to=[],
                     use_cpu=True, bf16=False, gradient_checkpointing=False, max_length=64)  # fmt: skip
    return DPOTrainer(model=build_tiny_model(tiny_tokenizer), ref_model=build_tiny_model(tiny_tokenizer), args=args,
                      train_dataset=pairs, processing_class=tiny_tokenizer)  # fmt: skip


def test_trl_dpo_precompute_ref_logps():
    hook = "DPOTrainer._precompute_ref_logps(dataset, name, batch_size)"
    method = getattr(DPOTrainer, "_precompute_ref_logps", None)
    user = "alignkit/stages.py PrecomputedReferenceDPOTrainer"
    require(method is not None, hook, user, "trl", "no such method")
    require(params(method) == ["self", "dataset", "name", "batch_size"], hook, user, "trl",
            f"its parameters are {params(method)}")  # fmt: skip


def test_trl_dpo_compute_loss_reads_loss_types_and_weights():
    hook = "DPOTrainer._compute_loss(model, inputs, return_outputs) summing self.loss_types by self.loss_weights"
    method = getattr(DPOTrainer, "_compute_loss", None)
    users = "alignkit/objectives.py and the guard's mitigate (alignkit/monitors/guard.py)"
    require(method is not None, hook, users, "trl", "no such method")
    require(params(method) == ["self", "model", "inputs", "return_outputs"], hook, users, "trl",
            f"its parameters are {params(method)}")  # fmt: skip
    text = source(method)
    require("self.loss_types" in text and "self.loss_weights" in text, hook, users, "trl",
            "it no longer reads the two lists at each step")  # fmt: skip
    require("self._metrics" in text, "DPOTrainer._metrics (per-mode lists of logged values)", "alignkit/objectives.py",
            "trl", "_compute_loss no longer appends to it")  # fmt: skip


def test_trl_dpo_loss_weights_is_the_configs_list(dpo_trainer):
    hook = "DPOTrainer.loss_weights being args.loss_weights itself (edited in place)"
    require(dpo_trainer.loss_types == ["sigmoid", "sft"], "DPOTrainer.loss_types", "alignkit/monitors/guard.py",
            "trl", f"it is {getattr(dpo_trainer, 'loss_types', None)!r}")  # fmt: skip
    require(getattr(dpo_trainer, "loss_weights", None) is dpo_trainer.args.loss_weights, hook,
            "alignkit/monitors/guard.py raise_sft_weight", "trl", "the trainer keeps a copy")  # fmt: skip


def test_trl_dpo_tokenized_columns_and_reference_attributes(dpo_trainer):
    columns = set(dpo_trainer.train_dataset.column_names)
    require(
        {"prompt_ids", "chosen_ids", "rejected_ids"} <= columns,
        "DPOTrainer's tokenized columns prompt_ids, chosen_ids, rejected_ids",
        "alignkit/stages.py reference_digest",
        "trl",
        f"the columns are {columns}",
    )
    for name in ("ref_model", "ld_alpha"):
        require(hasattr(dpo_trainer, name), f"DPOTrainer.{name}", "alignkit/stages.py _reference_mismatch", "trl")


def test_transformers_base_trainer_log():
    hook = "transformers.Trainer.log(logs) appending to state.log_history and calling on_log"
    require(hasattr(Trainer, "log") and params(Trainer.log)[:2] == ["self", "logs"], hook,
            "alignkit/monitors/callback.py SqueezingCallback._log", "transformers", "no such method")  # fmt: skip
    text = source(Trainer.log)
    require("log_history" in text and "on_log" in text, hook, "alignkit/monitors/callback.py SqueezingCallback._log",
            "transformers", "it no longer records the entry or calls the callbacks")  # fmt: skip


def test_transformers_trainer_state_takes_an_extra_attribute():
    state = TrainerState()
    setattr(state, STOP_REASON, "a test")  # alignkit/callbacks.py stop_training
    require(getattr(state, STOP_REASON, None) == "a test", f"TrainerState.{STOP_REASON} (an extra attribute)",
            "alignkit/callbacks.py", "transformers", "TrainerState refuses attributes")  # fmt: skip


def test_transformers_warmup_steps_below_one_is_a_ratio(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), warmup_steps=0.1, use_cpu=True, report_to=[])
    require(args.get_warmup_steps(100) == 10, "TrainingArguments.warmup_steps < 1 read as a ratio",
            "alignkit/stages.py _training_kwargs (warmup_ratio)", "transformers",
            f"warmup_steps=0.1 gives {args.get_warmup_steps(100)} of 100 steps")  # fmt: skip


def test_transformers_checkpoint_is_whole_when_on_save_runs(tiny_tokenizer, tmp_path):
    seen = []

    class Look(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            folder = tmp_path / f"checkpoint-{state.global_step}"
            seen.append((folder / "trainer_state.json").exists())

    rows = Dataset.from_list([{"prompt": "What is 2 plus 2?", "completion": " 4."}] * 2)
    args = SFTConfig(output_dir=str(tmp_path), max_steps=1, save_steps=1, per_device_train_batch_size=2,
                     report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False)  # fmt: skip
    SFTTrainer(model=build_tiny_model(tiny_tokenizer), args=args, train_dataset=rows, processing_class=tiny_tokenizer,
               callbacks=[Look()]).train()  # fmt: skip
    require(seen == [True], "checkpoint-N/trainer_state.json written before on_save",
            "alignkit/stages.py last_complete_checkpoint and the guard state saved by on_save", "transformers",
            f"on_save saw {seen}")  # fmt: skip


def test_transformers_reads_quantization_from_hf_quantizer(tiny_tokenizer, tmp_path):
    """alignkit/models.py convert_gguf makes a GGUF-loaded model trainable and savable by clearing `hf_quantizer`
    (and `is_quantized`, `config.quantization_config`): transformers must decide "quantized" from those."""
    from transformers import PreTrainedModel
    from transformers import trainer as trainer_module

    user = "alignkit/models.py convert_gguf"
    require("hf_quantizer" in source(PreTrainedModel.save_pretrained), "PreTrainedModel.hf_quantizer read by "
            "save_pretrained", user, "transformers", "save_pretrained no longer reads it")  # fmt: skip
    check = getattr(trainer_module, "validate_quantization_for_training", None)
    require(check is not None, "transformers.trainer.validate_quantization_for_training", user, "transformers")
    model = build_tiny_model(tiny_tokenizer)
    model.hf_quantizer, model.is_quantized = None, False
    check(model)  # a model without a quantizer trains
    model.save_pretrained(tmp_path)
    require((tmp_path / "model.safetensors").exists(), "save_pretrained of a model without a quantizer", user,
            "transformers")  # fmt: skip


def test_peft_adapter_state_functions():
    import peft.utils

    for name in ("load_peft_weights", "set_peft_model_state_dict"):
        require(hasattr(peft.utils, name), f"peft.utils.{name}", "alignkit/onpolicy/stage.py _train_round", "peft")


def test_openai_client_post_returns_the_raw_body():
    import openai

    post = getattr(openai.AsyncOpenAI, "post", None)
    require(
        post is not None and {"cast_to", "body"} <= set(params(post)),
        "AsyncOpenAI.post(path, cast_to=bytes, body=...)",
        "alignkit/judge/client.py ChatRunner._request",
        "openai",
        "no such method or parameters",
    )


def test_torch_version_in_range():
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    assert (major, minor) >= (2, 4), f"torch {torch.__version__} is older than pyproject.toml allows"


def test_pyproject_bounds_admit_the_tested_releases_and_not_the_next_minor():
    """The bounds that the hooks above justify: constraints.txt's release inside, the next minor release outside."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = Path(__file__).parents[1]
    bounds = {r.name.lower(): r.specifier for r in map(Requirement, tomllib.loads(
        (root / "pyproject.toml").read_text())["project"]["dependencies"])}  # fmt: skip
    pinned = dict(line.split("==") for line in (root / "constraints.txt").read_text().split() if "==" in line)
    for name in ("trl", "transformers", "peft"):
        tested = pinned[name]
        major, minor = (int(x) for x in tested.split(".")[:2])
        assert tested in bounds[name], f"pyproject.toml's {name}{bounds[name]} excludes the tested {tested}"
        assert f"{major}.{minor + 1}.0" not in bounds[name], f"{name}{bounds[name]} admits an untested minor release"
    assert pinned["torch"] in bounds["torch"]
