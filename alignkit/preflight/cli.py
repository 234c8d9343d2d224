"""`python -m alignkit.preflight`: score a recipe's training pairs for squeezing risk, offline, before training.

    python -m alignkit.preflight --config recipes/configs/default.yaml
    python -m alignkit.preflight --model Qwen/Qwen2.5-0.5B-Instruct --dataset pairs.jsonl --output_dir runs/x

Every recipe field works as `--field value` (`--model` and `--dataset` are short for `--model_name_or_path` and
`--dataset_name`). The pairs are scored under the model the preference stage would start from: the SFT stage's
output when `<output_dir>/sft` holds a finished one, else the base model. Outputs go to `<output_dir>/preflight/`.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import fields
from pathlib import Path

import torch

from alignkit.config import parse_recipe_config
from alignkit.data import load_preference_data
from alignkit.errors import AlignkitError
from alignkit.models import load_tokenizer
from alignkit.preflight.config import PreflightConfig
from alignkit.preflight.run import run_preflight, sft_weights

ALIASES = {"--model": "--model_name_or_path", "--dataset": "--dataset_name"}


def usage() -> str:
    """The help text: how to call it, then the pre-flight's own options (the other recipe fields work too)."""
    lines = [
        "usage: python -m alignkit.preflight [--config FILE] [--model MODEL] [--dataset DATA] [--FIELD VALUE ...]",
        "",
        __doc__.split("\n\n", 1)[1].strip(),
        "",
        "options of the pre-flight (every recipe field is accepted too: python recipes/extended_dpo.py --help):",
    ]
    for f in fields(PreflightConfig):
        if f.name != "preflight":  # the mode matters to the recipe only; the command always scores
            lines.append(f"  --{f.name} (default {f.default}): {f.metadata['help']}")
    return "\n".join(lines)


def _expand(argv: list[str]) -> list[str]:
    out = []
    for arg in argv:
        flag, eq, value = arg.partition("=")
        out.append(ALIASES.get(flag, flag) + eq + value if flag in ALIASES else arg)
    return out


def run(argv: list[str]) -> dict:
    cfg = parse_recipe_config(_expand(argv))
    if not torch.cuda.is_available() or cfg.run.use_cpu:  # as the recipe: every usable core (or cpu_threads)
        torch.set_num_threads(cfg.run.cpu_threads or len(os.sched_getaffinity(0)))
    tokenizer = load_tokenizer(cfg.model)
    data = load_preference_data(cfg.data, seed=cfg.run.seed)
    folder = Path(cfg.run.output_dir) / "preflight"
    result = run_preflight(cfg, tokenizer, data["train"], data.get("test"), folder, sft_weights(cfg))
    return {"verdict": result.verdict, "seconds": round(result.seconds, 1), "files": result.files()}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(usage())
        return 0
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("alignkit").setLevel(logging.INFO)
    try:
        out = run(argv)
    except AlignkitError as err:
        print(f"alignkit-preflight: error: {err}", file=sys.stderr)
        return 2
    print(out["verdict"])
    print(f"time: {out['seconds']} s; files: {', '.join(out['files'])}")
    return 0
