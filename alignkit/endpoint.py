"""`JudgeEndpoint`: where an OpenAI-compatible model is asked, with the one check of its settings.

A recipe names such an endpoint in three sections, with the flat keys its YAML files have always used: the win-rate
judge (`eval_judge_*`), the on-policy ranker (`ranker_path` + `ranker_judge_*`) and the rephraser
(`probe_rephrase_*`). Each section hands on one `JudgeEndpoint` (`cfg.evaluation.judge_endpoint`,
`cfg.preference.ranker_endpoint`, `cfg.monitor.rephrase_endpoint`) and checks it with `JudgeEndpoint.validate` when
it is parsed; `alignkit.judge.config.JudgeConfig` runs the same check on its own fields, and
`JudgeConfig.from_endpoint` is how a section's endpoint becomes a judge. This module sits outside `alignkit.judge`
because importing that package loads the OpenAI client (about a second), while the recipe config, which every entry
point imports, needs only these fields and their check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from alignkit.errors import AlignkitError

LOCAL = "local"  # a llama.cpp server alignkit starts for the run (alignkit.judge.local_server)
VERIFIER = "verifier"  # no model: responses are checked against reference answers (alignkit.judge.verifier)


@dataclass(frozen=True)
class JudgeEndpoint:
    """Which endpoint to ask and as what model; the key itself is never here, only its variable's name.

    Args:
        base_url: 'local', 'verifier', 'auto' (where the section allows them) or an http(s) URL.
        model: the model name sent with every request; required with a URL.
        api_key_env: NAME of the environment variable holding the key (None: no key).
        verifier: with base_url='verifier', the scoring function (see `JudgeConfig.verifier`).
    """

    base_url: str
    model: str | None = None
    api_key_env: str | None = None
    verifier: str = "builtin"

    @property
    def is_url(self) -> bool:
        return isinstance(self.base_url, str) and self.base_url.startswith(("http://", "https://"))

    def validate(
        self,
        prefix: str,
        url_field: str | None = None,
        kinds: Sequence[str] = (LOCAL, VERIFIER),
        name_format: str = "config field '{}'",
    ) -> None:
        """Raise AlignkitError naming the user's field when this endpoint cannot work.

        Args:
            prefix: the fields' common prefix: `{prefix}base_url`, `{prefix}model`, `{prefix}api_key_env`.
            url_field: the base URL's field when it does not follow the prefix (the ranker's `ranker_path`).
            kinds: the special base_url values this section accepts besides a URL.
            name_format: how an error names a field: a recipe's config field, or `{}` for `JudgeConfig`'s `judge.`.
        """
        url_field = url_field or f"{prefix}base_url"
        if not self.is_url and self.base_url not in kinds:
            url = "an OpenAI-compatible URL starting with http:// or https:// (e.g. https://api.openai.com/v1)"
            either = f"{', '.join(map(repr, kinds))} or {url}" if kinds else url
            raise AlignkitError(f"{name_format.format(url_field)} is {self.base_url!r}; it must be {either}")
        if self.is_url and not self.model:
            raise AlignkitError(
                f"{name_format.format(prefix + 'model')} is required when {url_field} is a URL "
                f"({redact_url(self.base_url)}): the model name the endpoint serves, e.g. gpt-4o"
            )
        if self.api_key_env is not None and not self.api_key_env.replace("_", "").isalnum():
            # Catches the easy mistake of passing the key itself instead of the variable's name.
            raise AlignkitError(
                f"{name_format.format(prefix + 'api_key_env')} must be the NAME of an environment variable (e.g. "
                "OPENAI_API_KEY), not the key"
            )


def redact_url(url: str) -> str:
    """The URL without user:password@ and without a query string, which is where keys sometimes travel."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
