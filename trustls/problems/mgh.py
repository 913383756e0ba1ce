"""Moré-Garbow-Hillstrom test problems as torch residual functions.

Moré, Garbow and Hillstrom (1981) collected 35 nonlinear least-squares problems
``min_x f(x) = sum_i r_i(x)^2`` with standard starting points ``x0`` and the
minimum values ``f*`` found by MINPACK. They remain the default test set for
least-squares and unconstrained-minimization codes. Note the paper's ``f`` is the
plain sum of squares; scipy and trustls report ``cost = f / 2``.

Every residual here is a pure torch function of a 1-D tensor ``x``: constants are
created on ``x``'s dtype and device, there are no in-place ops on ``x``, no
``.item()`` and no Python branching on values, so autograd, ``torch.func``
(``jacfwd``, ``jacrev``, ``jvp``, ``vjp``) and ``vmap`` all apply. Problems of
variable dimension read ``n`` from ``x.shape`` (a static shape, not a value).

Deviations from the paper, each for a stated reason:

* #7 Helical valley: ``theta`` is written with ``atan2`` plus a unit jump in the
  third quadrant, equal to the paper's piecewise ``arctan`` wherever that is
  defined, and smooth across ``x1 = 0``.
* #11 Gulf research: the paper's ``|y_i m i x_2|`` is read as ``|y_i - x_2|``, as
  in other implementations; it is the reading that gives ``f = 0`` at the stated
  minimizer ``(50, 25, 1.5)``. We use ``m = 10``.
* ``f_star`` is the paper's value to the digits it prints, refined to about 10
  significant digits by a converged Gauss-Newton solve in float64 (the paper's
  digits are a prefix of ours). It is ``None`` where the paper lists several minima
  with different values (#2, #18), and for #26, where the standard start leads to
  a local minimum the paper does not list.

Numbering follows the paper; #34 (linear rank 1 with zero rows and columns) is
omitted, being #33 with a trivially separable block.

Reference:
    J. J. Moré, B. S. Garbow, K. E. Hillstrom, "Testing unconstrained optimization
    software", ACM Transactions on Mathematical Software 7(1), 1981, pp. 17-41.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

__all__ = ["MGHProblem", "get", "names", "problems"]


@dataclass(frozen=True, eq=False)
class MGHProblem:
    """One Moré-Garbow-Hillstrom problem at a fixed dimension.

    Attributes:
        number: The problem's number in the paper (1 to 35).
        name: Snake-case name, e.g. ``"rosenbrock"``.
        residual: ``r(x) -> Tensor`` of shape ``(m,)`` for ``x`` of shape ``(n,)``.
        x0: The standard starting point, float64.
        m: Number of residuals.
        n: Number of variables.
        f_star: Minimum of ``sum r_i^2`` reported in the paper, or ``None``.
        note: Where the data and ``f_star`` come from, and any choice made.

    Examples:
        >>> p = get("rosenbrock")
        >>> round(float(p.residual(p.x0).square().sum()), 12)
        24.2
    """

    number: int
    name: str
    residual: Callable[[Tensor], Tensor]
    x0: Tensor
    m: int
    n: int
    f_star: float | None
    note: str


def _const(values, x: Tensor) -> Tensor:
    return torch.tensor(values, dtype=x.dtype, device=x.device)


def _index(count: int, x: Tensor, start: int = 1) -> Tensor:
    """``(start, start + 1, ..., start + count - 1)`` on ``x``'s dtype and device."""
    return torch.arange(start, start + count, dtype=x.dtype, device=x.device)


def _pad(x: Tensor) -> Tensor:
    """``(0, x_1, ..., x_n, 0)``: the boundary values ``x_0 = x_{n+1} = 0``."""
    zero = torch.zeros(1, dtype=x.dtype, device=x.device)
    return torch.cat([zero, x, zero])


# --- problems of fixed dimension -------------------------------------------------


def rosenbrock(x: Tensor) -> Tensor:
    """#1, n = m = 2."""
    return torch.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])


def freudenstein_roth(x: Tensor) -> Tensor:
    """#2, n = m = 2."""
    return torch.stack(
        [
            -13 + x[0] + ((5 - x[1]) * x[1] - 2) * x[1],
            -29 + x[0] + ((x[1] + 1) * x[1] - 14) * x[1],
        ]
    )


def powell_badly_scaled(x: Tensor) -> Tensor:
    """#3, n = m = 2."""
    return torch.stack([1e4 * x[0] * x[1] - 1, torch.exp(-x[0]) + torch.exp(-x[1]) - 1.0001])


def brown_badly_scaled(x: Tensor) -> Tensor:
    """#4, n = 2, m = 3."""
    return torch.stack([x[0] - 1e6, x[1] - 2e-6, x[0] * x[1] - 2])


