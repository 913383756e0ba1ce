"""The trust-region controller for nonlinear least squares.

Minimizes the model's cost, f(x) = ½‖r(x)‖² for `GaussNewtonModel`, by the
classical trust-region iteration (Moré 1978; Conn, Gould & Toint 2000;
Nocedal & Wright 2006, Alg. 4.1). Each outer iteration (`TrustRegion.step`)
linearizes once and then repeats a trial in three phases until a step is
taken or a test stops the solve:

1. **propose**: the subproblem min gᵀp + ½pᵀBp, ‖T⁻¹p‖ ≤ Δ, in the scaled
   variables (`trustls.scaling`; with box bounds, the Coleman-Li scaled and
   reflected step of `trustls.bounds`), by the `SubproblemSolver`, prepared
   once per point;
2. **evaluate**: the model's cost at x + p (`CurvatureModel.evaluate`), with
   what a linearization there can reuse;
3. **decide**: the ratio ρ of actual to predicted reduction, the radius
   update (`RadiusPolicy`) and the termination tests (`trustls.termination`),
   as tensors; the host reads them once per trial.

A trial point whose cost is not finite, or whose gradient is not, is a failed
trial: the radius shrinks to ¼‖p‖ and the subproblem is solved again (scipy's
trf does the same for the residual). The configuration is immutable and the
state explicit: `TrustRegion.init` returns a frozen `TrustRegionState` and
`TrustRegion.step` returns the next one, so an exception raised by the user's
function leaves the caller's state as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from trustls._validation import check_tolerance, check_x0
from trustls.batched import BatchResult, solve_batch
from trustls.function import CountedFunction
from trustls.models.base import CurvatureModel, Linearization
from trustls.radius import RadiusPolicy, noise_level
from trustls.result import IterationInfo, Result, Status
from trustls.scaling import ScalePolicy, Scaling, resolve_x_scale
from trustls.subproblem import SubproblemSolver, resolve_solver
from trustls.termination import effective_tolerance, step_termination

__all__ = ["Callback", "IterationInfo", "ResidualFunction", "TrustRegion", "TrustRegionState"]

_HALF = (torch.float16, torch.bfloat16)


class ResidualFunction(Protocol):
    """``fun(x) -> r``: a 1-D floating tensor x of length n to a 1-D tensor of length m."""

    def __call__(self, x: Tensor, /) -> Tensor: ...


class Callback(Protocol):
    """``callback(info) -> bool | None``: return a true value (or raise `StopIteration`) to stop."""

    def __call__(self, info: IterationInfo, /) -> Any: ...


@dataclass(frozen=True)
class TrustRegionState:
    """The state of one solve: returned by `TrustRegion.init`, advanced by `TrustRegion.step`.

    Attributes:
        x: the current point, in the working dtype (float32 for half-precision
            ``x0``, whose values it always holds exactly).
        linearization: the model linearized at ``x`` (``None`` after a step
            taken with ``relinearize=False``).
        radius: the trust-region radius Δ, in the scaled variables.
        scaling: T at ``x`` (`trustls.scaling`); after a step that ends the
            solve, T of the previous point, since T serves the next subproblem only.
        solver_state: what the subproblem solver carries from point to point.
        context: the model's per-solve working state (`CurvatureModel.start`).
        dtype: the dtype of ``x0``, which the result takes.
        initial_cost: the cost at ``x0``.
        nfev, njev, nit, inner_iterations, products: counters (`Result`).
        status: the `Status` that stopped the solve, ``None`` while running.
        last: the `IterationInfo` of the last trial.
    """

    x: Tensor
    linearization: Linearization | None
    radius: float
    scaling: Scaling
    solver_state: Any
    context: Any
    dtype: torch.dtype
    initial_cost: float
    nfev: int = 0
    njev: int = 1
    nit: int = 0
    inner_iterations: int = 0
    products: int = 0
    status: Status | None = None
    last: IterationInfo | None = None


def _check_positive_int(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    return value


def _scalar(value: float | Tensor, like: Tensor) -> Tensor:
    """A 0-d float64 tensor on ``like``'s device; a host float is written there by a fill, not a copy."""
    if isinstance(value, Tensor):
        return value.to(dtype=torch.float64)
    return torch.full((), float(value), dtype=torch.float64, device=like.device)


