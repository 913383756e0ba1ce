"""`TrustRegionOptimizer`: a trust-region Gauss-Newton step per mini-batch, as a `torch.optim.Optimizer`.

Each `TrustRegionOptimizer.step` is one outer iteration of `TrustRegion` on
the cost ½‖r‖² of the current batch, with x the parameters laid end to end:

1. the closure is evaluated once with its graph; the gradient Jᵀr and the
   Gauss-Newton products JᵀJv reuse that graph (`trustls._closure`), so J is
   never formed and memory grows with parameters plus activations;
2. `TrustRegion.relinearized` puts the solve's state (radius, scaling, the
   solver's forcing reference, counters) at that linearization, and
   `TrustRegion.step` proposes a step (Steihaug-Toint CG), evaluates the
   closure at x + p without a graph, on the same batch, and decides, exactly
   as in `TrustRegion.solve`.

Mini-batches (see docs/training.md). Both evaluations of a step see the same
batch, so ρ tests the model against the cost it was built for; batch noise
enters only through which cost that is. One trial per batch (``max_trials=1``)
is the default: a rejected step shrinks the radius and the next batch brings a
new linearization, as Hessian-free optimization runs one CG solve per batch
(Martens 2010, §4). The radius persists across batches as the running
estimate of where the Gauss-Newton model can be trusted; it is the primal
form of Levenberg-Marquardt damping, whose multiplier λ solves
(JᵀJ + λI)p = −g on the boundary (Moré 1978; Nocedal & Wright 2006, §10.3),
and Martens' λ update from ρ (2010, §4.1) mirrors the radius update from ρ.
Trust-region methods whose models and function values are random but
sufficiently accurate often enough keep their convergence guarantees (Chen,
Menickelly & Scheinberg 2018). ``SteihaugCG(max_iter=...)`` caps CG iterations.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from trustls._closure import DOCS, check_closure_output, flatten, parameter_products, unflatten
from trustls.losses import SquaredError
from trustls.function import check_outputs, split_outputs
from trustls.result import IterationInfo, Status
from trustls.scaling import DiagonalScaling
from trustls.subproblem.steihaug_cg import SteihaugCG
from trustls.trust_region import TrustRegion, TrustRegionState

__all__ = ["TrustRegionOptimizer"]

_COUNTERS = ("nit", "nfev", "njev", "inner_iterations", "products")


class TrustRegionOptimizer(torch.optim.Optimizer):
    """One trust-region Gauss-Newton step per call of `step`, for any ``torch.nn`` network.

    Args:
        params: the tensors to optimize (any shapes), or one parameter-group
            dict. Tensors with ``requires_grad=False`` at a step are left alone.
        method: the `TrustRegion` whose model, solver, radius policy,
            ``initial_radius``, ``x_scale`` and ``callback`` are used. The
            solver must be matrix-free (``"cg"``, `SteihaugCG`); for training
            cap CG, e.g. ``SteihaugCG(max_iter=10)``. With CG the default
            scaling is Jacobi (``"jac"``), whose estimated column norms cost
            ``column_norm_probes`` VJPs at steps 0, 1, 2, 4, 8, …, as in
            `TrustRegion.solve`.
        max_trials: trial steps per call of `step` (``None``: until one is
            accepted or a test stops the step, as in `TrustRegion.solve`; for
            full-batch training).

    The closure:
        ``step(closure)`` calls ``closure()`` (no arguments) and expects **the
        residual vector r** of the current batch, a 1-D tensor whose cost
        ½‖r‖² is minimized, e.g. ``(net(X) - Y).reshape(-1)``, or the pair
        ``(net(X), Y)`` — **not a scalar loss, and without calling
        ``backward``**. It is called once with a graph and once per trial at
        the trial point without, and must evaluate the same batch each time.
        ``.grad`` is neither read nor written.

    Attributes:
        last: the `IterationInfo` of the last trial (cost before and after,
            ratio, radius and next radius, CG iterations, exit reason,
            products), the record ``method.callback`` receives.
        status: the `Status` of the last step when a test stopped it
            (``MAX_NFEV``, ``RADIUS_COLLAPSED``, ``CALLBACK``, …), else ``None``.

    Examples:
        >>> import torch
        >>> from trustls import TrustRegion, GaussNewtonModel
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = torch.nn.Linear(3, 1)
        >>> X, Y = torch.randn(32, 3), torch.randn(32, 1)
        >>> opt = TrustRegionOptimizer(net.parameters(), TrustRegion(GaussNewtonModel(), solver="cg"))
        >>> costs = [opt.step(lambda: (net(X) - Y).reshape(-1)) for _ in range(5)]
        >>> costs[-1] < costs[0], opt.last.reason in ("converged", "boundary")
        (True, True)
    """

    def __init__(self, params: Iterable[Any], method: TrustRegion, *, max_trials: int | None = 1):
        if not isinstance(method, TrustRegion):
            raise TypeError(f"method must be a TrustRegion, got {type(method).__name__}")
        if not callable(getattr(method.model, "from_products", None)):
            raise TypeError(f"method.model must provide from_products (e.g. GaussNewtonModel), got {method.model!r}")
        if method.solver.requires_jacobian:
            raise ValueError(
                f"method.solver must be matrix-free: TrustRegionOptimizer never builds J, got {method.solver!r}"
            )
        if max_trials is not None and (isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1):
            raise ValueError(f"max_trials must be a positive int or None, got {max_trials!r}")
        params = list(params)
        if not params or (isinstance(params[0], dict) and not list(params[0].get("params", []))):
            raise ValueError("params must hold at least one tensor, got an empty parameter list")
        self.method = method
        solver = method.solver
        if max_trials == 1 and isinstance(solver, SteihaugCG) and solver.path_memory != 0:
            # One solve per linearization: a stored CG path would never be reused.
            method = method.replace(solver=dataclasses.replace(solver, path_memory=0))
        self._method = method
        self.last: IterationInfo | None = None
        self.status: Status | None = None
        super().__init__(params, {"max_trials": max_trials})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.param_groups:
            raise ValueError("TrustRegionOptimizer takes a single parameter group (x is all parameters end to end)")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="optimizer contains a parameter group with duplicate")
            super().add_param_group(param_group)
        params = self.param_groups[0]["params"]
        if len({id(p) for p in params}) != len(params):
            self.param_groups.clear()
            raise ValueError("params must not contain the same tensor twice, got duplicates")
        if len({(p.dtype, p.device) for p in params}) != 1 or not params[0].is_floating_point():
            self.param_groups.clear()
            raise ValueError(
                "params must share one floating dtype and one device, got "
                f"{sorted({f'{p.dtype} on {p.device}' for p in params})}"
            )

    def __repr__(self) -> str:
        group = self.param_groups[0]
        shapes = [tuple(p.shape) for p in group["params"]]
        return f"TrustRegionOptimizer({self.method!r}, max_trials={group['max_trials']}, params={shapes})"

    @torch.no_grad()
    def step(self, closure: Callable[[], Any]) -> float:  # type: ignore[override]
        """Take one trust-region step on the batch the closure evaluates.

        Returns:
            The cost at the parameters before the step, a Python float.
        """
        if not callable(closure):
            raise TypeError(f"closure must be callable and return the residual vector, got {type(closure).__name__}")
        group = self.param_groups[0]
        params = [p for p in group["params"] if p.requires_grad]
        if not params:
            raise ValueError("params must include a tensor with requires_grad=True at step time, got none")
        self.last = None  # drop the previous record's vector before the step allocates
        method, model = self._method, self._method.model
        with torch.enable_grad():
            outputs, targets = split_outputs(closure(), "closure")
            if targets is None and isinstance(model.loss, SquaredError):
                check_closure_output(outputs, params[0])
            else:
                check_outputs(outputs, params[0])
            model.check_outputs(outputs, targets)
            flat = outputs.reshape(-1)
        if not outputs.requires_grad:
            raise ValueError(
                "closure must return a residual that depends on the parameters through autograd; got one without "
                "a graph (computed under torch.no_grad() or detached?)"
            )
        if not bool(torch.isfinite(outputs).all()):
            raise ValueError("closure must return a finite residual at the current parameters, got NaN or inf")
        x = flatten(params)
        shape = tuple(outputs.shape)
        loss = model.loss.linearize(outputs.detach(), targets)
        gradient_at = loss.gradient.reshape(-1)
        products = parameter_products(flat, params, eager=gradient_at)
        lin = model.from_products(products, x, targets, shape, loss)
        del outputs, flat, products, loss
        saved = self.state[group["params"][0]]
        tr = self._state(saved, lin)
        def trial(x_new: Tensor) -> Any:
            # Swapping .data leaves the version counters alone, so the graph of
            # the linearization stays valid for further trials.
            originals = [p.data for p in params]
            try:
                for p, value in zip(params, unflatten(x_new, params)):
                    p.data = value
                value = closure()
            finally:
                for p, original in zip(params, originals):
                    p.data = original
            trial_outputs, trial_targets = split_outputs(value, "closure")
            if tuple(trial_outputs.shape) != shape:
                raise ValueError(
                    f"closure must return outputs of the same shape every time it is called within a step "
                    f"(the same batch), got shape {tuple(trial_outputs.shape)} after {shape}; {DOCS}"
                )
            return trial_outputs, trial_targets

        cost = float(lin.cost)
        # max_nfev bounds the closure calls of one step (a budget over a whole
        # training run would stop every later step at its first trial).
        nfev = tr.nfev
        tr = method.step(trial, dataclasses.replace(tr, nfev=0), max_trials=group["max_trials"], relinearize=False)
        tr = dataclasses.replace(tr, nfev=nfev + tr.nfev)
        del lin
        if tr.x is not x:
            for p, value in zip(params, unflatten(tr.x, params)):
                p.copy_(value)
        self.status = tr.status
        self._save(saved, tr)
        self.last = tr.last
        return cost

    def _state(self, saved: dict[str, Any], lin) -> TrustRegionState:
        """The controller's state for this step: fresh at the first, else restored and relinearized."""
        method = self._method
        if "radius" not in saved:
            return method.start(lin)
        if saved["scale"] is not None and saved["scale"].shape != lin.x.shape:
            raise ValueError(
                f"the optimizer's saved scale has {saved['scale'].shape[0]} entries but the parameters have "
                f"{lin.x.shape[0]}: the state belongs to another network"
            )
        previous = TrustRegionState(
            x=lin.x, linearization=None, radius=saved["radius"],
            scaling=DiagonalScaling(saved["scale"]) if saved["scale"] is not None else None,
            solver_state=saved["solver_state"], context=None, dtype=lin.x.dtype, initial_cost=float(lin.cost),
            **{name: saved[name] for name in _COUNTERS},
        )
        if previous.scaling is None:
            previous = dataclasses.replace(previous, scaling=method.scale_policy.scaling(method.model, lin, None, 0))
        return method.relinearized(previous, lin, iteration=saved["accepted_steps"])

    def _save(self, saved: dict[str, Any], tr: TrustRegionState) -> None:
        scale = tr.scaling.diagonal if isinstance(tr.scaling, DiagonalScaling) else None
        moved = tr.last is not None and tr.last.accepted
        saved.update(radius=tr.radius, scale=scale, solver_state=tr.solver_state,
                     accepted_steps=saved.get("accepted_steps", 0) + moved,
                     **{name: getattr(tr, name) for name in _COUNTERS})
