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
   as tensors on an accelerator, read by the host once per trial (on the
   CPU their inputs are read once and they run in floats: `trustls.decision`).

A trial point whose cost is not finite, or whose gradient is not, is a failed
trial: the radius shrinks to ¼‖p‖ and the subproblem is solved again (scipy's
trf does the same for the residual). The configuration is immutable and the
state explicit: `TrustRegion.init` returns a frozen `TrustRegionState` and
`TrustRegion.step` returns the next one, so an exception raised by the user's
function leaves the caller's state as it was. Beside the controller: the
trials (`trustls.trial`), the starting point and its checks
(`trustls._start`), the `Result` and the ``verbose`` lines (`trustls._report`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from trustls._report import print_header, print_summary, state_result
from trustls._start import (
    check_budget,
    check_first_evaluation,
    check_relinearization,
    check_start_gradient,
    starting_point,
    supplies_jacobian,
)
from trustls._validation import (
    check_choice,
    check_positive_int,
    check_positive_number,
    check_tolerance,
)
from trustls.batched import BatchResult, solve_batch
from trustls.bounds import subproblem
from trustls.function import (
    HALF,
    BudgetExhausted,
    CallTally,
    CountedFunction,
    HalfPrecision,
)
from trustls.models.base import CurvatureModel, Linearization
from trustls.operators import NormalOperator, PowerOfTwoBalanced
from trustls.protocols import Callback, ResidualFunction
from trustls.radius import RadiusPolicy
from trustls.result import IterationInfo, Result, Status
from trustls.scaling import JacobiScale, resolve_x_scale
from trustls.state import TrustRegionState
from trustls.subproblem import SubproblemSolver, resolve_solver
from trustls.termination import cosine_optimality
from trustls.trial import Trial

__all__ = ["Callback", "IterationInfo", "ResidualFunction", "TrustRegion", "TrustRegionState"]


class TrustRegion:
    """Trust-region method with a pluggable model and subproblem solver.

    Args:
        model: the curvature provider, e.g. `GaussNewtonModel()`.
        solver: ``"cg"`` (Steihaug-Toint CG, matrix-free), ``"lstsq"`` (exact,
            one SVD of J per point), ``"schur"`` (`IterativeSchur`: eliminated
            blocks of a sparse J) or a configured `SubproblemSolver`.
        ftol: stop when the relative cost decrease is below ``ftol`` at a
            step the model predicted well (ρ > ¼). ``None`` disables.
        xtol: stop when ‖dx‖ < xtol·(xtol + ‖x‖). ``None`` disables.
        gtol: stop when ‖g‖∞ < gtol (``gtol_test="max"``, scipy's ``"trf"``),
            or when every column of J makes an angle with r whose cosine is
            below gtol (``gtol_test="cosine"``: MINPACK's test, scipy's
            ``"lm"``, independent of the units of x and r;
            `trustls.termination`). ``None`` disables.
        x_scale: characteristic scale of each variable: the trust region is
            ‖p / x_scale‖ ≤ Δ. A number, a 1-D sequence of length n (tensor,
            list or numpy array), or ``"jac"`` (inverse column norms of J, never
            decreasing; scipy/MINPACK; block-Jacobi over the column blocks of a
            sparse J that has them, `JacobiScale`, except with `IterativeSchur`,
            whose ``"jac"`` is its own default, diagonal). A `BlockJacobi`
            partition gives block-Jacobi scaling (see `trustls.scaling`). ``None`` (default)
            takes the solver's ``default_x_scale``: 1 for ``"lstsq"`` (scipy
            trf's default), ``"jac"`` for ``"cg"`` (the Jacobi preconditioner;
            Ceres' default scaling).
        max_nfev: budget of calls of the residual function, all of them
            (``None``: 100·n, scipy's).
        initial_radius: Δ₀ (``None``: ``radius_policy.initial_factor`` times
            ‖x0 / x_scale‖, or that factor when the norm is 0).
        bounds: box bounds ``(lb, ub)`` on x: scalars or sequences of length n
            (tensors, lists, numpy arrays), ±inf where a side is free, or
            anything with ``lb`` and ``ub`` attributes (scipy's ``Bounds``);
            ``None`` for none. Iterates stay strictly inside (Coleman-Li
            scaling with reflective steps, `trustls.bounds`); needs a diagonal
            ``x_scale``. ``x0`` must lie within them.
        callback: called with an `IterationInfo` after every trial; returning
            a true value or raising `StopIteration` stops the solve with
            status ``CALLBACK``.
        verbose: 0 silent, 1 a summary at the end, 2 a line per trial.
        radius_policy: the ratio-test constants and the initial radius's factor.
        gtol_test: ``"max"`` (default) or ``"cosine"``: see ``gtol``.

    Attributes:
        scale_policy: the resolved ``x_scale`` (`trustls.scaling.ScalePolicy`):
            the given one or the solver's default, diagonal with bounds.

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
        bounds: Any = None,
        callback: Callback | None = None,
        verbose: int = 0,
        radius_policy: RadiusPolicy = RadiusPolicy(),
        gtol_test: str = "max",
    ):
        if not isinstance(model, CurvatureModel):
            raise TypeError(f"model must be a CurvatureModel such as GaussNewtonModel(), got {type(model).__name__}")
        self._options = dict(
            model=model, solver=solver, ftol=ftol, xtol=xtol, gtol=gtol, x_scale=x_scale, max_nfev=max_nfev,
            initial_radius=initial_radius, bounds=bounds, callback=callback, verbose=verbose, radius_policy=radius_policy,
            gtol_test=gtol_test,
        )
        self.model = model
        self.solver = resolve_solver(solver)
        self.ftol = check_tolerance("ftol", ftol)
        self.xtol = check_tolerance("xtol", xtol)
        self.gtol = check_tolerance("gtol", gtol)
        if self.ftol is None and self.xtol is None and self.gtol is None:
            raise ValueError("ftol, xtol and gtol must not all be None: nothing could stop the solve but max_nfev")
        self.x_scale = resolve_x_scale(x_scale)
        if isinstance(x_scale, str) and isinstance(own := resolve_x_scale(self.solver.default_x_scale), JacobiScale):
            self.x_scale = own  # "jac": the solver's own Jacobi scaling (diagonal for IterativeSchur)
        self.max_nfev = check_positive_int("max_nfev", max_nfev)
        self.initial_radius = check_positive_number("initial_radius", initial_radius)
        self.bounds = bounds
        policy = self.x_scale if self.x_scale is not None else resolve_x_scale(self.solver.default_x_scale)
        if bounds is not None and isinstance(policy, JacobiScale):
            policy = replace(policy, blocks=False)  # Coleman-Li scaling multiplies a diagonal T
        if bounds is not None and not policy.diagonal:
            raise ValueError(
                f"bounds need a diagonal x_scale (a number, a sequence or 'jac'), got x_scale={self.x_scale!r}"
            )
        self.scale_policy = policy
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
        self.callback = callback
        self.verbose = check_choice("verbose", verbose, (0, 1, 2))
        if not isinstance(radius_policy, RadiusPolicy):
            raise TypeError(f"radius_policy must be a RadiusPolicy, got {type(radius_policy).__name__}")
        self.radius_policy = radius_policy
        self.gtol_test = check_choice("gtol_test", gtol_test, ("max", "cosine"))
        if self.gtol_test == "cosine" and bounds is not None:
            raise ValueError("gtol_test='cosine' (MINPACK's, for unbounded problems) does not take bounds, got bounds")

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

    # -- public API -------------------------------------------------------

    def solve(self, fun: ResidualFunction, x0: Tensor) -> Result:
        """Minimize the model's cost of ``fun`` from ``x0``; ``x0`` is not modified."""
        state = self.init(fun, x0)
        if self.verbose == 2:
            print_header()
        while state.status is None:
            state = self.step(fun, state)
        result = self.result(state)
        if self.verbose >= 1:
            print_summary(result)
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

    def init(self, fun: ResidualFunction, x0: Any) -> TrustRegionState:
        """Check the inputs, evaluate and linearize at ``x0``, and return the initial state.

        ``x0`` is a tensor (its dtype and device are kept), or a number, a
        sequence or a numpy array (float64, as scipy reads it).
        """
        if not callable(fun):
            raise TypeError(f"fun must be callable, got {type(fun).__name__}")
        x, dtype, bounds = starting_point(x0, self.scale_policy, self.bounds)
        f = self._function(fun, dtype, CallTally(), watch=True)
        dense = self.solver.requires_jacobian
        context = self.model.start(f, x, dense=dense)
        evaluation = self.model.evaluate(f, x, context, keep=True)
        f.tally.per_evaluation = f.calls  # what each trial reserves for its evaluation (`Trial.repeat`)
        check_first_evaluation(self.model, evaluation)
        check_budget(self.max_nfev, f.calls + self.model.linearization_calls(context, dense=dense))
        linearization = self.model.linearize(f, evaluation, context, dense=dense)
        f.tally.per_linearization = f.calls - f.tally.per_evaluation
        try:
            with f.capped(self.max_nfev):  # T's column norms by products that call fun
                state = self.start(linearization, context=context, dtype=dtype, bounds=bounds)
        except BudgetExhausted:
            raise ValueError(
                f"max_nfev must allow the calls of fun at x0 (the evaluation, the linearization and x_scale's "
                f"column norms: more than {self.max_nfev} here), got {self.max_nfev}"
            ) from None
        return replace(state, tally=f.tally, nfev=f.calls)  # the calls of T's column norms included

    def start(
        self,
        linearization: Linearization,
        *,
        context: Any = None,
        dtype: torch.dtype | None = None,
        nfev: int = 1,
        bounds: Any = None,
    ) -> TrustRegionState:
        """The initial state at ``linearization.x`` from a linearization built elsewhere.

        `init` calls it after evaluating ``fun``; `TrustRegionOptimizer` calls it
        with the linearization of its closure's graph. ``nfev`` counts the calls
        of the function that built the linearization; ``bounds`` is a checked
        `trustls.bounds.Bounds`.
        """
        x = linearization.x
        check_start_gradient(linearization.gradient, dtype, user_jacobian=supplies_jacobian(self.model))
        scaling = self.scale_policy.scaling(self.model, linearization, None, 0)
        problem = subproblem(linearization, scaling, bounds)
        measure = problem.optimality if self.gtol_test == "max" else cosine_optimality(linearization, self.model)
        x_scaled_norm, optimality = torch.stack([problem.norm(x).double(), measure.double()]).tolist()
        factor = self.radius_policy.initial_factor
        radius = self.initial_radius or factor * (x_scaled_norm if x_scaled_norm > 0 else 1.0)
        # A radius below the resolution of x moves nothing: start at that resolution at least.
        radius = max(radius, torch.finfo(dtype or x.dtype).eps * (1.0 + x_scaled_norm))
        status = Status.GTOL if self.gtol is not None and optimality < self.gtol else None
        dtype = x.dtype if dtype is None else dtype
        return TrustRegionState(x, linearization, radius, scaling, None, context, dtype, float(linearization.cost),
                                bounds, nfev=nfev, status=status)

    def relinearized(
        self, state: TrustRegionState, linearization: Linearization, *, nfev: int = 1, iteration: int | None = None,
        rescale: bool = True,
    ) -> TrustRegionState:
        """``state`` at a new linearization (of a new mini-batch, say), with T updated for it.

        The radius, the solver's state and the counters carry over; the
        gradient test is not applied (a mini-batch's gradient says little about
        convergence). ``nfev`` counts the calls that built the linearization;
        ``iteration`` is the point's index for the scale's refresh schedule
        (default ``state.nit``; `TrustRegion.solve` counts accepted points);
        ``rescale=False`` keeps T as it is.
        """
        check_relinearization(state, linearization)
        iteration = state.nit if iteration is None else iteration
        scaling = state.scaling
        if rescale:
            scaling = self.scale_policy.scaling(self.model, linearization, scaling, iteration)
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
        max_nfev: int | None = None,
    ) -> TrustRegionState:
        """One outer iteration: trials until one is accepted or a test stops the solve.

        Returns the next state; ``state`` itself is not modified. ``max_trials``
        caps the trials (`TrustRegionOptimizer` takes one per mini-batch);
        without a cap a rejected step shrinks the radius and the subproblem is
        solved again from the same preparation. With ``relinearize=False`` an
        accepted point is not linearized (the caller linearizes the next
        mini-batch itself): the next state's ``linearization`` is ``None``,
        and the gradient test is skipped. ``max_nfev``, when given, is the
        bound on ``state.nfev`` for this call in place of the method's
        (`TrustRegionOptimizer` bounds each step's calls, its counts running on).
        """
        if state.status is not None:
            return state
        if state.linearization is None:
            raise ValueError("state must hold a linearization at x (relinearize it before stepping), got None")
        f = self._function(fun, state.dtype, state.tally)
        lin = state.linearization
        if state.dtype in HALF and lin.jacobian_matrix is None and lin.jacobian.is_matrix_free:
            # Products through a half-precision function overflow float16 for large vectors:
            # each runs on a vector of unit size, scaled back exactly by a power of two. A stored
            # J (float32 values, a SparseOperator for IterativeSchur) has no such products.
            balanced = PowerOfTwoBalanced(lin.jacobian)
            lin = replace(lin, jacobian=balanced, operator=NormalOperator(balanced))
        problem = subproblem(lin, state.scaling, state.bounds)
        prepared = self.solver.prepare(problem.linearization, state.solver_state)
        trial = Trial(self, state, f, problem, prepared, relinearize)
        if max_nfev is None:
            max_nfev = self.max_nfev or 100 * state.x.shape[0]
        else:
            max_nfev = check_positive_int("max_nfev", max_nfev)
        radius, status, outcome = trial.repeat(max_nfev, max_trials)
        # The next state's changes, gathered for one `replace` (a frozen dataclass's copy is not cheap).
        changes = dict(radius=radius, solver_state=self.solver.state(prepared), nit=state.nit + (outcome is not None),
                       last=None if outcome is None else outcome.info, **trial.counters)
        if outcome is not None:
            changes.update(noise_step=outcome.noise_step, cut=outcome.cut)
        if outcome is not None and outcome.info.accepted:
            changes.update(x=outcome.info.x, linearization=outcome.linearization)
            # T serves the next subproblem only: after a stop, its column norms
            # (a pass over J) would be wasted.
            if outcome.linearization is not None and status is None:
                try:
                    with f.capped(max_nfev - state.nfev):  # column norms by products that call fun
                        changes["scaling"] = self.scale_policy.scaling(
                            self.model, outcome.linearization, state.scaling, changes["nit"]
                        )
                except BudgetExhausted:
                    status = Status.MAX_NFEV
        nfev = state.nfev + f.calls
        if status is None and nfev >= max_nfev:
            status = Status.MAX_NFEV
        return replace(state, nfev=nfev, status=status, **changes)

    def result(self, state: TrustRegionState) -> Result:
        """The `Result` of a state (normally a finished one)."""
        return state_result(state, self.xtol)

    # -- helpers ----------------------------------------------------------

    @staticmethod
    def _function(fun: ResidualFunction, dtype: torch.dtype, tally: CallTally, watch: bool = False) -> CountedFunction:
        return CountedFunction(HalfPrecision(fun, dtype) if dtype in HALF else fun, watch=watch, tally=tally)
