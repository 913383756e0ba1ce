"""The trust-region controller for a batch of independent problems.

`solve_batch` runs `TrustRegion`'s iteration for B problems at once: each
problem has its own point, radius, scale, counters and status, and follows
the same sequence of trials as `TrustRegion.solve` would (propose, evaluate,
decide; module docstring of `trustls.trust_region`). One *round* makes one
trial for every problem still running:

1. **propose**: the subproblem of every running problem, from its factors
   at its current point (`trustls.batched.lstsq` or `trustls.batched.cg`);
2. **evaluate**: one call of ``fun`` on the batch, with the Jacobians of all
   rows (`trustls.batched.jacobian`); the problems that are not running keep
   their x, and with ``compact=True`` they are left out of the call;
3. **decide**: the ratio test, the radius update and the termination tests
   with the controller's own elementwise functions (`RadiusPolicy`,
   `trustls.termination.step_termination`, `trustls.radius.noise_level`) on
   (K,) tensors (`trustls.batched.decision`), then the counters and statuses.

A problem whose trial is accepted starts its next outer iteration at the next
round, with its point factored anew (QR of J̃, and for ``"lstsq"`` the SVD
of R T); a rejected one retries from the same factors at the new radius. A
non-finite trial cost or gradient is a failed trial of that problem alone.
The host reads, per round, the indices of the running problems, of the
accepted trials and of those among them that go on (beside one flag per
iteration of the inner loops: secular equation, CG, Jacobi sweeps);
everything else stays on the device, and the linear algebra runs on the
running problems only.

Per problem, the steps and decisions are those of `TrustRegion.solve`; they
agree to rounding (the factorizations and the reductions differ in the order
of their operations), so the iterates agree closely wherever no test is
decided within rounding of its threshold. Differences by design: the column
norms of ``x_scale="jac"`` are exact at every point (`TrustRegion` estimates
them beyond ``column_norm_probes`` variables), ``nfev`` counts evaluations of
a problem (its Jacobian with it, as `GaussNewtonModel`'s automatic
differentiation does), and a callback is not supported.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from trustls._validation import as_tensor_x0
from trustls.batched.cg import CGFactors, cg_step
from trustls.batched.decision import RUNNING, decide
from trustls.batched.factorization import triangular_factor
from trustls.batched.fields import norm
from trustls.batched.jacobian import BatchFunction
from trustls.batched.lstsq import ExactFactors, exact_factors, exact_step
from trustls.batched.objective import Linearized, check_loss, linearize
from trustls.batched.result import BatchResult
from trustls.batched.scale import resolve_batch_scale
from trustls.models.gauss_newton import GaussNewtonModel
from trustls.result import Status
from trustls.subproblem import DenseLstsq, SteihaugCG
from trustls.termination import effective_tolerance

if TYPE_CHECKING:
    from trustls.trust_region import TrustRegion

__all__ = ["solve_batch"]

def _check_x0(x0: object) -> Tensor:
    """``x0`` read as `TrustRegion.solve` reads it (`as_tensor_x0`: a tensor keeps its floating dtype and
    device; a number, a sequence, a numpy array or an integer tensor becomes float64), then checked."""
    x0 = as_tensor_x0(x0)
    if x0.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"x0 must have dtype float32 or float64 for solve_batch, got {x0.dtype}")
    if x0.ndim != 2 or x0.numel() == 0:
        raise ValueError(f"x0 must be a non-empty 2-D tensor (B problems, n variables), got shape {tuple(x0.shape)}")
    if x0.device.type == "meta":
        raise ValueError("x0 must be on a device that holds data (cpu, cuda, ...), got a tensor on the meta device")
    bad = ~torch.isfinite(x0).all(1)
    if bool(bad.any()):
        raise ValueError(f"x0 must be finite, got NaN or inf entries in problems {_some(bad)}")
    return x0


def _some(mask: Tensor, limit: int = 10) -> str:
    rows = torch.nonzero(mask).squeeze(1).tolist()
    return str(rows[:limit])[:-1] + (f", ... ({len(rows)} in all)]" if len(rows) > limit else "]")


def _check_configuration(controller: TrustRegion) -> None:
    if controller.callback is not None:
        raise ValueError("callback is not supported by solve_batch: pass TrustRegion(..., callback=None)")
    if not isinstance(controller.model, GaussNewtonModel):
        raise TypeError(f"solve_batch needs a GaussNewtonModel, got {type(controller.model).__name__}")
    check_loss(controller.model.loss)
    if not isinstance(controller.solver, (DenseLstsq, SteihaugCG)):
        raise TypeError(f"solve_batch supports the solvers 'lstsq' and 'cg', got {type(controller.solver).__name__}")
    if controller.bounds is not None:
        raise ValueError("bounds are not supported by solve_batch: pass TrustRegion(..., bounds=None), or solve "
                         "each bounded problem with solve")
    if controller.gtol_test != "max":
        raise ValueError(f"gtol_test={controller.gtol_test!r} is not supported by solve_batch: pass gtol_test='max'")


class _Batch:
    """The per-problem state of a batched solve (batch-first x and outputs, batch-last small quantities)."""

    def __init__(
        self,
        x: Tensor,
        lin: Linearized,
        jacobians: Tensor,
        residual: Tensor,
        scale: Tensor,
        radius: Tensor,
        factors: Any,
    ):
        B = x.shape[0]
        counter = torch.zeros(B, dtype=torch.int64, device=x.device)
        # Owned copies: the outputs of fun, its targets and a user's Jacobian are
        # not written into (they may be views of the caller's tensors).
        self.x, self.scale, self.radius, self.factors = x, scale, radius, factors
        self.cost, self.gradient = lin.cost.clone(), lin.gradient.clone()
        self.jacobians = jacobians  # (B, n, m): the columns of J̃_b
        self.residual = residual.clone(memory_format=torch.contiguous_format)
        self.initial_cost = lin.cost.clone()
        self.nfev, self.njev, self.nit = counter + 1, counter + 1, counter.clone()
        self.inner_iterations, self.products = counter.clone(), counter.clone()
        self.status = torch.full_like(counter, RUNNING)
        self.noise_step = torch.full_like(radius, math.inf)  # `trustls.decision.trial_decision`
        self.cut = torch.zeros_like(counter, dtype=torch.bool)  # a non-finite trial cut the radius (`trustls.trial`)
        # Buffers reused at every round for the accepted points' Jacobians and their QR:
        # fresh ones would be mapped (page-faulted) anew each time.
        n, m = jacobians.shape[1:]
        c = n + (lin.whitened is not None)
        self.selected = torch.empty(B * n * m, dtype=jacobians.dtype, device=x.device)
        self.factor_workspace = torch.empty(B * c * m, dtype=jacobians.dtype, device=x.device)


def solve_batch(
    controller: TrustRegion, fun: Any, x0: Tensor, *, x_scale: object = None, compact: bool = False
) -> BatchResult:
    """Solve B independent problems with ``controller``'s configuration (`TrustRegion.solve_batch`)."""
    _check_configuration(controller)
    x0 = _check_x0(x0)
    if not isinstance(compact, bool):
        raise TypeError(f"compact must be a bool, got {type(compact).__name__}")
    B, n = x0.shape
    model, solver = controller.model, controller.solver
    scale_rule = resolve_batch_scale(x_scale, controller.scale_policy, x0)
    function = BatchFunction(fun, B, compact=compact, jacobian=model.jacobian)
    everyone = torch.arange(B, device=x0.device)
    x = x0.detach().clone()
    evaluation = function.evaluate(x, everyone)
    m = evaluation.outputs.shape[1]
    bad = ~torch.isfinite(evaluation.outputs).all(1)
    if bool(bad.any()):
        raise ValueError(f"fun(x0) must be finite, got NaN or inf residuals in problems {_some(bad)}")
    lin = linearize(model.loss, evaluation.outputs, evaluation.targets, evaluation.columns)
    for name, value in (("cost", lin.cost), ("gradient of the cost", lin.gradient)):
        bad = ~torch.isfinite(value if value.ndim == 1 else value.abs().amax(0))
        if bool(bad.any()):
            raise ValueError(f"the {name} at x0 must be finite, got NaN or inf in problems {_some(bad)}")
    jacobians = lin.columns.transpose(0, 1).clone(memory_format=torch.contiguous_format)
    R, h = triangular_factor(jacobians, lin.whitened)
    scale = scale_rule.initial(torch.sqrt((R * R).sum(0)))
    x_scaled_norm = norm(x.T / scale).double()
    if controller.initial_radius is not None:
        radius = torch.full_like(x_scaled_norm, controller.initial_radius)
    else:
        radius = controller.radius_policy.initial_factor * torch.where(x_scaled_norm > 0, x_scaled_norm, 1.0)
    # A radius below the resolution of x moves nothing: start at that resolution at least (as `TrustRegion.start`).
    radius = torch.maximum(radius, torch.finfo(x0.dtype).eps * (1.0 + x_scaled_norm))
    factors = _factors(solver, R, h, lin.gradient, scale, m, reference=torch.zeros_like(radius))
    state = _Batch(x, lin, jacobians, _residual(lin), scale, radius, factors)
    max_nfev = controller.max_nfev or 100 * n
    if controller.gtol is not None:
        state.status = torch.where(lin.gradient.abs().amax(0).double() < controller.gtol, Status.GTOL.value, RUNNING)
    exhausted = (state.status == RUNNING) & (state.nfev >= max_nfev)
    state.status = torch.where(exhausted, Status.MAX_NFEV.value, state.status)  # no trial ran: nit stays 0

    eps = torch.finfo(x0.dtype).eps
    tolerances = effective_tolerance(controller.ftol, eps), effective_tolerance(controller.xtol, eps)
    rounds = 0
    while True:
        rows = torch.nonzero(state.status == RUNNING).squeeze(1)  # the round's read
        if rows.numel() == 0:
            break
        rounds += 1
        everyone_runs = rows.numel() == B  # the first rounds: no copies of the state
        x, radius = _running(state.x, 0, rows, everyone_runs), _running(state.radius, 0, rows, everyone_runs)
        scale, gradient = (
            _running(state.scale, 1, rows, everyone_runs),
            _running(state.gradient, 1, rows, everyone_runs),
        )
        factors = state.factors if everyone_runs else state.factors.take(rows)
        step, carried = _propose(solver, factors, gradient, scale, radius)
        p = scale * step.step
        x_new = (x.T + p).T.contiguous()
        if compact:
            evaluation = function.evaluate(x_new, rows)
            outputs, targets, columns = evaluation.outputs, evaluation.targets, evaluation.columns
        else:
            evaluation = function.evaluate(state.x.index_copy(0, rows, x_new), everyone)
            outputs, columns = evaluation.outputs.index_select(0, rows), evaluation.columns.index_select(1, rows)
            targets = None if evaluation.targets is None else evaluation.targets.index_select(0, rows)
        new = linearize(model.loss, outputs, targets, columns)
        accepted, moves, code, next_radius, noise_step, cut = decide(
            controller,
            _running(state.cost, 0, rows, everyone_runs),
            new,
            step,
            radius,
            norm(p).double(),
            norm(x.T).double(),
            norm(x.T / scale).double(),
            _running(state.nfev, 0, rows, everyone_runs) + 1,
            max_nfev,
            eps,
            tolerances,
            _running(state.noise_step, 0, rows, everyone_runs),
            _running(state.cut, 0, rows, everyone_runs),
        )
        state.radius.index_copy_(0, rows, next_radius)
        state.noise_step.index_copy_(0, rows, noise_step)
        state.cut.index_copy_(0, rows, cut)
        state.status.index_copy_(0, rows, code)
        state.nfev.index_add_(0, rows, torch.ones_like(code))
        state.njev.index_add_(0, rows, moves.to(torch.int64))
        state.nit.index_add_(0, rows, (accepted | (code != RUNNING)).to(torch.int64))
        state.inner_iterations.index_add_(0, rows, step.iterations)
        state.products.index_add_(0, rows, step.products)
        _carry(state.factors, rows, carried)
        taken = torch.nonzero(accepted).squeeze(1)  # the round's second read
        if taken.numel():
            _move(state, solver, scale_rule, rows.index_select(0, taken), x_new.index_select(0, taken), new, taken, m)
        if controller.verbose == 2:
            print(f"round {rounds:>4}: {rows.numel():>8} running, {taken.numel():>8} steps taken")
    result = BatchResult(
        x=state.x,
        cost=state.cost,
        fun=state.residual,
        grad=state.gradient.T,
        optimality=state.gradient.abs().amax(0),
        jac=state.jacobians.transpose(1, 2),
        nfev=state.nfev,
        njev=state.njev,
        nit=state.nit,
        status=state.status,
        radius=state.radius,
        inner_iterations=state.inner_iterations,
        products=state.products,
        initial_cost=state.initial_cost,
        calls=function.calls,
    )
    if controller.verbose >= 1:
        print(f"{result!r} after {rounds} rounds")
    return result


