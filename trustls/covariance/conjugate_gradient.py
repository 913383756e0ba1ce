"""Columns of (JᵀJ)⁻¹ by conjugate gradients, matrix-free, with error estimates.

The covariance of fitted parameters needs entries of (JᵀJ)⁻¹ (`trustls.covariance`).
For an operator J known only through products, column j is the solution c of
(JᵀJ) c = e_j, and CG (Hestenes & Stiefel 1952) solves it with two products per
iteration, J v and Jᵀu, without forming JᵀJ.

Preconditioning. With a positive diagonal T, (JᵀJ)⁻¹ = T (TJᵀJT)⁻¹ T, so CG runs on
A = (JT)ᵀ(JT) with b = T e_j and returns c = T y. This is Jacobi-preconditioned CG
when T holds the inverse column norms of J (the scale of ``x_scale="jac"``), which
removes the badly scaled columns of curve fits (parameters over many orders of
magnitude) from the condition number.

Stopping and accuracy. The quantity of interest is the variance bᵀA⁻¹b = ‖y*‖²_A.
From y₀ = 0, CG's iterates satisfy (Hestenes & Stiefel 1952, Thm. 6:1;
Strakoš & Tichý 2002)

    ‖y* − y_k‖²_A − ‖y* − y_{k+d}‖²_A = Σ_{i=k}^{k+d−1} α_i ‖r_i‖²,
    bᵀy_k = Σ_{i<k} α_i ‖r_i‖² ↗ bᵀA⁻¹b,

so the last d terms estimate the energy-norm error of y_k (a lower bound for it,
an estimate for y_{k+d} when CG converges, as it does superlinearly here), and the
running sum estimates the variance from below. A column stops when

    Σ_{i=k}^{k+d−1} α_i ‖r_i‖² ≤ rtol · Σ_{i<k+d} α_i ‖r_i‖²,

that is when the estimated relative error of its diagonal entry is below ``rtol``.
Strakoš & Tichý (2002) show the estimate remains valid in finite precision, where
the residual-based test often stagnates above the accuracy that the quadratic form
reaches. The error of an off-diagonal entry bᵢᵀyⱼ is at most
‖A^{-1/2}bᵢ‖‖y*ⱼ − yⱼ‖_A, so on the correlation scale, C_ij / √(C_ii C_jj), it is
at most √rtol. The true relative residual ‖b − Ay‖/‖b‖ of the returned solution is
computed once more at the end (two products per column) and reported.

A singular A (a rank-deficient J, or a zero column) makes b inconsistent when e_j
has a component in the null space: the terms α_i‖r_i‖² then do not decay, the
test never passes and the column is reported as not converged.

References:
    M. R. Hestenes, E. Stiefel, "Methods of conjugate gradients for solving linear
    systems", J. Res. Nat. Bur. Standards 49(6), 1952, pp. 409-436.
    Z. Strakoš, P. Tichý, "On error estimation in the conjugate gradient method and
    why it works in finite precision computations", ETNA 13, 2002, pp. 56-80.
    G. H. Golub, G. Meurant, Matrices, Moments and Quadrature with Applications,
    Princeton University Press, 2010, ch. 12.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from trustls.operators.base import LinearOperator
from trustls.operators.column_norms import diluted_column_norms, exact_column_norms
from trustls.operators.dense import DenseOperator
from trustls.operators.sparse import SparseOperator

__all__ = ["ERROR_DELAY", "InverseColumns", "inverse_columns", "jacobi_scale"]

# d, the number of CG terms behind the error estimate (Strakoš & Tichý 2002 use 4-20;
# convergence here is fast, and a larger d only adds iterations).
ERROR_DELAY = 4
# Probes of the randomized column-norm estimate (as GaussNewtonModel's default).
_NORM_PROBES = 32


@dataclass(frozen=True)
class InverseColumns:
    """Columns ``(JᵀJ)⁻¹ e_j`` for j in ``indices``, with CG's report per column."""

    columns: Tensor  # (n, k)
    converged: Tensor  # (k,) bool
    iterations: Tensor  # (k,) int64
    error_estimates: Tensor  # (k,) estimated relative error of the diagonal entry
    residual_norms: Tensor  # (k,) ‖b − Ay‖ / ‖b‖ of the returned solution
    products: int  # products with J or Jᵀ


def jacobi_scale(jacobian: LinearOperator) -> tuple[Tensor, int]:
    """Inverse column norms of J (1 for a zero column), and the products spent on them.

    Exact for stored matrices (no product) and for n ≤ 32 (n products J e_i);
    otherwise estimated from 32 diluted Rademacher probes Jᵀz, from a fixed
    seed: the estimate of ``x_scale="jac"`` (`trustls.operators.column_norms`),
    exact for banded and block Jacobians, unbiased otherwise (Bekas,
    Kokiopoulou & Saad 2007). A preconditioner needs only the order of
    magnitude of each column, but noise in it spreads the spectrum CG sees.
    """
    n = jacobian.shape[1]
    products = 0
    if isinstance(jacobian, (DenseOperator, SparseOperator)):
        norms = jacobian.column_norms()
    elif n <= _NORM_PROBES:
        norms = exact_column_norms(jacobian)
        products = n
    else:
        generator = torch.Generator(device=jacobian.device).manual_seed(0)
        *_, norms = diluted_column_norms(jacobian, _NORM_PROBES, generator)
        products = _NORM_PROBES
    norms = norms.detach()
    usable = torch.isfinite(norms) & (norms > 0)
    return torch.where(usable, 1 / torch.where(usable, norms, 1), 1), products


