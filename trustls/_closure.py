"""Jacobian products of a torch.optim closure with respect to a parameter list.

A `torch.optim` closure takes no argument: it reads the parameters of a module
directly, so ``torch.func`` (which differentiates a function of ``x``) does not
apply. The products are built instead with classic autograd on the parameter
list, from one evaluation of the closure with its graph:

* ``Jᵀu``: ``torch.autograd.grad(r, params, u)``, the graph kept for reuse;
* ``Jv``: the map u ↦ Jᵀu is linear, so ``J v`` is its VJP with cotangent v.
  One backward pass with ``create_graph=True`` at a dummy u₀ records the
  graph of Jᵀu₀ as a function of u₀; each ``J v`` is then a backward pass
  through that graph (the "double-backward trick", Townsend 2017; the
  ``"vjp+double-backward"`` method of `trustls.operators.implicit`). By
  default it is recorded at u₀ = 0 on the first product, so a step whose
  CG solve needs no product never pays for it; with ``eager=True`` (what
  `TrustRegionOptimizer` uses, since CG always runs there) it is recorded at
  once at u₀ = r, and the gradient Jᵀr comes out of that same pass.

A Gauss-Newton product JᵀJv thus costs two backward passes over graphs built
once per step; J itself is never formed, and memory grows with the
activations and the parameters, never with their product. The vectors are
flat, the layout that of `flatten` over the parameter list.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from trustls.operators.implicit import JacobianProducts

__all__ = ["check_closure_output", "flatten", "parameter_products", "unflatten"]

DOCS = "see the closure section of TrustRegionOptimizer's docstring and docs/training.md"


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """One detached vector holding ``tensors`` one after another."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def unflatten(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Views of ``vector`` shaped like each tensor of ``like`` (no copy)."""
    views, offset = [], 0
    for t in like:
        views.append(vector[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return views


def check_closure_output(residual: object, like: Tensor, expected_size: int | None = None) -> Tensor:
    """Check what a closure returned: the 1-D residual vector on the parameters' dtype and device."""
    if not isinstance(residual, Tensor):
        raise TypeError(f"closure must return the residual vector as a torch.Tensor, got {type(residual).__name__}")
    if residual.ndim == 0:
        raise ValueError(
            "closure must return the 1-D residual vector r whose cost ½‖r‖² is minimized, got a 0-d tensor: "
            f"return e.g. (net(X) - Y).reshape(-1) rather than a loss; {DOCS}"
        )
    if residual.ndim != 1 or residual.shape[0] == 0:
        raise ValueError(
            f"closure must return a non-empty 1-D residual vector, got shape {tuple(residual.shape)} "
            f"(flatten it with .reshape(-1)); {DOCS}"
        )
    if residual.dtype != like.dtype:
        raise TypeError(f"closure must return a tensor of the parameters' dtype {like.dtype}, got {residual.dtype}")
    if residual.device != like.device:
        raise ValueError(f"closure must return a tensor on the parameters' device {like.device}, got {residual.device}")
    if expected_size is not None and residual.shape[0] != expected_size:
        raise ValueError(
            f"closure must return a residual of the same length every time it is called within a step "
            f"(the same batch), got length {residual.shape[0]} after {expected_size}; {DOCS}"
        )
    return residual


def _grad(outputs, inputs, grad_outputs, **options) -> tuple[Tensor, ...]:
    # A parameter the residual does not use has a zero Jacobian block.
    return torch.autograd.grad(outputs, inputs, grad_outputs, allow_unused=True, materialize_grads=True, **options)


def parameter_products(
    residual: Tensor, params: Sequence[Tensor], *, eager: bool | Tensor = False
) -> JacobianProducts:
    """JVP and VJP of ``residual`` (computed with its graph) with respect to ``params``.

    With ``eager=True`` the double-backward graph is recorded at once, at
    u₀ = r rather than 0 (the map is linear, so any u₀ serves): that backward
    pass yields Jᵀr as a by-product, and the first ``vjp(r)`` (the gradient,
    which `GaussNewtonModel.from_products` asks for) is answered from it
    instead of by another backward pass. ``eager`` may also be the vector u₀
    itself (∇L for a loss other than least squares, whose gradient is Jᵀ∇L).

    Examples:
        >>> import torch
        >>> w = torch.tensor([1.0, 3.0], requires_grad=True)
        >>> products = parameter_products(w**2, [w])
        >>> products.jvp(torch.tensor([1.0, 1.0]))
        tensor([2., 6.])
    """
    params = list(params)
    detached = residual.detach()
    recorded: list[tuple[Tensor, Tensor]] = []
    gradient: list[Tensor] = []

    def record(at: Tensor) -> None:
        with torch.enable_grad():
            dummy = at.detach().clone().requires_grad_()
            pulled = _grad(residual, params, dummy, create_graph=True)
            # cat saves no input for its backward: the per-parameter tensors
            # are freed and one flat vector remains, Jᵀu₀ and the graph's root.
            recorded.append((dummy, torch.cat([t.reshape(-1) for t in pulled])))

    at = detached if eager is True else eager
    if isinstance(at, Tensor):
        record(at)
        gradient.append(recorded[0][1].detach())

    def vjp(u: Tensor) -> Tensor:
        if gradient and u.shape == at.shape and u.data_ptr() == at.data_ptr():
            return gradient.pop()  # Jᵀu₀, computed while recording; asked for once
        return flatten(_grad(residual, params, u, retain_graph=True))

    def jvp(v: Tensor) -> Tensor:
        if not recorded:
            record(torch.zeros_like(detached))
        dummy, pulled = recorded[0]
        if not pulled.requires_grad:  # no parameter reaches the residual
            return torch.zeros_like(detached)
        with torch.enable_grad():
            return _grad(pulled, dummy, v, retain_graph=True)[0]

    return JacobianProducts(detached, jvp, vjp)
