"""The trust-region controller for nonlinear least squares.

Minimizes f(x) = ½‖r(x)‖² by the classical trust-region iteration
(Moré 1978; Conn, Gould & Toint 2000; Nocedal & Wright 2006, Alg. 4.1):

1. linearize r at x (the `CurvatureModel`): residual, cost, gradient g = Jᵀr,
   curvature B;
2. solve the subproblem min gᵀp + ½pᵀBp, ‖D⁻¹p‖ ≤ Δ approximately (the
   `SubproblemSolver`, prepared once per point);
3. evaluate r(x + p) and the ratio ρ of actual to predicted reduction;
4. accept the step when the cost decreased, update Δ (`RadiusPolicy`), and
   test for convergence (`trustls.termination`).

Non-finite residuals at a trial point are treated as a failed step: the
radius shrinks to ¼‖p‖ and the subproblem is solved again (scipy's trf does
the same). The iteration state is explicit (`TrustRegionState`, returned by
`TrustRegion.init` and advanced by `TrustRegion.step`), so that
`TrustRegionOptimizer` can drive one iteration per mini-batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from trustls._validation import check_residual, check_tolerance, check_x0
from trustls.models.base import CurvatureModel, Linearization
from trustls.models.gauss_newton import half_squared_norm
from trustls.radius import RadiusPolicy
from trustls.result import Result, Status
from trustls.scaling import BlockJacobi, Scale, apply_scale, inverse_scale, resolve_scale
from trustls.subproblem import SubproblemSolver, resolve_solver
from trustls.termination import check_step_termination, effective_tolerance

__all__ = ["Callback", "IterationInfo", "ResidualFunction", "TrustRegion", "TrustRegionState"]


class ResidualFunction(Protocol):
    """``fun(x) -> r``: a 1-D floating tensor x of length n to a 1-D tensor of length m."""

    def __call__(self, x: Tensor, /) -> Tensor: ...


@dataclass(frozen=True)
class IterationInfo:
    """What happened at one trial step; passed to the callback.

    Attributes:
        nit: outer iteration (0-based) the trial belongs to.
        nfev: residual evaluations so far, this trial included.
        x: the point after the trial (the trial point if accepted).
        cost: cost at the point the step was taken from.
        trial_cost: cost at the trial point (inf when it was not finite).
        actual_reduction, predicted_reduction, ratio: the ratio test.
        radius: the radius the step was computed for; next_radius: the update.
        step_norm: ‖D⁻¹p‖.
        accepted: whether the step was taken.
        inner_iterations, products, reason: the subproblem solver's report.
    """

    nit: int
    nfev: int
    x: Tensor
    cost: float
    trial_cost: float
    actual_reduction: float
    predicted_reduction: float
    ratio: float
    radius: float
    next_radius: float
    step_norm: float
    accepted: bool
    inner_iterations: int
    products: int
    reason: str


class Callback(Protocol):
    """``callback(info) -> bool | None``: return True to stop the solve."""

    def __call__(self, info: IterationInfo, /) -> bool | None: ...


@dataclass
class TrustRegionState:
    """Mutable state of one solve; created by `TrustRegion.init`, advanced by `TrustRegion.step`.

    ``scale`` is T for the next subproblem. A step that ends the solve leaves it
    at the previous point's T: computing it at the final point would cost a pass
    over J that no subproblem uses. ``gradient_reference`` is the largest ‖T g‖
    met so far, against which CG's forcing term measures the gradient
    (`SubproblemSolver.prepare`).
    """

    x: Tensor
    linearization: Linearization
    radius: float
    scale: Scale | None
    m: int
    initial_cost: float
    gradient_reference: float = 0.0
    nfev: int = 1
    njev: int = 1
    nit: int = 0
    inner_iterations: int = 0
    products: int = 0
    status: Status | None = None
    last: IterationInfo | None = None


def _scaled_norm(scale: Scale | None, x: Tensor) -> float:
    """‖T⁻¹x‖, the norm of x in the variables of the trust region."""
    return float(torch.linalg.vector_norm(inverse_scale(scale, x)))


def _check_positive_int(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    return value


def _check_x_scale(x_scale: object) -> float | Tensor | str | BlockJacobi | None:
    rule = "x_scale must be 'jac', a positive number, a 1-D positive tensor, a BlockJacobi or None"
    if x_scale is None or isinstance(x_scale, BlockJacobi):
        return x_scale
    if isinstance(x_scale, str):
        if x_scale != "jac":
            raise ValueError(f"{rule}, got {x_scale!r}")
        return x_scale
    if isinstance(x_scale, Tensor):
        if x_scale.ndim != 1 or not x_scale.is_floating_point() or not bool((x_scale > 0).all()):
            raise ValueError("x_scale must be a 1-D floating tensor of positive entries when a tensor")
        if not bool(torch.isfinite(x_scale).all()):
            raise ValueError("x_scale must be finite, got a tensor with NaN or inf entries")
        return x_scale
    if isinstance(x_scale, bool) or not isinstance(x_scale, (int, float)) or not 0 < x_scale < math.inf:
        raise ValueError(f"{rule}, got {x_scale!r}")
    return float(x_scale)


class TrustRegion:
    """Trust-region method for ½‖r(x)‖² with a pluggable model and subproblem solver.

    Args:
        model: the curvature provider, e.g. `GaussNewtonModel()`.
        solver: ``"cg"`` (Steihaug-Toint CG, matrix-free), ``"lstsq"`` (exact,
            one SVD of J per point) or a configured `SubproblemSolver`.
        ftol: stop when the relative cost decrease is below ``ftol`` at a
            step the model predicted well (ρ > ¼). ``None`` disables.
        xtol: stop when ‖dx‖ < xtol·(xtol + ‖x‖). ``None`` disables.
        gtol: stop when ‖Jᵀr‖∞ < gtol. ``None`` disables.
        x_scale: characteristic scale of each variable: the trust region is
            ‖p / x_scale‖ ≤ Δ. A number, a tensor of length n, or ``"jac"``
            (inverse column norms of J, never decreasing; scipy/MINPACK).
            A `BlockJacobi` partition gives block-Jacobi scaling (see
            `trustls.scaling`). ``None`` (default) takes the solver's
            ``default_x_scale``: 1 for
            ``"lstsq"`` (scipy trf's default), ``"jac"`` for ``"cg"`` (the
            Jacobi preconditioner; Ceres' default scaling).
        max_nfev: budget of residual evaluations (``None``: 100·n, scipy's).
        initial_radius: Δ₀ (``None``: ‖x0 / x_scale‖, or 1 when that is 0).
        callback: called with an `IterationInfo` after every trial; returning
            True stops the solve with status ``CALLBACK``.
        verbose: 0 silent, 1 a summary at the end, 2 a line per trial.
        radius_policy: the ratio-test constants.

    Examples:
        >>> import torch
        >>> from trustls import TrustRegion, GaussNewtonModel
        >>> def residuals(x):
        ...     return torch.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])
        >>> x0 = torch.tensor([-1.2, 1.0], dtype=torch.float64)
        >>> result = TrustRegion(GaussNewtonModel(), solver="cg").solve(residuals, x0)
        >>> result.success, round(float(result.x[0]), 6)
        (True, 1.0)
    """

    def __init__(
        self,
        model: CurvatureModel,
        solver: str | SubproblemSolver = "cg",
        *,
        ftol: float | None = 1e-8,
        xtol: float | None = 1e-8,
        gtol: float | None = 1e-8,
        x_scale: float | Tensor | str | BlockJacobi | None = None,
        max_nfev: int | None = None,
        initial_radius: float | None = None,
        callback: Callback | None = None,
        verbose: int = 0,
        radius_policy: RadiusPolicy = RadiusPolicy(),
    ):
        if not isinstance(model, CurvatureModel):
            raise TypeError(f"model must be a CurvatureModel such as GaussNewtonModel(), got {type(model).__name__}")
        self.model = model
        self.solver = resolve_solver(solver)
        self.ftol = check_tolerance("ftol", ftol)
        self.xtol = check_tolerance("xtol", xtol)
        self.gtol = check_tolerance("gtol", gtol)
        if self.ftol is None and self.xtol is None and self.gtol is None:
            raise ValueError("ftol, xtol and gtol must not all be None: nothing could stop the solve but max_nfev")
        self.x_scale = _check_x_scale(x_scale)
        self.max_nfev = _check_positive_int("max_nfev", max_nfev)
        if initial_radius is not None and (
            isinstance(initial_radius, bool)
            or not isinstance(initial_radius, (int, float))
            or not 0 < initial_radius < math.inf
        ):
            raise ValueError(f"initial_radius must be a positive finite number or None, got {initial_radius!r}")
        self.initial_radius = initial_radius
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
        self.callback = callback
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
        self.verbose = verbose
        if not isinstance(radius_policy, RadiusPolicy):
            raise TypeError(f"radius_policy must be a RadiusPolicy, got {type(radius_policy).__name__}")
        self.radius_policy = radius_policy

    def __repr__(self) -> str:
        return (
            f"TrustRegion({self.model!r}, solver={self.solver!r}, ftol={self.ftol}, xtol={self.xtol}, "
            f"gtol={self.gtol}, x_scale={self.x_scale!r}, max_nfev={self.max_nfev})"
        )

    # -- public API -------------------------------------------------------

    def solve(self, fun: ResidualFunction, x0: Tensor) -> Result:
        """Minimize ½‖fun(x)‖² from ``x0``; ``x0`` is not modified."""
        state = self.init(fun, x0)
        if self.verbose == 2:
            print(f"{'Iteration':>10}{'Total nfev':>12}{'Cost':>14}{'Cost reduction':>16}{'Step norm':>12}{'Optimality':>12}")
        while state.status is None:
            self.step(fun, state)
        result = self.result(state)
        if self.verbose >= 1:
            initial_cost = state.initial_cost
            print(result.message)
            print(
                f"Function evaluations {result.nfev}, initial cost {initial_cost:.4e}, "
                f"final cost {result.cost:.4e}, first-order optimality {result.optimality:.2e}."
            )
        return result

    def init(self, fun: ResidualFunction, x0: Tensor) -> TrustRegionState:
        """Check the inputs, evaluate and linearize at ``x0``, and return the initial state."""
        if not callable(fun):
            raise TypeError(f"fun must be callable, got {type(fun).__name__}")
        x = check_x0(x0).detach().clone()
        if isinstance(self.x_scale, Tensor) and (
            self.x_scale.shape != x.shape or self.x_scale.device != x.device
        ):
            raise ValueError(
                f"x_scale must have x0's shape {tuple(x.shape)} and device {x.device}, "
                f"got shape {tuple(self.x_scale.shape)} on {self.x_scale.device}"
            )
        with torch.no_grad():
            # A plain evaluation first, so that a malformed output gets our
            # message rather than an error from inside torch.func; it costs one
            # forward pass, counted in nfev as scipy counts fun(x0).
            r0 = check_residual(fun(x), x)
        if not bool(torch.isfinite(r0).all()):
            raise ValueError("fun(x0) must be finite, got a residual with NaN or inf entries")
        linearization = self.model.linearize(fun, x, dense=self.solver.requires_jacobian, residual=r0)
        scale = self._scale(linearization, None)
        radius = self.starting_radius(scale, x)
        state = TrustRegionState(x, linearization, radius, scale, m=r0.shape[0], initial_cost=linearization.cost)
        self._check_gradient(state)
        return state

    def step(
        self,
        fun: ResidualFunction,
        state: TrustRegionState,
        *,
        max_trials: int | None = None,
        relinearize: bool = True,
    ) -> TrustRegionState:
        """One outer iteration: trial steps until one is accepted or a test stops the solve.

        ``max_trials`` caps the trials (``TrustRegionOptimizer`` takes one per
        mini-batch); without a cap, a rejected step shrinks the radius and
        the subproblem is solved again from the same preparation. With
        ``relinearize=False`` an accepted point is not linearized (the caller
        linearizes the next mini-batch itself): ``state.linearization`` then
        still describes the previous point, and the gradient test is skipped.
        """
        if state.status is not None:
            return state
        x, lin = state.x, state.linearization
        eps = torch.finfo(x.dtype).eps
        ftol = effective_tolerance(self.ftol, eps)
        xtol = effective_tolerance(self.xtol, eps)
        max_nfev = self.max_nfev or 100 * x.shape[0]
        subproblem = lin if state.scale is None else lin.scaled(state.scale)
        gradient_norm = float(torch.linalg.vector_norm(subproblem.gradient))
        if math.isinf(gradient_norm):  # overflowed in float32 (‖g‖ > 10¹⁹): again in float64
            gradient_norm = float(torch.linalg.vector_norm(subproblem.gradient, dtype=torch.float64))
        if math.isfinite(gradient_norm):  # an overflowed norm would stick as the maximum
            state.gradient_reference = max(state.gradient_reference, gradient_norm)
        prepared = self.solver.prepare(subproblem, state.gradient_reference)
        x_norm = float(torch.linalg.vector_norm(x))
        radius = state.radius
        trials = 0
        while True:
            step = self.solver.solve(prepared, radius)
            trials += 1
            state.inner_iterations += step.iterations
            state.products += step.products
            p = apply_scale(state.scale, step.step)
            x_new = x + p
            with torch.no_grad():
                r_new = check_residual(fun(x_new), x, state.m)
            state.nfev += 1
            cost_new = half_squared_norm(r_new)
            status = None
            if math.isfinite(cost_new):
                actual = lin.cost - cost_new
                noise = self.radius_policy.rounding_noise * eps * lin.cost
                ratio = self.radius_policy.ratio(actual, step.predicted_reduction, noise)
                next_radius = self.radius_policy.update(
                    radius, ratio=ratio, step_norm=step.norm, hits_boundary=step.hits_boundary
                )
                p_norm = float(torch.linalg.vector_norm(p))
                status = check_step_termination(actual, lin.cost, p_norm, x_norm, ratio, ftol, xtol)
                accepted = self.radius_policy.accepts(actual, ratio, noise)
                if accepted and actual <= 0 and status is None:
                    status = Status.NOISE_FLOOR
            else:
                cost_new, actual, ratio = math.inf, -math.inf, 0.0
                # A step that is itself not finite (the subproblem overflowed)
                # has no length to shrink from: shrink the radius instead.
                length = step.norm if math.isfinite(step.norm) else radius
                next_radius = self.radius_policy.shrink_factor * length
                accepted = False
            info = IterationInfo(
                nit=state.nit, nfev=state.nfev, x=x_new if accepted else x, cost=lin.cost, trial_cost=cost_new,
                actual_reduction=actual, predicted_reduction=step.predicted_reduction, ratio=ratio,
                radius=radius, next_radius=next_radius, step_norm=step.norm, accepted=accepted,
                inner_iterations=step.iterations, products=step.products, reason=step.reason,
            )
            state.last = info
            if self.verbose == 2:
                print(
                    f"{state.nit:>10}{state.nfev:>12}{lin.cost:>14.4e}{max(actual, 0.0) if accepted else 0.0:>16.2e}"
                    f"{step.norm:>12.2e}{float(lin.gradient.abs().max()):>12.2e}"
                )
            if self.callback is not None and self.callback(info) is True:
                status = Status.CALLBACK
            radius = next_radius
            if accepted or status is not None:
                break
            if radius <= eps * (1.0 + _scaled_norm(state.scale, x)):
                # No step longer than the rounding of x remains. After a finite
                # trial that is convergence to working precision (xtol at eps);
                # after a non-finite one the region around x is unusable.
                status = Status.XTOL if math.isfinite(cost_new) else Status.RADIUS_COLLAPSED
                break
            if state.nfev >= max_nfev:
                status = Status.MAX_NFEV
                break
            if max_trials is not None and trials >= max_trials:
                break
        state.radius = radius
        relinearized = accepted and relinearize
        if accepted:
            state.x = x_new
            if relinearize:
                state.linearization = self.model.linearize(
                    fun, x_new, dense=self.solver.requires_jacobian, residual=r_new
                )
                state.njev += 1
        state.nit += 1
        state.status = status
        if status is None and relinearize:
            self._check_gradient(state)
            if state.status is None and state.nfev >= max_nfev:
                state.status = Status.MAX_NFEV
        # The scale serves the next subproblem only: after a stop, its column
        # norms (a pass over J) would be wasted.
        if relinearized and state.status is None:
            state.scale = self._scale(state.linearization, state.scale, state.nit)
        return state

    def result(self, state: TrustRegionState) -> Result:
        """The `Result` of a state (normally a finished one)."""
        lin = state.linearization
        return Result(
            x=state.x,
            cost=lin.cost,
            fun=lin.residual,
            grad=lin.gradient,
            optimality=float(lin.gradient.abs().max()),
            nfev=state.nfev,
            njev=state.njev,
            nit=state.nit,
            status=state.status if state.status is not None else Status.MAX_NFEV,
            radius=state.radius,
            inner_iterations=state.inner_iterations,
            products=state.products,
        )

    # -- helpers ----------------------------------------------------------

    def _check_gradient(self, state: TrustRegionState) -> None:
        if self.gtol is not None and float(state.linearization.gradient.abs().max()) < self.gtol:
            state.status = Status.GTOL

    def starting_radius(self, scale: Scale | None, x: Tensor) -> float:
        """Δ₀: ``initial_radius``, else ‖T⁻¹x‖ (scipy's choice), else 1 when x = 0."""
        x_scaled_norm = _scaled_norm(scale, x)
        return self.initial_radius or (x_scaled_norm if x_scaled_norm > 0 else 1.0)

    @property
    def resolved_x_scale(self) -> float | Tensor | str | BlockJacobi:
        """``x_scale``, or the solver's default when it is ``None``."""
        return self.solver.default_x_scale if self.x_scale is None else self.x_scale

    def _scale(self, linearization: Linearization, previous: Scale | None, iteration: int = 0) -> Scale | None:
        return resolve_scale(self.resolved_x_scale, self.model, linearization, previous, iteration)
