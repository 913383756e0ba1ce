"""Large structured least-squares problems written as users write them, with scipy Jacobians.

`benchmarks/large_structured.py` times trustls' matrix-free default on these
beside the two problems of `trustls.problems.structured`. The residuals are in
the styles real code takes (``torch.cat`` of groups, ``torch.stack`` of
expressions, ``F.pad`` in a python loop, views and ``unbind``, data drawn once
from a seeded generator); none is tuned to trustls. Each comes with its exact
sparse Jacobian in scipy's CSR form, from the analytic derivatives, for
``scipy.optimize.least_squares(jac=...)``.

Well scaled (column norms of J within a small factor of each other):

* ``powell_singular`` (Moré, Garbow & Hillstrom 1981, #22, extended): J is
  singular at the solution, so Gauss-Newton converges linearly;
* ``broyden_banded`` (MGH #31, generalized Broyden banded): seven
  bands, the neighbor sums written with ``F.pad`` in a loop;
* ``reaction_diffusion``: the 1-D boundary-value problem
  −ε²u'' + u + u³ = 1 + t on (0, 1), u(0) = u(1) = 0, by central
  differences on n interior points with ε = 10⁻⁴ (boundary layers of width ε);
* ``reaction_diffusion_2d``: −ε²Δu + u + u³ = 1 on the unit square, u = 0 on
  its boundary, ε = 10⁻², by the five-point stencil on an N × N grid
  (n = N², the largest square up to the size asked): a residual's rows
  reach variables N apart.

Badly scaled (column norms spread over 10⁶, as in NIST's StRD):

* ``scaled_broyden``: Broyden tridiagonal in the variables y = x / s with
  s = 10^U(−3, 3), a per-variable unit from a seeded generator;
* ``exponential_fits``: n/2 independent fits of y = b₁(1 − exp(−b₂t)) to
  14 noisy points each (NIST's Misra1a model, b₁ ≈ 240, b₂ ≈ 5·10⁻⁴), from
  Misra1a's first start (500, 10⁻⁴).

All have minimum cost 0 except ``exponential_fits`` (noisy data).

References:
    J. J. Moré, B. S. Garbow and K. E. Hillstrom, "Testing unconstrained
    optimization software", ACM TOMS 7(1), 1981, pp. 17-41.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["UserProblem", "PROBLEMS", "WELL_SCALED", "BADLY_SCALED"]


@dataclass(frozen=True, eq=False)
class UserProblem:
    """A residual in user style, its start, and its exact Jacobian for scipy (CSR, from numpy x)."""

    name: str
    n: int
    x0: Tensor
    residual: Callable[[Tensor], Tensor]
    jacobian: Callable[[np.ndarray], scipy.sparse.csr_matrix]


def _csr(rows, cols, values, shape) -> scipy.sparse.csr_matrix:
    return scipy.sparse.csr_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=shape
    )


def powell_singular(n: int) -> UserProblem:
    """Extended Powell singular, n a multiple of 4: four expressions per group, stacked."""

    def residual(x):
        x1, x2, x3, x4 = x.view(-1, 4).unbind(1)
        return torch.stack(
            [x1 + 10 * x2, math.sqrt(5) * (x3 - x4), (x2 - 2 * x3) ** 2, math.sqrt(10) * (x1 - x4) ** 2], dim=1
        ).reshape(-1)

    def jacobian(x):
        g = np.arange(n // 4)
        c1, c2, c3, c4 = 4 * g, 4 * g + 1, 4 * g + 2, 4 * g + 3
        one = np.ones(n // 4)
        u, v = 2 * (x[c2] - 2 * x[c3]), 2 * math.sqrt(10) * (x[c1] - x[c4])
        rows = [c1, c1, c2, c2, c3, c3, c4, c4]
        cols = [c1, c2, c3, c4, c2, c3, c1, c4]
        values = [one, 10 * one, math.sqrt(5) * one, -math.sqrt(5) * one, u, -2 * u, v, -v]
        return _csr(rows, cols, values, (n, n))

    x0 = torch.tensor([3.0, -1.0, 0.0, 1.0], dtype=torch.float64).repeat(n // 4)
    return UserProblem(f"powell_singular_{n}", n, x0, residual, jacobian)


def broyden_banded(n: int) -> UserProblem:
    """Generalized Broyden banded: neighbors i−5 … i+1, summed with F.pad in a loop."""

    def residual(x):
        y = x * (1 + x)
        neighbors = F.pad(y[1:], (0, 1))  # j = i + 1
        for lag in range(1, 6):  # j = i − lag
            neighbors = neighbors + F.pad(y[:-lag], (lag, 0))
        return x * (2 + 5 * x**2) + 1 - neighbors

    def jacobian(x):
        i = np.arange(n)
        rows, cols, values = [i], [i], [2 + 15 * x**2]
        dy = -(1 + 2 * x)
        for offset in (1, -1, -2, -3, -4, -5):
            r = i[max(0, -offset): n - max(0, offset)]
            rows.append(r), cols.append(r + offset), values.append(dy[r + offset])
        return _csr(rows, cols, values, (n, n))

    x0 = torch.full((n,), -1.0, dtype=torch.float64)
    return UserProblem(f"broyden_banded_{n}", n, x0, residual, jacobian)


def reaction_diffusion(n: int, epsilon: float = 1e-4) -> UserProblem:
    """−ε²u'' + u + u³ = 1 + t, u(0) = u(1) = 0, central differences on n interior points."""
    h = 1.0 / (n + 1)
    t = torch.linspace(h, 1 - h, n, dtype=torch.float64)
    c = epsilon**2 / h**2

    def residual(u):
        padded = F.pad(u, (1, 1))  # the boundary values
        return c * (2 * u - padded[:-2] - padded[2:]) + u + u**3 - (1 + t)

    def jacobian(u):
        i = np.arange(n)
        rows = [i, i[1:], i[:-1]]
        cols = [i, i[1:] - 1, i[:-1] + 1]
        values = [2 * c + 1 + 3 * u**2, -c * np.ones(n - 1), -c * np.ones(n - 1)]
        return _csr(rows, cols, values, (n, n))

    return UserProblem(f"reaction_diffusion_{n}", n, torch.zeros(n, dtype=torch.float64), residual, jacobian)


def scaled_broyden(n: int, seed: int = 0) -> UserProblem:
    """Broyden tridiagonal in the variables y = x / s, s = 10^U(−3, 3) from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    s = 10.0 ** (6 * torch.rand(n, generator=generator, dtype=torch.float64) - 3)
    s_np = s.numpy()

    def residual(y):
        x = s * y
        left = torch.cat([x.new_zeros(1), x[:-1]])
        right = torch.cat([x[1:], x.new_zeros(1)])
        return (3 - 2 * x) * x - left - 2 * right + 1

    def jacobian(y):
        x = s_np * y
        i = np.arange(n)
        rows = [i, i[1:], i[:-1]]
        cols = [i, i[1:] - 1, i[:-1] + 1]
        values = [(3 - 4 * x) * s_np, -s_np[:-1], -2 * s_np[1:]]
        return _csr(rows, cols, values, (n, n))

    x0 = torch.full((n,), -1.0, dtype=torch.float64) / s
    return UserProblem(f"scaled_broyden_{n}", n, x0, residual, jacobian)


