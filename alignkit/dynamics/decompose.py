"""One-step learning dynamics: Δ log π(y_o|χ_o) ≈ −η Σ_l A_m K_ml G_l, predicted, decomposed and measured.

After one SGD step of size η on an update example χ_u (an SFT response, a DPO/IPO pair, or a pure negative gradient),
the log-prob of observed token m of another response changes by

    [Δ log π(y_o|χ_o)]_m = −η Σ_l [A(χ_o)]_m [K(χ_o, χ_u)]_{m,l} [G(χ_u)]_l + O(η²)

with A_m = I − 1π_mᵀ (softmax Jacobian of log π), K_ml = ∇θz_m (∇θz_l)ᵀ (empirical NTK between observed position m
and update position l) and G_l = ∂L/∂z_l (see `residuals`). Row y_m of A_m times J_m is ∇θ log π(y_m), and
Σ_v [J_lᵀ]_v G_lv = ∇θ(z_l·G_l) with G detached, so the efficient mode only ever needs per-token gradients:

    per_token[m, l] = −η ⟨∇θ log π(y_m), ∇θ(z_l·G_l)⟩.

`explicit=True` instead builds A, K and G as V×V / V tensors and multiplies them, for small vocabularies and tests.

Over 400 lines on purpose: one model of one equation, whose efficient and explicit paths, inputs and measured change
must be read side by side to check that they compute the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from alignkit.dynamics.kernel import (
    Params,
    differentiable,
    flat_grads,
    grad_dict,
    jvp_batched,
    jvp_of,
    param_count,
    select_params,
)
from alignkit.dynamics.residuals import LOSSES, loss_value, residual_coefficients, residuals
from alignkit.errors import AlignkitError
from alignkit.sequences import EncodedPair, Prompt, Response, encode_pair, response_text

# The gram method keeps M + L flattened gradients in memory; above this it switches to one jvp per update token.
GRAM_BUDGET_BYTES = 2 * 1024**3
# The jvp method and the kernel-norm estimator push this many tangents through one vmapped forward-mode pass, fewer
# when their flattened gradients would exceed JVP_BATCH_BYTES.
JVP_BATCH = 8
JVP_BATCH_BYTES = 1024**3
# explicit=True refuses to build more than this (Jacobians + the M×L V×V kernel blocks).
EXPLICIT_BUDGET_BYTES = 4 * 1024**3


@dataclass
class Adaptation:
    """A_m = I − 1π_mᵀ at every observed position, stored as π_m: A is the identity minus a rank-one term.

    (A_m Δz)_v = Δz_v − π_m·Δz, so a logit increase helps token v only by as much as it beats the π-weighted mean;
    the top-k of π_m are the tokens whose logit changes every other token pays for.
    """

    probs: torch.Tensor  # (M, V) π at each observed position, before the update
    targets: torch.Tensor  # (M,) the observed tokens y_m

    def dense(self, m: int) -> torch.Tensor:
        """A_m as a V×V matrix (small vocabularies only)."""
        v = self.probs.shape[1]
        return torch.eye(v, dtype=self.probs.dtype) - self.probs[m].expand(v, v)

    def topk(self, m: int, k: int = 5) -> list[tuple[int, float]]:
        values, tokens = self.probs[m].topk(k)
        return list(zip(tokens.tolist(), values.tolist()))


@dataclass
class Residual:
    """G_l = c_l (π_l − e_{y_l}) at every update token, stored as (π_l, y_l, c_l) rather than L×V numbers per sign."""

    probs: torch.Tensor  # (L, V) π at each update position
    targets: torch.Tensor  # (L,) the update tokens y_l (chosen tokens, then rejected tokens)
    coef: torch.Tensor  # (L,) c_l = −∂L/∂log π(y_l): > 0 pulls y_l up, < 0 pushes it down
    sides: list[str]  # "chosen" or "rejected" per column

    def dense(self, j: int | None = None) -> torch.Tensor:
        """G_j as a V-vector (update column j), or all of G as (L, V) when j is None."""
        if j is None:
            return residuals(self.probs, self.targets, self.coef)
        return residuals(self.probs[j : j + 1], self.targets[j : j + 1], self.coef[j : j + 1])[0]

    def topk(self, j: int, k: int = 5) -> list[tuple[int, float]]:
        """The k entries of G_j largest in magnitude: the target token and the tokens holding most of π_j."""
        g = self.dense(j)
        tokens = g.abs().topk(k).indices
        return list(zip(tokens.tolist(), g[tokens].tolist()))


@dataclass
class ExplicitFactors:
    """The factorised form as dense tensors (explicit=True only)."""

    adaptation: torch.Tensor  # (M, V, V)
    kernel: torch.Tensor  # (M, L, V, V)
    residual: torch.Tensor  # (L, V)
    delta_logprobs: torch.Tensor  # (M, V) −η Σ_l A_m K_ml G_l: the predicted change of every token's log-prob


@dataclass
class Decomposition:
    """The first-order change of log π(y_o|χ_o) after one step on the update, split over token pairs (m, l)."""

    predicted: float  # −η ⟨∇θ log π(y_o|χ_o), ∇θ L⟩ = per_token.sum()
    per_token: torch.Tensor  # (M, L) contribution of update token l to observed token m
    observed_tokens: list[int]
    update_tokens: list[int]  # chosen tokens then rejected tokens
    adaptation: Adaptation
    residual: Residual
    kernel_norm: torch.Tensor | None  # (M, L) ‖K_ml‖_F: exact (explicit) or estimated with kernel_probes probes
    kernel_probes: int  # 0: exact or not computed
    observed_logprob: float  # log π(y_o|χ_o) before the step
    loss: str
    lr: float
    beta: float
    params: str
    n_params: int
    method: str  # "explicit", "gram" or "jvp"
    terms: dict[str, float] = field(default_factory=dict)  # the loss's terms: margin, a (DPO), h (IPO), ...
    factors: ExplicitFactors | None = None

    @property
    def per_position(self) -> torch.Tensor:
        """Predicted Δ log π(y_m) for each observed token: the row sums of per_token."""
        return self.per_token.sum(dim=1)

    def top_pairs(self, k: int = 10) -> list[tuple[int, int, float]]:
        """(m, l, contribution) of the k largest contributions in magnitude."""
        flat = self.per_token.flatten()
        idx = flat.abs().topk(min(k, flat.numel())).indices
        cols = self.per_token.shape[1]
        return [(int(i) // cols, int(i) % cols, float(flat[i])) for i in idx]


@dataclass
class DistributionChange:
    """The predicted Δ log π(v) of every vocabulary entry v at every observed position (first order, exact)."""

    delta_logprobs: torch.Tensor  # (M, V)
    probs: torch.Tensor  # (M, V) before the step
    targets: torch.Tensor  # (M,) observed tokens

    def squeezing(self, m: int) -> dict[str, float | int]:
        """How position m's distribution moves: the argmax's change and the share of the other tokens that go down."""
        delta, probs = self.delta_logprobs[m], self.probs[m]
        top = int(probs.argmax())
        others = torch.ones_like(delta, dtype=torch.bool)
        others[top] = False
        target = int(self.targets[m])
        return {
            "position": m,
            "argmax_token": top,
            "argmax_prob": float(probs[top]),
            "argmax_delta_logprob": float(delta[top]),
            "observed_token": target,
            "observed_prob": float(probs[target]),
            "observed_delta_logprob": float(delta[target]),
            "fraction_others_down": float((delta[others] < 0).double().mean()),
        }


# ----------------------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class _Inputs:
    observed: EncodedPair
    chosen: EncodedPair | None  # None for loss="negative"
    rejected: EncodedPair | None  # None for loss="sft"


def _check_response(name: str, response: Response | None) -> None:
    if response is None or not response_text(response).strip():
        raise AlignkitError(f"{name}: the response is empty; give a non-empty response text")


def _encode(tokenizer, name: str, prompt: Prompt, response: Response) -> EncodedPair:
    _check_response(name, response)
    pair = encode_pair(tokenizer, prompt, response)
    if pair.prompt_len == 0:
        # The first response token needs a preceding position to be predicted from.
        raise AlignkitError(f"{name}: the prompt is empty; give a prompt (or a list of chat messages)")
    return pair


def _prepare(tokenizer, observed, update, loss: str, lr: float, beta: float) -> _Inputs:
    if loss not in LOSSES:
        raise AlignkitError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if not math.isfinite(lr):
        raise AlignkitError(f"lr must be a finite number, got {lr}")
    if loss in ("dpo", "ipo") and not beta > 0:
        raise AlignkitError(f"beta must be > 0 for {loss}, got {beta}")
    if not (isinstance(observed, tuple | list) and len(observed) == 2):
        raise AlignkitError("observed must be a (prompt, response) pair")
    if not isinstance(update, dict) or "prompt" not in update:
        raise AlignkitError('update must be a dict with "prompt", "chosen" and (for dpo/ipo/negative) "rejected"')
    unknown = set(update) - {"prompt", "chosen", "rejected"}
    if unknown:
        raise AlignkitError(f"update has unknown keys {sorted(unknown)}; use prompt, chosen, rejected")
    obs = _encode(tokenizer, "observed", observed[0], observed[1])
    chosen = rejected = None
    if loss != "negative":
        chosen = _encode(tokenizer, "update chosen", update["prompt"], update.get("chosen"))
    if loss != "sft":  # SFT ignores a given "rejected"
        rejected = _encode(tokenizer, "update rejected", update["prompt"], update.get("rejected"))
    return _Inputs(obs, chosen, rejected)


# ----------------------------------------------------------------------------------------------------------------
# Forward passes


def _response_logits(forward: Callable, pair: EncodedPair, device: torch.device) -> torch.Tensor:
    """Logits at the positions that predict the response tokens: (R, V), at least float32."""
    ids = torch.tensor([pair.input_ids], device=device)
    logits = forward(input_ids=ids, use_cache=False).logits[0, pair.prompt_len - 1 : -1]
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def _targets(pair: EncodedPair, device: torch.device) -> torch.Tensor:
    return torch.tensor(pair.input_ids[pair.prompt_len :], device=device)


def _gather(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits, dim=-1).gather(-1, targets[:, None])[:, 0]


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel  # peft loads slowly; a plain model's analysis never needs it
    except ImportError:
        return False
    return isinstance(model, PeftModel)


@torch.no_grad()
def _reference_logps(model, ref_model, inputs: _Inputs, loss: str) -> tuple[float, float]:
    """Summed log π_ref of chosen and rejected (dpo/ipo only).

    No ref_model: a peft model is its own reference with the adapter disabled (as in TRL); any other model is taken
    as its own reference at the current parameters, so both log-ratios start at 0 and a = σ(0) = 1/2.
    """
    if loss not in ("dpo", "ipo"):
        return 0.0, 0.0
    if ref_model is not None:
        forward, context = ref_model, nullcontext()
        was_training = ref_model.training
        ref_model.eval()
    else:
        forward, was_training = model, None
        context = model.disable_adapter() if _is_peft(model) else nullcontext()
    device = _device(forward)
    try:
        with context:
            out = tuple(
                float(_gather(_response_logits(forward, pair, device), _targets(pair, device)).sum())
                for pair in (inputs.chosen, inputs.rejected)
            )
    finally:
        if was_training is not None:
            ref_model.train(was_training)
    return out


@dataclass
class _Update:
    logits: torch.Tensor  # (L, V) with graph: chosen positions then rejected positions
    residual: Residual
    terms: dict[str, float]

    @property
    def weighted(self) -> torch.Tensor:
        """s_l = z_l·G_l with G detached: ∇θ s_l = J_lᵀ G_l and Σ_l ∇θ s_l = ∇θ L."""
        return (self.logits * self.residual.dense()).sum(-1)


def _update_side(model, inputs: _Inputs, loss: str, beta: float, ref: tuple[float, float]) -> _Update:
    device = _device(model)
    parts, sides = [], []
    logps: dict[str, torch.Tensor | None] = {"chosen": None, "rejected": None}
    for side, pair in (("chosen", inputs.chosen), ("rejected", inputs.rejected)):
        if pair is None:
            continue
        logits = _response_logits(model, pair, device)
        targets = _targets(pair, device)
        logps[side] = _gather(logits.detach(), targets)
        parts.append((logits, targets))
        sides += [side] * len(targets)
    c_plus, c_minus, terms = residual_coefficients(loss, logps["chosen"], logps["rejected"], *ref, beta=beta)
    logits = torch.cat([p[0] for p in parts])
    targets = torch.cat([p[1] for p in parts])
    coef = torch.tensor([c_plus if s == "chosen" else c_minus for s in sides], dtype=logits.dtype, device=device)
    residual = Residual(F.softmax(logits.detach(), dim=-1), targets, coef, sides)
    return _Update(logits, residual, terms)


# ----------------------------------------------------------------------------------------------------------------
# The three ways of computing per_token


def _jvp_chunk(n_params: int, itemsize: int) -> int:
    """How many tangents one vmapped forward-mode pass takes: ≤ JVP_BATCH, and ≤ JVP_BATCH_BYTES of tangents."""
    return max(1, min(JVP_BATCH, JVP_BATCH_BYTES // (n_params * itemsize)))


def _per_token_gram(obs_logps, update: _Update, params: Params, lr: float) -> torch.Tensor:
    """All M + L flattened gradients at once (batched backward), then one (M, P) @ (P, L) product."""
    grads_o = flat_grads(obs_logps, params)
    grads_u = flat_grads(update.weighted, params)
    return -lr * grads_o @ grads_u.T


def _per_token_jvp(model, params: Params, obs_fn: Callable, update: _Update, lr: float) -> torch.Tensor:
    """Per update token, a backward pass (∇θ s_l) and a forward-mode pass (its product with every ∇θ log π(y_m)).

    Memory is O(chunk · P) instead of O((M + L) · P): the method for params="all" on real models.
    """
    weighted = update.weighted
    chunk = _jvp_chunk(param_count(params), weighted.element_size())
    cols = []
    for start in range(0, len(weighted), chunk):
        tangents = flat_grads(weighted, params, rows=range(start, min(start + chunk, len(weighted))), chunk=chunk)
        cols.append(jvp_batched(model, params, obs_fn, tangents))
    return -lr * torch.cat(cols).T


def _explicit(obs_logits, obs_targets, update: _Update, params: Params, lr: float):
    """Materialise A_m, K_ml = J_m J_lᵀ (from the full V×P Jacobians) and G_l, and multiply them."""
    m_len, vocab = obs_logits.shape
    l_len = update.logits.shape[0]
    itemsize = obs_logits.element_size()
    need = (l_len + 1) * vocab * param_count(params) * itemsize + (m_len * (l_len + 1)) * vocab * vocab * itemsize
    if need > EXPLICIT_BUDGET_BYTES:
        raise AlignkitError(
            f"explicit=True would need about {need / 1024**3:.1f} GiB for V={vocab}, M={m_len}, L={l_len}; "
            "use the default efficient mode (explicit=False) for large vocabularies or long responses"
        )
    adaptation = Adaptation(F.softmax(obs_logits.detach(), dim=-1), obs_targets)
    jac_u = [flat_grads(update.logits[j], params, chunk=vocab) for j in range(l_len)]  # each (V, P)
    kernel = torch.empty(m_len, l_len, vocab, vocab, dtype=obs_logits.dtype, device=obs_logits.device)
    for m in range(m_len):
        jac_m = flat_grads(obs_logits[m], params, chunk=vocab)
        for j in range(l_len):
            kernel[m, j] = jac_m @ jac_u[j].T
    a = torch.stack([adaptation.dense(m) for m in range(m_len)])
    g = update.residual.dense()
    # delta[m, l, :] = −η A_m K_ml G_l for every vocabulary entry of the observed distribution
    delta = -lr * torch.einsum("mvw,mlwu,lu->mlv", a, kernel, g)
    per_token = delta[torch.arange(m_len), :, obs_targets]
    factors = ExplicitFactors(a, kernel, g, delta.sum(dim=1))
    return per_token, kernel.flatten(2).norm(dim=-1), factors


def _kernel_norms(model, params: Params, obs_fn_logits: Callable, update: _Update, probes: int, seed: int):
    """Random-projection estimate of ‖K_ml‖_F for all (m, l): ‖K‖_F² = E‖K r‖², r ~ N(0, I_V).

    K_ml r = J_m (J_lᵀ r): a backward pass gives J_lᵀ r = ∇θ(z_l·r), one forward-mode pass then gives J_m (J_lᵀ r)
    for every observed position m at once. The mean over `probes` probes of ‖K r‖² is unbiased with relative
    standard error sqrt(2‖KᵀK‖_F²/k)/‖K‖_F² ≤ sqrt(2/k) (equality when K has rank one); the square root taken here
    has about half that relative error.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    logits = update.logits
    l_len, vocab = logits.shape
    r = torch.randn(l_len, probes, vocab, generator=gen, dtype=logits.dtype).to(logits.device)
    projected = torch.einsum("lv,lkv->lk", logits, r).flatten()  # (L·k,): z_l·r_lk, the scalars to differentiate
    chunk = _jvp_chunk(param_count(params), logits.element_size())
    squares = []
    for start in range(0, len(projected), chunk):
        tangents = flat_grads(projected, params, rows=range(start, min(start + chunk, len(projected))), chunk=chunk)
        squares.append(jvp_batched(model, params, obs_fn_logits, tangents).pow(2).sum(-1))  # (chunk, M): ‖K r‖²
    return torch.cat(squares).view(l_len, probes, -1).mean(dim=1).T.sqrt()