def _running(tensor: Tensor, dim: int, rows: Tensor, everyone: bool) -> Tensor:
    """The running problems' entries of a state tensor (itself while every problem runs)."""
    return tensor if everyone else tensor.index_select(dim, rows)


def _residual(lin: Linearized) -> Tensor:
    """`Result.fun`'s content: the residual f for least squares, the outputs for other losses."""
    return lin.whitened if lin.whitened is not None else lin.outputs


def _factors(solver, R: Tensor, h: Tensor | None, gradient: Tensor, scale: Tensor, m: int, reference: Tensor):
    if isinstance(solver, DenseLstsq):
        return exact_factors(R, h, gradient, scale, m)
    return CGFactors(R, reference)


def _propose(solver, factors, gradient: Tensor, scale: Tensor, radius: Tensor):
    """The steps (scaled variables) and what the solver carries: the roots (lstsq) or references (CG)."""
    if isinstance(solver, DenseLstsq):
        return exact_step(factors, radius, rtol=solver.rtol, max_iter=solver.max_iter)
    return cg_step(solver, factors, gradient, scale, radius)


def _carry(factors, rows: Tensor, carried: Tensor) -> None:
    if isinstance(factors, ExactFactors):
        factors.alpha.index_copy_(0, rows, carried)
    else:
        factors.reference.index_copy_(0, rows, carried)


