"""Moré-Garbow-Hillstrom problems of variable dimension (#20 to #35), spelled as users spell them.

The fixed-dimension problems and the table of starts are in
`trustls.problems.styled.mgh`. Each function reads n from ``x.shape``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "broyden_banded", "broyden_tridiagonal", "brown_almost_linear", "chebyquad_trig", "discrete_boundary_value",
    "discrete_integral_equation", "extended_powell_singular", "extended_rosenbrock", "linear_full_rank",
    "linear_rank_1", "penalty_1", "penalty_2", "trigonometric", "variably_dimensioned", "watson",
]  # fmt: skip


def watson(x: Tensor) -> Tensor:
    """#20, n = 9 (the registry's is n = 6), a loop over the residuals with polynomial sums."""
    n = x.shape[0]
    j = torch.arange(n, dtype=x.dtype, device=x.device)
    out = []
    for i in range(1, 30):
        powers = (i / 29) ** j  # t^0, ..., t^(n-1)
        s1 = (j[1:] * x[1:] * powers[:-1]).sum()
        s2 = (x * powers).sum()
        out.append(s1 - s2**2 - 1)
    out.append(x[0])
    out.append(x[1] - x[0] ** 2 - 1)
    return torch.stack(out)


def extended_rosenbrock(x: Tensor) -> Tensor:
    """#21, a loop with a parity branch."""
    out = []
    for i in range(x.shape[0]):
        out.append(10 * (x[i + 1] - x[i] ** 2) if i % 2 == 0 else 1 - x[i - 1])
    return torch.stack(out)


def extended_powell_singular(x: Tensor) -> Tensor:
    """#22, the four blocks through an index tensor."""
    idx = torch.arange(0, x.shape[0], 4, device=x.device)
    a, b, c, d = (x.index_select(0, idx + k) for k in range(4))
    return torch.stack([a + 10 * b, 5**0.5 * (c - d), (b - 2 * c) ** 2, 10**0.5 * (a - d) ** 2], dim=1).flatten()


def penalty_1(x: Tensor) -> Tensor:
    """#23, n = 4."""
    return torch.stack([1e-5**0.5 * (xi - 1) for xi in x] + [(x**2).sum() - 0.25])


def penalty_2(x: Tensor) -> Tensor:
    """#24, n = 4."""
    n, a = x.shape[0], 1e-5**0.5
    out = [x[0] - 0.2]
    for i in range(2, n + 1):
        y = math.exp(i / 10) + math.exp((i - 1) / 10)
        out.append(a * (torch.exp(x[i - 1] / 10) + torch.exp(x[i - 2] / 10) - y))
    for i in range(n + 1, 2 * n):
        out.append(a * (torch.exp(x[i - n] / 10) - math.exp(-1 / 10)))
    out.append(sum((n - j + 1) * x[j - 1] ** 2 for j in range(1, n + 1)) - 1)
    return torch.stack(out)


def variably_dimensioned(x: Tensor) -> Tensor:
    """#25, n = 6."""
    s = sum(j * (x[j - 1] - 1) for j in range(1, x.shape[0] + 1))
    return torch.cat([x - 1, torch.stack([s, s**2])])


def trigonometric(x: Tensor) -> Tensor:
    """#26, n = 5."""
    n = x.shape[0]
    total = torch.cos(x).sum()
    return torch.stack([n - total + i * (1 - torch.cos(x[i - 1])) - torch.sin(x[i - 1]) for i in range(1, n + 1)])


def brown_almost_linear(x: Tensor) -> Tensor:
    """#27, n = 5, with torch.prod as users write it."""
    n = x.shape[0]
    return torch.cat([x[:-1] + x.sum() - (n + 1), (torch.prod(x) - 1).reshape(1)])


def discrete_boundary_value(x: Tensor) -> Tensor:
    """#28, n = 8, the boundary values as Python branches."""
    n = x.shape[0]
    h = 1 / (n + 1)
    out = []
    for i in range(n):
        left = x[i - 1] if i > 0 else 0.0
        right = x[i + 1] if i < n - 1 else 0.0
        out.append(2 * x[i] - left - right + h**2 * (x[i] + (i + 1) * h + 1) ** 3 / 2)
    return torch.stack(out)


def discrete_integral_equation(x: Tensor) -> Tensor:
    """#29, n = 6, a double loop."""
    n = x.shape[0]
    h = 1 / (n + 1)
    out = []
    for i in range(1, n + 1):
        ti = i * h
        lower = sum(j * h * (x[j - 1] + j * h + 1) ** 3 for j in range(1, i + 1))
        upper = sum((1 - j * h) * (x[j - 1] + j * h + 1) ** 3 for j in range(i + 1, n + 1))
        out.append(x[i - 1] + h * ((1 - ti) * lower + ti * upper) / 2)
    return torch.stack(out)


def broyden_tridiagonal(x: Tensor) -> Tensor:
    """#30, n = 8."""
    n = x.shape[0]
    out = []
    for i in range(n):
        r = (3 - 2 * x[i]) * x[i] + 1
        if i > 0:
            r = r - x[i - 1]
        if i < n - 1:
            r = r - 2 * x[i + 1]
        out.append(r)
    return torch.stack(out)


def broyden_banded(x: Tensor) -> Tensor:
    """#31, n = 8."""
    n = x.shape[0]
    out = []
    for i in range(n):
        band = [j for j in range(max(0, i - 5), min(n, i + 2)) if j != i]
        xj = x[band]
        out.append(x[i] * (2 + 5 * x[i] ** 2) + 1 - (xj * (1 + xj)).sum())
    return torch.stack(out)


def linear_full_rank(x: Tensor) -> Tensor:
    """#32, n = 4, m = 8."""
    m, n = 8, x.shape[0]
    s = x.sum()
    return torch.stack([(x[i] if i < n else 0.0) - 2 * s / m - 1 for i in range(m)])


def linear_rank_1(x: Tensor) -> Tensor:
    """#33, n = 4, m = 8."""
    s = sum(j * x[j - 1] for j in range(1, x.shape[0] + 1))
    return torch.stack([i * s - 1 for i in range(1, 9)])


def chebyquad_trig(x: Tensor) -> Tensor:
    """#35, n = m = 8, Chebyshev polynomials as cos(i arccos y)."""
    y = 2 * x - 1
    out = []
    for i in range(1, x.shape[0] + 1):
        exact = -1 / (i * i - 1) if i % 2 == 0 else 0.0
        out.append(torch.cos(i * torch.acos(y)).mean() - exact)
    return torch.stack(out)
