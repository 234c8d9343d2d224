"""lm-eval benchmarks on a trained model: the project's offline task and any lm-eval task name.

`run_lm_eval` is `lm_eval --model hf --model_args pretrained=DIR` as a function. The model may be an HF folder, a hub
id, a PEFT adapter folder (evaluated as base + adapter) or a .gguf file. The project's own tasks live in
`eval/lm_eval_tasks/` (found automatically in a checkout); lm-eval's built-in tasks all download their data from the
hub, so they only run where it is reachable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from alignkit.errors import AlignkitError

SHIPPED_TASKS = Path(__file__).resolve().parents[2] / "eval" / "lm_eval_tasks"


def hf_model_args(model: str | os.PathLike, dtype: str = "float32") -> dict:
    """lm-eval `hf` model arguments for a folder, hub id, adapter folder or .gguf file."""
    path = Path(model)
    args: dict = {"dtype": dtype}
    if path.suffix == ".gguf":
        if not path.is_file():
            raise AlignkitError(f"--model {path}: GGUF file not found.")
        return {**args, "pretrained": str(path.parent), "gguf_file": path.name}  # tokenizer read from the GGUF too
    adapter = path / "adapter_config.json"
    if adapter.is_file():
        base = json.loads(adapter.read_text())["base_model_name_or_path"]
        return {**args, "pretrained": base, "peft": str(path)}
    return {**args, "pretrained": str(model)}


def run_lm_eval(
    model: str | os.PathLike,
    tasks: list[str],
    include_path: str | os.PathLike | None = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    output_dir: str | os.PathLike | None = None,
) -> dict:
    """Runs lm-eval and returns {"results": {task: {metric: value}}, ...} (lm-eval's own result dict, samples removed).

    With `output_dir`, also writes `lm_eval_results.json` and a `lm_eval_results.md` table there.
    """
    try:
        import lm_eval  # optional extra: a clear error below when it is missing
        from lm_eval.tasks import TaskManager
    except ModuleNotFoundError:
        raise AlignkitError(
            "lm-eval is not installed: pip install 'alignkit[eval]' (or pip install lm-eval)."
        ) from None
    paths = [str(p) for p in (include_path, SHIPPED_TASKS) if p is not None and Path(p).is_dir()]
    # Indexing lm-eval's thousands of built-in task YAMLs takes longer than running the project's own task, so look
    # in the project's folders first and only index the built-ins when a task is not there.
    manager = TaskManager(include_path=paths, include_defaults=False) if paths else None
    if manager is None or any(t not in manager.all_tasks for t in tasks):
        manager = TaskManager(include_path=paths or None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise AlignkitError(
            f"--tasks: unknown lm-eval task(s) {unknown}. The project's offline task is alignkit_tiny_qa; "
            "`lm_eval ls tasks` lists the rest (they download data from the hub)."
        )
    try:
        results = lm_eval.simple_evaluate(
            model="hf",
            model_args=hf_model_args(model),
            tasks=tasks,
            num_fewshot=num_fewshot,
            batch_size=batch_size,
            device=device,
            limit=limit,
            task_manager=manager,
            log_samples=False,
            bootstrap_iters=1000,
        )
    except (ConnectionError, OSError) as e:
        raise AlignkitError(
            f"lm-eval could not load the model {str(model)!r} or a task's data ({type(e).__name__}: {e}). Built-in "
            "tasks need the Hugging Face hub; offline, use the shipped alignkit_tiny_qa."
        ) from e
    summary = {
        "model": str(model),
        "tasks": tasks,
        "results": results["results"],
        "n_samples": results.get("n-samples", {}),
        "versions": results.get("versions", {}),
        "config": {k: v for k, v in results.get("config", {}).items() if k != "model_args"},
    }
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "lm_eval_results.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        (out / "lm_eval_results.md").write_text(results_table(summary) + "\n")
    return summary


def results_table(summary: dict) -> str:
    """Markdown table: task, metric, value, stderr, samples."""
    lines = ["| task | metric | value | stderr | n |", "|---|---|---|---|---|"]
    for task, metrics in summary["results"].items():
        n = summary["n_samples"].get(task, {}).get("effective", "")
        for name, value in metrics.items():
            if "," not in name or "_stderr" in name or not isinstance(value, int | float):
                continue
            metric, _, filt = name.partition(",")
            stderr = metrics.get(f"{metric}_stderr,{filt}")
            stderr_text = f"{stderr:.4f}" if isinstance(stderr, int | float) else ""
            lines.append(f"| {task} | {metric} | {value:.4f} | {stderr_text} | {n} |")
    return "\n".join(lines)
