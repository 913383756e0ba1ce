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

Reference:
    J. J. Moré, B. S. Garbow, K. E. Hillstrom, "Testing unconstrained optimization
    software", ACM Transactions on Mathematical Software 7(1), 1981, pp. 17-41.
"""

from __future__ import annotations

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
            repeated ``(row, col)`` pair.

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


def _rosenbrock_residual(x: Tensor) -> Tensor:
    odd, even = x[0::2], x[1::2]
    return torch.stack([10 * (even - odd**2), 1 - odd], dim=1).reshape(-1)


def _rosenbrock_jacobian(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    half = x.shape[0] // 2
    k = torch.arange(half, device=x.device)
    even_row, odd_row = 2 * k, 2 * k + 1
    # Row 2k: d/dx_{2k} = -20 x_{2k}, d/dx_{2k+1} = 10.  Row 2k+1: d/dx_{2k} = -1.
    rows = torch.cat([even_row, even_row, odd_row])
    cols = torch.cat([2 * k, 2 * k + 1, 2 * k])
    values = torch.cat(
        [-20 * x[0::2], torch.full((half,), 10.0, dtype=x.dtype, device=x.device),
         torch.full((half,), -1.0, dtype=x.dtype, device=x.device)]
    )  # fmt: skip
    return rows, cols, values


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
    return StructuredProblem(f"extended_rosenbrock_{n}", n, n, x0, _rosenbrock_residual, _rosenbrock_jacobian)


def _broyden_residual(x: Tensor) -> Tensor:
    zero = torch.zeros(1, dtype=x.dtype, device=x.device)
    left = torch.cat([zero, x[:-1]])  # x_{i-1}, with x_0 = 0
    right = torch.cat([x[1:], zero])  # x_{i+1}, with x_{n+1} = 0
    return (3 - 2 * x) * x - left - 2 * right + 1


def _broyden_jacobian(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    n = x.shape[0]
    i = torch.arange(n, device=x.device)
    below = torch.full((n - 1,), -1.0, dtype=x.dtype, device=x.device)
    above = torch.full((n - 1,), -2.0, dtype=x.dtype, device=x.device)
    rows = torch.cat([i, i[1:], i[:-1]])
    cols = torch.cat([i, i[:-1], i[1:]])
    values = torch.cat([3 - 4 * x, below, above])
    return rows, cols, values


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
    return StructuredProblem(f"broyden_tridiagonal_{n}", n, n, x0, _broyden_residual, _broyden_jacobian)
