"""Asking an OpenAI-compatible judge many questions at once, politely and restartably.

The `openai` client's own retries are switched off (`max_retries=0`) so that every HTTP request is counted here: the
request budget, the retry counts in the report and the "a cached rerun makes zero requests" guarantee all depend on
that. Failures are sorted into three kinds:

* transient (408, 409, 429, 5xx, timeouts, dropped connections, malformed bodies): retried with exponential backoff
  and jitter, honouring Retry-After, up to `max_retries` times;
* unparseable answers (a well-formed reply without a readable verdict): re-asked at `retry_temperature` up to
  `parse_retries` times, then recorded (and cached) as unparseable with the raw answer, never guessed; a rerun reads
  that raw answer again with the parser of the day, without a request (alpaca_eval's `is_reapply_parsing`), and counts
  what it reads as `rescued`;
* rejected (400, 422: e.g. a prompt longer than the judge's context): recorded as an error without retrying, since
  the same request would fail the same way;
* fatal for the whole run (401, 403, 404: wrong key, wrong model, wrong URL): raised at once as an AlignkitError,
  because every other request would fail the same way.

`ChatRunner` holds that machinery (scheduling, cache, budget, retries, the request itself) once; `JudgeRunner` asks
for verdicts on comparisons and `TextRunner` for free text (the monitor's rewrites, `alignkit.monitors.rephrase`).
The module is over 400 lines because the two runners are thin and the one retry policy should be read in one place.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import openai
from tqdm.auto import tqdm

from alignkit.errors import AlignkitError
from alignkit.judge.cache import JudgmentCache, cache_key
from alignkit.judge.config import JudgeConfig
from alignkit.judge.parse import Template, Verdict, parse_verdict, reason_of, verdict_log_odds

_FATAL_STATUS = {401, 403, 404}
# 408 (request timeout) and 409 (conflict: e.g. a replica busy or not loaded yet) mean "try again" at most providers.
_RETRY_STATUS = {408, 409, 429}


@dataclass(frozen=True)
class Comparison:
    """One question to the judge: an instruction and two outputs in the order the judge will see them."""

    instruction: str
    output_a: str
    output_b: str


@dataclass
class Judgment:
    key: str
    status: str  # "ok" | "unparseable" (both cached) | "error" (a request kept failing) | "pending" (budget spent)
    verdict: Verdict | None = None  # "A" | "B" | "tie" when status == "ok"
    raw: str | None = None
    logit_a: float | None = None  # mode=logprobs: log P(A) - log P(B) at the verdict token
    reason: str = ""
    cached: bool = False
    error: str | None = None


@dataclass
class JudgeStats:
    requests: int = 0  # HTTP requests sent in this run, successful or not
    cache_hits: int = 0
    retries: Counter = field(default_factory=Counter)  # reason -> count
    parse_failures: int = 0
    # Token counts come from the replies' `usage`. A reply without it (some servers leave it out, e.g. on streamed or
    # proxied replies) is counted in `replies_without_usage`, so that 0 tokens never stands for "not reported".
    replies: int = 0  # HTTP 200 replies whose body was JSON (`requests` minus those that failed on the way)
    replies_without_usage: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    budget_exhausted: bool = False
    seconds: float = 0.0
    rescued: int = 0  # cached unparseable answers that the current parser reads: verdicts without a new request

    def to_dict(self) -> dict:
        return {
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "retries": dict(self.retries),
            "parse_failures": self.parse_failures,
            "replies": self.replies,
            "replies_without_usage": self.replies_without_usage,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "budget_exhausted": self.budget_exhausted,
            "seconds": round(self.seconds, 3),
            "rescued": self.rescued,
        }


class _BudgetExhausted(Exception):
    pass


class _Rejected(Exception):
    pass


class _Transient(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _retry_after(error: openai.APIStatusError) -> float | None:
    try:
        return float(error.response.headers.get("retry-after"))
    except (TypeError, ValueError, AttributeError):
        return None


class _GaveUp(Exception):
    """A request that cannot be answered in this run: status 'error' (it kept failing or was rejected) or 'pending'
    (the request budget is spent)."""

    def __init__(self, status: str, error: str):
        super().__init__(error)
        self.status = status
        self.error = error


class ChatRunner:
    """Asks one endpoint many chat questions with bounded concurrency, a request budget, retries and a persistent
    cache (an answer is on disk before it counts as done). What is asked, and how an answer is read, belong to the
    subclasses: `JudgeRunner` (verdicts on comparisons) and `TextRunner` (free text, e.g. the monitor's rewrites).

    Args:
        config: the endpoint and how hard to try (`JudgeConfig`; its verdict fields matter to `JudgeRunner` only).
        cache: where answers are kept across runs.
        params: the sampling parameters that are part of every cache key.
        name, settings: how errors name the endpoint and the settings to check ("judge", "--judge-base-url, ...").
    """

    progress_label = "request"

    def __init__(
        self,
        config: JudgeConfig,
        cache: JudgmentCache,
        params: dict,
        name: str = "judge",
        settings: str = "--judge-base-url, --judge-model",
    ):
        self.config = config
        self.base_url = config.base_url
        self.cache = cache
        self.stats = JudgeStats()
        self._params = params
        self.name = name
        self.settings = settings
        self._rng = random.Random(0)
        # Set when a question gave up because the endpoint could not be reached, cleared by any answer: while it is
        # set, other questions give up at their first connection failure instead of each waiting out its backoff,
        # so a dead endpoint ends the run in one backoff cycle, not one per question.
        self._unreachable = False

    # --- what the subclasses say

    def key(self, item) -> str:
        """The cache key of one question."""
        raise NotImplementedError

    def _cached(self, key: str, record: dict):
        """The result for a cached record, or None when the record cannot serve (the question is asked again)."""
        raise NotImplementedError

    async def _ask(self, client: openai.AsyncOpenAI, key: str, item):
        """Ask one question (through `_send`), cache its record and return its result."""
        raise NotImplementedError

    # --- the shared machinery

    def uncached(self, items: Sequence) -> int:
        """How many distinct questions still need a request (0: no server needs to be started)."""
        return len({k for k in map(self.key, items) if k not in self.cache})

    def run(self, items: Sequence, base_url: str | None = None, progress: bool = True) -> list:
        """Results in the order of `items` (synchronous wrapper; works inside a running event loop too).

        `base_url` overrides the config's, e.g. with the address of a local server started for this run.
        """
        if base_url is not None:
            self.base_url = base_url
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.arun(items, progress))
        # Called from a notebook or another async program: run our loop on a worker thread instead.
        box: dict = {}

        def target():
            try:
                box["result"] = asyncio.run(self.arun(items, progress))
            except BaseException as e:  # re-raised in the caller's thread
                box["error"] = e

        thread = threading.Thread(target=target)
        thread.start()
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["result"]

    async def arun(self, items: Sequence, progress: bool = True) -> list:
        start = time.perf_counter()
        keys = [self.key(c) for c in items]
        unique: dict = {}
        for k, c in zip(keys, items):
            unique.setdefault(k, c)  # the same question asked twice is paid for once
        results: dict = {}
        todo = []
        for k, c in unique.items():
            record = self.cache.get(k)
            result = None if record is None else self._cached(k, record)
            if result is not None:
                self.stats.cache_hits += 1
                results[k] = result
            else:
                todo.append((k, c))
        if not todo:
            self.stats.seconds += time.perf_counter() - start
            return [results[k] for k in keys]
        bar = tqdm(
            total=len(unique),
            initial=len(results),
            desc=self.progress_label,
            unit=self.progress_label,
            disable=not progress,
            leave=False,
        )
        semaphore = asyncio.Semaphore(self.config.concurrency)
        async with openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=self.config.api_key(),
            max_retries=0,  # every request is counted and retried by us
            timeout=self.config.timeout_s,
        ) as client:

            async def one(k: str, c) -> None:
                async with semaphore:
                    results[k] = await self._ask(client, k, c)
                bar.update(1)
                bar.set_postfix(requests=self.stats.requests, cached=self.stats.cache_hits, refresh=False)

            tasks = [asyncio.create_task(one(k, c)) for k, c in todo]
            try:
                # gather would keep the other tasks running after a fatal error; wait for the first exception.
                done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    if task.exception() is not None:
                        raise task.exception()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                bar.close()
        self.stats.seconds += time.perf_counter() - start
        return [results[k] for k in keys]

    async def _send(
        self, client: openai.AsyncOpenAI, messages: list[dict], temperature: float, failures: int = 0
    ) -> tuple[str, list | None, int]:
        """One answer (its text and, in logprobs mode, its tokens' alternatives) and the transient failures so far:
        those are retried with backoff, and `failures` carries the count over from earlier asks of the same question
        (its retry allowance is per question, re-asks included). Raises _GaveUp when the question cannot be answered
        in this run."""
        while True:
            try:
                raw, tokens = await self._request(client, messages, temperature)
                self._unreachable = False
                return raw, tokens, failures
            except _BudgetExhausted:
                self.stats.budget_exhausted = True
                raise _GaveUp("pending", "request budget spent") from None
            except _Rejected as e:
                raise _GaveUp("error", str(e)) from None
            except _Transient as e:
                failures += 1
                if e.reason == "connection" and self._unreachable:
                    raise _GaveUp("error", "connection: the endpoint is unreachable") from None
                if failures > self.config.max_retries:
                    self._unreachable = self._unreachable or e.reason == "connection"
                    raise _GaveUp("error", f"gave up after {failures} tries: {e}") from None
                self.stats.retries[e.reason] += 1
                delay = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2 ** (failures - 1))
                delay *= 0.5 + self._rng.random()  # jitter, so that throttled requests do not return in lockstep
                if e.retry_after is not None:
                    delay = max(delay, min(e.retry_after, self.config.backoff_max_s))
                await asyncio.sleep(delay)

    async def _request(
        self, client: openai.AsyncOpenAI, messages: list[dict], temperature: float
    ) -> tuple[str, list[tuple[str, dict[str, float]]] | None]:
        """The answer's text and, in logprobs mode, each generated token with its top alternatives' log-probs."""
        if self.config.max_requests is not None and self.stats.requests >= self.config.max_requests:
            raise _BudgetExhausted
        self.stats.requests += 1
        logprobs = self.config.mode == "logprobs"
        body: dict = {
            "model": self.config.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": self.config.max_tokens,
        }
        if logprobs:
            body |= {"logprobs": True, "top_logprobs": self.config.top_logprobs}
        try:
            # `post` with the body as it goes on the wire, and the reply read as plain JSON: `chat.completions.create`
            # sends the same request, but first walks the messages against its typed-dict annotations and afterwards
            # builds response models, which took most of the client's ~3-5 ms CPU per judgment (a cap on concurrency
            # at low latency). Errors, timeouts and status codes come from the same client code either way.
            reply = json.loads(await client.post("/chat/completions", cast_to=bytes, body=body))
        except openai.APITimeoutError as e:
            raise _Transient("timeout") from e
        except openai.APIConnectionError as e:
            raise _Transient("connection") from e
        except openai.APIStatusError as e:
            if e.status_code in _RETRY_STATUS:
                raise _Transient(f"{e.status_code}", _retry_after(e)) from e
            if e.status_code >= 500:
                raise _Transient(f"{e.status_code}", _retry_after(e)) from e
            if e.status_code in _FATAL_STATUS:
                raise AlignkitError(
                    f"The {self.name} at {self.base_url} answered HTTP {e.status_code} for model "
                    f"{self.config.model!r} (check {self.settings} and the key in ${self.config.api_key_env}): "
                    f"{e.message}"
                ) from None
            # 400/422 (e.g. a prompt longer than the judge's context) would fail identically if repeated.
            raise _Rejected(f"HTTP {e.status_code}: {e.message}") from e
        except ValueError as e:  # a body that is not JSON
            raise _Transient("malformed") from e
        self._count_usage(reply)
        try:
            choice = reply["choices"][0]
            content = choice["message"]["content"]
            tokens = _token_logprobs(choice.get("logprobs")) if logprobs else None
            if content is not None and not isinstance(content, str):
                raise TypeError("content is not text")
        except (AttributeError, IndexError, KeyError, TypeError) as e:
            raise _Transient("malformed") from e
        return content or "", tokens

    def _count_usage(self, reply) -> None:
        """Adds one reply's token counts; a reply that does not report them is counted as such, not as 0 tokens."""
        self.stats.replies += 1
        usage = reply.get("usage") if isinstance(reply, dict) else None
        prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        if not isinstance(prompt, int) or isinstance(prompt, bool):
            self.stats.replies_without_usage += 1
            return
        self.stats.prompt_tokens += prompt
        completion = usage.get("completion_tokens")
        self.stats.completion_tokens += completion if isinstance(completion, int) else 0


class JudgeRunner(ChatRunner):
    """Judges comparisons against one endpoint with bounded concurrency, a budget and a persistent cache."""

    progress_label = "judge"

    def __init__(self, config: JudgeConfig, template: Template, cache: JudgmentCache):
        params = {"temperature": config.temperature, "max_tokens": config.max_tokens}
        if config.mode == "logprobs":  # text-mode keys stay as they were, so existing caches keep serving
            params |= {"mode": "logprobs", "top_logprobs": config.top_logprobs}
        super().__init__(config, cache, params)
        self.template = template

    def key(self, c: Comparison) -> str:
        return cache_key(self.config.model, self.template.sha256, self._params, c.instruction, c.output_a, c.output_b)

    def _cached(self, key: str, record: dict) -> Judgment:
        status, verdict, logit_a = record["status"], record.get("verdict"), record.get("logit_a")
        if status == "unparseable":  # read again by today's parser: a parser fix needs no new request
            verdict, logit_a = self._verdict(record.get("raw"), record.get("tokens"))
            if verdict is not None:
                status = "ok"
                self.stats.rescued += 1
        return Judgment(
            key=key,
            status=status,
            verdict=verdict,
            raw=record.get("raw"),
            reason=reason_of(record.get("raw")),
            cached=True,
            logit_a=logit_a,
        )

    def _verdict(self, raw: str | None, tokens: list | None) -> tuple[Verdict | None, float | None]:
        """(verdict, log-odds of A over B in logprobs mode) of one answer; (None, None) when it states none."""
        if self.config.mode != "logprobs":
            return parse_verdict(raw), None
        logit_a = verdict_log_odds(tokens)
        return (None if logit_a is None else "A" if logit_a > 0 else "B" if logit_a < 0 else "tie"), logit_a

    async def _ask(self, client: openai.AsyncOpenAI, key: str, c: Comparison) -> Judgment:
        messages = self.template.render(c.instruction, c.output_a, c.output_b)
        transient_failures = 0
        parse_failures = 0
        raw = None
        logit_a = None
        while True:
            temperature = self.config.temperature if parse_failures == 0 else self.config.retry_temperature
            try:
                raw, tokens, transient_failures = await self._send(client, messages, temperature, transient_failures)
            except _GaveUp as e:
                return Judgment(key=key, status=e.status, error=e.error)
            verdict, logit_a = self._verdict(raw, tokens)
            if verdict is not None:
                record = {"status": "ok", "verdict": verdict, "raw": raw, "parse_failures": parse_failures}
                if logit_a is not None:
                    record["logit_a"] = logit_a
                break
            parse_failures += 1
            self.stats.parse_failures += 1
            if parse_failures > self.config.parse_retries:
                # the raw answer (and in logprobs mode its tokens) stays, for a better parser to read later
                record = {"status": "unparseable", "verdict": None, "raw": raw, "parse_failures": parse_failures}
                if tokens is not None:
                    record["tokens"] = tokens
                break
        record |= {"judge_model": self.config.model, "template_sha256": self.template.sha256, "time": time.time()}
        await asyncio.to_thread(self.cache.put, key, record)  # durable before it counts as done
        return Judgment(
            key=key,
            status=record["status"],
            verdict=record["verdict"],
            raw=raw,
            reason=reason_of(raw),
            logit_a=record.get("logit_a"),
        )


@dataclass
class Question:
    """A question answered in free text: its cache key, its chat messages, and fields recorded beside the answer."""

    key: str
    messages: list[dict]
    record: dict = field(default_factory=dict)


class TextRunner(ChatRunner):
    """Free-text answers, no verdict: each `Question`'s reply is cached as `text` under the question's key (with its
    `record` fields), and `run` returns `Judgment`s whose `raw` is that text (status 'ok', or 'error'/'pending')."""

    def __init__(self, config: JudgeConfig, cache: JudgmentCache, name: str, settings: str):
        super().__init__(
            config, cache, {"temperature": config.temperature, "max_tokens": config.max_tokens}, name, settings
        )

    def key(self, q: Question) -> str:
        return q.key

    def _cached(self, key: str, record: dict) -> Judgment | None:
        text = record.get("text")
        return Judgment(key=key, status="ok", raw=text, cached=True) if isinstance(text, str) else None

    async def _ask(self, client: openai.AsyncOpenAI, key: str, q: Question) -> Judgment:
        try:
            raw, _, _ = await self._send(client, q.messages, self.config.temperature)
        except _GaveUp as e:
            return Judgment(key=key, status=e.status, error=e.error)
        record = {**q.record, "text": raw, "time": time.time()}
        await asyncio.to_thread(self.cache.put, key, record)  # durable before it counts as done
        return Judgment(key=key, status="ok", raw=raw)


def _token_logprobs(logprobs: dict | None) -> list[tuple[str, dict[str, float]]]:
    """[(generated token, {alternative: log-prob, ...}), ...] from a chat completion's `logprobs` (JSON); an endpoint
    that ignored the request (no logprobs) gives [], which reads as an answer without a verdict."""
    if not logprobs or not logprobs.get("content"):
        return []
    out = []
    for item in logprobs["content"]:
        alternatives: dict[str, float] = {}
        for alt in item.get("top_logprobs") or []:
            alternatives[alt["token"]] = max(alt["logprob"], alternatives.get(alt["token"], -math.inf))
        alternatives.setdefault(item["token"], item["logprob"])
        out.append((item["token"], alternatives))
    return out
