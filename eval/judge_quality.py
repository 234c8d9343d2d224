"""How good is a judge? Agreement with ground truth on the shipped labelled set, in each verdict mode.

    python eval/judge_quality.py --judge local                          # SmolLM2 on llama.cpp, text and logprobs
    python eval/judge_quality.py --judge-base-url https://api.openai.com/v1 --judge-model gpt-4o-mini \
        --judge-api-key-env OPENAI_API_KEY --modes text

Prints AlpacaEval's annotator-table columns (agreement with the label, P(first), self-consistency, P(prefer longer),
ties) plus the pair accuracy after combining both orders, one row per mode, and writes quality.md / quality.json and
the judgment caches (rerun to resume) into --output-dir. Judge flags are those of eval/win_rate.py. The labelled set
is `alignkit/judge/judge_quality_pairs.jsonl` (built by `alignkit.judge.quality.build_labelled_pairs`). Exit status:
0 done, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.judge.cli import add_fields
from alignkit.judge.config import MODES, JudgeConfig
from alignkit.judge.quality import (
    SHIPPED_PAIRS,
    margin_sweep,
    measure_judge,
    quality_table,
    read_labelled_pairs,
    sweep_table,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="A judge's agreement with ground truth on a labelled set of pairs.")
    parser.add_argument("--pairs", default=str(SHIPPED_PAIRS), help="Labelled pairs JSONL (default: the shipped set).")
    parser.add_argument("--limit", type=int, help="Use only the first N pairs.")
    parser.add_argument(
        "--modes", default="text,logprobs", help="Comma-separated verdict modes to measure: text, logprobs."
    )
    parser.add_argument(
        "--margins",
        default="0,0.05,0.1,0.2,0.5,1",
        help="logprobs mode: also print pair accuracy at these abstention margins (nats), from the same judgments.",
    )
    parser.add_argument("--output-dir", default="outputs/judge_quality", help="Caches, quality.md and quality.json.")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    add_fields(parser.add_argument_group("judge"), JudgeConfig, prefix="judge_")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = vars(build_parser().parse_args(argv))
        modes = [m.strip() for m in args["modes"].split(",") if m.strip()]
        bad = [m for m in modes if m not in MODES or m == "auto"]
        if bad or not modes:
            raise AlignkitError(f"--modes {args['modes']!r}: choose from text, logprobs.")
        pairs = read_labelled_pairs(args["pairs"])[: args["limit"]]
        out = Path(args["output_dir"])
        margins = [float(m) for m in args["margins"].split(",") if m.strip()]
        rows, sweep = [], []
        for mode in modes:
            judge_args = {f.name: args["judge_" + f.name] for f in dataclasses.fields(JudgeConfig)}
            judge = JudgeConfig(**{**judge_args, "mode": mode})
            row, records = measure_judge(judge, pairs, out / mode, progress=not args["quiet"])
            rows.append(row)
            if mode == "logprobs":
                sweep = margin_sweep(records, margins)
            print(f"{mode}: {row['requests']} requests, {row['seconds']} s of judging", file=sys.stderr)
    except ValueError as e:  # AlignkitError is one; also a --margins value that is not a number
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished judgments are cached; rerun the same command to resume.", file=sys.stderr)
        return 130
    table = quality_table(rows)
    if sweep:
        table += "\n\nlogprobs mode, by abstention margin (the table above uses --judge-logprob-margin):\n\n"
        table += sweep_table(sweep)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.md").write_text(table + "\n")
    (out / "quality.json").write_text(json.dumps({"rows": rows, "margin_sweep": sweep}, indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
