"""Sampling k responses per prompt from the current policy: transformers `generate` (default) or vLLM.

With several processes each one samples a contiguous share of the prompts (with its own seed), and every process
gets all the samples back in prompt order.
"""

from __future__ import annotations

import gc
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import gather_object

from alignkit.config import check_vllm
from alignkit.generation import generate
from alignkit.models import merged_copy
from alignkit.sequences import Prompt, render_prompt


def sample_responses(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    num_samples: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int,
    seed: int,
    backend: str = "transformers",
    work_dir: Path | None = None,
) -> list[list[str]]:
    """`num_samples` sampled responses for every prompt, in prompt order, on every process."""
    if backend == "vllm":
        return _sample_vllm(model, tokenizer, prompts, num_samples, max_new_tokens, temperature, top_p, seed, work_dir)
    state = PartialState()
    with state.split_between_processes(list(prompts)) as mine:
        samples = generate(
            model,
            tokenizer,
            mine,
            max_new_tokens=max_new_tokens,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            num_return_sequences=num_samples,
            batch_size=batch_size,
            seed=seed + state.process_index,
            progress=state.is_main_process,
        )
    return gather_object(samples) if state.num_processes > 1 else samples


def _sample_vllm(model, tokenizer, prompts, num_samples, max_new_tokens, temperature, top_p, seed, work_dir):
    """vLLM on the main process (no multi-process sharding). Untested here: this project has no GPU in CI.

    vLLM loads weights from a folder, so the policy is saved (merged, when it carries a LoRA adapter) to
    `<work_dir>/vllm_policy` first and removed afterwards. It shares the GPU with the trainer's copy of the model,
    hence the modest memory share.
    """
    check_vllm()
    from vllm import LLM, SamplingParams  # optional GPU dependency: imported only when this backend is chosen

    state = PartialState()
    texts: list[list[str]] = []
    if state.is_main_process:
        folder = Path(work_dir or ".") / "vllm_policy"
        weights = merged_copy(model)
        weights.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        del weights
        llm = LLM(model=str(folder), seed=seed, gpu_memory_utilization=0.3)
        params = SamplingParams(
            n=num_samples, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed
        )
        outputs = llm.generate([render_prompt(tokenizer, p) for p in prompts], params)
        texts = [[c.text.strip() for c in out.outputs] for out in outputs]
        del llm
        gc.collect()
        torch.cuda.empty_cache()
        shutil.rmtree(folder, ignore_errors=True)
    if state.num_processes > 1:
        box = [texts]
        torch.distributed.broadcast_object_list(box, src=0)
        texts = box[0]
    return texts
