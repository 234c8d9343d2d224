"""One on-policy round's training data: its prompts, k samples from the policy, ranked into (best, worst) pairs, and
(mixed sampling) dataset pairs beside them.

    round_dir/samples.jsonl   every prompt's k candidates, as sampled
    round_dir/pairs.jsonl     every prompt's ranking outcome: a (best, worst) pair, a tie, or unscored

Each file is written once, whole, on the main process; a resumed round reads them back instead of sampling or ranking
again (an LLM judge's verdicts come from its cache). The stage (`alignkit.onpolicy.stage`) trains on what this returns.
"""

from __future__ import annotations

import gc
import json
import logging
import random
import time
from collections import Counter
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from peft import PeftModel

from alignkit.config import RecipeConfig
from alignkit.errors import AlignkitError
from alignkit.jsonl import read_jsonl, write_jsonl_atomic
from alignkit.onpolicy.pairs import build_pairs, training_pairs
from alignkit.onpolicy.rankers import check_scores, ranker_from_config
from alignkit.onpolicy.sampling import sample_responses

logger = logging.getLogger(__name__)


def prompt_pool(pairs: Dataset, ranker: str) -> Dataset:
    """The rows to sample prompts from: one per distinct prompt, and for the verifier only rows it can check."""
    if ranker == "builtin_verifier":
        if "reference_answer" not in pairs.column_names:
            raise AlignkitError(
                "ranker 'builtin_verifier' checks each row's 'reference_answer', and this dataset has no such column "
                "(the built-in data has it); choose ranker: judge, reward_model or callable"
            )
        pairs = pairs.filter(lambda row: bool((row["reference_answer"] or "").strip()))
        if len(pairs) == 0:
            raise AlignkitError("ranker 'builtin_verifier': no training row has a non-empty 'reference_answer'")
    seen, keep = set(), []
    for i, prompt in enumerate(pairs["prompt"]):
        key = json.dumps(prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return pairs.select(keep)


def round_prompts(pool: Dataset, round_index: int, per_round: int, seed: int) -> Dataset:
    """Round r's prompts: the r-th block of one seeded permutation of the pool, so rounds see different prompts
    until the pool runs out (then it wraps around)."""
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    start = (round_index - 1) * per_round
    return pool.select([order[(start + i) % len(order)] for i in range(min(per_round, len(order)))])


def _sample(base, adapter: Path | None, tokenizer, prompts: Dataset, cfg: RecipeConfig, r: int, round_dir: Path):
    """k samples per prompt from the current policy: `base`, plus the continuing adapter when there is one."""
    p = cfg.preference
    policy = PeftModel.from_pretrained(base, adapter) if adapter is not None else base
    if torch.cuda.is_available() and not cfg.run.use_cpu:
        policy.to(PartialState().device)
    samples = sample_responses(
        policy,
        tokenizer,
        prompts["prompt"],
        num_samples=p.onpolicy_num_samples,
        max_new_tokens=p.onpolicy_max_new_tokens,
        temperature=p.onpolicy_temperature,
        top_p=p.onpolicy_top_p,
        batch_size=p.onpolicy_batch_size,
        seed=cfg.run.seed + 1000 * r,
        backend=p.generation_backend,
        work_dir=round_dir,
    )
    # unload() takes the LoRA layers out again and hands back `base` with its weights untouched (unlike a merge).
    return (policy.unload() if adapter is not None else policy), samples


def _records(path: Path) -> list[dict]:
    """The records of a round file (samples.jsonl, pairs.jsonl); it was written whole, so any bad line is an error."""
    return [record for _, record in read_jsonl(path)]


def round_records(base, adapter, tokenizer, prompts: Dataset, cfg: RecipeConfig, r: int, round_dir: Path, stage_dir):
    """This round's ranked records: read from pairs.jsonl when a previous run got that far, else sampled (or read
    from samples.jsonl) and ranked now. Returns (base, records)."""
    state = PartialState()
    pairs_file, samples_file = round_dir / "pairs.jsonl", round_dir / "samples.jsonl"
    if pairs_file.exists():
        logger.warning("[preference round %d] reusing the ranked samples in %s", r, pairs_file)
        return base, _records(pairs_file)
    rows = list(prompts)
    if samples_file.exists():
        logger.warning("[preference round %d] reusing the samples in %s; ranking them", r, samples_file)
        candidates = [line["candidates"] for line in _records(samples_file)]
    else:
        t0 = time.perf_counter()
        base, candidates = _sample(base, adapter, tokenizer, prompts, cfg, r, round_dir)
        seconds = time.perf_counter() - t0
        logger.warning(
            "[preference round %d] sampled %d x %d responses in %.0f s",
            r, len(rows), cfg.preference.onpolicy_num_samples, seconds,
        )  # fmt: skip
        if state.is_main_process:
            round_dir.mkdir(parents=True, exist_ok=True)
            write_jsonl_atomic(
                samples_file,
                [{"id": row.get("id"), "prompt": row["prompt"], "candidates": c} for row, c in zip(rows, candidates)],
            )
    # Rank once, on the main process (a judge must not be asked twice, a reward model need not be loaded twice),
    # and hand the result to the other processes through the file.
    if state.is_main_process:
        ranker = ranker_from_config(cfg.preference, stage_dir)
        try:
            scores = check_scores(
                ranker([row["prompt"] for row in rows], candidates, rows),
                candidates,
                f"ranker '{cfg.preference.ranker}'",
            )
        finally:
            if hasattr(ranker, "close"):
                ranker.close()
            del ranker
            gc.collect()
        records, _ = build_pairs(rows, candidates, scores)
        write_jsonl_atomic(pairs_file, [{"round": r, **record} for record in records])
    state.wait_for_everyone()
    return base, _records(pairs_file)


def training_set(records: list[dict], pairs: Dataset, cfg: RecipeConfig, r: int) -> tuple[Dataset | None, Counter]:
    """The round's DPO rows: its on-policy pairs, plus (mixed) dataset pairs in the configured ratio."""
    p = cfg.preference
    on_policy = training_pairs(records)
    counts = Counter(prompts=len(records), on_policy_pairs=len(on_policy))
    counts.update(record["status"] for record in records if record["status"] != "pair")
    rows = list(on_policy)
    if p.sampling == "mixed" and on_policy:
        wanted = round(len(on_policy) * (1 - p.onpolicy_mix_ratio) / p.onpolicy_mix_ratio)
        picked = random.Random(cfg.run.seed + r).sample(range(len(pairs)), min(wanted, len(pairs)))
        dataset_rows = pairs.select(picked).select_columns(["prompt", "chosen", "rejected"])
        rows += list(dataset_rows)
        counts["dataset_pairs"] = len(picked)
    return Dataset.from_list(rows) if rows else None, counts