def beale(x: Tensor) -> Tensor:
    """#5, n = 2, m = 3."""
    y = _const([1.5, 2.25, 2.625], x)
    return y - x[0] * (1 - x[1] ** _index(3, x))


def jennrich_sampson(x: Tensor) -> Tensor:
    """#6, n = 2, m = 10."""
    i = _index(10, x)
    return 2 + 2 * i - (torch.exp(i * x[0]) + torch.exp(i * x[1]))


def helical_valley(x: Tensor) -> Tensor:
    """#7, n = m = 3."""
    third_quadrant = (x[0] < 0) & (x[1] < 0)
    theta = torch.atan2(x[1], x[0]) / (2 * math.pi) + third_quadrant.to(x.dtype)
    radius = torch.sqrt(x[0] ** 2 + x[1] ** 2)
    return torch.stack([10 * (x[2] - 10 * theta), 10 * (radius - 1), x[2]])


_BARD_Y = (0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39)


def bard(x: Tensor) -> Tensor:
    """#8, n = 3, m = 15."""
    u = _index(15, x)
    v = 16 - u
    w = torch.minimum(u, v)
    return _const(_BARD_Y, x) - (x[0] + u / (v * x[1] + w * x[2]))


_GAUSSIAN_Y = (
    0.0009, 0.0044, 0.0175, 0.0540, 0.1295, 0.2420, 0.3521, 0.3989,
    0.3521, 0.2420, 0.1295, 0.0540, 0.0175, 0.0044, 0.0009,
)  # fmt: skip


def gaussian(x: Tensor) -> Tensor:
    """#9, n = 3, m = 15."""
    t = (8 - _index(15, x)) / 2
    return x[0] * torch.exp(-x[1] * (t - x[2]) ** 2 / 2) - _const(_GAUSSIAN_Y, x)


_MEYER_Y = (
    34780.0, 28610.0, 23650.0, 19630.0, 16370.0, 13720.0, 11540.0, 9744.0,
    8261.0, 7030.0, 6005.0, 5147.0, 4427.0, 3820.0, 3307.0, 2872.0,
)  # fmt: skip


def meyer(x: Tensor) -> Tensor:
    """#10, n = 3, m = 16."""
    t = 45 + 5 * _index(16, x)
    return x[0] * torch.exp(x[1] / (t + x[2])) - _const(_MEYER_Y, x)


def gulf_research(x: Tensor) -> Tensor:
    """#11, n = 3, m = 10 (the paper allows 3 <= m <= 100)."""
    t = _index(10, x) / 100
    y = 25 + (-50 * torch.log(t)) ** (2 / 3)
    return torch.exp(-torch.abs(y - x[1]) ** x[2] / x[0]) - t


def box_3d(x: Tensor) -> Tensor:
    """#12, n = 3, m = 10."""
    t = _index(10, x) / 10
    return (
        torch.exp(-t * x[0])
        - torch.exp(-t * x[1])
        - x[2] * (torch.exp(-t) - torch.exp(-10 * t))
    )


def powell_singular(x: Tensor) -> Tensor:
    """#13, n = m = 4."""
    return torch.stack(
        [
            x[0] + 10 * x[1],
            math.sqrt(5) * (x[2] - x[3]),
            (x[1] - 2 * x[2]) ** 2,
            math.sqrt(10) * (x[0] - x[3]) ** 2,
        ]
    )


def wood(x: Tensor) -> Tensor:
    """#14, n = 4, m = 6."""
    return torch.stack(
        [
            10 * (x[1] - x[0] ** 2),
            1 - x[0],
            math.sqrt(90) * (x[3] - x[2] ** 2),
            1 - x[2],
            math.sqrt(10) * (x[1] + x[3] - 2),
            (x[1] - x[3]) / math.sqrt(10),
        ]
    )


_KOWALIK_Y = (0.1957, 0.1947, 0.1735, 0.1600, 0.0844, 0.0627, 0.0456, 0.0342, 0.0323, 0.0235, 0.0246)
_KOWALIK_U = (4.0, 2.0, 1.0, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625)


def kowalik_osborne(x: Tensor) -> Tensor:
    """#15, n = 4, m = 11."""
    u = _const(_KOWALIK_U, x)
    return _const(_KOWALIK_Y, x) - x[0] * (u**2 + u * x[1]) / (u**2 + u * x[2] + x[3])


def brown_dennis(x: Tensor) -> Tensor:
    """#16, n = 4, m = 20."""
    t = _index(20, x) / 5
    return (x[0] + t * x[1] - torch.exp(t)) ** 2 + (x[2] + x[3] * torch.sin(t) - torch.cos(t)) ** 2


