"""Command line of the win-rate evaluator (`python eval/win_rate.py ...`); flags are the dataclass fields.

Flags come from `WinRateConfig` (`--limit`, `--max-new-tokens`, ...) and from `JudgeConfig` with a `judge-` prefix
(`--judge-base-url`, `--judge-model`, ...); `--judge local` is short for `--judge-base-url local`. `--config x.yaml`
sets the same keys from a file (`judge:` holds the judge's), and flags given on the command line override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
import types
import typing

import yaml

from alignkit.errors import AlignkitError
from alignkit.judge.config import JudgeConfig, WinRateConfig

_SIDES = {
    "candidate": "The model under test: outputs JSONL (fields prompt, output), HF folder, hub id, adapter or .gguf.",
    "baseline": "What the candidate is compared with; same forms.",
    "prompts": "Evaluation prompts: JSONL (field prompt), dataset folder or hub dataset. Default: the prompts of an "
    "outputs JSONL given as candidate/baseline, else the built-in held-out split.",
    "output_dir": "Where outputs, the judgment cache, results.json and the reports go (rerun into it to resume).",
}


def _base_type(annotation) -> type:
    """int for `int | None`, and so on: the type argparse converts to."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def add_fields(parser: argparse.ArgumentParser, cls, prefix: str = "") -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + (prefix + f.name).replace("_", "-")
        kind = _base_type(hints[f.name])
        help_text = f"{f.metadata.get('help', '')} (default: {f.default})".replace("%", "%%")
        names = [flag] + (["--judge"] if prefix and f.name == "base_url" else [])
        if kind is bool:
            parser.add_argument(*names, dest=prefix + f.name, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(*names, dest=prefix + f.name, type=kind, help=help_text, metavar=kind.__name__.upper())
        parser.set_defaults(**{prefix + f.name: f.default})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Win rate of a candidate against a baseline, judged by an LLM in both orders."
    )
    parser.add_argument("--config", help="YAML with any of these options (judge options under `judge:`).")
    parser.add_argument("--candidate", help=_SIDES["candidate"])
    parser.add_argument("--baseline", help=_SIDES["baseline"])
    parser.add_argument("--prompts", help=_SIDES["prompts"])
    parser.add_argument("--output-dir", dest="output_dir", default="outputs/win_rate", help=_SIDES["output_dir"])
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    add_fields(parser.add_argument_group("generation and report"), WinRateConfig)
    add_fields(parser.add_argument_group("judge"), JudgeConfig, prefix="judge_")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[dict, WinRateConfig, JudgeConfig]:
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.config:
        try:
            with open(first.config) as f:
                loaded = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as e:
            raise AlignkitError(f"--config {first.config}: {e}") from None
        judge = loaded.pop("judge", {}) or {}
        known = {a.dest for a in parser._actions}
        flat = {**loaded, **{f"judge_{k}": v for k, v in judge.items()}}
        unknown = sorted(k for k in flat if k not in known)
        if unknown:
            raise AlignkitError(f"--config {first.config}: unknown keys {unknown}.")
        parser.set_defaults(**flat)
    args = vars(parser.parse_args(argv))
    for side in ("candidate", "baseline"):
        if not args.get(side):
            raise AlignkitError(f"--{side} is required (a model path/id or an outputs JSONL).")
    config = WinRateConfig(**{f.name: args[f.name] for f in dataclasses.fields(WinRateConfig)})
    judge = JudgeConfig(**{f.name: args["judge_" + f.name] for f in dataclasses.fields(JudgeConfig)})
    return args, config, judge


# Set by the SIGTERM handler. The KeyboardInterrupt it raises lands wherever Python is, and inside the HTTP client's
# async cancel scopes (anyio) it can surface as another error (a RuntimeError about a cancel scope): once a stop was
# asked for, whatever error ends the run is that stop, and the run exits as interrupted.
_stop_requested = threading.Event()


def _raise_interrupt(signum, frame):
    # SIGTERM (e.g. from a job scheduler) unwinds like Ctrl-C, so `with` blocks stop the local judge server.
    _stop_requested.set()
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
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


def _run(argv: list[str] | None) -> int:
    try:
        args, config, judge = parse_args(argv)
        from alignkit.judge.evaluate import evaluate_win_rate

        result = evaluate_win_rate(
            args["candidate"],
            args["baseline"],
            prompts=args["prompts"],
            judge=judge,
            output_dir=args["output_dir"],
            config=config,
            progress=not args["quiet"],
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
    print(f"report: {args['output_dir']}/report.html and report.md")
    if not result.complete:
        print(f"incomplete: {result.unjudged}; rerun the same command to finish.", file=sys.stderr)
        return 3
    return 0
