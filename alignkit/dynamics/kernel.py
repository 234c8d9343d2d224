"""Parameter gradients and Jacobian-vector products: the pieces of the empirical NTK K = ∇θz_o (∇θz_u)ᵀ.

The efficient paths never build a V×V block: they work with gradients of scalars (backward passes, P numbers each)
and forward-mode products J·v (one forward pass with tangents gives every position and vocabulary entry at once),
so their cost grows with the number of tokens, not with V². Only the explicit mode asks `flat_grads` for the V rows
of a Jacobian.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.func import functional_call, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from alignkit.errors import AlignkitError

Params = dict[str, torch.nn.Parameter]


def select_params(model: torch.nn.Module, params: str) -> Params:
    """The parameters θ that the update moves: "trainable" (requires_grad, e.g. a LoRA adapter) or "all"."""
    if params == "all":
        return dict(model.named_parameters())
    if params == "trainable":
        chosen = {name: p for name, p in model.named_parameters() if p.requires_grad}
        if not chosen:
            raise AlignkitError('params="trainable": the model has no parameter with requires_grad; use params="all"')
        return chosen
    raise AlignkitError(f'params must be "trainable" or "all", got {params!r}')


def param_count(params: Params) -> int:
    return sum(p.numel() for p in params.values())


@contextmanager
def differentiable(model: torch.nn.Module, params: Params) -> Iterator[None]:
    """Eval mode (no dropout: LoRA dropout would make the step random) with grads on `params`, restored afterwards.

    params="all" on a peft model includes frozen base weights; they need requires_grad for the duration only.
    """
    flags = {name: p.requires_grad for name, p in params.items()}
    was_training = model.training
    model.eval()
    try:
        for p in params.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for name, p in params.items():
            p.requires_grad_(flags[name])
        model.train(was_training)


def flat_grads(outputs: torch.Tensor, params: Params, rows: range | None = None, chunk: int = 16) -> torch.Tensor:
    """Gradients of entries `rows` (default: all) of the 1-D `outputs` w.r.t. `params`, flattened: (len(rows), P).

    Uses autograd's batched (vmapped) backward over `chunk` outputs at a time; the graph is retained so the caller can
    ask again. Gradients that do not depend on a parameter are zeros.
    """
    rows = range(len(outputs)) if rows is None else rows
    tensors = list(params.values())
    eye = torch.eye(len(outputs), dtype=outputs.dtype, device=outputs.device)
    out = []
    for start in range(rows.start, rows.stop, chunk):
        grads = torch.autograd.grad(
            outputs,
            tensors,
            grad_outputs=eye[start : min(start + chunk, rows.stop)],
            is_grads_batched=True,
            retain_graph=True,
            allow_unused=True,
            materialize_grads=True,
        )
        out.append(torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1))
    return torch.cat(out)


def grad_dict(output: torch.Tensor, params: Params) -> dict[str, torch.Tensor]:
    """∇θ of a scalar as a {name: tensor} dict (the tangent format `jvp_of` takes); graph retained."""
    grads = torch.autograd.grad(
        output, list(params.values()), retain_graph=True, allow_unused=True, materialize_grads=True
    )
    return dict(zip(params, grads))


def _functional(model: torch.nn.Module, fn: Callable[[Callable], torch.Tensor]) -> Callable:
    def run(values: dict[str, torch.Tensor]) -> torch.Tensor:
        return fn(lambda **kwargs: functional_call(model, values, args=(), kwargs=kwargs, strict=False))

    return run


def jvp_of(
    model: torch.nn.Module, params: Params, fn: Callable[[Callable], torch.Tensor], tangent: dict[str, torch.Tensor]
) -> torch.Tensor:
    """J·v: the first-order change of `fn`'s output when θ moves by `tangent` (one forward-mode pass).

    `fn(forward)` must compute its output by calling `forward(**model_kwargs)` instead of the model. PyTorch's fused
    CPU attention kernel has no forward-mode derivative, so the pass runs SDPA's math backend: same function, and the
    only extra cost is the attention matrix being materialised.
    """
    primals = {name: p.detach() for name, p in params.items()}
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        _, tangent_out = jvp(_functional(model, fn), (primals,), ({name: tangent[name] for name in primals},))
    return tangent_out


def jvp_batched(
    model: torch.nn.Module, params: Params, fn: Callable[[Callable], torch.Tensor], tangents: torch.Tensor
) -> torch.Tensor:
    """J·v for each row of `tangents` (B, P) (flattened as in `flat_grads`): one vmapped forward-mode pass, (B, ...).

    Batching the tangents turns B small forward passes into one with B-times wider matrix products, which is much
    faster than a Python loop; memory grows with B (activations and their tangents).
    """
    primals = {name: p.detach() for name, p in params.items()}
    batched, start = {}, 0
    for name, p in params.items():
        batched[name] = tangents[:, start : start + p.numel()].view(len(tangents), *p.shape)
        start += p.numel()
    run = _functional(model, fn)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        return vmap(lambda tangent: jvp(run, (primals,), (tangent,))[1])(batched)
