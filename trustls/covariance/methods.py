"""How a covariance is computed: `DenseSVD` and `MatrixFreeCG`, and the SVD itself.

`DenseSVD`. From the thin SVD J = U S Vᵀ,

    (JᵀJ)⁻¹ = V S⁻² Vᵀ = F Fᵀ,   F = V S⁻¹,

computed as that product, so the result is symmetric positive semidefinite by
construction; the diagonal alone is Σ_k F_ik², O(n·rank). JᵀJ is never formed: it
would square the condition number. Singular values s_i ≤ rcond·s_1 are dropped (the
Moore-Penrose pseudo-inverse), with rcond = eps·max(m, n) by default: the cut-off of
``numpy.linalg.matrix_rank`` (Press et al. 1992, §2.6) and of scipy's ``curve_fit``
(methods "trf" and "dogbox"). A rank-deficient J is reported with a
`CovarianceWarning`: the pseudo-inverse gives the directions of J's null space zero
variance, whereas the data leave them undetermined (scipy's "lm" returns inf there).
With the default rcond, a J that this cut-off calls rank deficient but whose columns,
scaled to unit norm, have full rank (van der Sluis 1969: a parameter in units 10⁵
times another's, which float32 cannot resolve against s_max) is inverted exactly
from the SVD of the scaled J instead: (JᵀJ)⁻¹ = D⁻¹(J₁ᵀJ₁)⁻¹D⁻¹ with J = J₁D.

`MatrixFreeCG`. Columns of (JᵀJ)⁻¹ by Jacobi-preconditioned CG with an estimate of
the error of each variance (`trustls.covariance.conjugate_gradient`).
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from trustls.operators.base import LinearOperator
from trustls.operators.dense import DenseOperator

__all__ = [
    "DENSE_ENTRIES_LIMIT",
    "CovarianceWarning",
    "DenseSVD",
    "MatrixFreeCG",
    "Method",
    "cannot_estimate",
    "dense_matrix",
    "resolve_method",
    "svd_factor",
]


class CovarianceWarning(UserWarning):
    """The covariance could not be estimated, or only in part (scipy's ``OptimizeWarning``)."""


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)  # numpy scalars too


@dataclass(frozen=True)
class DenseSVD:
    """The exact covariance from one SVD of J; a `LinearOperator` J is densified (n products).

    Args:
        rcond: singular values ``s_i <= rcond * s_max`` are dropped; ``None`` means
            ``eps * max(m, n)`` in J's dtype (numpy's ``matrix_rank``, scipy's ``curve_fit``),
            except that a J of full rank with unit columns is then inverted exactly
            (module docstring).

    Examples:
        >>> DenseSVD(rcond=1e-10)
        DenseSVD(rcond=1e-10)
    """

    rcond: float | None = None

    def __post_init__(self):
        if self.rcond is not None and not (_is_number(self.rcond) and 0 <= self.rcond < math.inf):
            raise ValueError(f"rcond must be a finite non-negative number or None, got {self.rcond!r}")


@dataclass(frozen=True)
class MatrixFreeCG:
    """Covariance columns by CG on JᵀJ, two products with J per iteration.

    Args:
        rtol: a column stops when the estimated relative error of its diagonal
            entry (the variance) is at most ``rtol``; ``None`` means ``eps**0.75``
            in J's dtype (1.8e-12 in float64, 6.4e-6 in float32), so standard errors
            carry about half that relative error. Off-diagonal entries are accurate
            to about ``sqrt(rtol)`` on the correlation scale.
        max_iter: CG iterations per column; ``None`` means ``2 * n + 10``.
        scale: the diagonal preconditioner T: ``"jac"`` (inverse column norms of J:
            free for stored matrices, n products for n ≤ 32, 32 otherwise), a
            positive 1-D tensor of length n (the solver's ``x_scale``, say), or ``None``.

    Examples:
        >>> MatrixFreeCG(rtol=1e-10).max_iter is None
        True
    """

    rtol: float | None = None
    max_iter: int | None = None
    scale: str | Tensor | None = "jac"

    def __post_init__(self):
        if self.rtol is not None and not (_is_number(self.rtol) and 0 < self.rtol < 1):
            raise ValueError(f"rtol must be a number in (0, 1) or None, got {self.rtol!r}")
        if self.max_iter is not None and (
            isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1
        ):
            raise ValueError(f"max_iter must be a positive int or None, got {self.max_iter!r}")
        if isinstance(self.scale, Tensor):
            if self.scale.ndim != 1 or not self.scale.is_floating_point():
                raise ValueError(
                    f"scale must be a 1-D floating tensor when a tensor, got shape {tuple(self.scale.shape)} "
                    f"and dtype {self.scale.dtype}"
                )
            if not bool((torch.isfinite(self.scale) & (self.scale > 0)).all()):
                raise ValueError("scale must have finite positive entries when a tensor")
        elif self.scale is not None and not (isinstance(self.scale, str) and self.scale == "jac"):
            raise ValueError(f"scale must be 'jac', a 1-D positive tensor or None, got {self.scale!r}")


