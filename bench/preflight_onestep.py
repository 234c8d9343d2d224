"""One-step predictions for every training pair of a squeezing study's chosen-only arms, for validating the pre-flight.

The study's runs do not keep their SFT models. Chosen-only SFT is the same for A_near and A_far (same y⁺) and the same
seed retrains it exactly (the act study's drop arm reproduces A_far's DPO-begin probe records bit for bit), so this
retrains it per seed with the study's own settings and function (`alignkit.study.run.sft_model`), then runs the
recipe's pre-flight (`alignkit.preflight.run.run_preflight`) on each arm's 16 pairs under it with
`preflight_dynamics_pairs` = every pair. Output, per seed and arm: `<out>/s<seed>/<arm>.onestep.jsonl.gz`, the
pre-flight records keyed by probe (`train/<id>`), which `bench/preflight_validation.py --onestep <out>` pairs with the
study's measured per-pair fall.

    python bench/preflight_onestep.py --study results/squeezing_study/v1 --out results/preflight_onestep

The timings it prints also go to bench/results/preflight_onestep/result.json (bench/_results.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from _results import write_result
from datasets import Dataset

from alignkit.config import ModelConfig
from alignkit.errors import AlignkitError
from alignkit.models import load_tokenizer
from alignkit.preflight.config import PreflightConfig
from alignkit.preflight.run import run_preflight
from alignkit.study.config import StudyConfig, parse_arm
from alignkit.study.records import write_records
from alignkit.study.run import recipe_config, seed_data, sft_model

logger = logging.getLogger("alignkit")


def study_settings(study_dir: Path, arms: list[str]) -> StudyConfig:
    """The study's settings as its runs recorded them (`settings` in the first arm's lowest-seed run JSON)."""
    metas = sorted(study_dir.glob(f"runs/s*/{arms[0]}.json"))
    if not metas:
        raise AlignkitError(f"{study_dir}/runs has no {arms[0]}.json: run the study first")
    settings = json.loads(metas[0].read_text())["settings"]
    known = {f.name for f in dataclasses.fields(StudyConfig)}
    return StudyConfig(**{k: v for k, v in settings.items() if k in known})


def predict(study_dir: Path, out: Path, arms: list[str], seeds: list[int]) -> dict:
    study = study_settings(study_dir, arms)
    torch.set_num_threads(study.cpu_threads)
    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=study.model_name_or_path))
    keys = {parse_arm(a).sft_key for a in arms}
    if keys != {"chosen"}:
        raise AlignkitError(f"arms {arms}: only chosen-only arms without an action share one SFT model (got {keys})")
    timing = {}
    for seed in seeds:
        data = seed_data(study, seed)
        work = Path(tempfile.mkdtemp(prefix=f"onestep_s{seed}_"))
        started = time.perf_counter()
        _, sft, _ = sft_model(
            study, parse_arm(arms[0]), seed, data[parse_arm(arms[0]).rejected], work, tokenizer, data
        )
        timing[f"s{seed}_sft"] = round(time.perf_counter() - started, 1)
        for name in arms:
            arm = parse_arm(name)
            pairs = data[arm.rejected]
            cfg = recipe_config(study, arm, seed, work / name)
            cfg = dataclasses.replace(cfg, preflight=PreflightConfig(
                preflight="report", preflight_pairs="all", preflight_dynamics_pairs=len(pairs)))  # fmt: skip
            result = run_preflight(cfg, tokenizer, Dataset.from_list(pairs), Dataset.from_list(data["heldout_probes"]),
                                   work / name / "preflight", sft.weights)  # fmt: skip
            folder = out / f"s{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            write_records(
                folder / f"{name}.onestep.jsonl.gz", [{"probe": f"train/{r['id']}", **r} for r in result.records]
            )
            timing[f"s{seed}_{name}"] = {
                "seconds": round(result.seconds, 1),
                "dynamics": round(result.dynamics_seconds, 1),
            }
            logger.warning(
                "[onestep] seed %d %s: %d predictions in %.0f s", seed, name, len(pairs), result.dynamics_seconds
            )
    (out / "timing.json").write_text(json.dumps(timing, indent=1) + "\n")
    return timing


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", type=Path, default=Path("results/squeezing_study/v1"))
    p.add_argument("--out", type=Path, default=Path("results/preflight_onestep"))
    p.add_argument("--arms", nargs="+", default=["A_near", "A_far"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = p.parse_args(argv)
    try:
        timing = predict(args.study, args.out, args.arms, args.seeds)
        print(json.dumps(timing, indent=1))
        write_result("preflight_onestep", argv, {"seconds": timing, "predictions": str(args.out)})
    except AlignkitError as err:
        print(f"preflight_onestep: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    sys.exit(main())
