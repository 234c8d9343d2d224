"""Training wall time with the squeezing monitor at its default settings vs without it, in one run.

The same DPO stage (same model init, data order and steps) is trained without and with the monitor, alternating when
`--repeats` > 1 so that drifting machine load hits both alike; the ratio of the medians is the overhead. The monitor
runs at `MonitorConfig()` defaults unless overridden: 32 + 32 probe prompts, every family, and the automatic schedule
(probe_every=0) that keeps probing within 5% of the stage's training time once the stage is long enough to afford its
first and last evaluation. The script also prints that break-even length from the measured costs.

    python bench/monitor_overhead.py --model smollm2 --steps 40           # the real 135M model, LoRA r=8
    python bench/monitor_overhead.py --model tiny --steps 1500 --repeats 1 # tiny model, long stage
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def build(model_name: str):
    """(policy, reference or None, tokenizer, peft config or None)."""
    if model_name == "tiny":
        sys.path.insert(0, str(ROOT))
        from tests.conftest import build_tiny_model, build_tiny_tokenizer

        tokenizer = build_tiny_tokenizer()
        return build_tiny_model(tokenizer), build_tiny_model(tokenizer), tokenizer, None
    sys.path.insert(0, str(ROOT / "bench"))
    from squeezing_signature import load_model_and_tokenizer, lora

    model, tokenizer = load_model_and_tokenizer()
    return model, None, tokenizer, lora()


def train_once(args, monitored: bool, probe_set, config, out: Path) -> dict:
    from trl import DPOConfig, DPOTrainer

    from alignkit.data.builtin import load_builtin
    from alignkit.monitors import SqueezingMonitor

    torch.manual_seed(0)
    model, ref_model, tokenizer, peft_config = build(args.model)
    pairs = load_builtin()["train"].select_columns(["prompt", "chosen", "rejected"])
    dpo_args = DPOConfig(
        output_dir=str(out),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=1e-4,
        logging_steps=max(args.steps // 10, 1),
        save_strategy="no",
        report_to=[],
        gradient_checkpointing=False,
        use_cpu=True,
        max_length=128,
        disable_tqdm=True,
        seed=0,
    )
    callbacks = []
    if monitored:
        monitor = SqueezingMonitor(probe_set, config, tokenizer, out)
        callbacks = [monitor.callback("dpo", out / "dpo")]
    trainer = DPOTrainer(
        model,
        ref_model,
        args=dpo_args,
        train_dataset=pairs,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    if callbacks:
        callbacks[0].attach(trainer)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "probe_seconds": 0.0, "evaluations": 0}
    if monitored:
        result["probe_seconds"] = callbacks[0].probe_seconds
        result["evaluations"] = len(monitor.records)
        result["eval_seconds"] = [round(r["probe/seconds"], 1) for r in monitor.records]
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="smollm2")
    parser.add_argument("--steps", type=int, default=40, help="DPO optimizer steps per run")
    parser.add_argument("--batch", type=int, default=2, help="pairs per step")
    parser.add_argument("--repeats", type=int, default=1, help="baseline/monitored pairs, alternating")
    parser.add_argument("--probe-every", type=int, default=None, help="override MonitorConfig.probe_every")
    parser.add_argument("--probe-n", type=int, default=None, help="override MonitorConfig.probe_num_prompts")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="outputs/monitor_overhead")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from alignkit.data.builtin import load_builtin
    from alignkit.monitors import MonitorConfig, build_probe_set

    overrides = {}
    if args.probe_every is not None:
        overrides["probe_every"] = args.probe_every
    if args.probe_n is not None:
        overrides["probe_num_prompts"] = args.probe_n
    config = MonitorConfig(**overrides)
    data = load_builtin()
    probe_set = build_probe_set(data["train"], data["test"], config, seed=0)
    runs = {"baseline": [], "monitored": []}
    for repeat in range(args.repeats):
        for kind in ("baseline", "monitored") if repeat % 2 == 0 else ("monitored", "baseline"):
            out = Path(args.out) / f"{kind}-{repeat}"
            runs[kind].append(train_once(args, kind == "monitored", probe_set, config, out))
            print(f"{kind} #{repeat}: {runs[kind][-1]}", flush=True)

    base = statistics.median(r["seconds"] for r in runs["baseline"])
    mon = statistics.median(r["seconds"] for r in runs["monitored"])
    probe = statistics.median(r["probe_seconds"] for r in runs["monitored"])
    evaluations = runs["monitored"][0]["evaluations"]
    per_eval = probe / max(evaluations, 1)
    per_step = base / args.steps
    fields = ("probe_num_prompts", "probe_every", "probe_time_budget", "probe_max_new_tokens")
    fields += ("probe_batch_size", "probe_generate_batch_size")
    shown = {k: getattr(config, k) for k in fields}
    print(f"\nmodel={args.model} steps={args.steps} batch={args.batch} families={len(probe_set.families)} {shown}")
    print(f"without monitor: {base:.1f} s ({per_step:.2f} s/step)")
    print(f"with monitor:    {mon:.1f} s ({evaluations} evaluations, {probe:.1f} s probing, {per_eval:.1f} s each)")
    print(f"overhead ratio:  {mon / base:.3f} (wall time with monitor / without)")
    # Less sensitive to load drift between the two runs: the monitor's own timing within the monitored run.
    print(f"probing share:   {probe / (mon - probe):.3f} (probe time / the monitored run's training time)")
    # The two evaluations every stage makes (first and last step) fit the budget once training is this long:
    breakeven = 2 * per_eval / config.probe_time_budget
    print(
        f"break-even: a stage of >= {breakeven:.0f} s of training (~{breakeven / per_step:.0f} steps here) keeps "
        f"probing within {config.probe_time_budget:.0%} under the automatic schedule"
    )


if __name__ == "__main__":
    main()
