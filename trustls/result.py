"""The outcome of a solve: `Status`, `Result`, and the per-trial `IterationInfo`.

`Status` is an `enum.IntEnum` whose values are scipy's codes, so that
``result.status == 1`` and ``result.status > 0`` read as they do on a
``scipy.optimize.OptimizeResult``; each member also carries its message.
`Result` and `IterationInfo` are frozen records that also behave as read-only
mappings (``result["x"]``, ``result.keys()``), as scipy's results do.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = ["IterationInfo", "Result", "Status"]


class Status(enum.IntEnum):
    """Why a solve stopped: scipy's code as the value, and a message.

    Codes follow ``scipy.optimize.least_squares``: positive means success, 0
    means the evaluation budget ran out, -2 a callback stop; the other
    negative codes and 5 are trustls' own.

    Examples:
        >>> Status.GTOL == 1, Status.GTOL > 0, Status(2).name
        (True, True, 'FTOL')
    """

    message: str

    def __new__(cls, code: int, message: str) -> Status:
        member = int.__new__(cls, code)
        member._value_ = code
        member.message = message
        return member

    MAX_NFEV = (0, "The maximum number of function evaluations is exceeded.")
    GTOL = (1, "`gtol` termination condition is satisfied.")
    FTOL = (2, "`ftol` termination condition is satisfied.")
    XTOL = (3, "`xtol` termination condition is satisfied.")
    FTOL_XTOL = (4, "Both `ftol` and `xtol` termination conditions are satisfied.")
    NOISE_FLOOR = (5, "The cost changes less than its rounding error: no further decrease is measurable.")
    CALLBACK = (-2, "Stopped because `callback` function raised `StopIteration` or returned `True`")
    RADIUS_COLLAPSED = (
        -3,
        "The trust region shrank below the floating-point resolution of x without an acceptable step.",
    )
    UNFINISHED = (-4, "The solve was not run to a stop: no termination test has held yet.")

    @property
    def code(self) -> int:
        """scipy's integer code (the enum's value)."""
        return int(self)

    @property
    def success(self) -> bool:
        """True when a convergence test (gtol, ftol, xtol or the noise floor) stopped the solve."""
        return self > 0


class _RecordMapping(Mapping):
    """Read-only mapping access to a frozen dataclass's fields, plus its properties ``extra``."""

    _extra: tuple[str, ...] = ()

    def keys(self):  # a list, as a dict's keys print
        return [f.name for f in dataclasses.fields(self)] + list(self._extra)

    def __getitem__(self, key: str) -> Any:
        if not isinstance(key, str) or key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    # Mapping's value equality is wrong for records holding tensors.
    __eq__ = object.__eq__
    __hash__ = object.__hash__