def _move(state: _Batch, solver, scale_rule, rows: Tensor, x_new: Tensor, new: Linearized, taken: Tensor, m: int):
    """Take the accepted trials: the problems ``rows`` move to ``x_new``, linearized by ``new`` at ``taken``.

    The problems that go on are factored at their new points (those that just
    stopped are not: their factors would serve no subproblem).
    """
    state.x.index_copy_(0, rows, x_new)
    state.cost.index_copy_(0, rows, new.cost.index_select(0, taken))
    gradient = new.gradient.index_select(1, taken)
    K, n = taken.numel(), new.columns.shape[0]
    jacobians = torch.index_select(
        new.columns.transpose(0, 1), 0, taken, out=state.selected[: K * n * m].view(K, n, m)
    )  # (K, n, m), contiguous
    whitened = None if new.whitened is None else new.whitened.index_select(0, taken)
    state.gradient.index_copy_(1, rows, gradient)
    state.jacobians.index_copy_(0, rows, jacobians)
    state.residual.index_copy_(0, rows, whitened if whitened is not None else new.outputs.index_select(0, taken))
    going = torch.nonzero(state.status.index_select(0, rows) == RUNNING).squeeze(1)  # the round's third read
    if going.numel() == 0:
        return
    if going.numel() < rows.numel():
        rows, gradient = rows.index_select(0, going), gradient.index_select(1, going)
        jacobians = jacobians.index_select(0, going)
        whitened = None if whitened is None else whitened.index_select(0, going)
    R, h = triangular_factor(jacobians, whitened, workspace=state.factor_workspace)
    scale = scale_rule.updated(state.scale.index_select(1, rows), torch.sqrt((R * R).sum(0)))
    state.scale.index_copy_(1, rows, scale)
    reference = state.factors.reference.index_select(0, rows) if isinstance(state.factors, CGFactors) else None
    state.factors.put(rows, _factors(solver, R, h, gradient, scale, m, reference=reference))
