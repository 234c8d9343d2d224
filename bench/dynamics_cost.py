"""Time and peak memory of `alignkit.dynamics.decompose` on the real SmolLM2-135M model, CPU, M×L = 64×64 tokens.

    python bench/dynamics_cost.py                       # all configurations, each in a fresh process
    python bench/dynamics_cost.py --configs lora lora_probes --tokens 64

Each configuration runs in its own subprocess so that its peak RSS (ru_maxrss) is its own. The update is a DPO pair
whose chosen and rejected responses have tokens/2 tokens each (so L = tokens columns); the observed response has
`tokens` tokens (M). Model load time is reported separately and not counted in `decompose_s`.

Configurations:
    lora         fresh LoRA r=8 on q/k/v/o, params="trainable" (gram method), no kernel-norm estimate
    lora_probes  the same plus the ‖K_ml‖_F estimate with 2 probes per update token
    all          params="all" (jvp method: one backward + one forward-mode pass per update token)
    all_cols     params="all" on the first --all-cols update tokens only, to extrapolate when "all" is too slow

The table's rows also go to bench/results/dynamics_cost/result.json (bench/_results.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from _results import write_result

TEXT = (
    "Paris is the capital and largest city of France. It is located on the Seine river in the north of the "
    "country, and it has been one of the most important centres of finance, diplomacy, commerce, culture, fashion "
    "and gastronomy in Europe for centuries. The city is known for its museums and architectural landmarks, such as "
    "the Louvre, the Eiffel Tower and the cathedral of Notre-Dame, and for its cafes, parks and long boulevards."
)
REJECTED_TEXT = (
    "Bananas are purple and the sky is green. Nobody knows anything about capitals, and countries do not have "
    "cities. The answer is probably Berlin, or maybe Madrid, or perhaps a small village that nobody has ever heard "
    "of, somewhere in the mountains, where the weather is always cold and the people speak only in riddles."
)


def text_with_tokens(tokenizer, text: str, n: int) -> str:
    """A prefix of `text` that encodes to exactly n tokens with the EOS that encode_pair appends."""
    from alignkit.sequences import encode_pair

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    for cut in range(n - 1, 0, -1):
        candidate = tokenizer.decode(ids[:cut])
        if encode_pair(tokenizer, "x", candidate).response_len == n:
            return candidate
    raise ValueError(f"cannot make a {n}-token response")


def run_one(config: str, tokens: int, all_cols: int, threads: int) -> dict:
    import torch

    from alignkit.dynamics import decompose
    from alignkit.dynamics.model import load_model_for_dynamics
    from alignkit.models import add_lora

    torch.set_num_threads(threads)
    started = time.time()
    model, tokenizer = load_model_for_dynamics(None)
    if config.startswith("lora"):
        model = add_lora(model)
    load_s = time.time() - started
    prompt = [{"role": "user", "content": "Tell me about the capital of France."}]
    observed = (prompt, text_with_tokens(tokenizer, TEXT, tokens))
    half = tokens // 2 if config != "all_cols" else all_cols // 2
    update = {
        "prompt": prompt,
        "chosen": text_with_tokens(tokenizer, TEXT[40:], half),
        "rejected": text_with_tokens(tokenizer, REJECTED_TEXT, half),
    }
    params = "trainable" if config.startswith("lora") else "all"
    probes = 2 if config == "lora_probes" else 0
    started = time.time()
    d = decompose(model, tokenizer, observed, update, loss="dpo", lr=1e-5, params=params, kernel_probes=probes)
    seconds = time.time() - started
    m_len, l_len = d.per_token.shape
    out = {
        "config": config,
        "params": params,
        "n_params": d.n_params,
        "method": d.method,
        "kernel_probes": probes,
        "M": m_len,
        "L": l_len,
        "threads": threads,
        "load_s": round(load_s, 1),
        "decompose_s": round(seconds, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2),
        "loadavg_1min_after": round(os.getloadavg()[0], 1),
    }
    if config == "all_cols":
        out["extrapolated_64x64_s"] = round(seconds * tokens / l_len, 0)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["lora", "lora_probes", "all"])
    p.add_argument("--tokens", type=int, default=64, help="M, and L = chosen + rejected tokens")
    p.add_argument("--all-cols", type=int, default=8, help="update tokens for the all_cols extrapolation")
    # 1 thread: on a shared 2-core machine 2 intra-op threads spin against other jobs (LoRA 64×64: 127 s with 1
    # thread, > 8 min with 2, both at load average 5-7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one configuration in this process
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.tokens, args.all_cols, args.threads)))
        return
    rows = []
    for config in args.configs:
        cmd = [sys.executable, __file__, "--one", config, "--tokens", str(args.tokens), "--all-cols",
               str(args.all_cols), "--threads", str(args.threads)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| config | params | P | method | probes | M×L | threads | decompose s | peak RSS GB | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['config']} | {r['params']} | {r['n_params'] / 1e6:.2f}M | {r['method']} | {r['kernel_probes']} | "
            f"{r['M']}×{r['L']} | {r['threads']} | {r['decompose_s']} | {r['peak_rss_gb']} | "
            f"{r['loadavg_1min_after']} |"
        )
    failed = [c for c in args.configs if c not in {r["config"] for r in rows}]
    write_result("dynamics_cost", argv, {"rows": rows, "failed": failed})


if __name__ == "__main__":
    main()
