"""Moré-Garbow-Hillstrom test problems as torch residual functions.

Moré, Garbow and Hillstrom (1981) collected 35 nonlinear least-squares problems
``min_x f(x) = sum_i r_i(x)^2`` with standard starting points ``x0`` and the
minimum values ``f*`` found by MINPACK. They remain the default test set for
least-squares and unconstrained-minimization codes. Note the paper's ``f`` is the
plain sum of squares; scipy and trustls report ``cost = f / 2``.

Every residual is a pure torch function of a 1-D tensor ``x``: constants are
created on ``x``'s dtype and device, there are no in-place ops on ``x``, no
``.item()`` and no Python branching on values, so autograd, ``torch.func``
(``jacfwd``, ``jacrev``, ``jvp``, ``vjp``) and ``vmap`` all apply. Problems of
variable dimension read ``n`` from ``x.shape`` (a static shape, not a value).

The residuals are in `trustls.problems.mgh_fixed` (#1 to #19, fixed
dimension) and `trustls.problems.mgh_variable` (#20 to #35, n read from
``x.shape``), importable from here too; this module holds the table of
starting points and minima.

Deviations from the paper, each for a stated reason (those of #7 and #11 are
in `trustls.problems.mgh_fixed`):

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
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from trustls.problems.mgh_fixed import (
    bard,
    beale,
    biggs_exp6,
    box_3d,
    brown_badly_scaled,
    brown_dennis,
    freudenstein_roth,
    gaussian,
    gulf_research,
    helical_valley,
    jennrich_sampson,
    kowalik_osborne,
    meyer,
    osborne_1,
    osborne_2,
    powell_badly_scaled,
    powell_singular,
    rosenbrock,
    wood,
)
from trustls.problems.mgh_variable import (
    brown_almost_linear,
    broyden_banded,
    broyden_tridiagonal,
    chebyquad,
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
