"""`covariance`, `standard_errors` and `covariance_entries`.

The math is in `trustls.covariance`, the checks of their arguments in
`trustls.covariance.inputs`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from trustls.covariance.conjugate_gradient import inverse_columns, jacobi_scale
from trustls.covariance.inputs import checked_inputs, column_indices
from trustls.covariance.methods import (
    CovarianceWarning,
    DenseSVD,
    MatrixFreeCG,
    Method,
    cannot_estimate,
    dense_matrix,
    svd_factor,
)
from trustls.operators.base import LinearOperator
from trustls.operators.dense import DenseOperator

__all__ = [
    "CovarianceEntries",
    "covariance",
    "covariance_entries",
    "covariance_matrix",
    "standard_error_vector",
    "standard_errors",
]

# Columns named in the warning about CG columns that did not converge.
_SHOWN_COLUMNS = 5


@dataclass(frozen=True)
class CovarianceEntries:
    """Requested columns of the covariance, and how they were computed.

    Attributes:
        indices: the requested columns j, int64, shape ``(k,)``.
        columns: ``columns[:, i]`` is column ``indices[i]`` of the covariance, ``(n, k)``.
        method: the resolved `DenseSVD` or `MatrixFreeCG`.
        products: products with J or Jᵀ spent (densifying an operator costs n).
        converged: per column, whether it reached the method's accuracy (False
            where the covariance could not be estimated and is inf).
        iterations: CG iterations per column (``None`` for `DenseSVD`).
        error_estimates: CG's estimated relative error of each variance (``None`` for `DenseSVD`).
        residual_norms: ‖b − Ay‖/‖b‖ of each preconditioned CG solve (``None`` for `DenseSVD`).
    """

    indices: Tensor
    columns: Tensor
    method: Method
    products: int
    converged: Tensor
    iterations: Tensor | None = None
    error_estimates: Tensor | None = None
    residual_norms: Tensor | None = None

    @property
    def diagonal(self) -> Tensor:
        """The variances of the requested parameters, shape ``(k,)``."""
        return self.columns[self.indices, torch.arange(self.indices.shape[0], device=self.columns.device)]


# -- computation --------------------------------------------------------------------


def _infinite(jacobian: Tensor | LinearOperator, indices: Tensor, method: Method) -> CovarianceEntries:
    n, k = jacobian.shape[1], indices.shape[0]
    columns = torch.full((n, k), torch.inf, dtype=jacobian.dtype, device=jacobian.device)
    return CovarianceEntries(indices, columns, method, 0, torch.zeros(k, dtype=torch.bool, device=jacobian.device))


def _svd_entries(
    jacobian: Tensor | LinearOperator, indices: Tensor, factor: float, method: DenseSVD, stacklevel: int
) -> CovarianceEntries:
    J, products = dense_matrix(jacobian)
    F = svd_factor(J, method.rcond, stacklevel + 1)
    if F is None:
        return _infinite(jacobian, indices, method)
    converged = torch.ones(indices.shape[0], dtype=torch.bool, device=J.device)
    return CovarianceEntries(indices, factor * (F @ F[indices].T), method, products, converged)


def _cg_entries(
    jacobian: Tensor | LinearOperator, indices: Tensor, factor: float, method: MatrixFreeCG, stacklevel: int
) -> CovarianceEntries:
    operator = DenseOperator(jacobian) if isinstance(jacobian, Tensor) else jacobian
    n = operator.shape[1]
    if isinstance(method.scale, Tensor):
        if method.scale.shape != (n,) or method.scale.device != operator.device:
            raise ValueError(
                f"scale must have shape ({n},) on the Jacobian's device {operator.device}, "
                f"got shape {tuple(method.scale.shape)} on {method.scale.device}"
            )
        scale, products = method.scale.to(operator.dtype), 0
    elif method.scale == "jac":
        scale, products = jacobi_scale(operator)
    else:
        scale, products = torch.ones(n, dtype=operator.dtype, device=operator.device), 0
    solved = inverse_columns(
        operator,
        indices,
        scale,
        rtol=torch.finfo(operator.dtype).eps ** 0.75 if method.rtol is None else method.rtol,
        max_iter=2 * n + 10 if method.max_iter is None else method.max_iter,
    )
    if not bool(torch.isfinite(solved.columns).all()):
        cannot_estimate("the Jacobian products gave NaN or inf", stacklevel + 1)
        return _infinite(jacobian, indices, method)
    failed = (~solved.converged).nonzero().flatten().tolist()
    if failed:
        shown = ", ".join(
            f"{int(indices[i])} (estimated relative error {float(solved.error_estimates[i]):.2g} "
            f"after {int(solved.iterations[i])} iterations)"
            for i in failed[:_SHOWN_COLUMNS]
        )
        warnings.warn(
            f"CG did not reach rtol for {len(failed)} of {indices.shape[0]} covariance columns: column {shown}"
            f"{', ...' if len(failed) > _SHOWN_COLUMNS else ''}. Their variances are lower bounds (CG's "
            "estimate increases towards the variance). A rank-deficient J (a parameter combination that "
            "the data do not determine) makes JᵀJ singular and CG cannot converge: method='svd' finds "
            "the rank. Otherwise raise max_iter",
            CovarianceWarning,
            stacklevel=stacklevel + 1,
        )
    return CovarianceEntries(
        indices=indices,
        columns=factor * solved.columns,
        method=method,
        products=products + solved.products,
        converged=solved.converged,
        iterations=solved.iterations,
        error_estimates=solved.error_estimates,
        residual_norms=solved.residual_norms,
    )


def _entries(jacobian, indices, factor, reason, method, stacklevel: int) -> CovarianceEntries:
    if reason is not None:
        cannot_estimate(reason, stacklevel + 1)
        return _infinite(jacobian, indices, method)
    compute = _svd_entries if isinstance(method, DenseSVD) else _cg_entries
    return compute(jacobian, indices, factor, method, stacklevel + 1)


# -- public functions -----------------------------------------------------------------


def covariance_entries(
    jacobian: Tensor | LinearOperator,
    columns: Sequence[int] | Tensor | None = None,
    cost: float | Tensor | None = None,
    *,
    absolute_sigma: bool = False,
    method: str | Method | None = None,
) -> CovarianceEntries:
    """Columns of the parameter covariance ``s² (JᵀJ)⁻¹``, and how they were computed.

    Args:
        jacobian: J at the solution, ``(m, n)``: a dense tensor or a `LinearOperator`.
        columns: the columns j to compute (``None``: all n).
        cost: ½‖r‖² at the solution (``Result.cost``); required unless ``absolute_sigma``.
        absolute_sigma: the residuals were divided by known standard deviations:
            return ``(JᵀJ)⁻¹`` unscaled (``cost`` is then not used).
        method: ``"svd"``, ``"cg"``, a `DenseSVD` or a `MatrixFreeCG`; ``None``
            means SVD for a dense J (a tensor or `DenseOperator`) and for an operator
            of at most 2²⁴ entries (densified by n products), CG beyond.

    Returns:
        A `CovarianceEntries`; ``.diagonal`` holds the variances of ``columns``.

    Warns:
        CovarianceWarning: the covariance could not be estimated (inf entries),
            J is rank-deficient (SVD), or CG did not converge for some column.

    Examples:
        >>> import torch
        >>> J = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
        >>> entries = covariance_entries(J, [1], absolute_sigma=True, method="cg")
        >>> entries.diagonal, entries.converged
        (tensor([0.2500], dtype=torch.float64), tensor([True]))
    """
    jacobian, method, factor, reason = checked_inputs(jacobian, cost, absolute_sigma, method)
    indices = column_indices(columns, jacobian.shape[1], jacobian.device)
    return _entries(jacobian, indices, factor, reason, method, stacklevel=2)


def covariance(
    jacobian: Tensor | LinearOperator,
    cost: float | Tensor | None = None,
    *,
    absolute_sigma: bool = False,
    method: str | Method | None = None,
) -> Tensor:
    """The parameter covariance ``s² (JᵀJ)⁻¹``, s² = 2·cost/(m − n), shape ``(n, n)``.

    scipy's ``curve_fit`` ``pcov`` for the same J and cost. With `MatrixFreeCG`
    it costs n solves and is symmetrized, ½(C + Cᵀ).

    Args:
        jacobian: J at the solution, ``(m, n)``: a dense tensor or a `LinearOperator`.
        cost: ½‖r‖² at the solution (``Result.cost``); required unless ``absolute_sigma``.
        absolute_sigma: return ``(JᵀJ)⁻¹`` unscaled (residuals already divided by
            known standard deviations).
        method: as in `covariance_entries`.

    Warns:
        CovarianceWarning: as in `covariance_entries`.

    Examples:
        >>> import torch
        >>> J = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]], dtype=torch.float64)
        >>> covariance(J, cost=0.5)  # s² = 2·0.5/(3 − 2) = 1
        tensor([[0.5000, 0.0000],
                [0.0000, 0.2500]], dtype=torch.float64)
    """
    return covariance_matrix(jacobian, cost, absolute_sigma, method, stacklevel=2)


def covariance_matrix(
    jacobian: object, cost: object, absolute_sigma: object, method: object, *, stacklevel: int
) -> Tensor:
    """`covariance` for wrappers: warnings carry the ``stacklevel`` that the caller would give ``warnings.warn``.

    `trustls.curve_fit` passes 2, so that a warning points at the line calling it.
    """
    jacobian, method, factor, reason = checked_inputs(jacobian, cost, absolute_sigma, method)
    n = jacobian.shape[1]
    if reason is None and isinstance(method, DenseSVD):
        F = svd_factor(dense_matrix(jacobian)[0], method.rcond, stacklevel + 1)
        if F is None:
            return torch.full((n, n), torch.inf, dtype=jacobian.dtype, device=jacobian.device)
        return factor * (F @ F.T)
    indices = torch.arange(n, device=jacobian.device)
    C = _entries(jacobian, indices, factor, reason, method, stacklevel + 1).columns
    return 0.5 * (C + C.T)


def standard_errors(
    jacobian: Tensor | LinearOperator,
    cost: float | Tensor | None = None,
    *,
    absolute_sigma: bool = False,
    method: str | Method | None = None,
) -> Tensor:
    """The standard errors of the parameters, √diag(s² (JᵀJ)⁻¹), shape ``(n,)``.

    With `DenseSVD` the diagonal costs O(n·rank) after the SVD, without the
    n × n matrix; with `MatrixFreeCG`, one CG solve per parameter.

    Args:
        jacobian: J at the solution, ``(m, n)``: a dense tensor or a `LinearOperator`.
        cost: ½‖r‖² at the solution (s² = 2·cost/(m − n) unless ``absolute_sigma``).
        absolute_sigma: as in `covariance_entries`.
        method: as in `covariance_entries`.

    Warns:
        CovarianceWarning: as in `covariance_entries`.

    Examples:
        >>> import torch
        >>> J = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]], dtype=torch.float64)
        >>> standard_errors(J, cost=0.5)
        tensor([0.7071, 0.5000], dtype=torch.float64)
    """
    return standard_error_vector(jacobian, cost, absolute_sigma, method, stacklevel=2)


def standard_error_vector(
    jacobian: object, cost: object, absolute_sigma: object, method: object, *, stacklevel: int
) -> Tensor:
    """`standard_errors` for wrappers (``Result`` methods, say), with ``stacklevel`` as in `covariance_matrix`."""
    jacobian, method, factor, reason = checked_inputs(jacobian, cost, absolute_sigma, method)
    n = jacobian.shape[1]
    if reason is None and isinstance(method, DenseSVD):
        F = svd_factor(dense_matrix(jacobian)[0], method.rcond, stacklevel + 1)
        if F is None:
            return torch.full((n,), torch.inf, dtype=jacobian.dtype, device=jacobian.device)
        return torch.sqrt(factor * (F * F).sum(1))
    indices = torch.arange(n, device=jacobian.device)
    return torch.sqrt(_entries(jacobian, indices, factor, reason, method, stacklevel + 1).diagonal)
