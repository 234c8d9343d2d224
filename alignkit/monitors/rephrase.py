"""Writing the rewrite families (`*_rephrase`, `*_reformat`) with an LLM behind any OpenAI-compatible endpoint.

Used only when the preference data lacks those columns. Each rewrite is generated once (temperature 0) and cached in
a JSONL file keyed by endpoint model, kind, prompt and response, so rebuilding a probe set, or building the same one
for a second run, costs no calls.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from alignkit.errors import AlignkitError
from alignkit.jsonl import append_jsonl, location, read_jsonl_cache
from alignkit.sequences import Prompt

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


class Rephraser:
    """Rewrites answers through `client.chat.completions.create`, with an on-disk cache.

    Args:
        client: an `openai.OpenAI` (or anything with the same `chat.completions.create`).
        model: the model name the endpoint serves.
        cache_path: JSONL file of earlier rewrites; created on first write.
    """

    def __init__(self, client, model: str, cache_path: str | Path = DEFAULT_CACHE, max_tokens: int = 256):
        self.client = client
        self.model = model
        self.max_tokens = max_tokens
        self.cache_path = Path(cache_path).expanduser()
        self.cache: dict[str, str] = {}
        for line, record in read_jsonl_cache(self.cache_path):  # a torn last line (a kill mid-append) is skipped
            for field in ("key", "text"):
                if not isinstance(record.get(field), str):
                    raise AlignkitError(
                        f"{location(self.cache_path, line, field)}: missing or not text; is this a rephrase cache "
                        "(config field 'probe_rephrase_cache')?"
                    )
            self.cache[record["key"]] = record["text"]
        self.calls = 0  # endpoint calls made by this instance (cache misses)

    @classmethod
    def from_config(cls, config, cache_dir: str | Path | None = None) -> Rephraser:
        """The rephraser at `config.rephrase_endpoint` (a `MonitorConfig`'s `probe_rephrase_*` fields, validated
        there), caching in `probe_rephrase_cache`, else `<cache_dir>/rephrase_cache.jsonl`, else DEFAULT_CACHE."""
        from openai import OpenAI  # a run without a rewrite endpoint never builds the client

        endpoint = config.rephrase_endpoint
        if endpoint is None:
            raise AlignkitError("no rewrite endpoint: set probe_rephrase_base_url and probe_rephrase_model")
        if config.probe_rephrase_cache:
            cache = Path(config.probe_rephrase_cache)
        elif cache_dir is not None:
            cache = Path(cache_dir) / "rephrase_cache.jsonl"
        else:
            cache = DEFAULT_CACHE
        # Unlike the judge's key (JudgeConfig.api_key), a missing variable is not an error: probe_rephrase_api_key_env
        # defaults to OPENAI_API_KEY, and local servers (llama.cpp, vLLM) accept any key.
        api_key = os.environ.get(endpoint.api_key_env or "") or "not-needed"
        client = OpenAI(base_url=endpoint.base_url, api_key=api_key, max_retries=2, timeout=120)
        return cls(client, endpoint.model, cache)

    def _key(self, kind: str, prompt: Prompt, response: str) -> str:
        blob = json.dumps([self.model, kind, _prompt_text(prompt), response], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def rewrite(self, kind: str, prompt: Prompt, response: str) -> str | None:
        """The `kind` ('rephrase' or 'reformat') rewrite of `response` (an answer to `prompt`); None if empty."""
        if kind not in INSTRUCTIONS:
            raise ValueError(f"unknown rewrite kind {kind!r}; expected one of {sorted(INSTRUCTIONS)}")
        key = self._key(kind, prompt, response)
        if key in self.cache:
            return self.cache[key] or None
        message = f"{INSTRUCTIONS[kind]}\n\nQuestion:\n{_prompt_text(prompt)}\n\nAnswer:\n{response}"
        try:
            completion = self.client.chat.completions.create(
                model=self.model,
                messages=[{"role": "user", "content": message}],
                temperature=0.0,
                max_tokens=self.max_tokens,
            )
        except Exception as err:  # the openai client raises many types; the user needs the endpoint named
            raise AlignkitError(
                f"the rewrite endpoint failed for model {self.model!r} ({type(err).__name__}: {err}); check "
                "probe_rephrase_base_url / probe_rephrase_model, or leave them unset to skip the rewrite families"
            ) from err
        self.calls += 1
        text = (completion.choices[0].message.content or "").strip()
        self.cache[key] = text
        append_jsonl(self.cache_path, {"key": key, "kind": kind, "text": text})  # per call: progress survives a kill
        return text or None  # an empty rewrite would be scored as the EOS alone: that probe goes without it
