"""Moré-Garbow-Hillstrom (1981) problems spelled as users spell them, and the table of all.

Same formulas as `trustls.problems.mgh` (the paper's numbering in each
docstring), written with ``torch.stack`` of 0-d expressions, Python loops over
the residuals, ``torch.where``, ``.item()`` branches and index tensors, and in
several cases at another dimension than the registry's. Constants live on
``x``'s dtype and device. The variable-dimension problems (#20 to #35) are in
`trustls.problems.styled.mgh_variable`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from trustls.problems.styled import StyledProblem, make
from trustls.problems.styled.mgh_variable import (
    brown_almost_linear,
    broyden_banded,
    broyden_tridiagonal,
    chebyquad_trig,
    discrete_boundary_value,
    discrete_integral_equation,
    extended_powell_singular,
    extended_rosenbrock,
    linear_full_rank,
    linear_rank_1,
    penalty_1,
    penalty_2,
    trigonometric,
    variably_dimensioned,
    watson,
)

__all__ = ["problems"]


def rosenbrock(x: Tensor) -> Tensor:
    """#1."""
    x1, x2 = x[0], x[1]
    return torch.stack([10.0 * (x2 - x1 * x1), 1.0 - x1])


def freudenstein_roth(x: Tensor) -> Tensor:
    """#2."""
    x1, x2 = x[0], x[1]
    return torch.stack([-13.0 + x1 + ((5.0 - x2) * x2 - 2.0) * x2, -29.0 + x1 + ((x2 + 1.0) * x2 - 14.0) * x2])


def powell_badly_scaled(x: Tensor) -> Tensor:
    """#3."""
    return torch.stack([1e4 * x[0] * x[1] - 1.0, torch.exp(-x[0]) + torch.exp(-x[1]) - 1.0001])


def brown_badly_scaled(x: Tensor) -> Tensor:
    """#4."""
    return torch.stack([x[0] - 1e6, x[1] - 2e-6, x[0] * x[1] - 2.0])


def beale(x: Tensor) -> Tensor:
    """#5."""
    y = [1.5, 2.25, 2.625]
    return torch.stack([y[i] - x[0] * (1.0 - x[1] ** (i + 1)) for i in range(3)])


def jennrich_sampson(x: Tensor) -> Tensor:
    """#6, m = 10."""
    out = []
    for i in range(1, 11):
        out.append(2.0 + 2.0 * i - (torch.exp(i * x[0]) + torch.exp(i * x[1])))
    return torch.stack(out)


def helical_valley_where(x: Tensor) -> Tensor:
    """#7, theta by the paper's two cases as a torch.where."""
    angle = torch.atan(x[1] / x[0]) / (2.0 * math.pi)
    theta = torch.where(x[0] > 0, angle, angle + 0.5)
    radius = torch.sqrt(x[0] ** 2 + x[1] ** 2)
    return torch.stack([10.0 * (x[2] - 10.0 * theta), 10.0 * (radius - 1.0), x[2]])


def helical_valley_item(x: Tensor) -> Tensor:
    """#7, theta by the paper's two cases as a Python branch on ``.item()``."""
    theta = torch.atan(x[1] / x[0]) / (2.0 * math.pi)
    if x[0].item() < 0:
        theta = theta + 0.5
    radius = torch.sqrt(x[0] ** 2 + x[1] ** 2)
    return torch.stack([10.0 * (x[2] - 10.0 * theta), 10.0 * (radius - 1.0), x[2]])


def bard(x: Tensor) -> Tensor:
    """#8."""
    y = [0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39]
    out = []
    for i, yi in enumerate(y, start=1):
        u, v = i, 16 - i
        w = min(u, v)
        out.append(yi - (x[0] + u / (v * x[1] + w * x[2])))
    return torch.stack(out)


def gaussian(x: Tensor) -> Tensor:
    """#9."""
    y = [0.0009, 0.0044, 0.0175, 0.0540, 0.1295, 0.2420, 0.3521, 0.3989]
    y = y + y[-2::-1]
    return torch.stack([x[0] * torch.exp(-x[1] * ((8 - i) / 2 - x[2]) ** 2 / 2) - y[i - 1] for i in range(1, 16)])


def meyer(x: Tensor) -> Tensor:
    """#10, data as a tensor made inside fun."""
    y = torch.tensor([34780.0, 28610.0, 23650.0, 19630.0, 16370.0, 13720.0, 11540.0, 9744.0,
                      8261.0, 7030.0, 6005.0, 5147.0, 4427.0, 3820.0, 3307.0, 2872.0],
                     dtype=x.dtype, device=x.device)  # fmt: skip
    t = 45.0 + 5.0 * torch.arange(1, 17, dtype=x.dtype, device=x.device)
    return x[0] * torch.exp(x[1] / (t + x[2])) - y


