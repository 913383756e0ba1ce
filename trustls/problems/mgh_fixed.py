"""The Moré-Garbow-Hillstrom problems of fixed dimension, #1 to #19, with their data.

The table of starting points and minima is `trustls.problems.mgh`'s, and so
are the conventions (pure torch functions of a 1-D tensor ``x``). Deviations
from the paper, each for a stated reason:

* #7 Helical valley: ``theta`` is written with ``atan2`` plus a unit jump in the
  third quadrant, equal to the paper's piecewise ``arctan`` wherever that is
  defined, and smooth across ``x1 = 0``.
* #11 Gulf research: the paper's ``|y_i m i x_2|`` is read as ``|y_i - x_2|``, as
  in other implementations; it is the reading that gives ``f = 0`` at the stated
  minimizer ``(50, 25, 1.5)``. We use ``m = 10``.

Reference:
    J. J. Moré, B. S. Garbow, K. E. Hillstrom, "Testing unconstrained optimization
    software", ACM Transactions on Mathematical Software 7(1), 1981, pp. 17-41.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "bard",
    "beale",
    "biggs_exp6",
    "box_3d",
    "brown_badly_scaled",
    "brown_dennis",
    "freudenstein_roth",
    "gaussian",
    "gulf_research",
    "helical_valley",
    "jennrich_sampson",
    "kowalik_osborne",
    "meyer",
    "osborne_1",
    "osborne_2",
    "powell_badly_scaled",
    "powell_singular",
    "rosenbrock",
    "wood",
]


def _const(values, x: Tensor) -> Tensor:
    return torch.tensor(values, dtype=x.dtype, device=x.device)


def _index(count: int, x: Tensor, start: int = 1) -> Tensor:
    """``(start, start + 1, ..., start + count - 1)`` on ``x``'s dtype and device."""
    return torch.arange(start, start + count, dtype=x.dtype, device=x.device)


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
