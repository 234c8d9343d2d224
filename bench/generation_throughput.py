"""Generation throughput: batched `alignkit.generation.generate` vs one prompt at a time, same model and settings.

    python bench/generation_throughput.py                      # SmolLM2-135M-Instruct (GGUF wheel), CPU
    python bench/generation_throughput.py --prompts 32 --batch_size 32 --max_new_tokens 64 --threads 2
    OMP_NUM_THREADS=1 python bench/generation_throughput.py --threads 1 --repeats 2   # RESULTS.md section 13

Greedy decoding is `model.generate` (through `alignkit.generation.generate`), batched and one prompt at a time; the
sampling row samples through the same function. Its figures go to bench/results/generation_throughput/result.json
(bench/_results.py).

Each mode runs `--repeats` times, the modes taking turns, and its fastest run counts: on a machine shared with other
jobs, load that comes and goes would otherwise land on whichever mode happened to run then.

Prompts are the built-in held-out prompts. Tokens are counted as the tokens of the returned responses (plus the EOS
when a response stopped before max_new_tokens): padding and the steps a finished row idles in its batch are a cost of
batching, so they count in the time but not in the tokens. A third row samples k responses per prompt at once
(num_return_sequences), as the on-policy stage does.
"""

from __future__ import annotations

import argparse
import time

import torch
from _results import write_result

from alignkit.config import ModelConfig
from alignkit.data.builtin import load_builtin
from alignkit.generation import generate
from alignkit.models import load_model, load_tokenizer


def count_tokens(tokenizer, outputs: list[list[str]], max_new_tokens: int) -> int:
    total = 0
    for responses in outputs:
        for text in responses:
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            total += min(n + 1, max_new_tokens)  # + the EOS it stopped at (when it stopped early)
    return total


def timed(model, tokenizer, prompts, **kwargs) -> tuple[list[list[str]], float]:
    start = time.perf_counter()
    outputs = generate(model, tokenizer, prompts, **kwargs)
    return outputs, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=ModelConfig().model_name_or_path)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--k", type=int, default=4, help="samples per prompt in the sampling row")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode, taking turns; the fastest counts")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ModelConfig(model_name_or_path=args.model)
    tokenizer, model = load_tokenizer(cfg), load_model(cfg)
    prompts = load_builtin()["test"]["prompt"][: args.prompts]
    generate(model, tokenizer, prompts[:2], max_new_tokens=4, batch_size=2)  # warm-up: first-call overheads
    common = {"max_new_tokens": args.max_new_tokens}

    modes = {
        "one": {"batch_size": 1},
        "batched": {"batch_size": args.batch_size},
        "sampled": {"batch_size": args.batch_size, "do_sample": True, "num_return_sequences": args.k, "seed": 0},
    }
    outputs: dict[str, list[list[str]]] = {}
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(args.repeats):
        for mode, kwargs in modes.items():
            outputs[mode], seconds = timed(model, tokenizer, prompts, **kwargs, **common)
            times[mode].append(seconds)
    one, batched, sampled = outputs["one"], outputs["batched"], outputs["sampled"]
    t_one, t_batched, t_sampled = (min(times[mode]) for mode in modes)
    rows = [
        ("one prompt at a time, greedy", 1, one, t_one),
        (f"batched, greedy (batch {args.batch_size})", args.batch_size, batched, t_batched),
        (f"batched, sampling k={args.k} (batch {args.batch_size}x{args.k})", args.batch_size, sampled, t_sampled),
    ]
    device = next(model.parameters()).device
    print(f"model {args.model}, {len(prompts)} prompts, max_new_tokens {args.max_new_tokens}, device {device}, "
          f"torch threads {torch.get_num_threads()}; fastest of {args.repeats} runs per mode")  # fmt: skip
    print("all runs (s): " + "; ".join(f"{m} " + " / ".join(f"{t:.1f}" for t in ts) for m, ts in times.items()))
    print(f"{'mode':<44} {'tokens':>7} {'seconds':>8} {'tokens/s':>9}")
    speeds, table = [], []
    for name, _, outputs, seconds in rows:
        tokens = count_tokens(tokenizer, outputs, args.max_new_tokens)
        speeds.append(tokens / seconds)
        table.append({"mode": name, "tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds})
        print(f"{name:<44} {tokens:>7} {seconds:>8.1f} {tokens / seconds:>9.1f}")
    same = sum(a == b for a, b in zip(one, batched))
    print(f"batched / one-at-a-time throughput: {speeds[1] / speeds[0]:.2f}x (greedy); "
          f"{speeds[2] / speeds[0]:.2f}x (sampling k={args.k})")  # fmt: skip
    print(f"identical greedy responses batched vs one at a time: {same}/{len(prompts)} (left padding can flip "
          "near-tied tokens of the Q4-derived weights)")  # fmt: skip
    figures = {
        "model": args.model,
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "k": args.k,
        "device": str(device),
        "repeats": args.repeats,
        "all_runs_seconds": times,
        "rows": table,
        "batched_vs_one_greedy": speeds[1] / speeds[0],
        "batched_vs_one_sampling": speeds[2] / speeds[0],
        "identical_greedy_responses": same,
    }
    write_result("generation_throughput", argv, figures)


if __name__ == "__main__":
    main()