def box_3d(x: Tensor) -> Tensor:
    """#12, m = 10."""
    out = []
    for i in range(1, 11):
        t = 0.1 * i
        out.append(torch.exp(-t * x[0]) - torch.exp(-t * x[1]) - x[2] * (math.exp(-t) - math.exp(-10 * t)))
    return torch.stack(out)


def powell_singular(x: Tensor) -> Tensor:
    """#13."""
    x1, x2, x3, x4 = x.unbind()
    return torch.stack([x1 + 10 * x2, 5**0.5 * (x3 - x4), (x2 - 2 * x3) ** 2, 10**0.5 * (x1 - x4) ** 2])


def wood(x: Tensor) -> Tensor:
    """#14."""
    x1, x2, x3, x4 = x.unbind()
    return torch.stack([10 * (x2 - x1**2), 1 - x1, 90**0.5 * (x4 - x3**2), 1 - x3,
                        10**0.5 * (x2 + x4 - 2), (x2 - x4) / 10**0.5])  # fmt: skip


def kowalik_osborne(x: Tensor) -> Tensor:
    """#15, data gathered from a table by index."""
    table = torch.tensor([[0.1957, 4.0], [0.1947, 2.0], [0.1735, 1.0], [0.1600, 0.5], [0.0844, 0.25],
                          [0.0627, 0.167], [0.0456, 0.125], [0.0342, 0.1], [0.0323, 0.0833],
                          [0.0235, 0.0714], [0.0246, 0.0625]], dtype=x.dtype, device=x.device)  # fmt: skip
    y, u = table[:, 0], table[:, 1]
    b = x[[1, 2, 3]]
    return y - x[0] * (u * u + u * b[0]) / (u * u + u * b[1] + b[2])


def brown_dennis(x: Tensor) -> Tensor:
    """#16, m = 20."""
    out = []
    for i in range(1, 21):
        t = i / 5
        out.append((x[0] + t * x[1] - math.exp(t)) ** 2 + (x[2] + x[3] * math.sin(t) - math.cos(t)) ** 2)
    return torch.stack(out)


def osborne_1(x: Tensor) -> Tensor:
    """#17."""
    y = [0.844, 0.908, 0.932, 0.936, 0.925, 0.908, 0.881, 0.850, 0.818, 0.784, 0.751,
         0.718, 0.685, 0.658, 0.628, 0.603, 0.580, 0.558, 0.538, 0.522, 0.506, 0.490,
         0.478, 0.467, 0.457, 0.448, 0.438, 0.431, 0.424, 0.420, 0.414, 0.411, 0.406]  # fmt: skip
    return torch.stack([yi - (x[0] + x[1] * torch.exp(-10 * i * x[3]) + x[2] * torch.exp(-10 * i * x[4]))
                        for i, yi in enumerate(y)])  # fmt: skip


def biggs_exp6(x: Tensor) -> Tensor:
    """#18, m = 13."""
    out = []
    for i in range(1, 14):
        t = i / 10
        y = math.exp(-t) - 5 * math.exp(-10 * t) + 3 * math.exp(-4 * t)
        out.append(x[2] * torch.exp(-t * x[0]) - x[3] * torch.exp(-t * x[1]) + x[5] * torch.exp(-t * x[4]) - y)
    return torch.stack(out)


def osborne_2(x: Tensor) -> Tensor:
    """#19, the three Gaussian terms in a loop over (amplitude, width, centre) indices."""
    y = torch.tensor([1.366, 1.191, 1.112, 1.013, 0.991, 0.885, 0.831, 0.847, 0.786, 0.725, 0.746,
                      0.679, 0.608, 0.655, 0.616, 0.606, 0.602, 0.626, 0.651, 0.724, 0.649, 0.649,
                      0.694, 0.644, 0.624, 0.661, 0.612, 0.558, 0.533, 0.495, 0.500, 0.423, 0.395,
                      0.375, 0.372, 0.391, 0.396, 0.405, 0.428, 0.429, 0.523, 0.562, 0.607, 0.653,
                      0.672, 0.708, 0.633, 0.668, 0.645, 0.632, 0.591, 0.559, 0.597, 0.625, 0.739,
                      0.710, 0.729, 0.720, 0.636, 0.581, 0.428, 0.292, 0.162, 0.098, 0.054],
                     dtype=x.dtype, device=x.device)  # fmt: skip
    t = torch.arange(65, dtype=x.dtype, device=x.device) / 10
    model = x[0] * torch.exp(-t * x[4])
    for amplitude, width, centre in ((1, 5, 8), (2, 6, 9), (3, 7, 10)):
        model = model + x[amplitude] * torch.exp(-((t - x[centre]) ** 2) * x[width])
    return y - model


