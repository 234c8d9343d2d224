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


def test_merged_copy_scores_as_the_adapter_model_and_leaves_it_untouched(tiny_tokenizer):
    import torch

    from .conftest import build_tiny_model

    model = models.add_lora(build_tiny_model(tiny_tokenizer))
    with torch.no_grad():  # a non-zero adapter, so merging changes the weights
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[1, 5, 9, 13, 2]])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = models.merged_copy(model)
    assert not hasattr(merged, "merge_and_unload") and not merged.training
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    plain = build_tiny_model(tiny_tokenizer)
    assert models.merged_copy(plain) is plain
