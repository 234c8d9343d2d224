"""Which HTTP statuses from a judge endpoint are retried (408 and 409 mean "try again")."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import openai
import pytest

from alignkit.judge.cache import JudgmentCache
from alignkit.judge.client import JudgeRunner, _Rejected, _Transient
from alignkit.judge.config import JudgeConfig
from alignkit.judge.parse import load_template


class _Failing:
    """Stands in for `openai.AsyncOpenAI`: every completion request (`post`, or `chat.completions.create`) answers
    HTTP `status`."""

    def __init__(self, status: int):
        self.status = status
        self.chat = self
        self.completions = self

    async def create(self, **_):
        # duck-typed HTTP response: the openai client's own classes differ between its versions
        response = SimpleNamespace(status_code=self.status, headers={"retry-after": "0"}, request=None)
        raise openai.APIStatusError(f"HTTP {self.status}", response=response, body=None)

    async def post(self, path, **_):
        assert path == "/chat/completions"
        await self.create()


@pytest.mark.parametrize(("status", "kind"), [(408, _Transient), (409, _Transient), (429, _Transient),
                                               (503, _Transient), (400, _Rejected), (422, _Rejected)])  # fmt: skip
def test_status_is_retried_or_rejected(tmp_path, status, kind):
    runner = JudgeRunner(
        JudgeConfig(base_url="http://judge.invalid/v1", model="m"),
        load_template("pairwise"),
        JudgmentCache(tmp_path / "cache.jsonl"),
    )
    with pytest.raises(kind):
        asyncio.run(runner._request(_Failing(status), [{"role": "user", "content": "q"}], 0.0))
