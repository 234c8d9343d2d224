"""The squeezing study: the paper's comparison of pipelines, run as arms of the one recipe, and its report.

Arms (each one call of the recipe's `main` in `<study_dir>/<arm>/`, with the study's shared overrides and its own):

- A: chosen-only SFT → off-policy DPO (the classic pipeline),
- B: extended SFT (y+ and y-) → off-policy DPO,
- C: extended SFT → on-policy DPO,
- A_ipo, B_ipo (optional): A and B with IPO.

Every arm after the first loads the probe set the first one saved (`probe_set_path`), so all arms are scored on the
same probes. C's SFT stage is B's: same data, seed and settings, so B's finished `sft/` folder is copied into C's
folder and the recipe skips the stage (the stage-complete marker). The report puts the arms' probe curves side by
side, adds a one-step decomposition (alignkit.dynamics) and judged win rates of B and C against A.
"""

from __future__ import annotations

import base64
import difflib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import yaml

from alignkit.config import RecipeConfig, config_file_argument, config_keys, parse_recipe_config
from alignkit.errors import AlignkitError
from alignkit.jsonl import read_jsonl_cache
from alignkit.monitors.plot import SPLIT_STYLE
from alignkit.monitors.scoring import metric_key, squeezing_score

logger = logging.getLogger("alignkit")


@dataclass(frozen=True)
class Arm:
    label: str
    overrides: dict
    sft_from: str | None = None  # an arm whose finished SFT stage is identical and is copied instead of retrained


ARMS = {
    "A": Arm("chosen-only SFT → off-policy DPO", {"sft_mode": "chosen", "sampling": "off_policy", "loss": "dpo"}),
    "B": Arm("extended SFT → off-policy DPO", {"sft_mode": "extended", "sampling": "off_policy", "loss": "dpo"}),
    "C": Arm("extended SFT → on-policy DPO", {"sft_mode": "extended", "sampling": "on_policy", "loss": "dpo"}, "B"),
    "A_ipo": Arm(
        "chosen-only SFT → off-policy IPO", {"sft_mode": "chosen", "sampling": "off_policy", "loss": "ipo"}, "A"
    ),  # fmt: skip
    "B_ipo": Arm(
        "extended SFT → off-policy IPO", {"sft_mode": "extended", "sampling": "off_policy", "loss": "ipo"}, "B"
    ),  # fmt: skip
}
WIN_RATE_PAIRS = (("B", "A"), ("C", "A"), ("B_ipo", "A_ipo"))  # (candidate, baseline), when both arms ran
FAMILY_ROWS = [  # (panel title, families): the paper's SFT and DPO figures, one row each
    ("chosen / rejected", ("chosen", "rejected")),
    ("rephrases", ("chosen_rephrase", "rejected_rephrase")),
    ("irrelevant", ("irrelevant_train", "irrelevant_test", "irrelevant_human")),
    ("non-human / shuffled", ("non_human", "shuffled")),
    ("greedy / argmax", ("greedy", "argmax")),
]
TABLE_FAMILIES = ("chosen", "rejected", "chosen_rephrase", "rejected_rephrase", "irrelevant_train", "irrelevant_test",
                  "irrelevant_human", "non_human", "greedy", "argmax")  # fmt: skip


