"""``least_squares``: the scipy-shaped entry point."""

from __future__ import annotations

from torch import Tensor

from trustls.models.gauss_newton import GaussNewtonModel
from trustls.result import Result
from trustls.subproblem import SubproblemSolver
from trustls.trust_region import Callback, ResidualFunction, TrustRegion

__all__ = ["least_squares"]


def least_squares(
    fun: ResidualFunction,
    x0: Tensor,
    *,
    solver: str | SubproblemSolver = "cg",
    ftol: float | None = 1e-8,
    xtol: float | None = 1e-8,
    gtol: float | None = 1e-8,
    x_scale=None,
    max_nfev: int | None = None,
    callback: Callback | None = None,
    verbose: int = 0,
) -> Result:
    """Minimize ½‖fun(x)‖² from ``x0`` with a Gauss-Newton trust-region method.

    Shorthand for ``TrustRegion(GaussNewtonModel(), solver, ...).solve(fun, x0)``;
    the arguments mean what they mean in `TrustRegion` and in
    ``scipy.optimize.least_squares``.

    Examples:
        >>> import torch
        >>> import trustls
        >>> t = torch.linspace(0, 1, 20, dtype=torch.float64)
        >>> y = 2.0 * torch.exp(-1.5 * t)
        >>> result = trustls.least_squares(lambda b: b[0] * torch.exp(-b[1] * t) - y,
        ...                                torch.tensor([1.0, 1.0], dtype=torch.float64), solver="lstsq")
        >>> [round(v, 6) for v in result.x.tolist()]
        [2.0, 1.5]
    """
    controller = TrustRegion(
        GaussNewtonModel(),
        solver=solver,
        ftol=ftol,
        xtol=xtol,
        gtol=gtol,
        x_scale=x_scale,
        max_nfev=max_nfev,
        callback=callback,
        verbose=verbose,
    )
    return controller.solve(fun, x0)