_OSBORNE1_Y = (
    0.844, 0.908, 0.932, 0.936, 0.925, 0.908, 0.881, 0.850, 0.818, 0.784, 0.751,
    0.718, 0.685, 0.658, 0.628, 0.603, 0.580, 0.558, 0.538, 0.522, 0.506, 0.490,
    0.478, 0.467, 0.457, 0.448, 0.438, 0.431, 0.424, 0.420, 0.414, 0.411, 0.406,
)  # fmt: skip


def osborne_1(x: Tensor) -> Tensor:
    """#17, n = 5, m = 33."""
    t = 10 * _index(33, x, start=0)
    model = x[0] + x[1] * torch.exp(-t * x[3]) + x[2] * torch.exp(-t * x[4])
    return _const(_OSBORNE1_Y, x) - model


def biggs_exp6(x: Tensor) -> Tensor:
    """#18, n = 6, m = 13."""
    t = _index(13, x) / 10
    y = torch.exp(-t) - 5 * torch.exp(-10 * t) + 3 * torch.exp(-4 * t)
    return x[2] * torch.exp(-t * x[0]) - x[3] * torch.exp(-t * x[1]) + x[5] * torch.exp(-t * x[4]) - y


_OSBORNE2_Y = (
    1.366, 1.191, 1.112, 1.013, 0.991, 0.885, 0.831, 0.847, 0.786, 0.725, 0.746,
    0.679, 0.608, 0.655, 0.616, 0.606, 0.602, 0.626, 0.651, 0.724, 0.649, 0.649,
    0.694, 0.644, 0.624, 0.661, 0.612, 0.558, 0.533, 0.495, 0.500, 0.423, 0.395,
    0.375, 0.372, 0.391, 0.396, 0.405, 0.428, 0.429, 0.523, 0.562, 0.607, 0.653,
    0.672, 0.708, 0.633, 0.668, 0.645, 0.632, 0.591, 0.559, 0.597, 0.625, 0.739,
    0.710, 0.729, 0.720, 0.636, 0.581, 0.428, 0.292, 0.162, 0.098, 0.054,
)  # fmt: skip


def osborne_2(x: Tensor) -> Tensor:
    """#19, n = 11, m = 65."""
    t = _index(65, x, start=0) / 10
    model = (
        x[0] * torch.exp(-t * x[4])
        + x[1] * torch.exp(-((t - x[8]) ** 2) * x[5])
        + x[2] * torch.exp(-((t - x[9]) ** 2) * x[6])
        + x[3] * torch.exp(-((t - x[10]) ** 2) * x[7])
    )
    return _const(_OSBORNE2_Y, x) - model


# --- problems of variable dimension (n read from x.shape) ---------------------------


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


# --- the table --------------------------------------------------------------------


def _make(number, name, residual, x0, f_star, note="") -> MGHProblem:
    x0 = torch.tensor(x0, dtype=torch.float64)
    m = residual(x0).shape[0]
    source = f"MGH 1981 #{number}"
    return MGHProblem(number, name, residual, x0, m, x0.shape[0], f_star, f"{source}. {note}".strip())


