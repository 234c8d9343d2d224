"""`evaluate_win_rate`: did the candidate beat the baseline, according to an LLM judge asked in both orders?"""

from __future__ import annotations

import gc
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from alignkit.errors import AlignkitError
from alignkit.jsonl import write_jsonl_atomic
from alignkit.judge.cache import JudgmentCache
from alignkit.judge.client import Comparison, JudgeRunner, JudgeStats, Judgment
from alignkit.judge.config import JudgeConfig, WinRateConfig
from alignkit.judge.inputs import (
    ModelSpec,
    instruction_text,
    is_outputs_file,
    load_model,
    load_prompt_rows,
    prompt_key,
    read_outputs_jsonl,
    side_name,
    write_outputs_jsonl,
)
from alignkit.judge.local_server import run_judge
from alignkit.judge.metrics import combine_log_odds, combine_orders, summarize, verdict_shares
from alignkit.judge.parse import load_template
from alignkit.judge.report import write_report

if TYPE_CHECKING:
    from alignkit.sequences import Prompt


@dataclass
class PairResult:
    index: int
    instruction: str
    candidate: str
    baseline: str
    # "judged" | "identical" (tie without asking) | "unparseable" | "error" | "pending" | "unverifiable" (verifier
    # judge: no reference answer, or the verifier could not check a response)
    status: str
    score: float | None = None  # 1 win, 0.5 tie, 0 loss for the candidate; None when not judged in both orders
    consistent: bool | None = None
    candidate_first: dict | None = None  # the judgment with the candidate shown as response A
    candidate_second: dict | None = None  # ... and as response B


@dataclass
class WinRateResult:
    candidate: str
    baseline: str
    n_prompts: int
    n_pairs: int  # pairs with a verdict in both orders (or identical outputs): what the metrics are computed on
    wins: int
    ties: int
    losses: int
    win_rate: float
    win_rate_ci: tuple[float, float]
    standard_error: float
    position_consistency: float
    length_controlled_win_rate: float
    length_controlled_ci: tuple[float, float]
    mean_length_candidate: float
    mean_length_baseline: float
    candidate_longer_share: float
    verdict_shares: dict[str, float]  # raw verdicts naming position A / B / tie, over all parsed judgments
    unjudged: dict[str, int]  # status -> number of pairs left out of the metrics
    judge: dict
    template_sha256: str
    stats: dict
    output_dir: str
    pairs: list[PairResult] = field(repr=False, default_factory=list)

    @property
    def complete(self) -> bool:
        """False when a rerun could still add verdicts (budget spent, requests that kept failing). Unparseable
        answers are not asked again (the same settings would repeat them): they are cached with their raw text, which
        a rerun reads with the parser of the day, counting what it reads in `stats['rescued']`."""
        return not (self.unjudged.get("pending") or self.unjudged.get("error"))

    def summary(self) -> dict:
        """Everything but the per-pair records (what results.json and the reports' headline hold)."""
        out = asdict(self)
        out.pop("pairs")
        out["complete"] = self.complete
        return out


def _judgment_dict(j: Judgment) -> dict:
    out = {"status": j.status, "verdict": j.verdict, "reason": j.reason, "cached": j.cached, "error": j.error}
    return out | ({"logit_a": j.logit_a} if j.logit_a is not None else {})


