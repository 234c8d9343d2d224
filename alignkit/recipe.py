"""Extended SFT → DPO/IPO: the squeezing-aware preference recipe.

    accelerate launch -m alignkit.recipe                                        # built-in data, SmolLM2-135M, LoRA
    accelerate launch recipes/extended_dpo.py --config recipes/configs/demo.yaml   # the same, from a checkout
    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml -m alignkit.recipe --config ...

Reads top to bottom: setup (config, tokenizer, data, probes, model) → SFT → preference → save → report.
`run_recipe(cfg)` is the whole recipe for a parsed `RecipeConfig`; `main()` parses the command line and runs it.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from alignkit.config import RecipeConfig, parse_recipe_config
from alignkit.data import check_lengths, load_preference_data
from alignkit.errors import AlignkitError
from alignkit.evaluation import check_judge, final_win_rate
from alignkit.fingerprint import StaleWork
from alignkit.models import load_tokenizer
from alignkit.monitors import SqueezingMonitor, build_probe_set
from alignkit.onpolicy import run_onpolicy_preference_stage
from alignkit.preempt import PREEMPTED_EXIT_CODE, Preempted, Preemption, clear_marker, write_marker
from alignkit.preflight import recipe as preflight
from alignkit.report import write_metrics, write_report
from alignkit.rerun import check_run_folder, record_config, unrecord_config
from alignkit.stages import load_stage_model, run_preference_stage, run_sft_stage

logger = logging.getLogger("alignkit")


def run_recipe(cfg: RecipeConfig) -> Path:
    """Run every stage of the recipe for `cfg` and return the run folder (its report is `report.md`).

        from alignkit import parse_recipe_config, run_recipe

        cfg = parse_recipe_config(["--config", "recipes/configs/demo.yaml", "--output_dir", "runs/demo"])
        report = run_recipe(cfg) / "report.md"

    The same from a shell, with or without a checkout: `accelerate launch -m alignkit.recipe --config ...`, or the
    `alignkit-recipe` command.

    A signal of `preempt_signals` stops it at the next safe point, with a checkpoint when a stage was training, writes
    `preempted.json` and raises `Preempted`; the same call again resumes (alignkit/preempt.py)."""
    with Preemption(cfg.run.preempt_signals) as preemption:
        try:
            return _run_recipe(cfg, preemption)
        except Preempted as stop:
            write_marker(Path(cfg.run.output_dir), stop, preemption)
            raise
        except StaleWork:  # a stage found work made with other settings: the run is refused, the folder kept as it was
            unrecord_config(Path(cfg.run.output_dir))
            raise


def _run_recipe(cfg: RecipeConfig, preemption: Preemption) -> Path:
    state = PartialState(cpu=cfg.run.use_cpu or not torch.cuda.is_available())  # cpu=True: gloo for CPU processes
    if state.device.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", state.num_processes))
        torch.set_num_threads(cfg.run.cpu_threads or max(1, cores // per_node))
    preflight.check_preflight(cfg)
    out = Path(cfg.run.output_dir)
    check_run_folder(cfg, out)  # work made with other settings stops the run here, before anything is loaded
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        record_config(cfg, out)  # config.yaml, and this run's line in config_history.jsonl
        clear_marker(out)  # an earlier run's preempted.json: this run takes over

    # --- setup
    tokenizer = load_tokenizer(cfg.model)
    batch = cfg.run.per_device_train_batch_size * cfg.run.gradient_accumulation_steps * state.num_processes
    notes = [f"effective batch {batch} = {cfg.run.per_device_train_batch_size} per device x "
             f"{cfg.run.gradient_accumulation_steps} accumulation x {state.num_processes} process(es)"]  # fmt: skip
    logger.warning(notes[0])
    data = load_preference_data(cfg.data, seed=cfg.run.seed, notes=notes)  # a cut of the data goes into the report
    if cfg.evaluation.eval_win_rate:  # a judge that cannot work fails now, in seconds, not after training
        check_judge(cfg, list(data["test"]) if "test" in data else [])
    if truncated := check_lengths(data["train"], tokenizer, cfg.data.max_length, cfg.data.dataset_name):
        notes.append(f"{truncated} training pairs have a response truncated to max_length={cfg.data.max_length}.")
    monitor = None
    if cfg.monitor.probe_enabled:
        probes = build_probe_set(data["train"], data.get("test"), cfg.monitor, seed=cfg.run.seed, cache_dir=out)
        monitor = SqueezingMonitor(probes, cfg.monitor, tokenizer, out)

    def callbacks_for(stage: str, stage_dir: Path) -> list:  # a monitor callback per stage and on-policy round
        preemption.check(f"before {stage} trains")  # called as each stage (round) is about to train
        return [*([monitor.callback(stage, stage_dir)] if monitor else []), preemption.callback()]  # preemption last

    # --- pre-flight, act + extend_sft only: SFT's rows depend on it, so it scores under the base model
    checked = preflight.before_sft(cfg, tokenizer, data, out)

    # --- stage 1: SFT (extended: y+ and y-)
    extra = checked.risky_rows if checked else ()
    sft = run_sft_stage(None, tokenizer, data["train"], cfg, out / "sft", callbacks_for, extra)  # loads the model

    preemption.check("after the sft stage")
    # --- pre-flight (report, drop): scores under the SFT model, where the preference stage starts (docs/preflight.md)
    checked = preflight.after_sft(cfg, tokenizer, data, out, sft, checked)

    # --- stage 2: DPO/IPO, starting from the SFT model, which is also the reference
    if cfg.preference.sampling == "off_policy":  # the dataset's pairs
        policy = load_stage_model(cfg, [sft])
        pairs = preflight.preference_pairs(cfg, data["train"], checked)  # drop: without the pairs at risk
        preference = run_preference_stage(policy, tokenizer, pairs, cfg, out / "preference", callbacks_for, [sft])
        del policy
    else:  # on_policy / mixed: rounds of sample from the policy -> rank -> train (docs/onpolicy.md)
        preference = run_onpolicy_preference_stage(
            tokenizer, data["train"], cfg, out / "preference", [sft], callbacks_for
        )

    preemption.check("after the preference stage")
    # --- save and report
    final_dir = out / "final"
    stages = [sft, preference]
    if state.is_main_process:
        load_stage_model(cfg, stages).save_pretrained(final_dir)
        tokenizer.save_pretrained(final_dir)
        write_metrics(out, stages)
        sections = [monitor.finish()] if monitor else []
        sections += preflight.report_section(cfg, checked)
        if cfg.evaluation.eval_win_rate:  # --- evaluate: judged win rate of the final model against the baseline
            # final_win_rate never raises: a failed evaluation becomes a report section that says what failed
            sections.append(final_win_rate(cfg, final_dir, data["test"], out / "win_rate"))
        report = write_report(out, cfg, stages, final_dir, sections, notes)
        logger.warning("done: %s", report)
    state.wait_for_everyone()
    return out


def main(argv: list[str] | None = None) -> None:
    """The command line: `--config x.yaml` and `--field value` overrides; an AlignkitError exits 2 with its message,
    a preempted run exits PREEMPTED_EXIT_CODE (75) once its checkpoint is written."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("alignkit").setLevel(logging.INFO)  # stage progress and probe headlines; libraries stay quiet
    try:
        run_recipe(parse_recipe_config(argv))
        # The process exits next: close the process group first, as PyTorch asks, so that no gloo/NCCL thread is
        # still running while the interpreter tears down (a finished rank could abort with "terminate called").
        PartialState().destroy_process_group()
    except AlignkitError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except Preempted as stop:  # the checkpoint is written: a scheduler may requeue the same command
        print(f"{stop}; rerun the same command to resume", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
    main()
