"""The inputs of the covariance functions, checked: the Jacobian, the columns, and s² from the cost.

`checked_inputs` is what `trustls.covariance.estimates` does first: the
Jacobian (a `LinearOperator`, or a dense 2-D floating tensor), the method
(`resolve_method`), and the factor of (JᵀJ)⁻¹, the residual variance
s² = 2·cost/(m − n), or 1 with ``absolute_sigma``. Where s² cannot be
estimated (m ≤ n without ``absolute_sigma``, or a cost that is not finite) it
is inf, returned with the reason for the `CovarianceWarning`. Messages name
the argument, the rule and what was received.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from trustls.covariance.methods import resolve_method
from trustls.operators.base import LinearOperator

__all__ = ["check_jacobian", "checked_inputs", "column_indices", "variance_factor"]


def check_jacobian(jacobian: object) -> Tensor | LinearOperator:
    """A `LinearOperator`, or a dense 2-D floating tensor (detached)."""
    if isinstance(jacobian, LinearOperator):
        return jacobian
    if not isinstance(jacobian, Tensor):
        raise TypeError(f"jacobian must be a torch.Tensor or a LinearOperator, got {type(jacobian).__name__}")
    if jacobian.ndim != 2 or not jacobian.is_floating_point() or jacobian.layout != torch.strided:
        raise ValueError(
            f"jacobian must be a dense 2-D floating tensor, got a {jacobian.ndim}-D tensor "
            f"of dtype {jacobian.dtype} and layout {jacobian.layout}"
        )
    return jacobian.detach()


def variance_factor(cost: object, shape: tuple[int, int], absolute_sigma: object) -> tuple[float, str | None]:
    """s² (1 with absolute sigma), and why the covariance cannot be estimated, if it cannot."""
    if not isinstance(absolute_sigma, bool):
        raise TypeError(f"absolute_sigma must be a bool, got {type(absolute_sigma).__name__}")
    if absolute_sigma:
        return 1.0, None
    if cost is None:
        raise ValueError("cost must be given unless absolute_sigma=True: s² = 2·cost/(m − n) scales the covariance")
    if isinstance(cost, Tensor):
        if cost.numel() != 1 or not cost.is_floating_point():
            raise ValueError(
                f"cost must be a number or a one-element floating tensor, got shape {tuple(cost.shape)} "
                f"and dtype {cost.dtype}"
            )
        cost = float(cost)
    if isinstance(cost, bool) or not isinstance(cost, (int, float)):
        raise TypeError(f"cost must be a number (½‖r‖², Result.cost), got {type(cost).__name__}")
    if cost < 0:
        raise ValueError(f"cost must be non-negative (it is ½‖r‖²), got {cost!r}")
    m, n = shape
    if m <= n:
        return math.inf, (
            "the residual variance s² = 2·cost/(m − n) needs more residuals than parameters, "
            f"got m = {m} and n = {n}; pass absolute_sigma=True for (JᵀJ)⁻¹ itself"
        )
    if not math.isfinite(cost):
        return math.inf, f"the cost is {cost}"
    return 2.0 * float(cost) / (m - n), None


def column_indices(columns: object, n: int, device: torch.device) -> Tensor:
    """The requested columns as an int64 tensor on ``device`` (all n for ``None``)."""
    if columns is None:
        return torch.arange(n, device=device)
    if isinstance(columns, Tensor):
        if columns.ndim != 1 or columns.is_floating_point() or columns.is_complex() or columns.dtype == torch.bool:
            raise ValueError(f"columns must be a 1-D integer tensor when a tensor, got {columns!r}")
        values = columns.tolist()
    elif isinstance(columns, Sequence) and not isinstance(columns, str):
        values = list(columns)
    else:
        raise TypeError(
            f"columns must be a sequence of ints, a 1-D integer tensor or None, got {type(columns).__name__}"
        )
    if not values or any(isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < n for j in values):
        raise ValueError(f"columns must be a non-empty sequence of ints in [0, {n}), got {values!r}")
    return torch.tensor(values, dtype=torch.int64, device=device)


def checked_inputs(jacobian: object, cost: object, absolute_sigma: object, method: object):
    """The checked Jacobian, the resolved method, s² and why the covariance cannot be estimated (or ``None``)."""
    jacobian = check_jacobian(jacobian)
    method = resolve_method(method, jacobian)
    factor, reason = variance_factor(cost, jacobian.shape, absolute_sigma)
    return jacobian, method, factor, reason