def _outputs(
    spec: ModelSpec, prompts: list[Prompt], role: str, config: WinRateConfig, output_dir: Path, progress: bool
) -> list[str]:
    """One response per prompt, read from an outputs JSONL or generated (and saved next to the report)."""
    if is_outputs_file(spec):
        rows = {prompt_key(r["prompt"]): r["output"] for r in read_outputs_jsonl(spec)}
        missing = [i for i, p in enumerate(prompts) if prompt_key(p) not in rows]
        if missing:
            preview = instruction_text(prompts[missing[0]])[:80]
            raise AlignkitError(
                f"{spec}: field 'prompt': no row for {len(missing)} of the {len(prompts)} evaluation prompts "
                f"(first: #{missing[0]} {preview!r}); the {role} outputs must cover every prompt."
            )
        return [rows[prompt_key(p)] for p in prompts]
    from alignkit.generation import generate  # imported late: torch is not needed to judge two JSONLs

    if isinstance(spec, tuple):
        model, tokenizer = spec
        owned = False
    else:
        model, tokenizer = load_model(spec)
        owned = True
    responses = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=config.max_new_tokens,
        do_sample=config.do_sample,
        temperature=config.temperature,
        top_p=config.top_p,
        batch_size=config.batch_size,
        seed=config.seed,
        progress=progress,
    )
    outputs = [r[0] for r in responses]
    write_outputs_jsonl(output_dir / f"outputs_{role}.jsonl", prompts, outputs, side_name(spec))
    if owned:
        del model
        gc.collect()
    return outputs


def ask_judge(
    judge: JudgeConfig, template, comparisons: list[Comparison], out: Path, progress: bool
) -> tuple[list[Judgment], JudgeStats]:
    """An LLM judge's judgments through the cache, with a local llama.cpp server started only when one is needed."""
    cache = JudgmentCache(judge.cache_path or out / "judge_cache.jsonl")
    runner = JudgeRunner(judge, template, cache)
    try:
        return run_judge(runner, comparisons, out, progress=progress), runner.stats
    finally:
        cache.close()


