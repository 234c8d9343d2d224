"""Off-policy vs on-policy DPO on the real SmolLM2-135M-Instruct, the built-in data and the shipped verifier.

    python bench/onpolicy_vs_offpolicy.py            # ~45 min on 2 busy CPU cores -> outputs/bench_onpolicy/
    python bench/onpolicy_vs_offpolicy.py --smoke    # a 2-step pass through everything, to check the plumbing

Both arms run the recipe's `main` (recipes/extended_dpo.py) with the same overrides and the same number of DPO
updates; they share one extended-SFT stage (arm B reuses arm A's finished `sft/` folder, so the recipe skips it) and
one probe set. Arm A trains on the dataset's pairs; arm B samples k responses per prompt from the policy, ranks them
with `builtin_verifier` and trains on (best, worst), over R rounds with the SFT model as the fixed reference.

Measured afterwards: the verifier's mean score on the held-out prompts of the checkable tasks (greedy, and k sampled
responses per prompt at temperature 1), for the SFT model and both final models; the probe trajectories of the
preference stage (`greedy` and `chosen` log-prob per token, and the squeezing score relative to the stage's start);
and per round of arm B, the verifier's mean score of the samples and how many prompts tied. Results go to
`<output_dir>/results.json` and `<output_dir>/summary.md`, and (except with `--smoke`) the same figures to
bench/results/onpolicy_vs_offpolicy/result.json (bench/_results.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import statistics
import time
from pathlib import Path

import torch
from _results import write_result
from peft import PeftModel

from alignkit.config import parse_recipe_config
from alignkit.data import load_preference_data
from alignkit.generation import generate
from alignkit.models import load_model, load_tokenizer
from alignkit.monitors.scoring import squeezing_score
from alignkit.onpolicy import verify
from alignkit.recipe import run_recipe

ROOT = Path(__file__).parents[1]


def flags(values: dict) -> list[str]:
    return [s for k, v in values.items() for s in (f"--{k}", str(v))]


def mean_se(values: list[float]) -> tuple[float, float]:
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return statistics.fmean(values), se


def evaluate(model, tokenizer, rows: list[dict], k: int, max_new_tokens: int, seed: int) -> dict:
    """The verifier's mean score of greedy and of k sampled responses per held-out prompt."""
    prompts = [r["prompt"] for r in rows]
    greedy = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=16)
    sampled = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=True,
                       num_return_sequences=k, batch_size=16, seed=seed)  # fmt: skip
    greedy_scores = [verify(out[0], row) for out, row in zip(greedy, rows)]
    sampled_scores = [verify(c, row) for out, row in zip(sampled, rows) for c in out]
    g, g_se = mean_se(greedy_scores)
    s, s_se = mean_se(sampled_scores)
    return {"greedy": g, "greedy_se": g_se, "sampled": s, "sampled_se": s_se, "n_prompts": len(rows),
            "greedy_examples": [o[0] for o in greedy[:5]]}  # fmt: skip


PROBE_KEYS = {
    "greedy (train)": "probe/train/greedy/logp_per_token",
    "greedy (held-out)": "probe/test/greedy/logp_per_token",
    "chosen (train)": "probe/train/chosen/logp_per_token",
    "chosen (held-out)": "probe/test/chosen/logp_per_token",
    "rejected (train)": "probe/train/rejected/logp_per_token",
}


