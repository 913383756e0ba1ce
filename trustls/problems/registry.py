"""The registry of least-squares test problems used by the tests and benchmarks.

One flat tuple of :class:`Problem` values, each a residual function with a start
and, where known, the minimum cost. It draws on three sources:

* **Moré-Garbow-Hillstrom (1981)** problems (:mod:`trustls.problems.mgh`) with a
  unique minimizer that Gauss-Newton trust-region methods reach from the standard
  start. A problem is kept only if scipy's ``least_squares(method="trf")`` with the
  exact Jacobian reaches the same final cost (within a relative 1e-8) with
  ``tr_solver="exact"`` and with ``tr_solver="lsmr"``, and ``method="lm"``,
  ``"dogbox"`` and ``x_scale="jac"`` agree on the minimizer. Left out for that
  reason: #2 Freudenstein-Roth (reaches the local minimum 48.98), #10 Meyer (lsmr
  stalls), #11 Gulf research (lm stalls; ``|.|`` kink), #17 Osborne 1 (lsmr stops
  at a different cost), #26 trigonometric (dogbox reaches another minimum); left
  out because their minimizer is not unique: #12 Box 3-D, #18 Biggs EXP6, #27
  Brown almost-linear, #33 linear rank 1, #35 Chebyquad (any permutation of a
  minimizer is one); left out as too slow for iterative inner solvers: #19
  Osborne 2, #20 Watson, #24 Penalty II (they pass the test above, but lsmr needs
  5,000 to 9,400 evaluations where the exact solver needs under 60); left out as
  near-duplicates of kept problems: #22, #29, #31, #32.
* **Synthetic** problems for shapes the collections lack: a noisy exponential fit,
  a linear least-squares problem (``m > n``) and an underdetermined nonlinear
  system (``m < n``). Their data come from ``torch.Generator`` seeded per problem,
  so they are identical on every run and machine.
* **NIST StRD** problems of lower and average difficulty
  (:mod:`trustls.problems.nist`) from both certified starts, each one where scipy's
  ``trf`` (``tr_solver="exact"``) reaches the certified RSS to 10 digits.

Costs follow scipy: ``cost = ||r||^2 / 2``, half the paper's ``f`` and half NIST's RSS.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from trustls.problems import mgh

__all__ = ["Problem", "get", "names", "problems"]


@dataclass(frozen=True, eq=False)
class Problem:
    """A least-squares test problem ``min_x ||residual(x)||^2 / 2``.

    Attributes:
        name: Unique key in the registry, e.g. ``"rosenbrock"``, ``"misra1a_start1"``.
        residual: ``r(x) -> Tensor`` of shape ``(m,)`` for ``x`` of shape ``(n,)``; a
            pure torch function, on ``x``'s dtype and device, usable under
            ``torch.func`` transforms.
        x0: Starting point, float64, shape ``(n,)``.
        zero_residual: Whether the minimum cost is 0 (so tolerances can be absolute).
        source: Where the problem comes from, e.g. ``"MGH 1981 #1"``.
        reference_cost: Known minimum of ``||r||^2 / 2`` reached from ``x0``, or ``None``.

    Examples:
        >>> p = get("rosenbrock")
        >>> p.m, p.n, p.zero_residual
        (2, 2, True)
    """

    name: str
    residual: Callable[[Tensor], Tensor]
    x0: Tensor
    zero_residual: bool
    source: str
    reference_cost: float | None = None

    @property
    def n(self) -> int:
        """Number of variables."""
        return self.x0.shape[0]

    @property
    def m(self) -> int:
        """Number of residuals (evaluates the residual once at ``x0``)."""
        with torch.no_grad():
            return self.residual(self.x0).shape[0]


# MGH problems kept by the criteria in the module docstring, in the paper's order.
_MGH_NAMES = (
    "rosenbrock", "powell_badly_scaled", "brown_badly_scaled", "beale", "jennrich_sampson",
    "helical_valley", "bard", "gaussian", "powell_singular", "wood", "kowalik_osborne",
    "brown_dennis", "extended_rosenbrock", "penalty_1", "variably_dimensioned",
    "discrete_boundary_value", "broyden_tridiagonal",
)  # fmt: skip

# Lower and average difficulty NIST problems, each run from start 1 and start 2.
_NIST_NAMES = ("Misra1a", "Chwirut2", "DanWood", "Gauss1", "Lanczos3", "Kirby2")


def _mgh_problems() -> list[Problem]:
    out = []
    for name in _MGH_NAMES:
        p = mgh.get(name)
        cost = None if p.f_star is None else p.f_star / 2
        out.append(Problem(p.name, p.residual, p.x0, p.f_star == 0.0, f"MGH 1981 #{p.number}", cost))
    return out


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _exponential_fit() -> Problem:
    """Fit ``a exp(-b t) + c`` to 30 noisy samples of ``2.5 exp(-1.3 t) + 0.5``."""
    t = torch.linspace(0, 4, 30, dtype=torch.float64)
    noise = torch.randn(30, generator=_generator(0), dtype=torch.float64)
    y = 2.5 * torch.exp(-1.3 * t) + 0.5 + 0.02 * noise

    def residual(x: Tensor) -> Tensor:
        ts, ys = t.to(dtype=x.dtype, device=x.device), y.to(dtype=x.dtype, device=x.device)
        return x[0] * torch.exp(-x[1] * ts) + x[2] - ys

    x0 = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    return Problem("exponential_fit", residual, x0, False, "synthetic: a exp(-b t) + c, seed 0")


def _linear() -> Problem:
    """``r = A x - b`` with ``A`` 20 x 5 Gaussian, full column rank; cost from lstsq."""
    g = _generator(1)
    A = torch.randn(20, 5, generator=g, dtype=torch.float64)
    b = torch.randn(20, generator=g, dtype=torch.float64)

    def residual(x: Tensor) -> Tensor:
        return A.to(dtype=x.dtype, device=x.device) @ x - b.to(dtype=x.dtype, device=x.device)

    solution = torch.linalg.lstsq(A, b).solution
    cost = float((A @ solution - b).square().sum()) / 2
    x0 = torch.zeros(5, dtype=torch.float64)
    return Problem("linear_20x5", residual, x0, False, "synthetic: A x - b, seed 1", cost)


def _underdetermined() -> Problem:
    """3 quadratic equations ``A x + B x^2 = y`` in 6 unknowns, ``y`` from a known root."""
    g = _generator(2)
    A = torch.randn(3, 6, generator=g, dtype=torch.float64)
    B = 0.5 * torch.randn(3, 6, generator=g, dtype=torch.float64)
    root = 0.5 * torch.randn(6, generator=g, dtype=torch.float64)
    y = A @ root + B @ root**2

    def residual(x: Tensor) -> Tensor:
        on_x = functools.partial(Tensor.to, dtype=x.dtype, device=x.device)
        return on_x(A) @ x + on_x(B) @ x**2 - on_x(y)

    x0 = torch.zeros(6, dtype=torch.float64)
    return Problem("underdetermined_3x6", residual, x0, True, "synthetic: A x + B x^2 - y, seed 2", 0.0)


def _nist_problems() -> list[Problem]:
    # Imported here so that the MGH and synthetic parts never depend on the data files.
    from trustls.problems import nist

    out = []
    for name in _NIST_NAMES:
        p = nist.load(name)
        for k, start in enumerate(p.starts, start=1):
            out.append(
                Problem(
                    f"{name.lower()}_start{k}",
                    p.residual,
                    start,
                    False,
                    f"NIST StRD {name} start {k}",
                    p.certified_rss / 2,
                )
            )
    return out


@functools.lru_cache(maxsize=None)
def problems() -> tuple[Problem, ...]:
    """All registered problems: MGH, then synthetic, then NIST.

    Examples:
        >>> len(problems()) >= 24
        True
    """
    synthetic = [_exponential_fit(), _linear(), _underdetermined()]
    return tuple(_mgh_problems() + synthetic + _nist_problems())


def names() -> tuple[str, ...]:
    """Names of the registered problems, in registry order."""
    return tuple(p.name for p in problems())


def get(name: str) -> Problem:
    """The registered problem called ``name``.

    Raises:
        ValueError: If ``name`` is not one of :func:`names`.

    Examples:
        >>> get("linear_20x5").m
        20
    """
    for p in problems():
        if p.name == name:
            return p
    raise ValueError(f"`name` must be one of {', '.join(names())}; got {name!r}.")