def evaluate_win_rate(
    candidate: ModelSpec,
    baseline: ModelSpec,
    prompts: str | os.PathLike | list[Prompt] | None = None,
    judge: JudgeConfig | None = None,
    output_dir: str | os.PathLike = "outputs/win_rate",
    config: WinRateConfig | None = None,
    progress: bool = True,
) -> WinRateResult:
    """Judge candidate vs baseline on a prompt set in both orders, compute the win rates and write the reports.

        from alignkit import JudgeConfig, evaluate_win_rate

        result = evaluate_win_rate("runs/demo/final", "runs/baseline/final", judge=JudgeConfig(base_url="verifier"),
                                   output_dir="runs/win_rate")
        print(result.win_rate, result.win_rate_ci)  # ties count half; report.md and report.html in output_dir

    The same from a shell: `python -m alignkit.judge` or `alignkit-win-rate` (`eval/win_rate.py` in a checkout).

    Args:
        candidate: the model under test: an outputs JSONL, a local HF folder, hub id, PEFT adapter folder, .gguf file,
            or an already loaded `(model, tokenizer)`.
        baseline: what it is compared with; same forms.
        prompts: evaluation prompts (a JSONL, dataset folder, hub dataset, or a list). None = the prompts of the
            candidate's (else the baseline's) outputs JSONL, else the built-in held-out split.
        judge: the judge; default `JudgeConfig()` is the local SmolLM2 llama.cpp server (weak, offline).
        output_dir: gets outputs_*.jsonl (generated responses), judge_cache.jsonl, judgments.jsonl, results.json,
            report.md, report.html and win_rate.png. Rerunning into the same folder reuses every cached verdict.
        config: generation and reporting options.

    Returns:
        WinRateResult; `complete` is False when the request budget ran out or requests kept failing (rerun to finish).
    """
    judge = judge or JudgeConfig()
    config = config or WinRateConfig()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    template = None if judge.is_verifier else load_template(judge.template)

    if prompts is None:
        prompts = next((s for s in (candidate, baseline) if is_outputs_file(s)), None)
    prompt_rows = load_prompt_rows(prompts, config.prompts_split)
    if config.limit is not None:
        prompt_rows = prompt_rows[: config.limit]
    prompt_list = [row["prompt"] for row in prompt_rows]
    if not prompt_list:
        raise AlignkitError(f"prompts={prompts!r}: no prompts to evaluate on.")
    candidate_outputs = _outputs(candidate, prompt_list, "candidate", config, out, progress)
    baseline_outputs = _outputs(baseline, prompt_list, "baseline", config, out, progress)

    instructions = [instruction_text(p) for p in prompt_list]
    to_judge = [i for i in range(len(prompt_list)) if candidate_outputs[i].strip() != baseline_outputs[i].strip()]
    comparisons = []
    for i in to_judge:
        comparisons.append(Comparison(instructions[i], candidate_outputs[i], baseline_outputs[i]))
        comparisons.append(Comparison(instructions[i], baseline_outputs[i], candidate_outputs[i]))

    if judge.is_verifier:
        # imported late: alignkit.data imports torch, which an LLM judge of two outputs files does not need
        from alignkit.judge.verifier import VerifierJudge, with_references

        rows = with_references(prompt_rows)
        judgments = VerifierJudge(judge.verifier).judge(comparisons, [rows[i] for i in to_judge for _ in (0, 1)])
        stats = JudgeStats()
    else:
        judgments, stats = ask_judge(judge, template, comparisons, out, progress)

    by_index = {i: (judgments[2 * k], judgments[2 * k + 1]) for k, i in enumerate(to_judge)}
    pairs = []
    for i in range(len(prompt_list)):
        pair = PairResult(i, instructions[i], candidate_outputs[i], baseline_outputs[i], status="identical")
        if i not in by_index:
            pair.score, pair.consistent = 0.5, True  # the same answer twice is a tie; no judge needed
        else:
            first, second = by_index[i]
            pair.candidate_first, pair.candidate_second = _judgment_dict(first), _judgment_dict(second)
            statuses = {first.status, second.status}
            if statuses == {"ok"}:
                pair.status = "judged"
                if judge.mode == "logprobs":
                    pair.score, pair.consistent = combine_log_odds(first.logit_a, second.logit_a, judge.logprob_margin)
                else:
                    pair.score, pair.consistent = combine_orders(first.verdict, second.verdict)
            else:  # the worst of the two decides why the pair is left out
                pair.status = next(s for s in ("error", "pending", "unparseable", "unverifiable") if s in statuses)
        pairs.append(pair)

    scored = [p for p in pairs if p.score is not None]
    metrics = summarize(
        [p.score for p in scored],
        [p.consistent for p in scored],
        [len(p.candidate) for p in scored],
        [len(p.baseline) for p in scored],
        n_resamples=config.bootstrap_samples,
        seed=config.seed,
    )
    unjudged: dict[str, int] = {}
    for p in pairs:
        if p.score is None:
            unjudged[p.status] = unjudged.get(p.status, 0) + 1
    result = WinRateResult(
        candidate=config.candidate_name or side_name(candidate),
        baseline=config.baseline_name or side_name(baseline),
        n_prompts=len(prompt_list),
        n_pairs=metrics["n_pairs"],
        wins=metrics["wins"],
        ties=metrics["ties"],
        losses=metrics["losses"],
        win_rate=metrics["win_rate"],
        win_rate_ci=tuple(metrics["win_rate_ci"]),
        standard_error=metrics["standard_error"],
        position_consistency=metrics["position_consistency"],
        length_controlled_win_rate=metrics["length_controlled_win_rate"],
        length_controlled_ci=tuple(metrics["length_controlled_ci"]),
        mean_length_candidate=metrics["mean_length_candidate"],
        mean_length_baseline=metrics["mean_length_baseline"],
        candidate_longer_share=metrics["candidate_longer_share"],
        verdict_shares=verdict_shares([j.verdict for j in judgments if j.status == "ok"]),
        unjudged=unjudged,
        judge=judge.describe(),
        template_sha256=template.sha256 if template is not None else "",
        stats=stats.to_dict(),
        output_dir=str(out),
        pairs=pairs,
    )
    write_jsonl_atomic(out / "judgments.jsonl", (asdict(p) for p in pairs))
    (out / "results.json").write_text(json.dumps(result.summary(), indent=2, default=str) + "\n")

    write_report(result, out, max_examples=config.max_examples)
    return result