Method = DenseSVD | MatrixFreeCG
_SHORTCUTS = {"svd": DenseSVD, "cg": MatrixFreeCG}
# An operator J with at most this many entries (128 MiB in float64) is densified by
# default: n products build it, where CG needs about 2·k per requested column (k
# iterations, 30 on a well-preconditioned n = 300), and the SVD is exact and finds
# the rank. Beyond it, memory decides for CG.
DENSE_ENTRIES_LIMIT = 2**24


def resolve_method(method: object, jacobian: Tensor | LinearOperator) -> Method:
    """A `DenseSVD` or `MatrixFreeCG` from ``method``.

    ``None`` means `DenseSVD` for a dense J (a tensor or `DenseOperator`) and for an
    operator of at most ``DENSE_ENTRIES_LIMIT`` entries, `MatrixFreeCG` beyond.

    Examples:
        >>> import torch
        >>> resolve_method(None, torch.ones(3, 2)), resolve_method("cg", torch.ones(3, 2))
        (DenseSVD(rcond=None), MatrixFreeCG(rtol=None, max_iter=None, scale='jac'))
    """
    if method is None:
        m, n = jacobian.shape
        dense = isinstance(jacobian, (Tensor, DenseOperator)) or m * n <= DENSE_ENTRIES_LIMIT
        return DenseSVD() if dense else MatrixFreeCG()
    if isinstance(method, str):
        if method not in _SHORTCUTS:
            raise ValueError(
                f"method must be one of {sorted(_SHORTCUTS)}, a DenseSVD or a MatrixFreeCG, got {method!r}"
            )
        return _SHORTCUTS[method]()
    if not isinstance(method, (DenseSVD, MatrixFreeCG)):
        raise TypeError(f"method must be 'svd', 'cg', a DenseSVD, a MatrixFreeCG or None, got {type(method).__name__}")
    return method


def cannot_estimate(reason: str, stacklevel: int) -> None:
    """Warn as scipy's ``curve_fit`` does when it returns an inf covariance."""
    warnings.warn(
        f"Covariance of the parameters could not be estimated: {reason}; returning inf",
        CovarianceWarning,
        stacklevel=stacklevel + 1,
    )


def dense_matrix(jacobian: Tensor | LinearOperator) -> tuple[Tensor, int]:
    """J as a dense tensor, and the products spent building it (n for an operator)."""
    if isinstance(jacobian, Tensor):
        return jacobian, 0
    if isinstance(jacobian, DenseOperator):
        return jacobian.matrix.detach(), 0
    return jacobian.to_dense().detach(), jacobian.shape[1]


def svd_factor(J: Tensor, rcond: float | None, stacklevel: int) -> Tensor | None:
    """F = V S⁻¹ over the kept singular values, so that (JᵀJ)⁺ = F Fᵀ; ``None`` when J is not finite.

    Examples:
        >>> import torch
        >>> F = svd_factor(torch.tensor([[2.0, 0.0], [0.0, 4.0]]), None, stacklevel=1)
        >>> F @ F.T
        tensor([[0.2500, 0.0000],
                [0.0000, 0.0625]])
    """
    if not bool(torch.isfinite(J).all()):
        cannot_estimate("the Jacobian has NaN or inf entries", stacklevel + 1)
        return None
    m, n = J.shape
    _, s, Vh = torch.linalg.svd(J, full_matrices=False)
    relative = torch.finfo(J.dtype).eps * max(m, n) if rcond is None else rcond
    cutoff = relative * s[0]
    keep = s > cutoff
    rank = int(keep.sum())
    if rank < n and rcond is None:
        # Small by J's units only? With unit columns (J = J₁D, D the column norms) the rank is the
        # variables' own (van der Sluis 1969): full there, (JᵀJ)⁻¹ = D⁻¹(J₁ᵀJ₁)⁻¹D⁻¹ exactly, and float32
        # fits whose parameters differ in units by 10⁵ no longer lose them to the cutoff. An explicit
        # rcond keeps scipy's cutoff relative to J's own s_max.
        norms = torch.linalg.vector_norm(J, dim=0)
        if bool((norms > 0).all()):
            _, s1, Vh1 = torch.linalg.svd(J / norms, full_matrices=False)
            if s1.numel() == n and bool((s1 > relative * s1[0]).all()):
                return Vh1.T / s1 / norms[:, None]
    if rank < n:
        warnings.warn(
            f"The Jacobian has rank {rank} < n = {n} (singular values <= {float(cutoff):.3g} = rcond·s_max "
            "dropped): the covariance is the pseudo-inverse, as in scipy's curve_fit with method 'trf'. "
            "Parameter combinations in the null space of J are not determined by the data: their "
            "variance is unbounded, not the zero that the pseudo-inverse gives them",
            CovarianceWarning,
            stacklevel=stacklevel + 1,
        )
    return Vh[keep].T / s[keep]
