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

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from alignkit.cli import parse_dataclasses
from alignkit.errors import AlignkitError
from alignkit.judge.cli import JUDGE_ALIASES, JUDGE_PREFIX
from alignkit.judge.config import MODES, JudgeConfig
from alignkit.judge.quality import (
    SHIPPED_PAIRS,
    margin_sweep,
    measure_judge,
    quality_table,
    read_labelled_pairs,
    sweep_table,
)


@dataclass
class JudgeQualityRun:
    """Which labelled pairs, which verdict modes, and where the results go; the judge is `JudgeConfig`'s fields."""

    _argument_group_name = "labelled set and modes"

    pairs: str = field(
        default=str(SHIPPED_PAIRS), metadata={"help": "Labelled pairs JSONL (default: the shipped set)."}
    )
    limit: int | None = field(default=None, metadata={"help": "Use only the first N pairs (None = all)."})
    modes: str = field(
        default="text,logprobs", metadata={"help": "Comma-separated verdict modes to measure: text, logprobs."}
    )
    margins: str = field(
        default="0,0.05,0.1,0.2,0.5,1",
        metadata={
            "help": "logprobs mode: also print pair accuracy at these comma-separated abstention margins (nats), "
            "from the same judgments."
        },
    )
    output_dir: str = field(default="outputs/judge_quality", metadata={"help": "Caches, quality.md and quality.json."})
    quiet: bool = field(default=False, metadata={"help": "No progress bars."})

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise AlignkitError(f"--limit must be >= 1 or None, got {self.limit}.")
        bad = [m for m in self.mode_list if m not in MODES or m == "auto"]
        if bad or not self.mode_list:
            raise AlignkitError(f"--modes {self.modes!r}: choose from text, logprobs.")
        try:
            _ = self.margin_list  # a typo is an error before any judging, not after
        except ValueError:
            raise AlignkitError(f"--margins {self.margins!r}: comma-separated numbers, e.g. 0,0.1,0.5.") from None

    @property
    def mode_list(self) -> list[str]:
        return [m.strip() for m in self.modes.split(",") if m.strip()]

    @property
    def margin_list(self) -> list[float]:
        return [float(m) for m in self.margins.split(",") if m.strip()]


def parse_args(argv: Sequence[str], mode: str | None = None) -> tuple[JudgeQualityRun, JudgeConfig]:
    """The run and the judge; with `mode`, the judge in that verdict mode (its defaults, e.g. the template, follow
    the mode, which is why each mode's judge is parsed from the flags rather than copied from another's)."""
    run, judge = parse_dataclasses(
        (JudgeQualityRun, JudgeConfig),
        [*argv, "--judge_mode", mode] if mode else argv,
        description="A judge's agreement with ground truth on a labelled set of pairs.",
        prefixes={JudgeConfig: JUDGE_PREFIX},
        aliases=JUDGE_ALIASES,
    )
    return run, judge


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        run, _ = parse_args(argv)
        pairs = read_labelled_pairs(run.pairs)[: run.limit]
        out = Path(run.output_dir)
        rows, sweep = [], []
        for mode in run.mode_list:
            _, judge = parse_args(argv, mode)
            row, records = measure_judge(judge, pairs, out / mode, progress=not run.quiet)
            rows.append(row)
            if mode == "logprobs":
                sweep = margin_sweep(records, run.margin_list)
            print(f"{mode}: {row['requests']} requests, {row['seconds']} s of judging", file=sys.stderr)
    except AlignkitError as e:
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
