"""End to end against the real llama.cpp OpenAI-compatible server on the SmolLM2-135M GGUF (`--judge local`).

Skipped when llama-cpp-python's server is not installed (failed instead under CI=true). Generation uses the tiny model
from conftest (fast); the judging is real: a real HTTP server, the `openai` client, a real (weak) model's answers, both
orders.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from alignkit.errors import AlignkitError
from alignkit.judge import JudgeConfig, WinRateConfig, evaluate_win_rate

from .conftest import require_or_skip, skip_or_fail

pytestmark = pytest.mark.server
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def llama_cpp_server_installed() -> None:
    require_or_skip("llama_cpp", "llama-cpp-python[server] is not installed (the server extra)")


def _port_is_closed(base_url: str) -> bool:
    port = int(base_url.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def gguf() -> Path:
    from alignkit.judge.local_server import default_gguf

    try:
        return default_gguf()
    except AlignkitError as e:
        skip_or_fail(str(e))


def test_tiny_model_vs_outputs_judged_by_local_smollm2(tmp_path, tiny_model_dir, gguf):
    prompts = ["What is the capital of France?", "What is 12 plus 30?", "Name the opposite of hot."]
    baseline = tmp_path / "reference.jsonl"
    answers = ["The capital of France is Paris.", "12 plus 30 is 42.", "The opposite of hot is cold."]
    baseline.write_text("".join(json.dumps({"prompt": p, "output": a}) + "\n" for p, a in zip(prompts, answers)))
    out = tmp_path / "out"
    config = WinRateConfig(max_new_tokens=12, bootstrap_samples=200, candidate_name="tiny-random")
    chat_prompts = [[{"role": "user", "content": p}] for p in prompts]
    judge = JudgeConfig(max_tokens=48, parse_retries=1)
    kwargs = dict(prompts=chat_prompts, judge=judge, output_dir=out, config=config, progress=False)
    result = evaluate_win_rate(str(tiny_model_dir), baseline, **kwargs)
    # every pair was sent in both orders to the real server and answered (parsed or recorded as unparseable)
    stats = result.stats
    server_log = (out / "judge_server.log").read_text(errors="replace")[-3000:]
    assert result.n_prompts == 3 and stats["requests"] >= 6
    # every pair was answered in both orders (a request that failed on the way is in stats["retries"] and the log)
    assert stats["replies"] >= 6, (stats, server_log)
    # llama-cpp-python's server reports `usage` on every non-streamed reply; one without it would be counted here,
    # not added as 0 tokens
    assert stats["replies_without_usage"] == 0, stats
    assert stats["prompt_tokens"] > 100 * stats["replies"], stats  # the server really read the judge prompts
    for pair in result.pairs:
        assert pair.candidate_first["status"] in ("ok", "unparseable")
        assert pair.candidate_second["status"] in ("ok", "unparseable")
    generated = [json.loads(line) for line in (out / "outputs_candidate.jsonl").read_text().splitlines()]
    assert len(generated) == 3 and generated[0]["generator"] == Path(tiny_model_dir).name
    for name in ("report.md", "report.html", "win_rate.png", "results.json", "judgments.jsonl", "judge_server.log"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "135M" in report and "--judge-base-url https://api.openai.com/v1" in report  # the weak-judge note
    assert result.judge["template"] == "pairwise_small"

    # a rerun is served from the cache and does not even start the server
    again = evaluate_win_rate(str(tiny_model_dir), baseline, **kwargs)  # greedy: the same outputs again
    assert again.stats["requests"] == 0 and again.stats["cache_hits"] == 6
    assert (again.wins, again.ties, again.losses) == (result.wins, result.ties, result.losses)


def test_cli_judge_local_on_two_jsonl_files(tmp_path, gguf):
    cand, base = tmp_path / "chosen.jsonl", tmp_path / "rejected.jsonl"
    rows = [("What is 2 + 2?", "2 + 2 is 4.", "2 + 2 is 5."), ("Capital of Italy?", "Rome.", "Milan.")]
    cand.write_text("".join(json.dumps({"prompt": q, "output": g}) + "\n" for q, g, _ in rows))
    base.write_text("".join(json.dumps({"prompt": q, "output": b}) + "\n" for q, _, b in rows))
    out = tmp_path / "out"
    command = [sys.executable, str(REPO / "eval" / "win_rate.py"), "--candidate", str(cand), "--baseline", str(base),
               "--judge", "local", "--judge-max-tokens", "32", "--output-dir", str(out), "--quiet"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 3), done.stderr  # 3: some verdicts unparseable, which a 135M judge may produce
    assert "win rate" in done.stdout and (out / "report.html").is_file()
    results = json.loads((out / "results.json").read_text())
    assert results["judge"]["base_url"] == "local" and results["stats"]["requests"] >= 4


def test_local_server_stops_on_error_inside_the_block(gguf):
    from alignkit.judge.local_server import LocalJudgeServer

    server = LocalJudgeServer(gguf)
    with pytest.raises(RuntimeError, match="boom"), server:
        process = server.process
        base_url = server.base_url
        assert not _port_is_closed(base_url)
        raise RuntimeError("boom")
    assert process.poll() is not None and _port_is_closed(base_url)


def test_local_server_start_failure_is_a_clear_error(tmp_path):
    from alignkit.judge.local_server import LocalJudgeServer

    not_a_model = tmp_path / "broken.gguf"
    not_a_model.write_bytes(b"not a gguf file")
    with pytest.raises(AlignkitError, match="exited at start-up"):
        LocalJudgeServer(not_a_model, log_path=tmp_path / "server.log").start()
