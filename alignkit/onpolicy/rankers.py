"""Rankers: score k sampled responses per prompt so the best and the worst can form an on-policy pair.

Every ranker is a callable `ranker(prompts, candidates, rows) -> scores`:

* `prompts[i]`: the prompt (a string or a list of chat messages), `candidates[i]`: its k sampled responses,
  `rows[i]`: the whole dataset row it came from (so a ranker can read `reference_answer`, `task`, ...);
* `scores[i][j]`: a float (higher is better) or None when the ranker cannot score that response.

Four kinds ship: `builtin_verifier` (`alignkit.data.verifier.verify`, the code that checks the built-in data's
`reference_answer`; the win-rate evaluator's `verifier` judge uses the same function), `JudgeRanker` (an LLM
judge on alignkit.judge's client and cache), `RewardModelRanker` (a sequence-classification model) and any function
named as `module:function` (`load_callable`). `ranker_from_config` picks one from the recipe config.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from itertools import combinations
from pathlib import Path

import torch

from alignkit.data.verifier import import_function, verify
from alignkit.errors import AlignkitError
from alignkit.sequences import Prompt, pad_id

Scores = list[list[float | None]]
Ranker = Callable[[Sequence[Prompt], Sequence[Sequence[str]], Sequence[dict]], Scores]

# --- the verifier for the built-in data (alignkit.data.verifier)


def builtin_verifier(prompts: Sequence[Prompt], candidates: Sequence[Sequence[str]], rows: Sequence[dict]) -> Scores:
    """The ranker for the built-in data: `verify` on every candidate (None for rows without a reference answer)."""
    return [[verify(c, row) for c in cands] for cands, row in zip(candidates, rows)]


# --- any function


def load_callable(spec: str) -> Ranker:
    """`module:function` (an importable module, or a module in the current directory) or `path/to/file.py:function`,
    as a ranker.

    A function with two parameters is called as f(prompts, candidates); one that takes three also gets the rows.
    """
    fn = import_function(spec, "ranker_path")
    try:
        inspect.signature(fn).bind(None, None, None)
    except TypeError:
        return lambda prompts, candidates, rows: fn(prompts, candidates)
    except ValueError:  # builtins without a signature: assume the documented three-argument form
        pass
    return fn


# --- a reward model


class RewardModelRanker:
    """Scores (prompt, response) with a transformers sequence-classification model: its single logit, or for a
    classifier with several labels the probability of the last one (by convention the positive label)."""

    def __init__(self, path: str, batch_size: int = 16, max_length: int = 1024, device: str | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer  # only this ranker needs them

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path)
        except OSError as err:
            raise AlignkitError(f"ranker_path {path!r}: cannot load a reward model: {err}") from None
        if self.tokenizer.pad_token is None:  # padding=True below needs one: the EOS, as alignkit.models sets it
            self.tokenizer.pad_token_id = pad_id(self.tokenizer)
        if self.model.config.pad_token_id is None:  # needed to find each row's last token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        self.max_length = max_length

    def text(self, prompt: Prompt, response: str) -> str:
        if isinstance(prompt, str):
            return f"{prompt}\n{response}"
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(
                [*prompt, {"role": "assistant", "content": response}], tokenize=False
            )
        return "\n".join(f"{m['role']}: {m['content']}" for m in [*prompt, {"role": "assistant", "content": response}])

    @torch.inference_mode()
    def __call__(self, prompts, candidates, rows=None) -> Scores:
        texts = [self.text(p, c) for p, cands in zip(prompts, candidates) for c in cands]
        flat: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=False,
            ).to(self.device)
            logits = self.model(**batch).logits.float()
            values = logits[:, 0] if logits.shape[-1] == 1 else logits.softmax(-1)[:, -1]
            flat.extend(values.tolist())
        out, i = [], 0
        for cands in candidates:
            out.append(flat[i : i + len(cands)])
            i += len(cands)
        return out


# --- an LLM judge


POINTWISE_TEMPLATE = Path(__file__).parent / "templates" / "pointwise.txt"
POINTWISE_SCORES = {"A": 1.0, "tie": 0.5, "B": 0.0}  # the pointwise template's labels: good / partly / bad


class JudgeRanker:
    """Ranks with an LLM judge through alignkit.judge's client: its retries, request budget and crash-safe cache.

    'pairwise' plays a round-robin tournament: every pair of distinct responses in both orders, each pair scored with
    the judge's order-debiasing (`combine_orders`: a verdict that flips with the order is a tie); a response's score
    is its mean over its games. 'pointwise' grades each response alone, against the row's `reference_answer` when
    there is one, with the shipped `pointwise.txt` template ([[A]] good = 1, [[C]] partly = 0.5, [[B]] bad = 0).
    Identical responses are judged once. A judgment that failed (error, unparseable, budget spent) scores None.
    """

    def __init__(self, judge, mode: str, cache_path: str | Path, log_dir: str | Path | None = None):
        # imported here: the judge's client (openai, tqdm) loads only when a judge ranks, not for every ranker; no
        # cycle hides behind it (alignkit.judge does not import onpolicy)
        from alignkit.judge.cache import JudgmentCache
        from alignkit.judge.client import JudgeRunner
        from alignkit.judge.parse import load_template

        self.judge = judge
        self.mode = mode
        template = load_template(str(POINTWISE_TEMPLATE) if mode == "pointwise" else judge.template)
        self.cache = JudgmentCache(cache_path)
        self.runner = JudgeRunner(judge, template, self.cache)
        self.log_dir = Path(log_dir) if log_dir is not None else Path(cache_path).parent

    def _run(self, comparisons: list) -> list:
        from alignkit.judge.local_server import run_judge  # as in __init__: judge modules load only for this ranker

        return run_judge(self.runner, comparisons, self.log_dir)

    def __call__(self, prompts, candidates, rows=None) -> Scores:
        # imported here for the reason given in __init__ (no cycle: alignkit.judge does not import onpolicy)
        from alignkit.judge.client import Comparison
        from alignkit.judge.inputs import instruction_text
        from alignkit.judge.metrics import combine_orders

        rows = rows if rows is not None else [{} for _ in prompts]
        questions: list[tuple[int, tuple, Comparison]] = []  # (prompt index, what it decides, the comparison)
        unique = [list(dict.fromkeys(c)) for c in candidates]
        for i, (prompt, texts, row) in enumerate(zip(prompts, unique, rows)):
            instruction = instruction_text(prompt)
            if self.mode == "pointwise":
                reference = (row.get("reference_answer") or "").strip() or "(no reference answer)"
                questions += [(i, (t,), Comparison(instruction, t, reference)) for t in texts]
            else:
                for a, b in combinations(texts, 2):
                    questions.append((i, (a, b), Comparison(instruction, a, b)))
                    questions.append((i, (b, a), Comparison(instruction, b, a)))
        judgments = self._run([q[2] for q in questions]) if questions else []
        verdicts = {(i, key): j.verdict if j.status == "ok" else None for (i, key, _), j in zip(questions, judgments)}
        scores: Scores = []
        for i, (cands, texts) in enumerate(zip(candidates, unique)):
            by_text: dict[str, float | None] = {}
            for t in texts:
                if self.mode == "pointwise":
                    verdict = verdicts.get((i, (t,)))
                    by_text[t] = POINTWISE_SCORES.get(verdict) if verdict else None
                    continue
                games = []
                for other in texts:
                    first, second = verdicts.get((i, (t, other))), verdicts.get((i, (other, t)))
                    if other != t and first and second:
                        games.append(combine_orders(first, second)[0])
                by_text[t] = sum(games) / len(games) if games else (0.5 if len(texts) == 1 else None)
            scores.append([by_text[c] for c in cands])
        return scores

    def close(self) -> None:
        self.cache.close()


# --- choosing one from the config


def ranker_from_config(p, stage_dir: Path, device: str | None = None) -> Ranker:
    """The ranker the preference config names (`ranker`, `ranker_path`, `ranker_judge_*`)."""
    if p.ranker == "builtin_verifier":
        return builtin_verifier
    if p.ranker == "callable":
        return load_callable(p.ranker_path)
    if p.ranker == "reward_model":
        return RewardModelRanker(p.ranker_path, batch_size=p.onpolicy_batch_size, device=device)
    from alignkit.judge.config import JudgeConfig  # alignkit.judge's __init__ loads the client (openai): judges only

    judge = JudgeConfig.from_endpoint(p.ranker_endpoint)  # the endpoint was checked when the config was parsed
    return JudgeRanker(judge, p.ranker_judge_mode, stage_dir / "judge_cache.jsonl", stage_dir)


def check_scores(scores, candidates: Sequence[Sequence[str]], where: str) -> Scores:
    """The ranker's output, checked: one list per prompt, one number (or None) per candidate; NaN becomes None."""
    if not isinstance(scores, list | tuple) or len(scores) != len(candidates):
        got = len(scores) if isinstance(scores, list | tuple) else type(scores).__name__
        raise AlignkitError(f"{where}: the ranker returned {got} score lists for {len(candidates)} prompts")
    out: Scores = []
    for i, (row, cands) in enumerate(zip(scores, candidates)):
        row = row.tolist() if hasattr(row, "tolist") else list(row) if isinstance(row, tuple) else row
        if not isinstance(row, list) or len(row) != len(cands):
            raise AlignkitError(f"{where}: prompt {i}: the ranker returned {row!r} for {len(cands)} candidates")
        checked = []
        for value in row:
            if value is None:
                checked.append(None)
                continue
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise AlignkitError(f"{where}: prompt {i}: score {value!r} is not a number") from None
            checked.append(value if math.isfinite(value) else None)
        out.append(checked)
    return out
