"""The shared JSON Lines module: strict reads name file:line, caches survive a torn last line, writes are whole."""

from __future__ import annotations

import json
import logging

import pytest

from alignkit.errors import AlignkitError
from alignkit.jsonl import append_jsonl, read_json_list, read_jsonl, read_jsonl_cache, write_jsonl_atomic


def test_read_jsonl_numbers_the_files_own_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"a": 2}\n')
    assert read_jsonl(path) == [(1, {"a": 1}), (4, {"a": 2})]


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b'{"a": 1}\n{"a": oops}\n', r"d\.jsonl:2: invalid JSON \(Expecting value at column 7\)"),
        (b'{"a": 1}\n[1, 2]\n', r"d\.jsonl:2: expected a JSON object, got list"),
        (b'{"a": 1}\n\n{"a": "caf\xe9"}\n', r"d\.jsonl:3: not UTF-8 text \(byte 0xe9 at column 11\)"),
    ],
)
def test_read_jsonl_refuses_bad_lines(tmp_path, content, pattern):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    with pytest.raises(AlignkitError, match=pattern):
        read_jsonl(path)


def test_a_utf8_byte_order_mark_is_not_an_error(tmp_path):
    (tmp_path / "d.jsonl").write_bytes(b'\xef\xbb\xbf{"a": 1}\n')
    assert read_jsonl(tmp_path / "d.jsonl") == [(1, {"a": 1})]
    (tmp_path / "d.json").write_bytes(b'\xef\xbb\xbf[{"a": 1}]')
    assert read_json_list(tmp_path / "d.json") == [(1, {"a": 1})]


def test_read_jsonl_missing_file(tmp_path):
    with pytest.raises(AlignkitError, match=r"nope\.jsonl does not exist"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_read_json_list_gives_each_objects_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"a": 1},\n  {"a": [1,\n 2]}, {"a": 3}\n]')
    assert read_json_list(path) == [(2, {"a": 1}), (3, {"a": [1, 2]}), (4, {"a": 3})]
    path.write_text('[\n  {"a": 1},\n  "text"\n]')
    with pytest.raises(AlignkitError, match=r"d\.json:3: expected a JSON object, got str"):
        read_json_list(path)
    path.write_text('{"a": 1}')
    with pytest.raises(AlignkitError, match=r"d\.json: expected a JSON list of objects, got dict"):
        read_json_list(path)
    path.write_text('[\n  {"a": 1},\n  {"a": }\n]')
    with pytest.raises(AlignkitError, match=r"d\.json:3: invalid JSON"):
        read_json_list(path)
    path.write_bytes(b'[\n  {"a": "\xff"}\n]')
    with pytest.raises(AlignkitError, match=r"d\.json:2: not UTF-8 text \(byte 0xff at column 10\)"):
        read_json_list(path)


def test_cache_skips_a_torn_last_line_and_the_next_append_cuts_it_off(tmp_path, caplog):
    path = tmp_path / "cache.jsonl"
    assert read_jsonl_cache(path) == []
    append_jsonl(path, {"key": "a"})
    append_jsonl(path, {"key": "b"})
    with path.open("ab") as f:
        f.write(b'{"key": "c", "te')  # killed mid-write
    with caplog.at_level(logging.WARNING):
        assert read_jsonl_cache(path) == [(1, {"key": "a"}), (2, {"key": "b"})]
    assert "cache.jsonl:3: invalid JSON" in caplog.text and "torn last line" in caplog.text
    append_jsonl(path, {"key": "d"})  # must not glue itself to the torn fragment
    assert path.read_text() == '{"key": "a"}\n{"key": "b"}\n{"key": "d"}\n'
    path.write_text('{"key": "torn')  # a file holding nothing but a torn line
    append_jsonl(path, {"key": "e"})
    assert read_jsonl_cache(path) == [(1, {"key": "e"})]
    path.write_text('{"key": "f"}')  # a whole record without its newline (edited by hand) is kept
    append_jsonl(path, {"key": "g"})
    assert read_jsonl_cache(path) == [(1, {"key": "f"}), (2, {"key": "g"})]


def test_cache_torn_inside_a_multibyte_character(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_bytes('{"key": "a"}\n{"key": "é'.encode()[:-1])
    assert read_jsonl_cache(path) == [(1, {"key": "a"})]


def test_cache_damage_before_the_last_line_is_an_error(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text('{"key": "a"}\n{"key": \n{"key": "b"}\n')
    with pytest.raises(AlignkitError, match=r"cache\.jsonl:2: invalid JSON .*; delete that line"):
        read_jsonl_cache(path)
    path.write_text('{"key": "a"}\n{"key": \n')  # complete (newline-ended) but invalid: not a torn write either
    with pytest.raises(AlignkitError, match=r"cache\.jsonl:2: invalid JSON"):
        read_jsonl_cache(path)


def test_write_atomic_replaces_the_whole_file(tmp_path):
    path = tmp_path / "sub" / "set.jsonl"
    write_jsonl_atomic(path, [{"a": 1}, {"b": "é"}])
    write_jsonl_atomic(path, [{"c": 3}])
    assert [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] == [{"c": 3}]
    assert [p.name for p in path.parent.iterdir()] == ["set.jsonl"]  # no temporary file left behind
    assert path.stat().st_mode & 0o777 == 0o644


def test_json_safe_turns_every_non_json_value_into_json():
    import numpy as np

    from alignkit.jsonl import json_safe

    value = {1: (float("nan"), np.float32(0.5), np.int64(3), True, None), "x": [float("inf"), {"y": -float("inf")}]}
    assert json_safe(value) == {"1": [None, 0.5, 3, True, None], "x": [None, {"y": None}]}
    assert type(json_safe(np.int64(3))) is int and json_safe(True) is True
    json.dumps(json_safe(value), allow_nan=False)  # strict JSON: would raise on a NaN left behind