# ----------------------------------------------------------------------------------------------------------------
# Public API


def decompose(
    model,
    tokenizer,
    observed: tuple[Prompt, Response],
    update: dict,
    loss: str = "sft",
    lr: float = 1e-4,
    beta: float = 0.1,
    ref_model=None,
    params: str = "trainable",
    explicit: bool = False,
    method: str = "auto",
    kernel_probes: int = 2,
    seed: int = 0,
) -> Decomposition:
    """Predict and decompose how one SGD step (lr) on `update` changes log π(observed response | observed prompt).

        from alignkit import decompose

        d = decompose(model, tokenizer, observed=("What is the capital of France?", "Paris is the capital."),
                      update={"prompt": "What is 2+2?", "chosen": "4", "rejected": "Bananas are purple."},
                      loss="dpo", lr=1e-5)
        d.predicted, d.per_token  # first-order change of log π(observed), and its M x L token-pair table

    `actual_change(...)` takes the real step on the same loss to check it (`python -m alignkit.dynamics --check`).

    Args:
        observed: (prompt, response); the prompt is a string or a list of chat messages (see `encode_pair`).
        update: {"prompt", "chosen", "rejected"}. SFT uses chosen (rejected ignored); dpo/ipo use both, and their
            update columns are the chosen tokens then the rejected tokens; "negative" uses rejected alone.
        loss: "sft" (−Σ log π, summed over tokens), "dpo", "ipo" (TRL's per-token-averaged margin) or "negative"
            (+Σ log π(y⁻): the negative gradient alone). See `alignkit.dynamics.residuals`.
        ref_model: reference for dpo/ipo. None: a peft model's adapter-disabled self, else the model itself at the
            current parameters (log-ratios 0, a = 1/2).
        params: "trainable" (requires_grad, e.g. a LoRA adapter) or "all" (every parameter, frozen ones included).
        explicit: build A (V×V per position), K (V×V per token pair) and G and multiply them; small vocabularies only.
        method: efficient mode strategy. "gram" keeps M+L flattened gradients and multiplies them (fast when P is
            small, e.g. LoRA); "jvp" does one backward and one forward-mode pass per update token with O(P) memory
            (for params="all" on real models); "auto" picks gram when the gradients fit in GRAM_BUDGET_BYTES.
        kernel_probes: Gaussian probes per update token for the ‖K_ml‖_F estimate (0 skips it). Each probe costs
            one backward and one forward-mode pass per update token, more than the decomposition itself on real
            models (docs/dynamics.md, Cost); the norm's relative error is ≤ sqrt(1/(2k)), 0.5 for the default 2.
            Ignored with explicit=True, which is exact.
    """
    inputs = _prepare(tokenizer, observed, update, loss, lr, beta)
    if method not in ("auto", "gram", "jvp"):
        raise AlignkitError(f'method must be "auto", "gram" or "jvp", got {method!r}')
    selected = select_params(model, params)
    n_params = param_count(selected)
    device = _device(model)
    obs_targets = _targets(inputs.observed, device)

    def obs_logits_fn(forward):
        return _response_logits(forward, inputs.observed, device)

    def obs_logps_fn(forward):
        return _gather(obs_logits_fn(forward), obs_targets)

    with differentiable(model, selected):
        ref = _reference_logps(model, ref_model, inputs, loss)
        upd = _update_side(model, inputs, loss, beta, ref)
        obs_logits = obs_logits_fn(model)
        obs_logps = _gather(obs_logits, obs_targets)
        m_len, l_len = len(obs_targets), upd.logits.shape[0]
        kernel_norm, factors, probes = None, None, 0
        if explicit:
            per_token, kernel_norm, factors = _explicit(obs_logits, obs_targets, upd, selected, lr)
            used = "explicit"
        else:
            gram_bytes = (m_len + l_len) * n_params * obs_logits.element_size()
            used = method if method != "auto" else ("gram" if gram_bytes <= GRAM_BUDGET_BYTES else "jvp")
            if used == "gram":
                per_token = _per_token_gram(obs_logps, upd, selected, lr)
            else:
                per_token = _per_token_jvp(model, selected, obs_logps_fn, upd, lr)
            if kernel_probes > 0:
                kernel_norm = _kernel_norms(model, selected, obs_logits_fn, upd, kernel_probes, seed)
                probes = kernel_probes
    per_token = per_token.detach()
    return Decomposition(
        predicted=float(per_token.sum()),
        per_token=per_token,
        observed_tokens=obs_targets.tolist(),
        update_tokens=upd.residual.targets.tolist(),
        adaptation=Adaptation(F.softmax(obs_logits.detach(), dim=-1), obs_targets),
        residual=upd.residual,
        kernel_norm=None if kernel_norm is None else kernel_norm.detach(),
        kernel_probes=probes,
        observed_logprob=float(obs_logps.detach().sum()),
        loss=loss,
        lr=lr,
        beta=beta,
        params=params,
        n_params=n_params,
        method=used,
        terms=upd.terms,
        factors=factors,
    )


