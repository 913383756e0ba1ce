"""The outcome of a solve: `Status` and `Result`."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from torch import Tensor

__all__ = ["Result", "Status"]


class Status(enum.Enum):
    """Why a solve stopped. Each member carries scipy's code and a message.

    Codes follow ``scipy.optimize.least_squares``: positive means success,
    0 means the evaluation budget ran out, negative codes are trustls' own.
    """

    MAX_NFEV = (0, "The maximum number of function evaluations is exceeded.")
    GTOL = (1, "`gtol` termination condition is satisfied.")
    FTOL = (2, "`ftol` termination condition is satisfied.")
    XTOL = (3, "`xtol` termination condition is satisfied.")
    FTOL_XTOL = (4, "Both `ftol` and `xtol` termination conditions are satisfied.")
    NOISE_FLOOR = (5, "The cost changes less than its rounding error: no further decrease is measurable.")
    CALLBACK = (-2, "Stopped by the callback.")
    RADIUS_COLLAPSED = (
        -3,
        "The trust region shrank below the floating-point resolution of x without an acceptable step.",
    )

    def __init__(self, code: int, message: str):
        self.code = code
        self.message = message

    @property
    def success(self) -> bool:
        """True when a convergence test (gtol, ftol or xtol) stopped the solve."""
        return self.code > 0


@dataclass(frozen=True)
class Result:
    """The result of `TrustRegion.solve`, with scipy's names where meanings match.

    Attributes:
        x: the solution (same dtype and device as ``x0``).
        cost: ½‖r(x)‖².
        fun: the residual vector r(x).
        grad: the gradient Jᵀr at x.
        optimality: ‖grad‖∞ (the first-order optimality measure).
        nfev: residual evaluations (the initial one and one per trial step).
        njev: linearizations (Jacobian evaluations in scipy's terms).
        nit: outer iterations.
        status: the `Status`; ``message`` and ``success`` derive from it.
        radius: the final trust-region radius (in scaled variables).
        inner_iterations: total subproblem iterations (CG or secular).
        products: total curvature-operator products.
    """

    x: Tensor
    cost: float
    fun: Tensor
    grad: Tensor
    optimality: float
    nfev: int
    njev: int
    nit: int
    status: Status
    radius: float
    inner_iterations: int
    products: int

    @property
    def message(self) -> str:
        return self.status.message

    @property
    def success(self) -> bool:
        return self.status.success

    def __repr__(self) -> str:
        return (
            f"Result(status={self.status.name}, cost={self.cost:.6g}, optimality={self.optimality:.3g}, "
            f"nfev={self.nfev}, njev={self.njev}, nit={self.nit}, x={self.x})"
        )
