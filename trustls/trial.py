"""The trials of a trust-region iteration: propose → evaluate → decide.

`Trial.run` solves the subproblem for a radius from the iteration's one
preparation, maps the step back to x (`trustls.bounds` selects a strictly
feasible step when there are bounds), evaluates the model there, and decides
(`trustls.decision`), reading the decision once; an accepted point is
linearized, and a non-finite gradient there turns the trial into a failure
(with a `UserWarning`: a finite cost whose derivative is NaN or inf is the
user's function to fix, e.g. a ``torch.where`` whose other branch has a NaN
gradient). `Trial.repeat` runs trials, each at the radius the last one left,
until one is accepted or a test stops the solve: the budget of calls, the
callback, or a radius below the rounding of x.

After a non-finite trial the radius is cut back by the failure, not by the
model: the steps accepted after it are short because the region beyond is
unusable, and ``ftol`` and ``xtol`` would read that as convergence (a solve
stopped at the edge of a region of NaN derivatives reported success there).
So while the radius is cut (``cut``: from a non-finite trial until the
model limits the step again, by a step accepted inside the region or a
finite trial that the ratio test refuses) those two tests do not stop a
step on the boundary; the solve goes on, and if every step near that edge
fails the same way the radius collapses (``RADIUS_COLLAPSED``) or the
budget ends it, honestly.

Nor do they stop a step on the boundary that decreased the cost by more
than the rounding allowance δ as the model predicted (ρ > ``expand_above``):
the radius, not convergence, made it short, and the ratio test is about to
double it (at the noise floor, where ρ ≈ 1 by δ's shift alone, they do).
MINPACK tests xtol on the updated radius for the same reason (``lmder``);
scipy's trf tests the step, and a small ``initial_radius`` (10⁻⁸ on
Rosenbrock) then stopped at x0 with ``xtol`` success after one step.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from trustls._report import print_trial
from trustls._start import supplies_jacobian
from trustls.bounds import optimality
from trustls.decision import host_floats, trial_decision
from trustls.function import HALF, BudgetExhausted, CountedFunction, round_to
from trustls.models.base import Linearization
from trustls.radius import noise_level
from trustls.result import IterationInfo, Status
from trustls.state import TrustRegionState
from trustls.termination import cosine_optimality, effective_tolerance, gradient_test

if TYPE_CHECKING:
    from trustls.trust_region import TrustRegion

__all__ = ["Outcome", "Trial", "callback_stops", "converged_at_resolution"]

# The tests on the step's length and the cost's change, which a step limited by the radius fools.
_STEP_TESTS = (Status.FTOL, Status.XTOL, Status.FTOL_XTOL)
_NONFINITE_DERIVATIVE = (
    "fun's derivative is not finite (NaN or inf) at a trial point where its value is finite (e.g. sqrt at 0, or a "
    "torch.where whose other branch has a NaN gradient there): the step was refused and the radius shrunk; a solve "
    "that cannot get past such points ends without success (RADIUS_COLLAPSED or MAX_NFEV)"
)
_NONFINITE_JACOBIAN = (
    "the Jacobian you supply (least_squares' jac, GaussNewtonModel's jacobian) is not finite (NaN or inf) at a trial "
    "point where fun's value is finite: the step was refused and the radius shrunk; a solve that cannot get past such "
    "points ends without success (RADIUS_COLLAPSED or MAX_NFEV)"
)


@dataclass(frozen=True)
class Outcome:
    """One trial's outcome: the record for the callback, a termination status, the new linearization,
    whether the trial point's cost and gradient were finite, and the noise floor's step bound after it."""

    info: IterationInfo
    status: Status | None
    linearization: Linearization | None
    x_scaled_norm: float
    finite: bool = True
    noise_step: float = math.inf
    cut: bool = False


class Trial:
    """The trials of one outer iteration: propose → evaluate → decide, from one preparation."""

    def __init__(self, method: TrustRegion, state: TrustRegionState, f: CountedFunction, problem: Any, prepared: Any,
                 relinearize: bool):
        self.method, self.state, self.f, self.problem, self.prepared = method, state, f, problem, prepared
        self.relinearize = relinearize
        self.dense = method.solver.requires_jacobian
        self.eps = torch.finfo(state.dtype).eps
        self.noise = noise_level(method.radius_policy.rounding_noise, self.eps)  # δ/f (`trustls.radius`)
        self.ftol, self.xtol = effective_tolerance(method.ftol, self.eps), effective_tolerance(method.xtol, self.eps)
        self.x_norm = torch.linalg.vector_norm(state.x)
        self.x_scaled_norm = problem.norm(state.x)
        self.counters = dict(inner_iterations=state.inner_iterations, products=state.products, njev=state.njev)
        self.solve_calls: int | None = None  # the calls a subproblem solve may make (set by `repeat`)
        self.trial_calls: int | None = None  # and a whole trial

    def run(self, radius: float, noise_step: float = math.inf, cut: bool = False) -> Outcome:
        method, state, lin, bounds = self.method, self.state, self.state.linearization, self.state.bounds
        expand_above = method.radius_policy.expand_above
        with self.f.capped(self.solve_calls):  # products that call fun (`trustls.function`) stay in the budget
            step = method.solver.solve(self.prepared, radius)
        self.counters["inner_iterations"] += step.iterations
        self.counters["products"] += step.products
        p, predicted, step_norm, hits_boundary = self.problem.propose(step, radius)
        x_new = state.x + p
        if bounds is not None:  # rounded to x0's dtype first: rounding after the move could undo it
            x_new = bounds.strictly_feasible(x_new, rstep=0.0, dtype=state.dtype)
        x_new = round_to(x_new, state.dtype)
        evaluation = method.model.evaluate(self.f, x_new, state.context, keep=self.relinearize)
        inputs = (lin.cost, evaluation.cost, predicted, step_norm, torch.linalg.vector_norm(x_new - state.x),
                  self.x_norm, self.x_scaled_norm, hits_boundary)
        if state.x.device.type == "cpu":  # decide in floats (`trustls.decision`): the one read of the trial
            inputs = host_floats(*inputs)
        cost, trial_cost, predicted, step_norm, x_step_norm, x_norm, x_scaled_norm, hits_boundary = inputs
        decision = trial_decision(
            method.radius_policy, cost=cost, trial_cost=trial_cost, predicted_reduction=predicted,
            step_norm=step_norm, radius=radius, hits_boundary=hits_boundary, x_step_norm=x_step_norm,
            x_norm=x_norm, eps=self.eps, ftol=self.ftol, xtol=self.xtol, strict=state.dtype in HALF,
            noise_step=noise_step,
        )
        decision, (x_scaled_norm, cost, hits_boundary) = decision.read(x_scaled_norm, cost, hits_boundary)  # one read
        status, accepted, next_radius, new_lin = decision.status, decision.moves > 0, decision.next_radius, None
        finite = math.isfinite(decision.trial_cost)
        if accepted and self.relinearize:
            # Within the budget: a point whose linearization would pass it is not taken (`repeat`).
            with self.f.capped(self.trial_calls):
                new_lin = method.model.linearize(self.f, evaluation, state.context, dense=self.dense)
                cosine = method.gtol_test == "cosine" and method.gtol is not None
                gradient_max, finite = gradient_test(
                    new_lin.gradient, cosine_optimality(new_lin, method.model) if cosine else None
                )
            self.counters["njev"] += 1
            if not finite:  # a failed trial: shrink and try again from x
                message = _NONFINITE_JACOBIAN if supplies_jacobian(method.model) else _NONFINITE_DERIVATIVE
                warnings.warn(message, UserWarning, stacklevel=2)
                accepted, new_lin, status = False, None, None
                next_radius = method.radius_policy.shrink_factor * decision.step_norm
        # A decrease above the rounding allowance δ that the model predicted well: a sound step the
        # ratio test is about to expand (at the noise floor ρ is ≈ 1 by its shift alone).
        expanding = decision.ratio > expand_above and decision.actual_reduction > self.noise * cost
        if accepted and hits_boundary and status in _STEP_TESTS and (cut or expanding):
            status = None  # short because the radius, not convergence, limited it (module docstring)
        # The gradient test at the accepted point, when no step test stopped (as scipy: a step test
        # that fires ends the iteration first), a step test cleared just above included.
        if new_lin is not None and status is None and method.gtol is not None:
            if bounds is not None:
                gradient_max = float(optimality(new_lin, bounds))
            if gradient_max < method.gtol:
                status = Status.GTOL
        # Set by a non-finite trial; cleared once the model limits the step again: a step taken
        # inside the region, or a finite trial that the ratio test refused.
        cut = (cut or not finite) and not (accepted and not hits_boundary) and not (finite and not accepted)
        info = IterationInfo(
            nit=state.nit + 1, nfev=state.nfev + self.f.calls, x=x_new if accepted else state.x,
            fun=evaluation.outputs if accepted else lin.residual, cost=decision.trial_cost if accepted else cost,
            previous_cost=cost, trial_cost=decision.trial_cost, actual_reduction=decision.actual_reduction,
            predicted_reduction=decision.predicted_reduction, ratio=decision.ratio, radius=radius,
            next_radius=next_radius, step_norm=decision.step_norm, accepted=accepted,
            inner_iterations=step.iterations, products=step.products, reason=step.reason,
        )
        if method.verbose == 2:  # scipy's columns: the point after the trial, and the trial's ‖Δx‖
            if accepted:
                if new_lin is None:  # not linearized here (relinearize=False: the optimizer's mini-batches)
                    shown = math.nan
                elif bounds is not None:
                    shown = float(optimality(new_lin, bounds))
                else:
                    shown = float(new_lin.gradient.abs().max())
                row = (decision.trial_cost, max(decision.actual_reduction, 0.0), shown)
            else:
                row = (cost, 0.0, float(self.problem.optimality))
            print_trial(state.nit + 1, info.nfev, row[0], row[1], x_step_norm, row[2])
        noise_step = decision.noise_step if accepted else noise_step
        return Outcome(info, status, new_lin, x_scaled_norm, finite, noise_step, cut)

    def repeat(self, max_nfev: int, max_trials: int | None) -> tuple[float, Status | None, Outcome | None]:
        """Trials from the state's radius until one is accepted, a test stops the solve, or ``max_trials`` ran.

        Returns the next radius, the status (``None`` while the solve goes on)
        and the last outcome (``None`` when the budget left no trial). A trial
        runs only while ``max_nfev`` keeps its calls: one evaluation, and the
        linearization at an accepted point.
        """
        method, state, f = self.method, self.state, self.f
        tally = state.tally
        reserve = tally.per_evaluation + (tally.per_linearization if self.relinearize else 0)
        # The calls, counted as f.calls, that a subproblem solve may make (products that call fun),
        # and those the whole trial may make.
        self.solve_calls, self.trial_calls = max_nfev - reserve - state.nfev, max_nfev - state.nfev
        radius, trials, status, outcome = state.radius, 0, None, None
        while True:
            if state.nfev + f.calls + reserve > max_nfev:
                status = Status.MAX_NFEV
                break
            carried = state if outcome is None else outcome
            try:
                outcome = self.run(radius, carried.noise_step, carried.cut)
            except BudgetExhausted:  # products (solve, linearization) that call fun ran out of calls
                status = Status.MAX_NFEV  # and x stays where it is
                break
            trials += 1
            status, radius = outcome.status, outcome.info.next_radius
            if method.callback is not None and callback_stops(method.callback, outcome.info):
                status = Status.CALLBACK
            if outcome.info.accepted or status is not None:
                break
            if radius <= self.eps * (1.0 + outcome.x_scaled_norm):
                # No step longer than the rounding of x remains. After a finite
                # trial that is convergence to working precision (xtol at eps, or,
                # with xtol disabled, no decrease measurable); after a non-finite one
                # (cost or gradient) the region around x is unusable.
                status = converged_at_resolution(method.xtol) if outcome.finite else Status.RADIUS_COLLAPSED
                break
            if max_trials is not None and trials >= max_trials:
                break
        return radius, status, outcome


def converged_at_resolution(xtol: float | None) -> Status:
    """The status of a radius collapsed below the rounding of x after finite trials: ``XTOL`` (the
    step test at its floor, eps), or ``NOISE_FLOOR`` when the user disabled ``xtol``, which a
    stop must not name."""
    return Status.XTOL if xtol is not None else Status.NOISE_FLOOR


def callback_stops(callback: Callable[[IterationInfo], Any], info: IterationInfo) -> bool:
    """Call ``callback(info)``: whether it asks to stop (a true value, or `StopIteration`, as scipy).

    A callback that modifies ``info.x`` in place (the solver's iterate) is refused.
    """
    version = info.x._version
    try:
        value = callback(info)
    except StopIteration:
        value = True
    if info.x._version != version:
        raise ValueError("callback must not modify info.x in place: it is the solver's iterate (copy it first)")
    if value is None:
        return False
    try:
        return bool(value)
    except (RuntimeError, ValueError) as error:  # a tensor of several elements
        raise TypeError(f"callback must return a bool or None, got {type(value).__name__}: {error}") from None