@dataclass
class StudyConfig:
    study_dir: str = field(
        default="outputs/squeezing_study", metadata={"help": "Study folder; one subfolder per arm."}
    )
    arms: list[str] = field(
        default_factory=lambda: ["A", "B", "C"],
        metadata={"help": f"Arms to run, in order (the first saves the shared probe set): {', '.join(ARMS)}."},
    )
    shared: dict = field(
        default_factory=dict,
        metadata={"help": "Recipe overrides every arm gets (the recipe's field names, as in recipes/configs/)."},
    )
    share_sft: bool = field(
        default=True, metadata={"help": "Copy an identical finished SFT stage (B's into C) instead of retraining it."}
    )
    run_decomposition: bool = field(
        default=True, metadata={"help": "Decompose one DPO update on arm B's SFT model (alignkit.dynamics)."}
    )
    decomposition_lr: float = field(default=1e-5, metadata={"help": "SGD step size η of the decomposed update."})
    decomposition_params: str = field(
        default="all", metadata={"help": "'all' parameters or 'trainable' ones (the decomposed model has no LoRA)."}
    )
    run_win_rates: bool = field(default=True, metadata={"help": "Judge B vs A and C vs A (final models)."})
    win_rate_num_prompts: int = field(default=24, metadata={"help": "Held-out prompts judged per comparison."})
    win_rate_max_new_tokens: int = field(default=64, metadata={"help": "Response length generated for judging."})
    judge_base_url: str = field(
        default="auto",
        metadata={
            "help": "'verifier' (reference answers: exact, offline), 'local' (llama.cpp on SmolLM2-135M: weak) or an "
            "OpenAI-compatible judge URL; 'auto' = verifier for the built-in data, local otherwise."
        },
    )
    judge_verifier: str = field(
        default="builtin",
        metadata={"help": "Verifier judge: 'builtin' or 'module:function' called as f(response, row) -> score."},
    )
    judge_model: str | None = field(default=None, metadata={"help": "Judge model name (remote judges)."})
    judge_api_key_env: str | None = field(default=None, metadata={"help": "Variable holding the judge's API key."})

    def __post_init__(self):
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise AlignkitError(f"study field 'arms' is {self.arms}; choose from {', '.join(ARMS)}")
        if len(set(self.arms)) != len(self.arms):
            raise AlignkitError(f"study field 'arms' lists an arm twice: {self.arms}")
        bad = sorted(set(self.shared) - config_keys())
        if bad:
            close = difflib.get_close_matches(bad[0], config_keys(), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise AlignkitError(f"study field 'shared' has unknown recipe key '{bad[0]}'{hint}")
        owned = {"output_dir", "probe_set_path", "sft_mode", "sampling", "loss"} & set(self.shared)
        if owned:
            raise AlignkitError(f"study field 'shared' sets {sorted(owned)}: the study sets these per arm")
        if self.decomposition_params not in ("all", "trainable"):
            raise AlignkitError("study field 'decomposition_params' must be 'all' or 'trainable'")
        if self.judge_base_url not in ("auto", "local", "verifier") and not self.judge_model:
            raise AlignkitError("study field 'judge_model' is required when judge_base_url is not 'local'")


def study_help() -> str:
    """`--help`: the usage line and every study field with its default and help text."""
    lines = ["usage: python recipes/squeezing_study.py [--config study.yaml] [--field value ...]", "", "options:"]
    for f in fields(StudyConfig):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        lines.append(f"  --{f.name} (default: {default!r})")
        lines.append(f"      {f.metadata.get('help', '')}")
    return "\n".join(lines)


def parse_study_config(argv: Sequence[str]) -> StudyConfig:
    """`--config study.yaml` plus `--field value` overrides (values read as YAML: `--arms '[A, B]'`)."""
    args = list(argv)
    if "-h" in args or "--help" in args:
        print(study_help())
        raise SystemExit(0)
    values: dict = {}
    if (config := config_file_argument(args)) is not None:
        i = args.index("--config")
        path = Path(config)
        if not path.exists():
            raise AlignkitError(f"config file {path} does not exist")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise AlignkitError(f"config file {path} must be a mapping of field: value")
        del args[i : i + 2]
    if len(args) % 2 or any(not a.startswith("--") for a in args[::2]):
        raise AlignkitError(f"expected --field value pairs, got {args}")
    values.update({k[2:]: yaml.safe_load(v) for k, v in zip(args[::2], args[1::2])})
    known = {f.name for f in fields(StudyConfig)}
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            raise AlignkitError(f"unknown study field '{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    return StudyConfig(**values)


# ----------------------------------------------------------------------------------------------------------------
# Running the arms


def arm_config(study: StudyConfig, arm: str, probe_set_path: Path | None) -> RecipeConfig:
    """The arm's recipe config, written to `<study_dir>/configs/<arm>.yaml` and parsed like any recipe YAML."""
    values = {**study.shared, **ARMS[arm].overrides, "output_dir": str(Path(study.study_dir) / arm)}
    if probe_set_path is not None:
        values["probe_set_path"] = str(probe_set_path)
    path = Path(study.study_dir) / "configs" / f"{arm}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return parse_recipe_config(["--config", str(path)])


def _share_sft(study: StudyConfig, arm: str) -> str | None:
    """Copy the finished SFT stage of the arm's `sft_from` arm into its folder; returns what was done, or None."""
    source_arm = ARMS[arm].sft_from
    if not study.share_sft or source_arm not in study.arms[: study.arms.index(arm)]:
        return None
    source, target = Path(study.study_dir) / source_arm / "sft", Path(study.study_dir) / arm / "sft"
    if target.exists() or not (source / "stage_complete.json").exists():
        return None
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoint-*"))
    return f"{arm}: SFT stage copied from {source_arm} (identical settings), not retrained"


def run_arms(study: StudyConfig, recipe_main: Callable[[RecipeConfig], Path]) -> dict[str, dict]:
    """Run every arm through the recipe; returns arm -> {dir, seconds, note}."""
    root = Path(study.study_dir)
    root.mkdir(parents=True, exist_ok=True)
    probe_set = None
    runs = {}
    for arm in study.arms:
        note = _share_sft(study, arm)
        cfg = arm_config(study, arm, probe_set)
        logger.warning("study: arm %s (%s) in %s", arm, ARMS[arm].label, cfg.run.output_dir)
        start = time.perf_counter()
        out = recipe_main(cfg)
        runs[arm] = {"dir": out, "seconds": time.perf_counter() - start, "note": note}
        if probe_set is None:
            probe_set = (out / "probe_set.jsonl").resolve()
    return runs


# ----------------------------------------------------------------------------------------------------------------
# Reading an arm's results


def _jsonl(path: Path) -> list[dict]:
    """The records of a monitor's append-only probes.jsonl (none when missing; a torn last line is skipped)."""
    return [record for _, record in read_jsonl_cache(path)]


def arm_records(arm_dir: Path) -> tuple[list[dict], list[dict]]:
    """(SFT records, preference records) with an `x` step: one axis from SFT into preference.

    Off-policy preference probes are in `preference/probes.jsonl`, on-policy ones in `preference/round-*/`; a copied
    SFT stage leaves the monitor's global step at 0 for the preference stage, so `x` is recomputed here.
    """
    sft = _jsonl(arm_dir / "sft" / "probes.jsonl")
    pref = _jsonl(arm_dir / "preference" / "probes.jsonl")
    rounds = sorted((arm_dir / "preference").glob("round-*/probes.jsonl"), key=lambda p: int(p.parent.name[6:]))
    for path in rounds:
        pref += _jsonl(path)
    sft = [r for r in sft if r.get("event") != "alert"]
    pref = [r for r in pref if r.get("event") != "alert"]
    for r in sft:
        r["x"] = r["global_step"]
    sft_end = sft[-1]["x"] if sft else 0
    if pref:
        first = pref[0]["global_step"]
        for r in pref:
            r["x"] = r["global_step"] - first + sft_end
    return sft, pref


def _logp(record: dict | None, family: str, split: str = "train") -> float:
    return math.nan if record is None else record.get(metric_key(split, family, "logp"), math.nan)


def arm_summary(arm: str, arm_dir: Path, seconds: float | None = None) -> dict:
    sft, pref = arm_records(arm_dir)
    metrics = json.loads((arm_dir / "metrics.json").read_text())
    start, after_sft = (sft[0], sft[-1]) if sft else (pref[0] if pref else None, pref[0] if pref else None)
    end = pref[-1] if pref else None
    squeeze = squeezing_score(pref[0], pref[-1]) if len(pref) > 1 else None
    sft_squeeze = squeezing_score(sft[0], sft[-1]) if len(sft) > 1 else None
    return {
        "arm": arm,
        "label": ARMS[arm].label,
        "dir": str(arm_dir),
        "seconds": seconds,
        "sft_steps": metrics.get("sft", {}).get("steps"),
        "sft_status": metrics.get("sft", {}).get("status"),
        "preference_steps": metrics.get("preference", {}).get("steps"),
        "families": {
            f: {"start": _logp(start, f), "after_sft": _logp(after_sft, f), "end": _logp(end, f)}
            for f in TABLE_FAMILIES
        },
        "squeeze_score": None if squeeze is None else squeeze.score,
        "squeeze_rise": None if squeeze is None else squeeze.rise,
        "squeeze_fall": None if squeeze is None else squeeze.fall,
        "sft_squeeze_score": None if sft_squeeze is None else sft_squeeze.score,
    }


# ----------------------------------------------------------------------------------------------------------------
# Figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_arms(records: dict[str, tuple[list[dict], list[dict]]], path: Path, dpi: int = 70) -> Path:
    """The probe families of every arm side by side: one column per arm, one row per family group (shared y)."""
    plt = _pyplot()
    arms = list(records)
    fig, axes = plt.subplots(len(FAMILY_ROWS), len(arms), figsize=(4.2 * len(arms), 2.3 * len(FAMILY_ROWS)),
                             sharey="row", squeeze=False)  # fmt: skip
    for col, arm in enumerate(arms):
        sft, pref = records[arm]
        rows = sft + pref
        xs = [r["x"] for r in rows]
        for row, (title, families) in enumerate(FAMILY_ROWS):
            ax = axes[row][col]
            for n, family in enumerate(families):
                for split, style in SPLIT_STYLE.items():
                    values = [r.get(metric_key(split, family, "logp"), math.nan) for r in rows]
                    if not all(math.isnan(v) for v in values):
                        ax.plot(xs, values, style, marker=".", ms=3, color=f"C{n}", label=f"{family} ({split})")
            if sft and pref:
                ax.axvline(pref[0]["x"], color="grey", lw=0.8, ls="-.")
            if row == 0:
                ax.set_title(f"{arm}: {ARMS[arm].label}", fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{title}\nlog π(y|x)", fontsize=8)
                if ax.lines:
                    ax.legend(fontsize=6, loc="best")
            ax.tick_params(labelsize=7)
        axes[-1][col].set_xlabel("step (SFT | preference)", fontsize=8)
    fig.suptitle(
        "Probe families per arm\n(solid: train prompts, dashed: held-out; vertical line: preference starts)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_squeeze(records: dict[str, tuple[list[dict], list[dict]]], path: Path) -> Path:
    """The squeezing score of each arm's preference stage over its steps (from its first preference evaluation)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for n, (arm, (_, pref)) in enumerate(records.items()):
        if len(pref) < 2:
            continue
        scores = [squeezing_score(pref[0], r) for r in pref]
        steps = [r["x"] - pref[0]["x"] for r in pref]
        ax.plot(steps, [s.score if s else math.nan for s in scores], marker=".", color=f"C{n}", label=arm)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("preference step")
    ax.set_ylabel("squeezing score (nats/token)")
    ax.set_title("Squeezing during the preference stage (min of greedy/argmax rise and others' fall)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------------
# One-step decomposition


def _text(response) -> str:
    return response[-1]["content"] if isinstance(response, list) else response


def run_decomposition(study: StudyConfig, cfg: RecipeConfig, out: Path) -> dict:
    """One DPO step on the first training pair, decomposed on arm B's SFT model (the base model if B did not run).

    The observed response is y⁻ itself; the position shown is where y⁻'s token is least likely (the valley the
    paper's squeezing needs). Writes per_token.png (the dynamics CLI's heatmap), vocabulary.png and result.json.
    """
    import torch

    from alignkit.data import load_preference_data
    from alignkit.dynamics import decompose, distribution_change
    from alignkit.dynamics.cli import load_model_for_dynamics as load_dynamics_model
    from alignkit.dynamics.plot import heatmap
    from alignkit.models import local_folder

    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_dynamics_model(local_folder(cfg.model))
    adapter = Path(study.study_dir) / "B" / "sft" / "adapter"
    which = "base model"
    if "B" in study.arms and adapter.exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        which = "arm B's SFT model (extended SFT, LoRA merged)"
    elif "B" in study.arms and (Path(study.study_dir) / "B" / "sft" / "model").exists():
        model, tokenizer = load_dynamics_model(Path(study.study_dir) / "B" / "sft" / "model")
        which = "arm B's SFT model"
    row = load_preference_data(cfg.data, seed=cfg.run.seed)["train"][0]
    chosen, rejected = _text(row["chosen"]), _text(row["rejected"])
    observed = (row["prompt"], rejected)
    update = {"prompt": row["prompt"], "chosen": chosen, "rejected": rejected}
    common = {"loss": "dpo", "lr": study.decomposition_lr, "beta": cfg.preference.beta,
              "params": study.decomposition_params}  # fmt: skip
    started = time.perf_counter()
    d = decompose(model, tokenizer, observed, update, kernel_probes=0, **common)
    change = distribution_change(model, tokenizer, observed, update, **common)
    observed_probs = change.probs.gather(1, change.targets[:, None]).squeeze(1)
    m = int(observed_probs.argmin())
    summary = change.squeezing(m)
    delta, probs = change.delta_logprobs[m].double(), change.probs[m].double()
    heatmap(d, tokenizer, out / "per_token.png")
    _plot_vocabulary(delta, probs, summary, tokenizer, out / "vocabulary.png")
    top = torch.topk(delta, 5).indices.tolist()
    result = {
        "model": which,
        "prompt": _text(row["prompt"]),
        "chosen": chosen,
        "rejected": rejected,
        "lr": study.decomposition_lr,
        "params": study.decomposition_params,
        "predicted_delta_logp_rejected": d.predicted,
        "observed_logprob_rejected": d.observed_logprob,
        "position": m,
        "position_token": tokenizer.decode([summary["observed_token"]]),
        "position_token_prob": summary["observed_prob"],
        "argmax_token": tokenizer.decode([summary["argmax_token"]]),
        "argmax_prob": summary["argmax_prob"],
        "argmax_delta_logprob": summary["argmax_delta_logprob"],
        "observed_delta_logprob": summary["observed_delta_logprob"],
        "fraction_others_down": summary["fraction_others_down"],
        "argmax_rank_of_change": int((delta > delta[summary["argmax_token"]]).sum()) + 1,
        "most_raised": [tokenizer.decode([t]) for t in top],
        "seconds": time.perf_counter() - started,
    }
    (out / "result.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return result


def _plot_vocabulary(delta, probs, summary: dict, tokenizer, path: Path) -> Path:
    """Predicted Δ log π(v) against log π(v) for every vocabulary entry v at one position."""
    plt = _pyplot()
    logp = probs.clamp_min(1e-30).log()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.scatter(logp.numpy(), delta.numpy(), s=2, color="grey", alpha=0.4, label="other tokens", rasterized=True)
    for key, colour, name in (("argmax_token", "C2", "argmax"), ("observed_token", "C3", "y⁻ token")):
        t = summary[key]
        ax.scatter([logp[t]], [delta[t]], s=40, color=colour, label=f"{name} {tokenizer.decode([t])!r}", zorder=3)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("log π(v) before the step")
    ax.set_ylabel("predicted Δ log π(v)")
    ax.set_title(f"one DPO step, position {summary['position']}: {summary['fraction_others_down']:.0%} of the "
                 "non-argmax tokens go down", fontsize=9)  # fmt: skip
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Win rates


def study_judge(study: StudyConfig, cfg: RecipeConfig):
    """The study's judge: 'auto' is the verifier for the built-in data (it has reference answers), else local."""
    from alignkit.judge import JudgeConfig

    base_url = study.judge_base_url
    if base_url == "auto":
        base_url = "verifier" if cfg.data.dataset_name == "builtin" else "local"
    return JudgeConfig(base_url=base_url, model=study.judge_model, api_key_env=study.judge_api_key_env,
                       verifier=study.judge_verifier)  # fmt: skip


def run_win_rates(study: StudyConfig, cfg: RecipeConfig, out: Path) -> list[dict]:
    """Judge each (candidate, baseline) final model pair on the first held-out prompts, in both orders; candidates
    judged against the same baseline also get AlpacaEval 2's length control with instruction difficulty."""
    from alignkit.data import load_preference_data
    from alignkit.judge import WinRateConfig, evaluate_win_rate

    prompts = load_preference_data(cfg.data, seed=cfg.run.seed)["test"]  # the rows: the verifier reads references
    judge = study_judge(study, cfg)
    results, pairs = [], {}
    root = Path(study.study_dir)
    for candidate, baseline in WIN_RATE_PAIRS:
        if candidate not in study.arms or baseline not in study.arms:
            continue
        result = evaluate_win_rate(
            candidate=str(root / candidate / "final"),
            baseline=str(root / baseline / "final"),
            prompts=prompts,
            judge=judge,
            output_dir=out / f"{candidate}_vs_{baseline}",
            config=WinRateConfig(
                limit=study.win_rate_num_prompts,
                max_new_tokens=study.win_rate_max_new_tokens,
                candidate_name=candidate,
                baseline_name=baseline,
            ),  # fmt: skip
            progress=False,
        )
        results.append({"candidate": candidate, "baseline": baseline, **result.summary()})
        pairs[candidate] = result.pairs
    add_difficulty_lc(results, pairs)
    return results


def add_difficulty_lc(results: list[dict], pairs: dict[str, list]) -> None:
    """`length_controlled_win_rate_difficulty` for every candidate that shares its baseline and prompts with another
    (None, with the simplified fit kept, for the others), on the prompts scored for all of them."""
    from alignkit.judge.metrics import length_controlled_with_difficulty

    by_baseline: dict[str, list[dict]] = {}
    for w in results:
        w["length_controlled_win_rate_difficulty"] = None
        by_baseline.setdefault(w["baseline"], []).append(w)
    for group in by_baseline.values():
        if len(group) < 2:
            continue
        scored = [{p.index: p for p in pairs[w["candidate"]] if p.score is not None} for w in group]
        common = sorted(set.intersection(*(set(s) for s in scored)))
        if len(common) < 2:
            continue
        scores = {w["candidate"]: [s[i].score for i in common] for w, s in zip(group, scored)}
        diffs = {
            w["candidate"]: [len(s[i].candidate) - len(s[i].baseline) for i in common] for w, s in zip(group, scored)
        }
        for w, value in zip(group, length_controlled_with_difficulty(scores, diffs).values()):
            w["length_controlled_win_rate_difficulty"] = value


# ----------------------------------------------------------------------------------------------------------------
# Report


def _f(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _pct(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1%}"


def win_rate_line(w: dict, judge_name: str) -> str:
    low, high = w["win_rate_ci"]
    difficulty = w.get("length_controlled_win_rate_difficulty")
    lc = (f"length-controlled {_pct(difficulty)} (with instruction difficulty; simplified fit "
          f"{_pct(w['length_controlled_win_rate'])})" if difficulty is not None else
          f"length-controlled {_pct(w['length_controlled_win_rate'])} (simplified fit: no other model judged on "
          "these prompts)")  # fmt: skip
    return (f"- **{w['candidate']} vs {w['baseline']}**: win rate {_pct(w['win_rate'])} (95% CI {_pct(low)} to "
            f"{_pct(high)}; {w['wins']} wins, {w['ties']} ties, {w['losses']} losses on {w['n_pairs']} prompts), "
            f"{lc}, position consistency "
            f"{_pct(w['position_consistency'])}, judge `{judge_name}`.")  # fmt: skip


def study_markdown(study: StudyConfig, summaries: list[dict], decomposition: dict | None,
                   win_rates: list[dict] | None, notes: list[str]) -> str:  # fmt: skip
    lines = [
        f"# Squeezing study: `{study.study_dir}`",
        "",
        "Arms run through `recipes/extended_dpo.py` with the same data, probe set and number of preference updates.",
        "",
        "| arm | pipeline | SFT steps | preference updates | squeezing score (preference) | rise | fall | wall (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(f"| {s['arm']} | {s['label']} | {s['sft_steps']} | {s['preference_steps']} | "
                     f"{_f(s['squeeze_score'], 3)} | {_f(s['squeeze_rise'], 3)} | {_f(s['squeeze_fall'], 3)} | "
                     f"{_f(s['seconds'], 0)} |")  # fmt: skip
    lines += [
        "",
        "Squeezing score: min(rise of greedy/argmax, fall of every other family), mean per-token log-prob change in "
        "nats from the first to the last preference-stage evaluation (train and held-out probes); > 0 means the "
        "likeliest responses gained while the rest lost.",
        "",
        "## Probe families (log π(y|x), train probes): start → after SFT → end",
        "",
        "| family | " + " | ".join(s["arm"] for s in summaries) + " |",
        "|---" * (len(summaries) + 1) + "|",
    ]
    for family in TABLE_FAMILIES:
        cells = [
            f"{_f(v['start'], 1)} → {_f(v['after_sft'], 1)} → {_f(v['end'], 1)}"
            for v in (s["families"][family] for s in summaries)
        ]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    lines += ["", "![probe families per arm](study_curves.png)", "", "![squeezing score](study_squeeze.png)", ""]
    lines += ["Each arm's own figure (all panels, alerts): " +
              ", ".join(f"[`{s['arm']}/squeezing.png`]({s['arm']}/squeezing.png)" for s in summaries), ""]  # fmt: skip
    if decomposition:
        d = decomposition
        lines += [
            "## One DPO step, decomposed (alignkit.dynamics)",
            "",
            f"Model: {d['model']}. Update: one DPO step (η = {d['lr']:g}, params `{d['params']}`) on the pair "
            f"prompt {d['prompt']!r}, y⁺ {d['chosen']!r}, y⁻ {d['rejected']!r}. Observed response: y⁻ itself "
            f"(log π = {d['observed_logprob_rejected']:.2f}; predicted Δ = {d['predicted_delta_logp_rejected']:.3g}).",
            "",
            f"At position {d['position']}, where y⁻'s token {d['position_token']!r} is least likely "
            f"(p = {d['position_token_prob']:.3g}), the argmax {d['argmax_token']!r} (p = {d['argmax_prob']:.3g}) "
            f"changes by {d['argmax_delta_logprob']:+.3g} (rank {d['argmax_rank_of_change']} of the vocabulary by "
            f"change), the y⁻ token by {d['observed_delta_logprob']:+.3g}, and "
            f"**{d['fraction_others_down']:.1%} of the other tokens go down**. Most raised: "
            + ", ".join(repr(t) for t in d["most_raised"])
            + ".",
            "",
            "![Δ log π over the vocabulary](decomposition/vocabulary.png)",
            "",
            "![per-token decomposition](decomposition/per_token.png)",
            "",
        ]
    if win_rates is not None:
        judge_name = win_rates[0]["judge"]["model"] if win_rates else study.judge_model
        if win_rates and win_rates[0]["judge"]["base_url"] == "verifier":
            judge_name = "verifier: reference answers"
        elif win_rates and win_rates[0]["judge"]["base_url"] == "local":
            judge_name = "local SmolLM2-135M (llama.cpp)"
        lines += ["## Win rates (final models, judged in both orders)", ""]
        lines += [win_rate_line(w, judge_name) for w in win_rates] or ["- no arm pair to compare"]
        lines += [""]
        if win_rates and win_rates[0]["judge"]["base_url"] == "local":
            lines += ["The local judge is SmolLM2-135M: it is weak, its verdicts are close to chance and strongly "
                      "position-biased (see the consistency above), so these win rates are a smoke test of the "
                      "pipeline, not evidence about response quality.", ""]  # fmt: skip
        lines += ["Details: " + ", ".join(
            f"[`{w['candidate']}_vs_{w['baseline']}/report.html`](win_rates/{w['candidate']}_vs_{w['baseline']}/"
            "report.html)" for w in win_rates), ""]  # fmt: skip
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


def markdown_to_html(markdown: str, root: Path) -> str:
    """A small, self-contained HTML rendering: headings, tables, lists, paragraphs, PNGs embedded as base64."""
    import html
    import re

    def inline(text: str) -> str:
        text = html.escape(text, quote=False)
        text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
        text = re.sub(r"`(.+?)`", r"<code>\1</code>", text)
        return re.sub(r"\[(.+?)\]\((.+?)\)", r'<a href="\2">\1</a>', text)

    out, table = [], False
    for line in markdown.splitlines():
        image = re.fullmatch(r"!\[(.*)\]\((.+\.png)\)", line)
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            tag = "th" if not table else "td"
            out.append(("<table>" if not table else "") + "<tr>" + "".join(f"<{tag}>{inline(c)}</{tag}>"
                                                                          for c in cells) + "</tr>")  # fmt: skip
            table = True
            continue
        if table:
            out.append("</table>")
            table = False
        if image:
            data = base64.b64encode((root / image.group(2)).read_bytes()).decode()
            out.append(f'<p><img alt="{html.escape(image.group(1))}" src="data:image/png;base64,{data}"></p>')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line[level:].strip())}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<ul><li>{inline(line[2:])}</li></ul>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    if table:
        out.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1400px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:90%}img{max-width:100%}")  # fmt: skip
    return f"<!doctype html><html><head><meta charset='utf-8'><title>Squeezing study</title><style>{style}</style>" \
        f"</head><body>{''.join(out)}</body></html>"  # fmt: skip


def write_study_report(study: StudyConfig, runs: dict[str, dict], decomposition: dict | None,
                       win_rates: list[dict] | None) -> Path:  # fmt: skip
    """study.md, study.html (self-contained), study_curves.png, study_squeeze.png and study.json."""
    root = Path(study.study_dir)
    records = {arm: arm_records(Path(run["dir"])) for arm, run in runs.items()}
    summaries = [arm_summary(arm, Path(run["dir"]), run.get("seconds")) for arm, run in runs.items()]
    plot_arms(records, root / "study_curves.png")
    plot_squeeze(records, root / "study_squeeze.png")
    notes = [run["note"] for run in runs.values() if run.get("note")]
    steps = {s["preference_steps"] for s in summaries}
    if len(steps) > 1:
        notes.append(f"the arms took different numbers of preference updates: {sorted(steps)}")
    markdown = study_markdown(study, summaries, decomposition, win_rates, notes)
    (root / "study.md").write_text(markdown)
    (root / "study.html").write_text(markdown_to_html(markdown, root))
    summary = {"config": asdict(study), "arms": summaries, "decomposition": decomposition, "win_rates": win_rates}
    (root / "study.json").write_text(json.dumps(summary, indent=1, default=str))
    return root / "study.md"


def run_study(study: StudyConfig, recipe_main: Callable[[RecipeConfig], Path]) -> Path:
    """Run the arms, the decomposition and the win rates; write the report. Returns the study folder."""
    root = Path(study.study_dir)
    cfg = arm_config(study, study.arms[0], None)  # shared data/model settings for the extra analyses
    if study.run_win_rates:  # a judge that cannot work fails now, not after the arms have trained
        from alignkit.judge.validate import validate_judge

        validate_judge(study_judge(study, cfg))
    runs = run_arms(study, recipe_main)
    decomposition = run_decomposition(study, cfg, root / "decomposition") if study.run_decomposition else None
    win_rates = run_win_rates(study, cfg, root / "win_rates") if study.run_win_rates else None
    report = write_study_report(study, runs, decomposition, win_rates)
    logger.warning("study done: %s", report)
    return root
