"""Convergence tests, as in scipy's ``least_squares`` and MINPACK (Moré et al. 1980).

* gtol: ‖g‖∞ < gtol, tested at every accepted point;
* ftol: dF < ftol·F and ρ > ¼ (the model agreed with a small relative decrease);
* xtol: ‖dx‖ < xtol·(xtol + ‖x‖).

Each tolerance can be disabled with ``None``. In reduced precision the
tolerances are raised to the dtype's machine epsilon, below which the tests
cannot hold.
"""

from __future__ import annotations

from trustls.result import Status

__all__ = ["check_step_termination", "effective_tolerance"]


def effective_tolerance(tol: float | None, eps: float) -> float:
    """``tol`` raised to ``eps`` (0 when disabled), the smallest testable value."""
    return 0.0 if tol is None else max(tol, eps)


def check_step_termination(
    actual_reduction: float, cost: float, step_norm: float, x_norm: float, ratio: float, ftol: float, xtol: float
) -> Status | None:
    """The ftol/xtol tests after a trial step; ``None`` when neither holds."""
    ftol_satisfied = ftol > 0 and actual_reduction < ftol * cost and ratio > 0.25
    xtol_satisfied = step_norm < xtol * (xtol + x_norm)
    if ftol_satisfied and xtol_satisfied:
        return Status.FTOL_XTOL
    if ftol_satisfied:
        return Status.FTOL
    if xtol_satisfied:
        return Status.XTOL
    return None
