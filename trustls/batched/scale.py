"""``x_scale`` per problem: fixed scales (shared or one row per problem) or Jacobi scaling.

The scale T of each problem is a diagonal, kept batch-last as an (n, B)
tensor. A fixed ``x_scale`` (a number, a length-n sequence shared by all
problems, or a (B, n) tensor with one row per problem) gives T once; ``"jac"``
gives each problem MINPACK's T = diag(1/c) with c the running maximum of its
column norms (`trustls.scaling.JacobiScale`), here exact, from the columns of
R (‖R e_j‖ = ‖J̃ e_j‖). Block-Jacobi scaling needs a partition per problem and
is rejected.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from trustls.scaling import (
    BlockJacobi,
    FixedScale,
    JacobiScale,
    ScalePolicy,
    resolve_x_scale,
)

__all__ = ["BatchScale", "resolve_batch_scale"]

_RULE = (
    "x_scale must be 'jac', a positive number, a 1-D sequence of n positive numbers or a (B, n) tensor of "
    "positive numbers for solve_batch"
)


class BatchScale:
    """T for a batch: fixed ``(n, B)``, or Jacobi (``fixed is None``)."""

    def __init__(self, fixed: Tensor | None):
        self.fixed = fixed

    def initial(self, column_norms: Tensor) -> Tensor:
        """T at x0 from the column norms ``(n, B)``; a column of zeros is scaled by 1, as in scipy."""
        if self.fixed is not None:
            return self.fixed.expand_as(column_norms).clone()
        scale = torch.reciprocal(column_norms)
        return torch.where(torch.isfinite(scale), scale, 1.0)

    def updated(self, previous: Tensor, column_norms: Tensor) -> Tensor:
        """T at a new point: the running minimum of 1/c (Jacobi), or the fixed T."""
        if self.fixed is not None:
            return previous
        return torch.minimum(torch.reciprocal(column_norms), previous)


def resolve_batch_scale(x_scale: object, default: ScalePolicy, x0: Tensor) -> BatchScale:
    """The `BatchScale` for ``solve_batch``'s ``x_scale`` (``None``: the controller's ``default``).

    Examples:
        >>> x0 = torch.zeros(4, 2, dtype=torch.float64)
        >>> resolve_batch_scale(None, FixedScale(2.0), x0).fixed.shape
        torch.Size([2, 1])
        >>> resolve_batch_scale("jac", FixedScale(1.0), x0).fixed is None  # Jacobi
        True
    """
    B, n = x0.shape
    policy = default
    if x_scale is not None and not isinstance(x_scale, (str, int, float, Tensor, ScalePolicy)):
        try:  # a numpy array or nested sequence: (n,) shared, (B, n) per problem
            x_scale = torch.as_tensor(x_scale, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{_RULE}, got {type(x_scale).__name__}") from None
    if x_scale is not None:
        if isinstance(x_scale, Tensor) and x_scale.ndim == 2:
            if tuple(x_scale.shape) != (B, n):
                raise ValueError(f"{_RULE}, got a tensor of shape {tuple(x_scale.shape)} for x0 of shape {(B, n)}")
            if not bool(torch.isfinite(x_scale).all()) or not bool((x_scale > 0).all()):
                raise ValueError("x_scale must have finite positive entries, got a tensor with entries that are not")
            return BatchScale(x_scale.detach().to(dtype=x0.dtype, device=x0.device).T.contiguous())
        policy = resolve_x_scale(x_scale)
    if isinstance(policy, BlockJacobi):
        raise TypeError(
            "x_scale=BlockJacobi is not supported by solve_batch (each problem would need its own blocks): "
            "use 'jac', a number or a tensor"
        )
    if isinstance(policy, JacobiScale):
        return BatchScale(None)
    if not isinstance(policy, FixedScale):
        raise TypeError(f"{_RULE}, got the scale policy {type(policy).__name__}")
    value = policy.value
    if isinstance(value, Tensor):
        if tuple(value.shape) != (n,):
            raise ValueError(f"x_scale must have a problem's shape ({n},), got shape {tuple(value.shape)}")
        return BatchScale(value.to(dtype=x0.dtype, device=x0.device)[:, None])
    if not 0 < value < math.inf:
        raise ValueError(f"{_RULE}, got {value!r}")
    return BatchScale(torch.full((n, 1), float(value), dtype=x0.dtype, device=x0.device))