def _normal_product(jacobian: LinearOperator, scale: Tensor, P: Tensor) -> Tensor:
    """A P = T Jᵀ J T P for the columns of P (two products per column)."""
    TP = scale[:, None] * P
    if isinstance(jacobian, DenseOperator):
        M = jacobian.matrix
        return scale[:, None] * (M.T @ (M @ TP))
    # Column by column, so that no (m, k) block is ever held.
    return scale[:, None] * torch.stack([jacobian.rmatvec(jacobian.matvec(p)) for p in TP.T], dim=1)


def inverse_columns(
    jacobian: LinearOperator, indices: Tensor, scale: Tensor, *, rtol: float, max_iter: int
) -> InverseColumns:
    """CG on (TJᵀJT) y = T e_j for every j in ``indices`` at once; returns c = T y.

    All columns advance together (one host read per iteration decides which
    stop); a column stops when its estimated relative error is below ``rtol``
    (see the module docstring), when CG breaks down (pᵀAp ≤ 0: A is singular
    along p), or after ``max_iter`` iterations.
    """
    n, k = jacobian.shape[1], indices.shape[0]
    dtype, device = jacobian.dtype, jacobian.device
    columns = torch.arange(k, device=device)
    B = torch.zeros(n, k, dtype=dtype, device=device)
    B[indices, columns] = scale[indices]
    Y = torch.zeros_like(B)
    R = B.clone()
    P = B.clone()
    rr = (R * R).sum(0)
    value = torch.zeros(k, dtype=dtype, device=device)
    recent = torch.zeros(k, ERROR_DELAY, dtype=dtype, device=device)  # the last d terms α‖r‖²
    error = torch.full((k,), torch.inf, dtype=dtype, device=device)
    iterations = torch.zeros(k, dtype=torch.int64, device=device)
    converged = torch.zeros(k, dtype=torch.bool, device=device)
    active = columns
    products = 0
    for _ in range(max_iter):
        if active.numel() == 0:
            break
        Pa = P[:, active]
        APa = _normal_product(jacobian, scale, Pa)
        products += 2 * active.numel()
        pAp = (Pa * APa).sum(0)
        rra = rr[active]
        usable = pAp > 0
        # pAp ≤ 0 is a breakdown (A singular along p): the column stops where it is;
        # a NaN or inf product poisons the column, so that the caller sees it.
        alpha = torch.where(usable, rra / torch.where(usable, pAp, 1), torch.where(torch.isfinite(pAp), 0, torch.nan))
        Y[:, active] += alpha * Pa
        R[:, active] -= alpha * APa
        recent[active] = torch.cat([recent[active, 1:], (alpha * rra)[:, None]], dim=1)
        value[active] += alpha * rra
        iterations[active] += 1
        rr_new = (R[:, active] ** 2).sum(0)
        exact = rr_new == 0
        positive = value[active] > 0
        relative = torch.where(positive, recent[active].sum(1) / torch.where(positive, value[active], 1), torch.inf)
        error[active] = torch.where(exact, 0, relative)
        # An exactly zero residual is an exact solve; otherwise d terms must exist.
        done = exact | ((iterations[active] >= ERROR_DELAY) & (relative <= rtol))
        converged[active] = done & usable
        stop = done | ~usable | ~torch.isfinite(rr_new)
        beta = torch.where(rra > 0, rr_new / torch.where(rra > 0, rra, 1), 0)
        P[:, active] = R[:, active] + beta * Pa
        rr[active] = rr_new
        active = active[~stop]
    true_residual = B - _normal_product(jacobian, scale, Y)
    products += 2 * k
    b_norms = torch.linalg.vector_norm(B, dim=0)
    # The variance bᵀA⁻¹b = bᵀy + yᵀr + rᵀA⁻¹r with r = b − Ay: bᵀy alone errs to first order in the
    # computed r, which rounding leaves well above what the A-norm estimate bounds once CG runs long;
    # bᵀy + yᵀr errs by rᵀA⁻¹r, second order, from the residual taken above (no further product).
    # Only where CG converged: along a singular A, y grows and the computed r is rounding of size
    # eps·‖A‖‖y‖, whose yᵀr has no sign; such a column keeps bᵀy, the lower bound it reports.
    columns = scale[:, None] * Y
    correction = torch.where(converged, (Y * true_residual).sum(0), 0.0)
    columns[indices, torch.arange(k, device=device)] += correction
    return InverseColumns(
        columns=columns,
        converged=converged,
        iterations=iterations,
        error_estimates=error,
        residual_norms=torch.linalg.vector_norm(true_residual, dim=0) / b_norms,
        products=products,
    )