def trajectory(files: list[Path]) -> list[dict]:
    """The preference stage's probe records, with the squeezing score relative to the stage's first record."""
    records = [json.loads(line) for f in files for line in f.open() if line.strip()]
    if not records:
        return []
    start = records[0]
    out = []
    for rec in records:
        squeeze = squeezing_score(start, rec)
        row = {"stage": rec["stage"], "step": rec["global_step"] - start["global_step"]}
        row |= {name: rec.get(key) for name, key in PROBE_KEYS.items()}
        row["squeeze"] = squeeze.score if squeeze else None
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/bench_onpolicy")
    parser.add_argument("--sft_steps", type=int, default=40)
    parser.add_argument("--dpo_steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--prompts_per_round", type=int, default=32)
    parser.add_argument("--eval_k", type=int, default=2, help="sampled responses per held-out prompt")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on busy shared cores)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--smoke", action="store_true", help="2 steps, 4 prompts, 8 tokens: checks the plumbing")
    a = parser.parse_args(argv)
    if a.smoke:
        a.sft_steps, a.dpo_steps, a.prompts_per_round, a.max_new_tokens, a.k, a.eval_k = 2, 2, 4, 16, 2, 1
    torch.set_num_threads(a.threads)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    out = Path(a.output_dir)
    common = {
        "sft_max_steps": a.sft_steps, "preference_max_steps": a.dpo_steps, "per_device_train_batch_size": a.batch,
        "preference_learning_rate": a.learning_rate, "seed": a.seed, "use_cpu": "true", "save_steps": 1000,
        "probe_num_prompts": 3 if a.smoke else 6, "probe_max_new_tokens": a.max_new_tokens,
        "probe_every": 1000 if a.smoke else 10, "logging_steps": 5,
    }  # fmt: skip
    onpolicy = {
        "sampling": "on_policy", "onpolicy_rounds": a.rounds, "onpolicy_num_samples": a.k,
        "onpolicy_max_new_tokens": a.max_new_tokens, "onpolicy_prompts_per_round": a.prompts_per_round,
        "onpolicy_reference": "fixed", "ranker": "builtin_verifier",
    }  # fmt: skip
    main_fn = run_recipe
    times = {}

    start = time.perf_counter()
    off_dir = main_fn(parse_recipe_config(flags({**common, "output_dir": out / "off_policy"})))
    times["off_policy arm (incl. SFT)"] = time.perf_counter() - start

    on_dir = out / "on_policy"
    if not (on_dir / "sft").exists():  # the same SFT model for both arms: the recipe skips a finished stage
        shutil.copytree(off_dir / "sft", on_dir / "sft")
    start = time.perf_counter()
    cfg = parse_recipe_config(
        flags({**common, **onpolicy, "output_dir": on_dir, "probe_set_path": off_dir / "probe_set.jsonl"})
    )
    main_fn(cfg)
    times["on_policy arm"] = time.perf_counter() - start

    # --- the verifier on held-out prompts
    start = time.perf_counter()
    tokenizer = load_tokenizer(cfg.model)
    test = load_preference_data(cfg.data, seed=a.seed)["test"]
    rows = [r for r in test if (r.get("reference_answer") or "").strip()]
    if a.smoke:
        rows = rows[:4]
    sft = PeftModel.from_pretrained(load_model(cfg.model), off_dir / "sft" / "adapter").merge_and_unload()
    scores = {"SFT (start of both arms)": evaluate(sft, tokenizer, rows, a.eval_k, a.max_new_tokens, a.seed)}
    del sft
    for name, folder in [("off-policy DPO", off_dir / "final"), ("on-policy DPO", on_dir / "final")]:
        model = load_model(cfg.model, source=folder)
        scores[name] = evaluate(model, tokenizer, rows, a.eval_k, a.max_new_tokens, a.seed)
        del model
    times["held-out evaluation"] = time.perf_counter() - start

    # --- probes and rounds
    trajectories = {
        "off-policy DPO": trajectory([off_dir / "preference" / "probes.jsonl"]),
        "on-policy DPO": trajectory(sorted((on_dir / "preference").glob("round-*/probes.jsonl"))),
    }
    rounds = []
    for pairs_file in sorted((on_dir / "preference").glob("round-*/pairs.jsonl")):
        records = [json.loads(line) for line in pairs_file.open()]
        sample_scores = [s for rec in records for s in rec["scores"] if s is not None]
        rounds.append({
            "round": records[0]["round"], "prompts": len(records),
            "pairs": sum(rec["status"] == "pair" for rec in records),
            "tied": sum(rec["status"] == "tie" for rec in records),
            "unscored": sum(rec["status"] == "unscored" for rec in records),
            "mean_sample_score": statistics.fmean(sample_scores) if sample_scores else None,
            "prompts_with_a_correct_sample": sum(max((s or 0) for s in rec["scores"]) == 1.0 for rec in records),
        })  # fmt: skip
    metrics = {
        name: json.loads((d / "metrics.json").read_text())["preference"] for name, d in
        [("off-policy DPO", off_dir), ("on-policy DPO", on_dir)]
    }  # fmt: skip
    final_train = {}
    for name, m in metrics.items():
        last = next((e for e in reversed(m["log_history"]) if "rewards/margins" in e), {})
        final_train[name] = {k: v for k, v in last.items() if k.startswith(("rewards/", "logps/"))}
    results = {"args": vars(a), "scores": scores, "trajectories": trajectories, "rounds": rounds,
               "last_logged_train_metrics": final_train, "seconds": times}  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    summary = summarize(results, len(rows))
    (out / "summary.md").write_text(summary)
    print(summary)
    if not a.smoke:  # a plumbing check's numbers are not figures
        write_result("onpolicy_vs_offpolicy", argv, results | {"held_out_prompts": len(rows)})


