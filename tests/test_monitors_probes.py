"""Probe-set building, saving/loading, LLM rewrites (against a local fake endpoint) and MonitorConfig checks."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from alignkit.data.builtin import load_builtin
from alignkit.errors import AlignkitError
from alignkit.monitors import ALL_FAMILIES, MonitorConfig, ProbeSet, build_probe_set
from alignkit.monitors.config import REWRITE_FAMILIES
from alignkit.sequences import response_text

STORED = [f for f in ALL_FAMILIES if f not in ("greedy", "argmax")]


@pytest.fixture(scope="module")
def data():
    return load_builtin()


def _prompt_text(prompt) -> str:
    return " ".join(m["content"] for m in prompt)


def test_probe_set_has_every_family_on_both_splits(data):
    probes = build_probe_set(data["train"], data["test"], MonitorConfig(probe_num_prompts=5), seed=3)
    assert probes.families == list(ALL_FAMILIES)
    assert (probes.count("train"), probes.count("test")) == (5, 5)
    assert probes.notes == []
    test_chosen = {response_text(r["chosen"]) for r in data["test"]}
    train_chosen = {response_text(r["chosen"]) for r in data["train"]}
    for p in probes.probes:
        r = p.responses
        assert sorted(r) == sorted(STORED), p.probe_id
        assert Counter(r["shuffled"].split()) == Counter(r["chosen"].split()) and r["shuffled"] != r["chosen"]
        assert Counter(r["non_human"].split()) == Counter(r["irrelevant_test"].split())
        assert r["irrelevant_test"] in test_chosen and r["irrelevant_train"] in train_chosen
        assert r["irrelevant_train"] != r["chosen"] and r["irrelevant_test"] != r["chosen"]
        assert r["irrelevant_human"] not in _prompt_text(p.prompt)  # from elsewhere in the data
        assert 0.5 <= len(r["irrelevant_human"].split()) / len(r["chosen"].split()) <= 3  # about the same length
    again = build_probe_set(data["train"], data["test"], MonitorConfig(probe_num_prompts=5), seed=3)
    assert [p.responses for p in again.probes] == [p.responses for p in probes.probes]  # seeded


def test_save_load_round_trip_and_probe_set_path(data, tmp_path):
    probes = build_probe_set(data["train"], data["test"], MonitorConfig(probe_num_prompts=3), seed=0)
    path = probes.save(tmp_path / "probe_set.jsonl")
    loaded = ProbeSet.load(path)
    assert loaded == probes
    narrower = MonitorConfig(probe_num_prompts=99, probe_families=["rejected", "greedy"], probe_set_path=str(path))
    reused = build_probe_set(None, None, narrower)  # the saved probes, not new ones: N and data are ignored
    assert reused.families == ["rejected", "greedy"]
    assert [p.probe_id for p in reused.probes] == [p.probe_id for p in probes.probes]
    assert all(list(p.responses) == ["rejected"] for p in reused.probes)
    (tmp_path / "bad.jsonl").write_text('{"x": 1}\n')
    with pytest.raises(AlignkitError, match="not an alignkit probe set"):
        ProbeSet.load(tmp_path / "bad.jsonl")


def test_missing_columns_and_missing_heldout_are_noted(data):
    train = data["train"].remove_columns(list(REWRITE_FAMILIES))
    probes = build_probe_set(train, None, MonitorConfig(probe_num_prompts=4), seed=0)
    assert probes.count("test") == 0
    assert not set(REWRITE_FAMILIES) & set(probes.families)
    assert "irrelevant_test" not in probes.families and "non_human" in probes.families  # random words instead
    notes = " ".join(probes.notes)
    assert "no held-out split" in notes
    assert all(f"`{f}` left out" in notes for f in REWRITE_FAMILIES)
    with pytest.raises(AlignkitError, match="no column"):
        build_probe_set(train.remove_columns(["chosen"]), None, MonitorConfig(), seed=0)
    sft = build_probe_set(train.remove_columns(["rejected"]), None, MonitorConfig(probe_num_prompts=4), seed=0)
    assert "rejected" not in sft.families and "chosen" in sft.families  # SFT data: y+ only, said in a note
    assert any("no rejected responses" in n for n in sft.notes)


class _FakeChat(BaseHTTPRequestHandler):
    """An OpenAI-compatible /v1/chat/completions that upper-cases the answer it is asked to rewrite."""

    requests = 0

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests += 1
        answer = body["messages"][0]["content"].rsplit("Answer:\n", 1)[1]
        reply = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer.upper()}}
            ],
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_rewrites_come_from_an_openai_compatible_endpoint_and_are_cached(data, tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _FakeChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        config = MonitorConfig(
            probe_num_prompts=2,
            probe_rephrase_base_url=f"http://127.0.0.1:{server.server_port}/v1",
            probe_rephrase_model="fake",
            probe_rephrase_cache=str(tmp_path / "cache.jsonl"),
        )
        train = data["train"].remove_columns(list(REWRITE_FAMILIES))
        test = data["test"].remove_columns(list(REWRITE_FAMILIES))
        probes = build_probe_set(train, test, config, seed=0)
        assert _FakeChat.requests == 4 * 4  # 4 probes x 4 rewrite families
        for p in probes.probes:
            assert p.responses["chosen_rephrase"] == p.responses["chosen"].upper()
            assert p.responses["rejected_reformat"] == p.responses["rejected"].upper()
        assert any("written by fake" in n for n in probes.notes)
        again = build_probe_set(train, test, config, seed=0)
        assert _FakeChat.requests == 16  # all from the cache
        assert [p.responses for p in again.probes] == [p.responses for p in probes.probes]
    finally:
        server.shutdown()


def test_monitor_config_validation_and_flat_parsing():
    from transformers import HfArgumentParser

    with pytest.raises(AlignkitError, match="unknown families"):
        MonitorConfig(probe_families=["chosen", "paraphrase"])
    with pytest.raises(AlignkitError, match="guard_action"):
        MonitorConfig(guard_action="panic")
    with pytest.raises(AlignkitError, match="probe_every"):
        MonitorConfig(probe_every=-1)
    with pytest.raises(AlignkitError, match="probe_rephrase_model"):
        MonitorConfig(probe_rephrase_base_url="http://localhost:1/v1")
    with pytest.raises(AlignkitError, match="probe_time_budget"):
        MonitorConfig(probe_time_budget=0)
    assert MonitorConfig(probe_families=["greedy", "argmax"]).probe_families == ["chosen", "greedy", "argmax"]
    (config,) = HfArgumentParser(MonitorConfig).parse_args_into_dataclasses(
        ["--probe_families", "rejected", "chosen", "--guard_action", "stop", "--squeeze_threshold", "0.2"]
    )
    assert config.probe_families == ["chosen", "rejected"] and config.guard_action == "stop"
    assert config.squeeze_threshold == 0.2