def distribution_change(
    model,
    tokenizer,
    observed: tuple[Prompt, Response],
    update: dict,
    loss: str = "sft",
    lr: float = 1e-4,
    beta: float = 0.1,
    ref_model=None,
    params: str = "trainable",
) -> DistributionChange:
    """Predicted Δ log π(v) for every vocabulary entry v at every observed position: the full rows of A·K·G.

    Δθ = −η ∇θL (one backward), Δz = J_z Δθ (one forward-mode pass), Δ log π = A Δz (the forward-mode pass goes
    through log_softmax, which applies A). Exact to first order, no V×V matrix and no finite difference.
    """
    inputs = _prepare(tokenizer, observed, update, loss, lr, beta)
    selected = select_params(model, params)
    device = _device(model)
    obs_targets = _targets(inputs.observed, device)

    def obs_logsoftmax(forward):
        return F.log_softmax(_response_logits(forward, inputs.observed, device), dim=-1)

    with differentiable(model, selected):
        ref = _reference_logps(model, ref_model, inputs, loss)
        upd = _update_side(model, inputs, loss, beta, ref)
        step = {name: -lr * g for name, g in grad_dict(upd.weighted.sum(), selected).items()}
        delta = jvp_of(model, selected, obs_logsoftmax, step)
        with torch.no_grad():
            probs = obs_logsoftmax(model).exp()
    return DistributionChange(delta, probs, obs_targets)


