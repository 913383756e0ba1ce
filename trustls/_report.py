"""What a solve reports: the `Result` of a state, and the lines that ``verbose`` prints.

`state_result` assembles `TrustRegion.result` from a `TrustRegionState`: the
point in the dtype of ``x0``, the cost, residual, gradient and Jacobian of the
state's linearization, the first-order optimality (scipy's: ‖g‖∞, or
‖v ⊙ g‖∞ with bounds, `trustls.bounds.optimality`), the bounds active within
``xtol``, and the counters.

``verbose=2`` prints a table with a row per trial, in scipy's
``least_squares`` columns (iteration, total nfev, cost, cost reduction, step
norm, optimality); ``verbose >= 1`` prints the status message and a summary
at the end. The header and the rows are written here together, so that their
columns line up.
"""

from __future__ import annotations

import torch

from trustls.bounds import optimality
from trustls.result import Result, Status
from trustls.state import TrustRegionState
from trustls.termination import effective_tolerance

__all__ = ["print_header", "print_summary", "print_trial", "state_result"]


def print_header() -> None:
    """The header of the ``verbose=2`` table."""
    print(f"{'Iteration':>10}{'Total nfev':>12}{'Cost':>14}{'Cost reduction':>16}{'Step norm':>12}{'Optimality':>12}")


def print_trial(nit: int, nfev: int, cost: float, reduction: float, step_norm: float, optimality: float) -> None:
    """One row of the ``verbose=2`` table, after the trial of iteration ``nit``, with scipy's columns: the
    cost and optimality at the point the trial left (x itself where rejected, ``reduction`` then 0), and
    the trial's step ‖Δx‖ in x's units."""
    print(f"{nit:>10}{nfev:>12}{cost:>14.4e}{reduction:>16.2e}{step_norm:>12.2e}{optimality:>12.2e}")


def print_summary(result: Result) -> None:
    """The ``verbose >= 1`` lines at the end of a solve: the status message and the counts."""
    print(result.message)
    print(
        f"Function evaluations {result.nfev}, initial cost {result.initial_cost:.4e}, "
        f"final cost {result.cost:.4e}, first-order optimality {result.optimality:.2e}."
    )


def state_result(state: TrustRegionState, xtol: float | None) -> Result:
    """The `Result` of ``state``; ``xtol`` (the controller's) decides which bounds are active."""
    lin = state.linearization
    if lin is None:
        raise ValueError("state must hold a linearization at x to give a result, got None")
    matrix = lin.jacobian_matrix
    bounds = state.bounds
    if bounds is None:
        active = torch.zeros(state.x.shape, dtype=torch.int64, device=state.x.device)
    else:
        xtol = effective_tolerance(xtol, torch.finfo(state.dtype).eps)
        active = bounds.active(state.x, xtol).to(torch.int64)
    return Result(
        x=state.x.to(state.dtype) if state.x.dtype != state.dtype else state.x,
        cost=float(lin.cost),
        fun=lin.residual,
        grad=lin.gradient,
        optimality=float(optimality(lin, bounds)),
        jac=matrix if matrix is not None else lin.jacobian,
        active_mask=active,
        nfev=state.nfev,
        njev=state.njev,
        nit=state.nit,
        status=state.status if state.status is not None else Status.UNFINISHED,
        radius=state.radius,
        inner_iterations=state.inner_iterations,
        products=state.products,
        initial_cost=state.initial_cost,
    )
