"""The inputs of `trustls.curve_fit` as tensors: conversion, NaN policy, sigma and bounds.

scipy's ``curve_fit`` takes array-likes and casts them to float64. Here torch
tensors keep their dtype and device; numpy arrays, lists, tuples and numbers
become float64 tensors on the device of the tensors given (the CPU if none).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from trustls._validation import real_tensor

__all__ = [
    "Whitening",
    "as_float_tensor",
    "convertible",
    "feasible_start",
    "is_bounded",
    "omit_nan",
    "parameter_count",
    "prepare_bounds",
    "whitening",
]

# A 2-D sigma is a covariance matrix: symmetric up to this many rounding units of its largest entry.
_SYMMETRY_ULPS = 100


def convertible(value: object) -> bool:
    """Whether ``value`` is data to convert (a tensor, array, list, tuple or number)."""
    return (
        isinstance(value, (Tensor, list, tuple, int, float))
        or hasattr(value, "__array__")
        or hasattr(value, "__array_interface__")
    )


def as_float_tensor(name: str, value: object, device: torch.device) -> Tensor:
    """A real tensor as it is; anything else as a float64 tensor on ``device`` (scipy's cast)."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, Tensor) for v in value):
        # A tuple of predictors (x1, x2) given as tensors: stacked, as numpy would.
        value = torch.stack(list(value))
    if isinstance(value, Tensor):
        if value.is_complex():  # the fit's data are real (scipy casts with only a warning)
            raise TypeError(f"{name} must be real, got {value.dtype}")
        return value
    if isinstance(value, bool) or not convertible(value):
        raise TypeError(f"{name} must be a torch.Tensor, a numpy array, a list or a number, got {type(value).__name__}")
    return real_tensor(name, value, "convertible to a float64 tensor", dtype=torch.float64, device=device)


def parameter_count(f: Callable) -> int:
    """n from f's signature f(x, a, b, ...), as scipy counts it (named positional parameters − 1)."""
    rule = (
        "p0 is None, so the number of parameters is read from f's signature, which must name x and "
        "then each parameter, f(x, a, b, ...); pass p0 for a signature like f(x, *params)"
    )
    try:
        signature = inspect.signature(f)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{rule}; inspect.signature(f) failed: {error}") from error
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    named = [p for p in signature.parameters.values() if p.kind in kinds]
    if len(named) < 2:
        raise ValueError(f"{rule}; got the signature {signature}")
    return len(named) - 1


def omit_nan(xdata: object, ydata: Tensor, sigma: Tensor | None):
    """Drop the observations where ydata, or xdata along its last axis, is NaN (scipy's 'omit')."""
    m = ydata.shape[0]
    dropped = torch.isnan(ydata)
    if not isinstance(xdata, Tensor):
        raise TypeError(
            f"nan_policy='omit' needs xdata as a tensor, array or list whose last axis indexes the "
            f"observations, got {type(xdata).__name__}"
        )
    if xdata.ndim == 0 or xdata.shape[-1] != m:
        raise ValueError(
            f"nan_policy='omit' needs xdata's last axis to index the {m} observations (scipy's (k, M) "
            f"layout), got shape {tuple(xdata.shape)}"
        )
    if xdata.is_floating_point():
        dropped = dropped | torch.isnan(xdata).reshape(-1, m).any(0)
    keep = ~dropped
    if sigma is not None:
        if sigma.ndim == 1 and sigma.shape[0] == m:
            sigma = sigma[keep]
        elif sigma.ndim == 2:
            sigma = sigma[keep][:, keep]
    return xdata[..., keep], ydata[keep], sigma


@dataclass(frozen=True)
class Whitening:
    """r = W(f − y): division by a 1-D sigma, or L⁻¹ with a 2-D sigma = LLᵀ."""

    sigma: Tensor | None = None  # 1-D (or one element)
    cholesky: Tensor | None = None  # lower-triangular L

    def __call__(self, d: Tensor) -> Tensor:
        """W d for a vector d, or for each column of a matrix d (a Jacobian)."""
        if self.cholesky is not None:
            column = d.ndim == 1
            solved = torch.linalg.solve_triangular(self.cholesky, d[:, None] if column else d, upper=False)
            return solved[:, 0] if column else solved
        if self.sigma is not None:
            return d / (self.sigma if d.ndim == 1 or self.sigma.ndim == 0 else self.sigma[:, None])
        return d


def whitening(sigma: Tensor | None, m: int) -> Whitening:
    """Check sigma (one element, shape (m,), or an (m, m) covariance) and factor a 2-D one."""
    if sigma is None:
        return Whitening()
    if sigma.numel() == 1 or sigma.shape == (m,):
        sigma = sigma.reshape(()) if sigma.numel() == 1 else sigma
        if not bool((torch.isfinite(sigma) & (sigma > 0)).all()):
            raise ValueError("sigma must hold finite positive standard deviations when it is a scalar or 1-D")
        return Whitening(sigma=sigma)
    if sigma.shape != (m, m):
        raise ValueError(
            f"sigma must be a scalar, of shape ({m},) or ({m}, {m}) for {m} observations, got shape {tuple(sigma.shape)}"
        )
    if not sigma.is_floating_point() or not bool(torch.isfinite(sigma).all()):
        raise ValueError("sigma must be a finite floating matrix when 2-D (the covariance of ydata)")
    asymmetry = float((sigma - sigma.T).abs().max())
    if asymmetry > _SYMMETRY_ULPS * torch.finfo(sigma.dtype).eps * float(sigma.abs().max()):
        raise ValueError(
            f"sigma must be symmetric when 2-D (the covariance of ydata), got max |sigma - sigma.T| = {asymmetry:.3g}"
        )
    L, info = torch.linalg.cholesky_ex(sigma)
    if int(info) != 0:
        raise ValueError(
            f"sigma must be positive definite when 2-D (the covariance of ydata): its Cholesky "
            f"factorization fails at column {int(info) - 1}"
        )
    return Whitening(cholesky=L)


def prepare_bounds(bounds: object, n: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """(lb, ub) of shape (n,) from a 2-tuple of scalars or length-n sequences, or a scipy ``Bounds``."""
    if hasattr(bounds, "lb") and hasattr(bounds, "ub"):
        pair = (bounds.lb, bounds.ub)
    elif isinstance(bounds, (tuple, list)) and len(bounds) == 2:
        pair = tuple(bounds)
    else:
        raise ValueError(f"bounds must be a 2-tuple (lb, ub) or a scipy.optimize.Bounds, got {bounds!r}")
    limits = []
    for name, value in zip(("lower", "upper"), pair):
        limit = as_float_tensor(f"bounds' {name} limit", value, device).to(dtype=dtype, device=device)
        if limit.ndim == 0:
            limit = limit.expand(n)
        if limit.shape != (n,):
            raise ValueError(
                f"bounds' {name} limit must be a scalar or have shape ({n},), got shape {tuple(limit.shape)}"
            )
        if bool(torch.isnan(limit).any()):
            raise ValueError(f"bounds' {name} limit must not contain NaN")
        limits.append(limit)
    lb, ub = limits
    if not bool((lb < ub).all()):
        raise ValueError("bounds must have each lower limit strictly less than its upper limit")
    return lb, ub


def feasible_start(lb: Tensor, ub: Tensor) -> Tensor:
    """scipy's default p0 under bounds: 1, the midpoint of a finite interval, or 1 inside a one-sided bound."""
    p0 = torch.ones_like(lb)
    lower, upper = torch.isfinite(lb), torch.isfinite(ub)
    p0 = torch.where(lower & upper, 0.5 * (lb + ub), p0)
    p0 = torch.where(lower & ~upper, lb + 1, p0)
    return torch.where(~lower & upper, ub - 1, p0)


def is_bounded(lb: Tensor, ub: Tensor) -> bool:
    return bool((lb > -math.inf).any() or (ub < math.inf).any())