def _f(value, digits=3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def summarize(results: dict, n_prompts: int) -> str:
    lines = [f"Held-out checkable prompts: {n_prompts}. Verifier score (1 = right answer alone, 0 = wrong), mean±se",
             "", "| model | greedy | sampled (T=1) |", "|---|---:|---:|"]  # fmt: skip
    for name, s in results["scores"].items():
        lines.append(
            f"| {name} | {s['greedy']:.3f} ± {s['greedy_se']:.3f} | {s['sampled']:.3f} ± {s['sampled_se']:.3f} |"
        )
    lines += ["", "Probe log-prob per token through the preference stage (start → end; squeezing score vs the start):",
              "", "| arm | " + " | ".join(PROBE_KEYS) + " | squeeze (end) | squeeze (max) |",
              "|---|" + "---:|" * (len(PROBE_KEYS) + 2)]  # fmt: skip
    for name, traj in results["trajectories"].items():
        if not traj:
            lines.append(f"| {name} | " + " | ".join("–" for _ in PROBE_KEYS) + " | – | – |")
            continue
        cells = [f"{_f(traj[0][k], 2)} → {_f(traj[-1][k], 2)}" for k in PROBE_KEYS]
        squeezes = [t["squeeze"] for t in traj if t["squeeze"] is not None]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {_f(traj[-1]['squeeze'])} | {_f(max(squeezes, default=None))} |"
        )
    lines += ["", "Trajectories (step: greedy train / chosen train / squeeze):", ""]
    for name, traj in results["trajectories"].items():
        points = ", ".join(
            f"{t['step']}: {_f(t['greedy (train)'], 2)} / {_f(t['chosen (train)'], 2)} / {_f(t['squeeze'])}"
            for t in traj
        )
        lines.append(f"- {name}: {points}")
    lines += ["", "On-policy rounds (the samples each round trained on; scores by the verifier):", "",
              "| round | prompts | pairs | tied | unscored | mean sample score | prompts with a correct sample |",
              "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results["rounds"]:
        lines.append(f"| {r['round']} | {r['prompts']} | {r['pairs']} | {r['tied']} | {r['unscored']} | "
                     f"{_f(r['mean_sample_score'])} | {r['prompts_with_a_correct_sample']} |")  # fmt: skip
    lines += ["", "Last logged training metrics: " + "; ".join(
        f"{name}: " + ", ".join(f"{k} {v:.3g}" for k, v in m.items()) for name, m in
        results["last_logged_train_metrics"].items())]  # fmt: skip
    lines += ["", "Wall time: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in results["seconds"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
