"""Command line of the win-rate evaluator (`python eval/win_rate.py ...`), parsed like every front end
(`alignkit.cli.parse_dataclasses`): the flags are the fields of `WinRateRun` (what to compare, where results go),
`WinRateConfig` (`--limit`, `--max-new-tokens`, ...) and `JudgeConfig` with a `judge` prefix (`--judge-base-url`,
`--judge-model`, ...); `--judge local` is short for `--judge-base-url local`. `--config x.yaml` sets the same keys
from a file (`judge:` holds the judge's), and flags given on the command line override it.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from alignkit.cli import parse_dataclasses
from alignkit.errors import AlignkitError
from alignkit.judge import evaluate
from alignkit.judge.config import JudgeConfig, WinRateConfig

JUDGE_PREFIX = "judge_"
JUDGE_ALIASES = {"base_url": ["--judge"]}  # `--judge local`, `--judge verifier`, `--judge https://...`


@dataclass
class WinRateRun:
    """What is compared and where results go; how responses are made is `WinRateConfig`, the judge `JudgeConfig`."""

    _argument_group_name = "what to compare"

    candidate: str | None = field(
        default=None,
        metadata={
            "help": "Required. The model under test: outputs JSONL (fields prompt, output), HF folder, hub id, "
            "adapter or .gguf."
        },
    )
    baseline: str | None = field(
        default=None, metadata={"help": "Required. What the candidate is compared with; same forms."}
    )
    prompts: str | None = field(
        default=None,
        metadata={
            "help": "Evaluation prompts: JSONL (field prompt), dataset folder or hub dataset. Default: the prompts of "
            "an outputs JSONL given as candidate/baseline, else the built-in held-out split."
        },
    )
    output_dir: str = field(
        default="outputs/win_rate",
        metadata={"help": "Where outputs, the judgment cache, results.json and the reports go (rerun to resume)."},
    )
    quiet: bool = field(default=False, metadata={"help": "No progress bars."})

    def __post_init__(self):
        for side in ("candidate", "baseline"):
            if not getattr(self, side):
                raise AlignkitError(f"--{side} is required (a model path/id or an outputs JSONL).")


def parse_args(argv: Sequence[str] | None = None) -> tuple[WinRateRun, WinRateConfig, JudgeConfig]:
    run, config, judge = parse_dataclasses(
        (WinRateRun, WinRateConfig, JudgeConfig),
        sys.argv[1:] if argv is None else argv,
        description="Win rate of a candidate against a baseline, judged by an LLM in both orders.",
        prefixes={JudgeConfig: JUDGE_PREFIX},
        aliases=JUDGE_ALIASES,
    )
    return run, config, judge


# Set by the SIGTERM handler. The KeyboardInterrupt it raises lands wherever Python is, and inside the HTTP client's
# async cancel scopes (anyio) it can surface as another error (a RuntimeError about a cancel scope): once a stop was
# asked for, whatever error ends the run is that stop, and the run exits as interrupted.
_stop_requested = threading.Event()


def _raise_interrupt(signum, frame):
    # SIGTERM (e.g. from a job scheduler) unwinds like Ctrl-C, so `with` blocks stop the local judge server.
    _stop_requested.set()
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    _stop_requested.clear()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main_thread else None
    try:
        return _run(argv)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _interrupted() -> int:
    print("interrupted: finished judgments are cached; rerun the same command to resume.", file=sys.stderr)
    return 130


def _run(argv: Sequence[str] | None) -> int:
    try:
        run, config, judge = parse_args(argv)
        result = evaluate.evaluate_win_rate(
            run.candidate,
            run.baseline,
            prompts=run.prompts,
            judge=judge,
            output_dir=run.output_dir,
            config=config,
            progress=not run.quiet,
        )
    except Exception as e:
        if _stop_requested.is_set():
            return _interrupted()
        if isinstance(e, AlignkitError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        return _interrupted()
    low, high = result.win_rate_ci
    print(
        f"{result.candidate} vs {result.baseline}: win rate {100 * result.win_rate:.1f}% "
        f"[{100 * low:.1f}, {100 * high:.1f}] ({result.wins}W/{result.ties}T/{result.losses}L of {result.n_pairs}), "
        f"length-controlled {100 * result.length_controlled_win_rate:.1f}%, "
        f"position consistency {100 * result.position_consistency:.1f}%; "
        f"{result.stats['requests']} requests, {result.stats['cache_hits']} cache hits"
    )
    print(f"report: {run.output_dir}/report.html and report.md")
    if not result.complete:
        print(f"incomplete: {result.unjudged}; rerun the same command to finish.", file=sys.stderr)
        return 3
    return 0