@dataclass(frozen=True, eq=False, repr=False)
class Result(_RecordMapping):
    """The result of `TrustRegion.solve`, with scipy's names where meanings match.

    Also a read-only mapping over its fields and ``message``/``success``
    (``result["x"]``), like scipy's ``OptimizeResult``. `covariance` and
    `standard_errors` give the uncertainty of ``x`` from ``jac`` and ``cost``
    (`trustls.covariance`).

    Attributes:
        x: the solution (same dtype and device as ``x0``).
        cost: the cost at ``x``, ½‖r(x)‖² for least squares (the loss's
            value for other models), a Python float.
        fun: the residual vector r(x) (the model's outputs).
        grad: the gradient of the cost at x.
        optimality: the first-order optimality measure, ‖grad‖∞ (with
            bounds, scipy's ‖v·grad‖∞ of the Coleman-Li scaling v).
        jac: the Jacobian at ``x``, the effective one the model used (for a
            robust or output loss, the loss's factor times J, as scipy's
            "modified Jacobian"): a dense tensor where the solver formed it
            (``"lstsq"``), otherwise a `LinearOperator` (``"cg"``: products
            by automatic differentiation; a `SparseOperator` for a sparse J).
        active_mask: per variable, 0 when ``x`` is not at a bound, -1 at the
            lower and +1 at the upper one (within ``xtol``, as scipy), an
            int64 tensor; all zeros without bounds.
        nfev: calls of the residual function, all of them (trial points and
            those inside Jacobian computations; a call under ``vmap`` counts
            once).
        njev: linearizations (Jacobian evaluations in scipy's terms).
        nit: outer iterations.
        status: the `Status`; ``message`` and ``success`` derive from it.
        radius: the final trust-region radius (in scaled variables).
        inner_iterations: total subproblem iterations (CG or secular).
        products: total curvature-operator products.
        initial_cost: the cost at ``x0``.
    """

    x: Tensor
    cost: float
    fun: Tensor
    grad: Tensor
    optimality: float
    jac: Any
    active_mask: Tensor
    nfev: int
    njev: int
    nit: int
    status: Status
    radius: float
    inner_iterations: int
    products: int
    initial_cost: float

    _extra = ("message", "success")

    @property
    def message(self) -> str:
        return self.status.message

    @property
    def success(self) -> bool:
        return self.status.success

    def covariance(self, *, absolute_sigma: bool = False, method: Any = None) -> Tensor:
        """The covariance of ``x``, s²(JᵀJ)⁻¹ with s² = 2·cost/(m − n), from `jac` and `cost`.

        `trustls.covariance.covariance` of this result: with a robust loss, J is
        the loss-weighted J̃ and the cost the robust one, as scipy's
        ``curve_fit`` takes them. It presumes the residuals are (whitened) data
        minus a model, x an unconstrained estimate; a parameter on a bound is
        not described by it (docs/curve-fitting.md).

        Args:
            absolute_sigma: the residuals were divided by known standard
                deviations: return (JᵀJ)⁻¹ unscaled.
            method: ``"svd"``, ``"cg"``, a `DenseSVD` or a `MatrixFreeCG`;
                ``None`` as `trustls.covariance.covariance_entries` chooses.

        Warns:
            CovarianceWarning: the covariance could not be estimated (inf),
                J is rank-deficient, or CG did not converge for a column.

        Examples:
            >>> import torch
            >>> import trustls
            >>> t = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
            >>> y = torch.tensor([0.1, 0.9, 2.1, 2.9], dtype=torch.float64)
            >>> result = trustls.least_squares(lambda b: b[0] + b[1] * t - y, [0.0, 0.0])
            >>> result.covariance()  # s² = RSS / (m − n) = 0.032 / 2 times (JᵀJ)⁻¹
            tensor([[ 0.0112, -0.0048],
                    [-0.0048,  0.0032]], dtype=torch.float64)
        """
        from trustls.covariance.estimates import (
            covariance_matrix,  # lazy: covariance imports the operators
        )

        return covariance_matrix(self.jac, self.cost, absolute_sigma, method, stacklevel=2)

    def standard_errors(self, *, absolute_sigma: bool = False, method: Any = None) -> Tensor:
        """The standard errors of ``x``, √diag(s²(JᵀJ)⁻¹): `covariance`'s diagonal without the n × n matrix.

        Args and warnings as in `covariance`.

        Examples:
            >>> import torch
            >>> import trustls
            >>> t = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
            >>> y = torch.tensor([0.1, 0.9, 2.1, 2.9], dtype=torch.float64)
            >>> trustls.least_squares(lambda b: b[0] + b[1] * t - y, [0.0, 0.0]).standard_errors()
            tensor([0.1058, 0.0566], dtype=torch.float64)
        """
        from trustls.covariance.estimates import standard_error_vector

        return standard_error_vector(self.jac, self.cost, absolute_sigma, method, stacklevel=2)

    def __repr__(self) -> str:
        return (
            f"Result(status={self.status.name}, cost={self.cost:.6g}, optimality={self.optimality:.3g}, "
            f"nfev={self.nfev}, njev={self.njev}, nit={self.nit}, x={self.x})"
        )


@dataclass(frozen=True, eq=False)
class IterationInfo(_RecordMapping):
    """What happened at one trial step; passed to the callback.

    It is also a read-only mapping and carries scipy's intermediate-result
    fields (``x``, ``fun``, ``cost``, ``nit``, ``nfev``), so a callback
    written for scipy's ``callback(intermediate_result)`` works unchanged.

    Attributes:
        nit: outer iterations so far, the one this trial belongs to included
            (1 during the first: scipy's count, and `Result.nit` after a stop there).
        nfev: calls of the residual function so far, this trial's included.
        x: the current point after the trial (the trial point if accepted).
        fun: the residual at ``x``.
        cost: the cost at ``x``, after the trial.
        previous_cost: the cost at the point the step was taken from.
        trial_cost: the cost at the trial point (inf when it was not finite).
        actual_reduction, predicted_reduction, ratio: the ratio test.
        radius: the radius the step was computed for; next_radius: the update.
        step_norm: the step's length in the trust region's norm.
        accepted: whether the step was taken.
        inner_iterations, products, reason: the subproblem solver's report.
    """

    nit: int
    nfev: int
    x: Tensor
    fun: Tensor
    cost: float
    previous_cost: float
    trial_cost: float
    actual_reduction: float
    predicted_reduction: float
    ratio: float
    radius: float
    next_radius: float
    step_norm: float
    accepted: bool
    inner_iterations: int
    products: int
    reason: str