# Misra1a's predictor values (NIST StRD), 14 points.
_MISRA_T = [77.6, 114.9, 141.1, 190.8, 239.9, 289.0, 332.8, 378.4, 434.8, 477.3, 536.8, 593.1, 689.1, 760.0]


def exponential_fits(n: int, seed: int = 0) -> UserProblem:
    """n/2 independent fits of y = b₁(1 − exp(−b₂t)); parameters b₁ ≈ 240 and b₂ ≈ 5·10⁻⁴."""
    fits = n // 2
    generator = torch.Generator().manual_seed(seed)
    t = torch.tensor(_MISRA_T, dtype=torch.float64)
    b1 = 240 * (1 + 0.2 * torch.rand(fits, 1, generator=generator, dtype=torch.float64))
    b2 = 5.5e-4 * (1 + 0.2 * torch.rand(fits, 1, generator=generator, dtype=torch.float64))
    y = b1 * (1 - torch.exp(-b2 * t)) + 0.1 * torch.randn(fits, 14, generator=generator, dtype=torch.float64)
    t_np = t.numpy()

    def residual(b):
        b = b.view(fits, 2)
        return (b[:, :1] * (1 - torch.exp(-b[:, 1:] * t)) - y).reshape(-1)

    def jacobian(b):
        b = b.reshape(fits, 2)
        e = np.exp(-b[:, 1:] * t_np)
        rows = np.arange(fits * 14)
        fit = rows // 14
        return _csr([rows, rows], [2 * fit, 2 * fit + 1],
                    [(1 - e).reshape(-1), (b[:, :1] * t_np * e).reshape(-1)], (fits * 14, n))

    x0 = torch.tensor([500.0, 1e-4], dtype=torch.float64).repeat(fits)
    return UserProblem(f"exponential_fits_{n}", n, x0, residual, jacobian)




def reaction_diffusion_2d(n: int, epsilon: float = 1e-2) -> UserProblem:
    """−ε²Δu + u + u³ = 1 on the unit square, u = 0 on its boundary, on an N × N grid (n = N²)."""
    side = math.isqrt(n)
    h = 1.0 / (side + 1)
    c = epsilon**2 / h**2

    def residual(u):
        grid = F.pad(u.view(side, side), (1, 1, 1, 1))
        laplacian = 4 * grid[1:-1, 1:-1] - grid[:-2, 1:-1] - grid[2:, 1:-1] - grid[1:-1, :-2] - grid[1:-1, 2:]
        return (c * laplacian + grid[1:-1, 1:-1] + grid[1:-1, 1:-1] ** 3 - 1).reshape(-1)

    def jacobian(u):
        size = side * side
        i = np.arange(size)
        row, col = i // side, i % side
        rows, cols, values = [i], [i], [4 * c + 1 + 3 * u**2]
        for shift, keep in ((-side, row > 0), (side, row < side - 1), (-1, col > 0), (1, col < side - 1)):
            rows.append(i[keep]), cols.append(i[keep] + shift), values.append(-c * np.ones(keep.sum()))
        return _csr(rows, cols, values, (size, size))

    return UserProblem(f"reaction_diffusion_2d_{side * side}", side * side,
                       torch.zeros(side * side, dtype=torch.float64), residual, jacobian)


WELL_SCALED = {"powell_singular": powell_singular, "broyden_banded": broyden_banded,
               "reaction_diffusion": reaction_diffusion, "reaction_diffusion_2d": reaction_diffusion_2d}
BADLY_SCALED = {"scaled_broyden": scaled_broyden, "exponential_fits": exponential_fits}
PROBLEMS = {**WELL_SCALED, **BADLY_SCALED}