@functools.lru_cache(maxsize=None)
def problems() -> tuple[MGHProblem, ...]:
    """All implemented MGH problems, in the paper's order, at the dimensions used here.

    Examples:
        >>> [p.name for p in problems()][:3]
        ['rosenbrock', 'freudenstein_roth', 'powell_badly_scaled']
    """
    ten = 10
    return (
        _make(1, "rosenbrock", rosenbrock, [-1.2, 1.0], 0.0),
        _make(2, "freudenstein_roth", freudenstein_roth, [0.5, -2.0], None,
              "f = 0 at (5, 4) and f = 48.9842... at (11.41..., -0.8968...)."),
        _make(3, "powell_badly_scaled", powell_badly_scaled, [0.0, 1.0], 0.0),
        _make(4, "brown_badly_scaled", brown_badly_scaled, [1.0, 1.0], 0.0),
        _make(5, "beale", beale, [1.0, 1.0], 0.0),
        _make(6, "jennrich_sampson", jennrich_sampson, [0.3, 0.4], 124.3621823556,
              "m = 10; paper f* = 124.362..."),
        _make(7, "helical_valley", helical_valley, [-1.0, 0.0, 0.0], 0.0),
        _make(8, "bard", bard, [1.0, 1.0, 1.0], 8.214877306579e-3,
              "Paper f* = 8.21487...e-3; also f = 17.4286... at (0.8406..., -inf, -inf)."),
        _make(9, "gaussian", gaussian, [0.4, 1.0, 0.0], 1.127932769619e-8, "Paper f* = 1.12793...e-8."),
        _make(10, "meyer", meyer, [0.02, 4000.0, 250.0], 87.94585517, "Paper f* = 87.9458..."),
        _make(11, "gulf_research", gulf_research, [5.0, 2.5, 0.15], 0.0, "m = 10; f = 0 at (50, 25, 1.5)."),
        _make(12, "box_3d", box_3d, [0.0, 10.0, 20.0], 0.0,
              "m = 10; f = 0 at (1, 10, 1), (10, 1, -1) and on x1 = x2, x3 = 0."),
        _make(13, "powell_singular", powell_singular, [3.0, -1.0, 0.0, 1.0], 0.0),
        _make(14, "wood", wood, [-3.0, -1.0, -3.0, -1.0], 0.0),
        _make(15, "kowalik_osborne", kowalik_osborne, [0.25, 0.39, 0.415, 0.39], 3.075056038492e-4,
              "Paper f* = 3.07505...e-4; also f = 1.02734...e-3 at infinity."),
        _make(16, "brown_dennis", brown_dennis, [25.0, 5.0, -5.0, -1.0], 85822.20162635,
              "m = 20; paper f* = 85822.2..."),
        _make(17, "osborne_1", osborne_1, [0.5, 1.5, -1.0, 0.01, 0.02], 5.464894697483e-5,
              "Paper f* = 5.46489...e-5."),
        _make(18, "biggs_exp6", biggs_exp6, [1.0, 2.0, 1.0, 1.0, 1.0, 1.0], None,
              "m = 13; f = 5.65565...e-3 (local) and f = 0 at (1, 10, 1, 5, 4, 3)."),
        _make(19, "osborne_2", osborne_2, [1.3, 0.65, 0.65, 0.7, 0.6, 3.0, 5.0, 7.0, 2.0, 4.5, 5.5],
              4.013773629354e-2, "Paper f* = 4.01377...e-2."),
        _make(20, "watson", watson, [0.0] * 6, 2.287670053552e-3, "n = 6; paper f* = 2.28767...e-3."),
        _make(21, "extended_rosenbrock", extended_rosenbrock, [-1.2, 1.0] * (ten // 2), 0.0, "n = 10."),
        _make(22, "extended_powell_singular", extended_powell_singular, [3.0, -1.0, 0.0, 1.0] * 3, 0.0,
              "n = 12."),
        _make(23, "penalty_1", penalty_1, [float(j) for j in range(1, ten + 1)], 7.087651467e-5,
              "n = 10; paper f* = 7.08765...e-5."),
        _make(24, "penalty_2", penalty_2, [0.5] * ten, 2.936605374e-4, "n = 10; paper f* = 2.93660...e-4."),
        _make(25, "variably_dimensioned", variably_dimensioned, [1 - j / ten for j in range(1, ten + 1)],
              0.0, "n = 10."),
        _make(26, "trigonometric", trigonometric, [1 / ten] * ten, None,
              "n = 10; paper f* = 0, but the start leads to the local minimum f = 2.79506...e-5."),
        _make(27, "brown_almost_linear", brown_almost_linear, [0.5] * ten, 0.0,
              "n = 10; also f = 1 at (0, ..., 0, n + 1)."),
        _make(28, "discrete_boundary_value", discrete_boundary_value,
              [t * (t - 1) for t in (j / (ten + 1) for j in range(1, ten + 1))], 0.0, "n = 10."),
        _make(29, "discrete_integral_equation", discrete_integral_equation,
              [t * (t - 1) for t in (j / (ten + 1) for j in range(1, ten + 1))], 0.0, "n = 10."),
        _make(30, "broyden_tridiagonal", broyden_tridiagonal, [-1.0] * ten, 0.0, "n = 10."),
        _make(31, "broyden_banded", broyden_banded, [-1.0] * ten, 0.0, "n = 10."),
        _make(32, "linear_full_rank", functools.partial(linear_full_rank, m=10), [1.0] * 5, 5.0,
              "n = 5, m = 10; f* = m - n at x = (-1, ..., -1)."),
        _make(33, "linear_rank_1", functools.partial(linear_rank_1, m=10), [1.0] * 5, 10 * 9 / (2 * 21),
              "n = 5, m = 10; f* = m(m - 1) / (2(2m + 1)) on the hyperplane sum_j j x_j = 3 / (2m + 1)."),
        _make(35, "chebyquad", functools.partial(chebyquad, m=8), [j / 9 for j in range(1, 9)],
              3.516873725677e-3, "n = m = 8; paper f* = 3.51687...e-3."),
    )  # fmt: skip


def names() -> tuple[str, ...]:
    """Names of the implemented problems, in the paper's order."""
    return tuple(p.name for p in problems())


def get(name: str) -> MGHProblem:
    """The MGH problem called ``name``.

    Raises:
        ValueError: If ``name`` is not one of :func:`names`.

    Examples:
        >>> get("wood").n
        4
    """
    for p in problems():
        if p.name == name:
            return p
    raise ValueError(f"`name` must be one of {', '.join(names())}; got {name!r}.")