def problems() -> tuple[StyledProblem, ...]:
    """The MGH spellings with their standard starts (n as in each docstring)."""
    h8, h6 = 1 / 9, 1 / 7
    return tuple(
        make(name, "mgh", styles, fun, x0, source)
        for name, styles, fun, x0, source in (
            ("rosenbrock_stack", "stack", rosenbrock, [-1.2, 1.0], "MGH #1"),
            ("freudenstein_roth_stack", "stack", freudenstein_roth, [0.5, -2.0], "MGH #2"),
            ("powell_badly_scaled_stack", "stack", powell_badly_scaled, [0.0, 1.0], "MGH #3"),
            ("brown_badly_scaled_stack", "stack", brown_badly_scaled, [1.0, 1.0], "MGH #4"),
            ("beale_loop", "loop stack", beale, [1.0, 1.0], "MGH #5"),
            ("jennrich_sampson_loop", "loop", jennrich_sampson, [0.3, 0.4], "MGH #6"),
            ("helical_valley_where", "where stack", helical_valley_where, [-1.0, 0.0, 0.0], "MGH #7"),
            ("helical_valley_item", "item stack", helical_valley_item, [-1.0, 0.0, 0.0], "MGH #7"),
            ("bard_loop", "loop", bard, [1.0, 1.0, 1.0], "MGH #8"),
            ("gaussian_loop", "loop", gaussian, [0.4, 1.0, 0.0], "MGH #9"),
            ("meyer", "gather", meyer, [0.02, 4000.0, 250.0], "MGH #10"),
            ("box_3d_loop", "loop", box_3d, [0.0, 10.0, 20.0], "MGH #12"),
            ("powell_singular_stack", "stack", powell_singular, [3.0, -1.0, 0.0, 1.0], "MGH #13"),
            ("wood_stack", "stack", wood, [-3.0, -1.0, -3.0, -1.0], "MGH #14"),
            ("kowalik_osborne_table", "gather", kowalik_osborne, [0.25, 0.39, 0.415, 0.39], "MGH #15"),
            ("brown_dennis_loop", "loop", brown_dennis, [25.0, 5.0, -5.0, -1.0], "MGH #16"),
            ("osborne_1_loop", "loop", osborne_1, [0.5, 1.5, -1.0, 0.01, 0.02], "MGH #17"),
            ("biggs_exp6_loop", "loop", biggs_exp6, [1.0, 8.0, 1.0, 4.0, 3.0, 2.0],
             "MGH #18, a start from which cg and lstsq reach the same zero"),
            ("osborne_2_loop", "loop gather", osborne_2,
             [1.3, 0.65, 0.65, 0.7, 0.6, 3.0, 5.0, 7.0, 2.0, 4.5, 5.5], "MGH #19"),
            ("watson_9", "loop", watson, [0.0] * 9, "MGH #20, n = 9"),
            ("extended_rosenbrock_loop", "loop", extended_rosenbrock, [-1.2, 1.0] * 3, "MGH #21, n = 6"),
            ("extended_powell_gather", "gather", extended_powell_singular, [3.0, -1.0, 0.0, 1.0] * 2,
             "MGH #22, n = 8"),
            ("penalty_1_4", "stack", penalty_1, [1.0, 2.0, 3.0, 4.0], "MGH #23, n = 4"),
            ("penalty_2_4", "loop", penalty_2, [0.5] * 4, "MGH #24, n = 4"),
            ("variably_dimensioned_6", "loop", variably_dimensioned, [1 - j / 6 for j in range(1, 7)],
             "MGH #25, n = 6"),
            ("trigonometric_5", "loop", trigonometric, [1 / 5] * 5, "MGH #26, n = 5"),
            ("brown_almost_linear_5", "gather", brown_almost_linear, [0.5] * 5, "MGH #27, n = 5"),
            ("discrete_boundary_value_8", "loop", discrete_boundary_value,
             [j * h8 * (j * h8 - 1) for j in range(1, 9)], "MGH #28, n = 8"),
            ("discrete_integral_equation_6", "loop", discrete_integral_equation,
             [j * h6 * (j * h6 - 1) for j in range(1, 7)], "MGH #29, n = 6"),
            ("broyden_tridiagonal_8", "loop", broyden_tridiagonal, [-1.0] * 8, "MGH #30, n = 8"),
            ("broyden_banded_8", "loop gather", broyden_banded, [-1.0] * 8, "MGH #31, n = 8"),
            ("linear_full_rank_8x4", "loop", linear_full_rank, [1.0] * 4, "MGH #32, n = 4, m = 8"),
            ("linear_rank_1_8x4", "loop", linear_rank_1, [1.0] * 4, "MGH #33, n = 4, m = 8"),
            ("chebyquad_trig", "loop", chebyquad_trig, [j / 9 for j in range(1, 9)], "MGH #35, n = 8"),
        )
    )
