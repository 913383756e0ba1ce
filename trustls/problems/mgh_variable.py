"""The Moré-Garbow-Hillstrom problems of variable dimension, #20 to #35: n is read from ``x.shape``.

The table of starting points, dimensions and minima is `trustls.problems.mgh`'s.
#32, #33 and #35 also take the number of residuals ``m`` (the table binds it
with `functools.partial`).

Reference:
    J. J. Moré, B. S. Garbow, K. E. Hillstrom, "Testing unconstrained optimization
    software", ACM Transactions on Mathematical Software 7(1), 1981, pp. 17-41.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from trustls.problems.mgh_fixed import _index

__all__ = [
    "brown_almost_linear",
    "broyden_banded",
    "broyden_tridiagonal",
    "chebyquad",
    "discrete_boundary_value",
    "discrete_integral_equation",
    "extended_powell_singular",
    "extended_rosenbrock",
    "linear_full_rank",
    "linear_rank_1",
    "penalty_1",
    "penalty_2",
    "trigonometric",
    "variably_dimensioned",
    "watson",
]


def _pad(x: Tensor) -> Tensor:
    """``(0, x_1, ..., x_n, 0)``: the boundary values ``x_0 = x_{n+1} = 0``."""
    zero = torch.zeros(1, dtype=x.dtype, device=x.device)
    return torch.cat([zero, x, zero])


def watson(x: Tensor) -> Tensor:
    """#20, 2 <= n <= 31, m = 31."""
    n = x.shape[0]
    t = _index(29, x) / 29
    powers = t[:, None] ** _index(n, x, start=0)  # powers[i, j] = t_i^j
    derivative = powers[:, : n - 1] @ (_index(n - 1, x) * x[1:])
    value = powers @ x
    rest = torch.stack([x[0], x[1] - x[0] ** 2 - 1])
    return torch.cat([derivative - value**2 - 1, rest])


def extended_rosenbrock(x: Tensor) -> Tensor:
    """#21, n even, m = n."""
    odd, even = x[0::2], x[1::2]
    return torch.stack([10 * (even - odd**2), 1 - odd], dim=1).reshape(-1)


def extended_powell_singular(x: Tensor) -> Tensor:
    """#22, n a multiple of 4, m = n."""
    a, b, c, d = x[0::4], x[1::4], x[2::4], x[3::4]
    blocks = [a + 10 * b, math.sqrt(5) * (c - d), (b - 2 * c) ** 2, math.sqrt(10) * (a - d) ** 2]
    return torch.stack(blocks, dim=1).reshape(-1)


_PENALTY_A = 1e-5


def penalty_1(x: Tensor) -> Tensor:
    """#23, m = n + 1."""
    last = (x @ x - 0.25).unsqueeze(0)
    return torch.cat([math.sqrt(_PENALTY_A) * (x - 1), last])


def penalty_2(x: Tensor) -> Tensor:
    """#24, m = 2n."""
    n = x.shape[0]
    i = _index(n - 1, x, start=2)
    y = torch.exp(i / 10) + torch.exp((i - 1) / 10)
    e = torch.exp(x / 10)
    pairs = math.sqrt(_PENALTY_A) * (e[1:] + e[:-1] - y)
    singles = math.sqrt(_PENALTY_A) * (e[1:] - math.exp(-0.1))
    weighted = (n - _index(n, x, start=0)) @ x**2 - 1
    return torch.cat([(x[0] - 0.2).unsqueeze(0), pairs, singles, weighted.unsqueeze(0)])


def variably_dimensioned(x: Tensor) -> Tensor:
    """#25, m = n + 2."""
    s = _index(x.shape[0], x) @ (x - 1)
    return torch.cat([x - 1, torch.stack([s, s**2])])


def trigonometric(x: Tensor) -> Tensor:
    """#26, m = n."""
    n = x.shape[0]
    return n - torch.cos(x).sum() + _index(n, x) * (1 - torch.cos(x)) - torch.sin(x)


def brown_almost_linear(x: Tensor) -> Tensor:
    """#27, m = n."""
    n = x.shape[0]
    # A product by repeated multiplication: torch.prod's backward branches on zeros.
    product = functools.reduce(torch.mul, x.unbind(0))
    return torch.cat([x[:-1] + x.sum() - (n + 1), (product - 1).unsqueeze(0)])


def discrete_boundary_value(x: Tensor) -> Tensor:
    """#28, m = n."""
    n = x.shape[0]
    h = 1 / (n + 1)
    t = _index(n, x) * h
    padded = _pad(x)
    return 2 * x - padded[:-2] - padded[2:] + h**2 * (x + t + 1) ** 3 / 2


def discrete_integral_equation(x: Tensor) -> Tensor:
    """#29, m = n."""
    n = x.shape[0]
    h = 1 / (n + 1)
    t = _index(n, x) * h
    u = (x + t + 1) ** 3
    lower = torch.cumsum(t * u, 0)  # sum over j <= i
    tail = (1 - t) * u
    upper = tail.sum() - torch.cumsum(tail, 0)  # sum over j > i
    return x + h * ((1 - t) * lower + t * upper) / 2


def broyden_tridiagonal(x: Tensor) -> Tensor:
    """#30, m = n."""
    padded = _pad(x)
    return (3 - 2 * x) * x - padded[:-2] - 2 * padded[2:] + 1


def broyden_banded(x: Tensor) -> Tensor:
    """#31, m = n, lower bandwidth 5, upper bandwidth 1."""
    n = x.shape[0]
    i = torch.arange(n, device=x.device)
    offset = i[None, :] - i[:, None]  # j - i
    band = ((offset >= -5) & (offset <= 1) & (offset != 0)).to(x.dtype)
    return x * (2 + 5 * x**2) + 1 - band @ (x * (1 + x))


def linear_full_rank(x: Tensor, m: int) -> Tensor:
    """#32, m >= n."""
    n = x.shape[0]
    shift = 2 * x.sum() / m + 1
    return torch.cat([x - shift, (-shift).expand(m - n)])


def linear_rank_1(x: Tensor, m: int) -> Tensor:
    """#33, m >= n."""
    s = _index(x.shape[0], x) @ x
    return _index(m, x) * s - 1


def chebyquad(x: Tensor, m: int) -> Tensor:
    """#35, m >= n: shifted Chebyshev moments of x against those of U[0, 1]."""
    y = 2 * x - 1
    previous, current = torch.ones_like(x), y
    moments = []
    for i in range(1, m + 1):
        exact = -1 / (i**2 - 1) if i % 2 == 0 else 0.0
        moments.append(current.mean() - exact)
        previous, current = current, 2 * y * current - previous
    return torch.stack(moments)
