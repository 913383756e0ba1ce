"""Convergence tests, as in scipy's ``least_squares`` and MINPACK (Moré et al. 1980).

* gtol: ‖g‖∞ < gtol, tested at every linearized point;
* ftol: 0 < dF < ftol·F and ρ > ¼ (the model agreed with a small relative
  decrease; scipy's ratio is not shifted by the rounding allowance, so its
  test holds only after a decrease, and neither does this one otherwise);
* xtol: ‖dx‖ < xtol·(xtol + ‖x‖).

Each tolerance can be disabled with ``None``. In reduced precision the
tolerances are raised to the dtype's machine epsilon, below which the tests
cannot hold. `step_termination` works elementwise on tensors (one problem or
a batch) or on Python floats, and returns scipy's status codes, 0 where no
test holds.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trustls._elementwise import as_int, where

__all__ = ["effective_tolerance", "gradient_test", "step_termination"]


def effective_tolerance(tol: float | None, eps: float) -> float:
    """``tol`` raised to ``eps`` (0 when disabled), the smallest testable value."""
    return 0.0 if tol is None else max(tol, eps)


def step_termination(
    actual_reduction: Tensor, cost: Tensor, step_norm: Tensor, x_norm: Tensor, ratio: Tensor, ftol: float, xtol: float
) -> Tensor:
    """The ftol/xtol tests after a trial step, as scipy's codes: 2 ftol, 3 xtol, 4 both, 0 neither.

    Examples:
        >>> import torch
        >>> one = torch.tensor(1.0, dtype=torch.float64)
        >>> int(step_termination(1e-12 * one, one, 0.1 * one, one, 0.9 * one, ftol=1e-8, xtol=1e-8))
        2
    """
    ftol_satisfied = (actual_reduction > 0) & (actual_reduction < ftol * cost) & (ratio > 0.25) if ftol > 0 else False
    xtol_satisfied = step_norm < xtol * (xtol + x_norm)
    code = 2 * as_int(ftol_satisfied) + 3 * as_int(xtol_satisfied)
    return where(code == 5, 4, code)


def gradient_test(gradient: Tensor) -> tuple[float, bool]:
    """‖g‖∞ (for gtol) and whether g is finite, in one read."""
    largest, finite = torch.stack([gradient.abs().max().double(), torch.isfinite(gradient).all().double()]).tolist()
    return largest, finite > 0
