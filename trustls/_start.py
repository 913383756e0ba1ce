"""The start of a solve: the working point from ``x0``, and the checks that an iteration can begin.

`starting_point` reads ``x0`` as scipy does (`trustls._validation`), checks it
against ``x_scale``, and returns the point that the iteration works on:
float32 for a half-precision ``x0``, on values that its dtype holds exactly
(`trustls.function`), and with bounds, moved strictly inside the box, where
scipy's trf starts too.

The checks refuse, with the reason, a start from which no iteration could
proceed: a residual, cost or gradient at ``x0`` that is not finite, outputs
with no autograd path to x, or a budget ``max_nfev`` below the calls of
``fun`` that the evaluation and linearization at ``x0`` need.
`check_relinearization` applies the gradient check to a linearization made
elsewhere (`TrustRegion.relinearized`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from trustls._validation import as_tensor_x0, check_x0
from trustls.bounds import Bounds, as_bounds
from trustls.function import HALF
from trustls.models.base import CurvatureModel, Evaluation, Linearization
from trustls.scaling import ScalePolicy
from trustls.state import TrustRegionState
from trustls.termination import gradient_test

__all__ = [
    "check_budget",
    "check_first_evaluation",
    "check_relinearization",
    "check_start_gradient",
    "starting_point",
    "supplies_jacobian",
]


def starting_point(x0: Any, scale_policy: ScalePolicy, bounds: Any) -> tuple[Tensor, torch.dtype, Bounds | None]:
    """The working point, the dtype of ``x0`` and the checked bounds (in the working dtype)."""
    x0 = check_x0(as_tensor_x0(x0))
    dtype = x0.dtype
    scale_policy.check(x0)
    bounds = as_bounds(bounds, x0)
    # Half precision: iterate in float32 on values x0's dtype holds exactly.
    x = x0.detach().to(torch.float32) if dtype in HALF else x0.detach().clone()
    if bounds is not None:  # scipy's trf starts strictly inside the box
        bounds = type(bounds)(bounds.lower.to(x.dtype), bounds.upper.to(x.dtype))
        x = bounds.strictly_feasible(x, dtype=dtype)  # moved on the values x0's dtype holds
    return x, dtype, bounds


NO_AUTOGRAD_PATH = (
    "fun must compute its outputs from x with torch operations that autograd can differentiate, got "
    "outputs with no autograd path to x (computed under torch.no_grad(), detached, or rebuilt from "
    "Python numbers, e.g. torch.tensor(x.tolist()))"
)


def check_first_evaluation(model: CurvatureModel, evaluation: Evaluation) -> None:
    """The outputs at ``x0`` are finite and depend on x through autograd, and so is the cost."""
    if not bool(torch.isfinite(evaluation.outputs).all()):
        raise ValueError("fun(x0) must be finite, got a residual with NaN or inf entries")
    if not model.depends_on_x(evaluation):
        raise ValueError(NO_AUTOGRAD_PATH)
    if not bool(torch.isfinite(evaluation.cost)):
        raise ValueError(
            "the cost at x0 must be finite, got one that overflows float64 (residual entries near 1e154 or "
            "beyond): rescale fun"
        )


def check_budget(max_nfev: int | None, needed: int) -> None:
    """``max_nfev`` allows the ``needed`` calls of the evaluation and linearization at ``x0``."""
    if max_nfev is not None and max_nfev < needed:
        raise ValueError(
            f"max_nfev must allow the evaluation and linearization at x0 ({needed} calls of fun), got {max_nfev}"
        )


def supplies_jacobian(model: object) -> bool:
    """Whether the model's Jacobian is the user's (least_squares' ``jac``, `GaussNewtonModel`'s ``jacobian``)."""
    return getattr(model, "jacobian", None) is not None


def check_start_gradient(gradient: Tensor, dtype: torch.dtype | None = None, user_jacobian: bool = False) -> None:
    """The gradient of the cost at ``x0`` is finite; in half precision (``dtype``) overflow is the likely cause.

    With ``user_jacobian`` (a Jacobian the user supplies: least_squares' ``jac``,
    `GaussNewtonModel`'s ``jacobian``) the message names it: fun's value is finite
    by then, so J's entries, or their product with it, are not.
    """
    _, finite = gradient_test(gradient)
    if not finite:
        cause = "is fun differentiable at x0? e.g. sqrt at 0, or torch.where with a branch whose gradient is NaN there"
        if user_jacobian:
            cause = ("the Jacobian you supply (least_squares' jac, GaussNewtonModel's jacobian) has NaN or inf "
                     "entries at x0, or its product with fun's value overflows")
        if dtype in HALF:
            cause = (
                f"in {dtype}, whose largest value is {torch.finfo(dtype).max:.5g}, J's entries or the products "
                f"through fun overflow easily: rescale fun or its variables, or solve in float32; if not that, {cause}"
            )
        raise ValueError(f"the gradient of the cost at x0 must be finite, got NaN or inf entries ({cause})")


def check_relinearization(state: TrustRegionState, linearization: Linearization) -> None:
    """``linearization`` is at a point of the state's shape, with a finite gradient."""
    if linearization.x.shape != state.x.shape:
        raise ValueError(
            f"linearization must be at a point of the state's shape {tuple(state.x.shape)}, "
            f"got {tuple(linearization.x.shape)}"
        )
    _, finite = gradient_test(linearization.gradient)
    if not finite:
        raise ValueError("the gradient of the cost must be finite, got NaN or inf entries")
