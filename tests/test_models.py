"""Model loading plumbing that needs no model: the GGUF conversion cache under concurrent jobs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import alignkit.models as models


def test_conversion_raced_by_another_job_keeps_the_finished_folder(tmp_path, monkeypatch):
    """Two jobs converting the same GGUF: the one that finishes second must not fail on the rename (a folder cannot
    replace a non-empty folder) and must leave the first one's folder as it is, with no temporary folder behind."""
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"not really a gguf")
    cache = tmp_path / "cache"
    target = models._gguf_cache_folder(gguf, str(cache))

    class Model:
        config = SimpleNamespace()

        def save_pretrained(self, folder):
            Path(folder).mkdir(parents=True)
            (Path(folder) / "config.json").write_text(json.dumps({"job": "this one"}))
            target.mkdir(parents=True)  # meanwhile, the other job finishes its conversion
            (target / "config.json").write_text(json.dumps({"job": "the other one"}))

    tokenizer = SimpleNamespace(save_pretrained=lambda folder: None)
    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: Model())
    monkeypatch.setattr(models.AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)

    assert models.convert_gguf(gguf, str(cache)) == target
    assert json.loads((target / "config.json").read_text()) == {"job": "the other one"}
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # the temporary folder is gone