def actual_change(
    model,
    tokenizer,
    observed: tuple[Prompt, Response],
    update: dict,
    loss: str = "sft",
    lr: float = 1e-4,
    beta: float = 0.1,
    ref_model=None,
    params: str = "trainable",
    per_position: bool = False,
) -> float | torch.Tensor:
    """Take one real SGD step θ ← θ − lr ∇θL on `update`, measure Δ log π(observed), and restore θ.

    Same loss, reference and parameter set as `decompose`, so `predicted` and this differ by O(lr²) only. The loss
    is computed directly (autograd through `loss_value`), not through the residuals, so the comparison also checks
    the residual derivation. Returns the summed change, or the per-token changes (M,) with per_position=True.
    """
    inputs = _prepare(tokenizer, observed, update, loss, lr, beta)
    selected = select_params(model, params)
    device = _device(model)
    obs_targets = _targets(inputs.observed, device)

    def obs_logps() -> torch.Tensor:
        with torch.no_grad():
            return _gather(_response_logits(model, inputs.observed, device), obs_targets)

    saved = {name: p.detach().clone() for name, p in selected.items()}
    with differentiable(model, selected):
        ref = _reference_logps(model, ref_model, inputs, loss)
        before = obs_logps()
        logps = {
            side: None if pair is None else _gather(_response_logits(model, pair, device), _targets(pair, device))
            for side, pair in (("chosen", inputs.chosen), ("rejected", inputs.rejected))
        }
        value = loss_value(loss, logps["chosen"], logps["rejected"], *ref, beta=beta)
        grads = torch.autograd.grad(value, list(selected.values()), allow_unused=True, materialize_grads=True)
        try:
            with torch.no_grad():
                for p, g in zip(selected.values(), grads):
                    p.sub_(lr * g)
            after = obs_logps()
        finally:
            with torch.no_grad():
                for name, p in selected.items():
                    p.copy_(saved[name])
    delta = after - before
    return delta if per_position else float(delta.sum())
