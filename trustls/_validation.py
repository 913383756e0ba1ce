"""Argument checks shared by the public entry points; messages name the argument, the rule and the value."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["check_residual", "check_tolerance", "check_x0"]


def check_x0(x0: object) -> Tensor:
    if not isinstance(x0, Tensor):
        raise TypeError(f"x0 must be a torch.Tensor, got {type(x0).__name__}")
    if not x0.is_floating_point():
        raise TypeError(f"x0 must have a floating dtype, got {x0.dtype}")
    if x0.ndim != 1 or x0.numel() == 0:
        raise ValueError(f"x0 must be a non-empty 1-D tensor, got shape {tuple(x0.shape)}")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 must be finite, got a tensor with NaN or inf entries")
    return x0


def check_residual(residual: object, x: Tensor, expected_size: int | None = None) -> Tensor:
    """Check the output of ``fun``: a 1-D floating tensor on x's dtype and device."""
    if not isinstance(residual, Tensor):
        raise TypeError(f"fun must return a torch.Tensor, got {type(residual).__name__}")
    if residual.ndim != 1:
        hint = (
            " (a 0-d output is rejected: return the vector of residuals, not the loss ½‖r‖²;"
            " reshape a single residual to shape (1,))"
            if residual.ndim == 0
            else " (flatten it with .reshape(-1))"
        )
        raise ValueError(f"fun must return a 1-D tensor, got shape {tuple(residual.shape)}{hint}")
    if residual.dtype != x.dtype:
        raise TypeError(f"fun must return a tensor of x's dtype {x.dtype}, got {residual.dtype}")
    if residual.device != x.device:
        raise ValueError(f"fun must return a tensor on x's device {x.device}, got {residual.device}")
    if expected_size is not None and residual.shape[0] != expected_size:
        raise ValueError(
            f"fun must return a residual of constant length {expected_size}, got length {residual.shape[0]}"
        )
    return residual


def check_tolerance(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite non-negative number or None, got {value!r}")
    return float(value)