def _stops(value: object) -> bool:
    """Whether a callback's return value asks to stop: any true value (``True``, 1, a true tensor)."""
    if value is None:
        return False
    try:
        return bool(value)
    except (RuntimeError, ValueError) as error:  # a tensor of several elements
        raise TypeError(f"callback must return a bool or None, got {type(value).__name__}: {error}") from None


class TrustRegion:
    """Trust-region method with a pluggable model and subproblem solver.

    Args:
        model: the curvature provider, e.g. `GaussNewtonModel()`.
        solver: ``"cg"`` (Steihaug-Toint CG, matrix-free), ``"lstsq"`` (exact,
            one SVD of J per point) or a configured `SubproblemSolver`.
        ftol: stop when the relative cost decrease is below ``ftol`` at a
            step the model predicted well (ρ > ¼). ``None`` disables.
        xtol: stop when ‖dx‖ < xtol·(xtol + ‖x‖). ``None`` disables.
        gtol: stop when ‖g‖∞ < gtol. ``None`` disables.
        x_scale: characteristic scale of each variable: the trust region is
            ‖p / x_scale‖ ≤ Δ. A number, a 1-D sequence of length n (tensor,
            list or numpy array), or ``"jac"`` (inverse column norms of J, never
            decreasing; scipy/MINPACK). A `BlockJacobi` partition gives
            block-Jacobi scaling (see `trustls.scaling`). ``None`` (default)
            takes the solver's ``default_x_scale``: 1 for ``"lstsq"`` (scipy
            trf's default), ``"jac"`` for ``"cg"`` (the Jacobi preconditioner;
            Ceres' default scaling).
        max_nfev: budget of calls of the residual function, all of them
            (``None``: 100·n, scipy's).
        initial_radius: Δ₀ (``None``: ‖x0 / x_scale‖, or 1 when that is 0).
        callback: called with an `IterationInfo` after every trial; returning
            a true value or raising `StopIteration` stops the solve with
            status ``CALLBACK``.
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
        x_scale: Any = None,
        max_nfev: int | None = None,
        initial_radius: float | None = None,
        callback: Callback | None = None,
        verbose: int = 0,
        radius_policy: RadiusPolicy = RadiusPolicy(),
    ):
        if not isinstance(model, CurvatureModel):
            raise TypeError(f"model must be a CurvatureModel such as GaussNewtonModel(), got {type(model).__name__}")
        self._options = dict(
            model=model, solver=solver, ftol=ftol, xtol=xtol, gtol=gtol, x_scale=x_scale, max_nfev=max_nfev,
            initial_radius=initial_radius, callback=callback, verbose=verbose, radius_policy=radius_policy,
        )
        self.model = model
        self.solver = resolve_solver(solver)
        self.ftol = check_tolerance("ftol", ftol)
        self.xtol = check_tolerance("xtol", xtol)
        self.gtol = check_tolerance("gtol", gtol)
        if self.ftol is None and self.xtol is None and self.gtol is None:
            raise ValueError("ftol, xtol and gtol must not all be None: nothing could stop the solve but max_nfev")
        self.x_scale = resolve_x_scale(x_scale)
        self.max_nfev = _check_positive_int("max_nfev", max_nfev)
        if initial_radius is not None and (
            isinstance(initial_radius, bool)
            or not isinstance(initial_radius, (int, float))
            or not 0 < initial_radius < math.inf
        ):
            raise ValueError(f"initial_radius must be a positive finite number or None, got {initial_radius!r}")
        self.initial_radius = None if initial_radius is None else float(initial_radius)
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

    def replace(self, **changes: Any) -> TrustRegion:
        """A new `TrustRegion` with the same options but ``changes`` (``dataclasses.replace``'s role).

        Examples:
            >>> from trustls import GaussNewtonModel
            >>> TrustRegion(GaussNewtonModel(), ftol=1e-6).replace(solver="lstsq").ftol
            1e-06
        """
        return TrustRegion(**{**self._options, **changes})

    @property
    def scale_policy(self) -> ScalePolicy:
        """The resolved ``x_scale``: the given one, or the solver's default."""
        return self.x_scale if self.x_scale is not None else resolve_x_scale(self.solver.default_x_scale)

    # -- public API -------------------------------------------------------

    def solve(self, fun: ResidualFunction, x0: Tensor) -> Result:
        """Minimize the model's cost of ``fun`` from ``x0``; ``x0`` is not modified."""
        state = self.init(fun, x0)
        if self.verbose == 2:
            print(f"{'Iteration':>10}{'Total nfev':>12}{'Cost':>14}{'Cost reduction':>16}{'Step norm':>12}{'Optimality':>12}")
        while state.status is None:
            state = self.step(fun, state)
        result = self.result(state)
        if self.verbose >= 1:
            print(result.message)
            print(
                f"Function evaluations {result.nfev}, initial cost {result.initial_cost:.4e}, "
                f"final cost {result.cost:.4e}, first-order optimality {result.optimality:.2e}."
            )
        return result

    def solve_batch(self, fun: Any, x0: Tensor, *, x_scale: Any = None, compact: bool = False) -> BatchResult:
        """Solve B independent problems at once: ``x0`` is (B, n), ``fun`` maps (B, n) to (B, m).

        Row b of ``fun(x)`` must depend on ``x[b]`` only; each problem gets its
        own radius, counters and status, with the steps and decisions of
        `solve` (see `trustls.batched` and docs/batched.md). ``fun`` receives
        the whole batch, finished problems keeping their x, unless
        ``compact=True``: then it is called as ``fun(x, rows)`` on the running
        problems ``rows`` only. ``x_scale`` overrides the controller's and may
        also be a (B, n) tensor. Returns a `BatchResult`.

        Examples:
            >>> import torch
            >>> from trustls import GaussNewtonModel
            >>> t = torch.linspace(0, 1, 8, dtype=torch.float64)
            >>> y = torch.stack([2 * torch.exp(-t), 3 * torch.exp(-2 * t)])  # two problems
            >>> fit = TrustRegion(GaussNewtonModel(), solver="lstsq").solve_batch(
            ...     lambda x: x[:, :1] * torch.exp(-x[:, 1:] * t) - y, torch.ones(2, 2, dtype=torch.float64))
            >>> fit.success.tolist(), fit.x.round(decimals=6).tolist()
            ([True, True], [[2.0, 1.0], [3.0, 2.0]])
        """
        return solve_batch(self, fun, x0, x_scale=x_scale, compact=compact)

    def init(self, fun: ResidualFunction, x0: Tensor) -> TrustRegionState:
        """Check the inputs, evaluate and linearize at ``x0``, and return the initial state."""
        if not callable(fun):
            raise TypeError(f"fun must be callable, got {type(fun).__name__}")
        x0 = check_x0(x0)
        dtype = x0.dtype
        policy = self.scale_policy
        policy.check(x0)
        # Half precision: iterate in float32 on values x0's dtype holds exactly.
        x = x0.detach().to(torch.float32) if dtype in _HALF else x0.detach().clone()
        f = self._function(fun, dtype)
        dense = self.solver.requires_jacobian
        context = self.model.start(f, x, dense=dense)
        evaluation = self.model.evaluate(f, x, context, keep=True)
        if not bool(torch.isfinite(evaluation.outputs).all()):
            raise ValueError("fun(x0) must be finite, got a residual with NaN or inf entries")
        if not bool(torch.isfinite(evaluation.cost)):
            raise ValueError(
                "the cost at x0 must be finite, got one that overflows float64 (residual entries near 1e154 or "
                "beyond): rescale fun"
            )
        if self.max_nfev is not None and self.max_nfev < f.calls + self.model.linearization_calls(context, dense=dense):
            raise ValueError(
                f"max_nfev must allow the evaluation and linearization at x0 "
                f"({f.calls + self.model.linearization_calls(context, dense=dense)} calls of fun), got {self.max_nfev}"
            )
        linearization = self.model.linearize(f, evaluation, context, dense=dense)
        return self.start(linearization, context=context, dtype=dtype, nfev=f.calls)

    def start(
        self, linearization: Linearization, *, context: Any = None, dtype: torch.dtype | None = None, nfev: int = 1
    ) -> TrustRegionState:
        """The initial state at ``linearization.x`` from a linearization built elsewhere.

        `init` calls it after evaluating ``fun``; `TrustRegionOptimizer` calls it
        with the linearization of its closure's graph. ``nfev`` counts the calls
        of the function that built the linearization.
        """
        x = linearization.x
        gradient_max, finite = self._gradient_check(linearization)
        if not finite:
            raise ValueError(
                "the gradient of the cost at x0 must be finite, got NaN or inf entries (is fun differentiable "
                "at x0? e.g. sqrt at 0, or torch.where with a branch whose gradient is NaN there)"
            )
        scaling = self.scale_policy.scaling(self.model, linearization, None, 0)
        x_scaled_norm = float(scaling.norm(x))
        radius = self.initial_radius or (x_scaled_norm if x_scaled_norm > 0 else 1.0)
        cost = float(linearization.cost)
        status = Status.GTOL if self.gtol is not None and gradient_max < self.gtol else None
        dtype = x.dtype if dtype is None else dtype
        return TrustRegionState(x, linearization, radius, scaling, None, context, dtype, cost, nfev=nfev, status=status)

    def relinearized(
        self, state: TrustRegionState, linearization: Linearization, *, nfev: int = 1, iteration: int | None = None
    ) -> TrustRegionState:
        """``state`` at a new linearization (of a new mini-batch, say), with T updated for it.

        The radius, the solver's state and the counters carry over; the
        gradient test is not applied (a mini-batch's gradient says little about
        convergence). ``nfev`` counts the calls that built the linearization;
        ``iteration`` is the point's index for the scale's refresh schedule
        (default ``state.nit``; `TrustRegion.solve` counts accepted points).
        """
        if state.linearization is not None and linearization.x.shape != state.x.shape:
            raise ValueError(
                f"linearization must be at a point of the state's shape {tuple(state.x.shape)}, "
                f"got {tuple(linearization.x.shape)}"
            )
        _, finite = self._gradient_check(linearization)
        if not finite:
            raise ValueError("the gradient of the cost must be finite, got NaN or inf entries")
        iteration = state.nit if iteration is None else iteration
        scaling = self.scale_policy.scaling(self.model, linearization, state.scaling, iteration)
        return replace(
            state, x=linearization.x, linearization=linearization, scaling=scaling, nfev=state.nfev + nfev,
            njev=state.njev + 1, status=None,
        )

    def step(
        self,
        fun: ResidualFunction,
        state: TrustRegionState,
        *,
        max_trials: int | None = None,
        relinearize: bool = True,
    ) -> TrustRegionState:
        """One outer iteration: trials until one is accepted or a test stops the solve.

        Returns the next state; ``state`` itself is not modified. ``max_trials``
        caps the trials (`TrustRegionOptimizer` takes one per mini-batch);
        without a cap a rejected step shrinks the radius and the subproblem is
        solved again from the same preparation. With ``relinearize=False`` an
        accepted point is not linearized (the caller linearizes the next
        mini-batch itself): the next state's ``linearization`` is ``None``,
        and the gradient test is skipped.
        """
        if state.status is not None:
            return state
        if state.linearization is None:
            raise ValueError("state must hold a linearization at x (relinearize it before stepping), got None")
        x, lin, scaling = state.x, state.linearization, state.scaling
        f = self._function(fun, state.dtype)
        eps = torch.finfo(state.dtype).eps
        ftol, xtol = effective_tolerance(self.ftol, eps), effective_tolerance(self.xtol, eps)
        dense = self.solver.requires_jacobian
        max_nfev = self.max_nfev or 100 * x.shape[0]
        reserve = 1 + (self.model.linearization_calls(state.context, dense=dense) if relinearize else 0)
        prepared = self.solver.prepare(scaling.transform(lin), state.solver_state)
        x_norm = torch.linalg.vector_norm(x).double()
        x_scaled_norm = scaling.norm(x)
        noise = noise_level(self.radius_policy.rounding_noise, eps) * lin.cost
        radius, trials = state.radius, 0
        counters = dict(inner_iterations=state.inner_iterations, products=state.products, njev=state.njev)
        status = info = new_lin = None
        moved = False
        while True:
            if state.nfev + f.calls + reserve > max_nfev:
                status = Status.MAX_NFEV
                break
            step = self.solver.solve(prepared, radius)
            trials += 1
            counters["inner_iterations"] += step.iterations
            counters["products"] += step.products
            p = scaling.apply(step.step)
            x_new = self._round(x + p, state.dtype)
            evaluation = self.model.evaluate(f, x_new, state.context, keep=relinearize)
            trial_cost = torch.where(torch.isfinite(evaluation.cost), evaluation.cost, math.inf)
            finite = torch.isfinite(trial_cost)
            actual = lin.cost - trial_cost
            predicted = _scalar(step.predicted_reduction, trial_cost)
            step_norm = _scalar(step.norm, trial_cost)
            radius_t = _scalar(radius, trial_cost)
            ratio = torch.where(finite, self.radius_policy.ratio(actual, predicted, noise), 0.0)
            next_radius = torch.where(
                finite,
                self.radius_policy.update(radius_t, ratio=ratio, step_norm=step_norm, hits_boundary=step.hits_boundary),
                self.radius_policy.after_failure(radius_t, step_norm),
            )
            p_norm = torch.linalg.vector_norm(p).double()
            code = torch.where(finite, step_termination(actual, lin.cost, p_norm, x_norm, ratio, ftol, xtol), 0)
            # At the noise floor, stop once the step is below √eps relative to x (`trustls.radius`).
            small = p_norm <= math.sqrt(eps) * (math.sqrt(eps) + x_norm)
            noise_stop = finite & self.radius_policy.at_noise_floor(actual, ratio, noise) & small & (code == 0)
            code = torch.where(noise_stop, Status.NOISE_FLOOR.value, code)
            moves = finite & self.radius_policy.moves(actual, ratio, noise, strict=state.dtype in _HALF)
            # The one read of the trial.
            (trial_cost_h, actual_h, predicted_h, ratio_h, next_radius_h, step_norm_h, code_h, moves_h,
             x_scaled_norm_h) = torch.stack([
                trial_cost, torch.where(finite, actual, -math.inf), predicted, ratio, next_radius, step_norm,
                code.double(), moves.double(), x_scaled_norm.double(),
            ]).tolist()
            status = Status(int(code_h)) if code_h else None
            accepted = moves_h > 0
            if accepted and relinearize:
                new_lin = self.model.linearize(f, evaluation, state.context, dense=dense)
                gradient_max, gradient_finite = self._gradient_check(new_lin)
                if not gradient_finite:  # a failed trial: shrink and try again from x
                    accepted, new_lin, status = False, None, None
                    next_radius_h = float(self.radius_policy.after_failure(radius_t, step_norm))
                elif status is None and self.gtol is not None and gradient_max < self.gtol:
                    status = Status.GTOL
                counters["njev"] += 1
            new_x = x_new if accepted else x
            info = IterationInfo(
                nit=state.nit, nfev=state.nfev + f.calls, x=new_x,
                fun=(evaluation.outputs if accepted else lin.residual),
                cost=trial_cost_h if accepted else float(lin.cost), previous_cost=float(lin.cost),
                trial_cost=trial_cost_h, actual_reduction=actual_h, predicted_reduction=predicted_h, ratio=ratio_h,
                radius=radius, next_radius=next_radius_h, step_norm=step_norm_h, accepted=accepted,
                inner_iterations=step.iterations, products=step.products, reason=step.reason,
            )
            if self.verbose == 2:
                print(f"{state.nit:>10}{state.nfev + f.calls:>12}{float(lin.cost):>14.4e}"
                      f"{max(actual_h, 0.0) if accepted else 0.0:>16.2e}{step_norm_h:>12.2e}"
                      f"{float(lin.gradient.abs().max()):>12.2e}")
            if self.callback is not None and self._callback_stops(info):
                status = Status.CALLBACK
            radius = next_radius_h
            if accepted:
                moved = True
                break
            if status is not None:
                break
            if radius <= eps * (1.0 + x_scaled_norm_h):
                # No step longer than the rounding of x remains. After a finite
                # trial that is convergence to working precision (xtol at eps);
                # after a non-finite one the region around x is unusable.
                status = Status.XTOL if math.isfinite(trial_cost_h) else Status.RADIUS_COLLAPSED
                break
            if max_trials is not None and trials >= max_trials:
                break
        nfev = state.nfev + f.calls
        if status is None and nfev >= max_nfev:
            status = Status.MAX_NFEV
        next_state = replace(
            state, radius=radius, solver_state=self.solver.state(prepared), nfev=nfev, nit=state.nit + 1,
            status=status, last=info, **counters,
        )
        if moved:
            next_state = replace(next_state, x=x_new, linearization=new_lin)
            # T serves the next subproblem only: after a stop, its column norms
            # (a pass over J) would be wasted.
            if new_lin is not None and status is None:
                next_state = replace(
                    next_state, scaling=self.scale_policy.scaling(self.model, new_lin, scaling, next_state.nit)
                )
        return next_state

    def result(self, state: TrustRegionState) -> Result:
        """The `Result` of a state (normally a finished one)."""
        lin = state.linearization
        if lin is None:
            raise ValueError("state must hold a linearization at x to give a result, got None")
        matrix = lin.jacobian_matrix
        return Result(
            x=state.x.to(state.dtype) if state.x.dtype != state.dtype else state.x,
            cost=float(lin.cost),
            fun=lin.residual,
            grad=lin.gradient,
            optimality=float(lin.gradient.abs().max()),
            jac=matrix if matrix is not None else lin.jacobian,
            active_mask=torch.zeros(state.x.shape, dtype=torch.int64, device=state.x.device),
            nfev=state.nfev,
            njev=state.njev,
            nit=state.nit,
            status=state.status if state.status is not None else Status.UNFINISHED,
            radius=state.radius,
            inner_iterations=state.inner_iterations,
            products=state.products,
            initial_cost=state.initial_cost,
        )

    # -- helpers ----------------------------------------------------------

    def _function(self, fun: ResidualFunction, dtype: torch.dtype) -> CountedFunction:
        if dtype in _HALF:
            return CountedFunction(_HalfPrecision(fun, dtype))
        return CountedFunction(fun)

    @staticmethod
    def _round(x: Tensor, dtype: torch.dtype) -> Tensor:
        """x rounded to the values ``dtype`` holds (half precision iterates in float32)."""
        return x.to(dtype).to(x.dtype) if x.dtype != dtype else x

    @staticmethod
    def _gradient_check(linearization: Linearization) -> tuple[float, bool]:
        """‖g‖∞ and whether g is finite, in one read."""
        g = linearization.gradient
        largest, finite = torch.stack([g.abs().max().double(), torch.isfinite(g).all().double()]).tolist()
        return largest, finite > 0

    def _callback_stops(self, info: IterationInfo) -> bool:
        version = info.x._version
        try:
            stop = _stops(self.callback(info))
        except StopIteration:
            stop = True
        if info.x._version != version:
            raise ValueError("callback must not modify info.x in place: it is the solver's iterate (copy it first)")
        return stop


class _HalfPrecision:
    """``fun`` on float32 iterates for a half-precision ``x0``: called in ``dtype``, outputs in float32."""

    def __init__(self, fun: ResidualFunction, dtype: torch.dtype):
        self.fun, self.dtype = fun, dtype

    def __call__(self, x: Tensor) -> Any:
        value = self.fun(x.to(self.dtype))
        if isinstance(value, Tensor):
            if value.dtype != self.dtype:
                raise TypeError(f"fun must return a tensor of x's dtype {self.dtype}, got {value.dtype}")
            return value.to(torch.float32)
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], Tensor):
            return value[0].to(torch.float32), value[1]
        return value
