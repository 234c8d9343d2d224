"""Writing the rewrite families (`*_rephrase`, `*_reformat`) with an LLM behind any OpenAI-compatible endpoint.

Used only when the preference data lacks those columns. Each rewrite is generated once (temperature 0) through the
judge's client (`alignkit.judge.client.TextRunner`: concurrency, retries with backoff, every request counted) and kept
in the judge's crash-safe cache (`alignkit.judge.cache.JudgmentCache`: a torn line is skipped and redone), keyed by
endpoint model, kind, prompt and response, so rebuilding a probe set, or building the same one for a second run,
costs no calls.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from alignkit.errors import AlignkitError
from alignkit.sequences import Prompt

if TYPE_CHECKING:
    from alignkit.judge.config import JudgeConfig

DEFAULT_CACHE = Path("~/.cache/alignkit/rephrase_cache.jsonl")

INSTRUCTIONS = {
    # Same meaning, other words: the paper's y+_gpts / y-_gpts.
    "rephrase": (
        "Rewrite the answer below in different words while keeping exactly the same meaning, facts and length. "
        "Reply with the rewritten answer only."
    ),
    # Same format, other meaning: the paper's y+_gptf / y-_gptf.
    "reformat": (
        "Write a new answer with exactly the same format, sentence structure and length as the answer below, but "
        "about something else so that its meaning is different. Reply with the new answer only."
    ),
}


def _prompt_text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


SETTINGS = "probe_rephrase_base_url, probe_rephrase_model"  # what an endpoint error tells the user to check


class Rephraser:
    """Rewrites answers through the judge's client, with the judge's on-disk cache.

    Args:
        judge: the endpoint and how hard to try; `from_config` builds it from a `MonitorConfig` (temperature 0).
        cache_path: the cache file (JSONL, one line per rewrite); created on first write.
    """

    def __init__(self, judge: JudgeConfig, cache_path: str | Path = DEFAULT_CACHE):
        # alignkit.judge loads the openai client (about a second): only a run that writes rewrites pays for it, and
        # importing alignkit.monitors (hence alignkit.config) stays free of it. No cycle: judge imports no monitors.
        from alignkit.judge.cache import JudgmentCache
        from alignkit.judge.client import TextRunner

        self.model = judge.model
        self.cache = JudgmentCache(Path(cache_path).expanduser())
        self.runner = TextRunner(judge, self.cache, name="rewrite endpoint", settings=SETTINGS)

    @classmethod
    def from_config(cls, config, cache_dir: str | Path | None = None, max_tokens: int = 256) -> Rephraser:
        """The rephraser at `config.rephrase_endpoint` (a `MonitorConfig`'s `probe_rephrase_*` fields, validated
        there), caching in `probe_rephrase_cache`, else `<cache_dir>/rephrase_cache.jsonl`, else DEFAULT_CACHE."""
        from alignkit.judge.config import JudgeConfig  # as in __init__: the judge package loads only for rewrites

        endpoint = config.rephrase_endpoint
        if endpoint is None:
            raise AlignkitError("no rewrite endpoint: set probe_rephrase_base_url and probe_rephrase_model")
        if config.probe_rephrase_cache:
            cache = Path(config.probe_rephrase_cache)
        elif cache_dir is not None:
            cache = Path(cache_dir) / "rephrase_cache.jsonl"
        else:
            cache = DEFAULT_CACHE
        # Unlike the judge's key, an unset variable is not an error: probe_rephrase_api_key_env defaults to
        # OPENAI_API_KEY, and local servers (llama.cpp, vLLM) accept any key; None sends a dummy one.
        key_env = endpoint.api_key_env if os.environ.get(endpoint.api_key_env or "") else None
        judge = JudgeConfig.from_endpoint(
            replace(endpoint, api_key_env=key_env), temperature=0.0, max_tokens=max_tokens
        )
        return cls(judge, cache)

    @property
    def requests(self) -> int:
        """HTTP requests this rephraser has sent (cache hits send none)."""
        return self.runner.stats.requests

    def _key(self, kind: str, prompt: Prompt, response: str) -> str:
        blob = json.dumps([self.model, kind, _prompt_text(prompt), response], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def rewrite(self, kind: str, prompt: Prompt, response: str) -> str | None:
        """The `kind` ('rephrase' or 'reformat') rewrite of `response` (an answer to `prompt`); None if empty."""
        return self.rewrite_all([(kind, prompt, response)])[0]

    def rewrite_all(self, requests: Sequence[tuple[str, Prompt, str]]) -> list[str | None]:
        """Rewrites of many (kind, prompt, response) at once, asked concurrently; each distinct one is asked once and
        a cached one not at all."""
        from alignkit.judge.client import Question  # as in __init__: the judge package loads only for rewrites

        questions = []
        for kind, prompt, response in requests:
            if kind not in INSTRUCTIONS:
                raise ValueError(f"unknown rewrite kind {kind!r}; expected one of {sorted(INSTRUCTIONS)}")
            message = f"{INSTRUCTIONS[kind]}\n\nQuestion:\n{_prompt_text(prompt)}\n\nAnswer:\n{response}"
            key = self._key(kind, prompt, response)
            questions.append(Question(key, [{"role": "user", "content": message}], {"kind": kind}))
        try:
            answers = self.runner.run(questions, progress=False)
        finally:
            self.cache.close()  # reopened by the next write; nothing stays open between probe sets
        if failed := next((a for a in answers if a.status != "ok"), None):
            raise AlignkitError(
                f"the rewrite endpoint failed for model {self.model!r} ({failed.error}); check {SETTINGS}, or leave "
                "them unset to skip the rewrite families"
            )
        # an empty rewrite would be scored as the EOS alone: that probe goes without it
        return [a.raw.strip() or None for a in answers]
