"""`TrustRegionOptimizer`: a trust-region (generalized) Gauss-Newton step per mini-batch, as a `torch.optim.Optimizer`.

Each `TrustRegionOptimizer.step` is one outer iteration of `TrustRegion` on
the cost of the current batch, with x the parameters laid end to end, and
the objective of the method's `GaussNewtonModel`: ½‖r‖² for a closure that
returns the residual vector r, or a loss L of the outputs z for one that
returns ``(z, targets)`` (``GaussNewtonModel(loss="cross_entropy")`` and the
other negative log-likelihoods of `trustls.losses`), modelled by the
generalized Gauss-Newton matrix JᵀH_L J (Schraudolph 2002; Martens 2010,
2020, §8), with the ratio test on the loss itself:

1. the closure is evaluated once with its graph; the gradient Jᵀ∇L and the
   curvature products J̃ᵀJ̃v reuse that graph (`trustls._closure`,
   `trustls._closure_model`), so J is never formed and memory grows with
   parameters plus activations;
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
estimate of where the model can be trusted; it is the primal form of
Levenberg-Marquardt damping, whose multiplier λ solves (JᵀJ + λI)p = −g on
the boundary (Moré 1978; Nocedal & Wright 2006, §10.3), and Martens' λ
update from ρ (2010, §4.1) mirrors the radius update from ρ. Trust-region
methods whose models and function values are random but sufficiently
accurate often enough keep their convergence guarantees (Chen, Menickelly &
Scheinberg 2018).

``lr`` is an upper bound on the radius Δ (in the trust region's scaled norm),
infinite by default, so that learning-rate schedulers, which multiply
``lr``, anneal the largest step the optimizer may take. With
``data_parallel`` the terms are summed over the ranks of a process group
(`trustls.distributed`).

A scheduler on an infinite ``lr`` changes nothing. The schedulers built on
``LRScheduler.__init__`` leave ``initial_lr`` in the parameter group, and the
first step then warns; ``ReduceLROnPlateau`` leaves no mark on the optimizer
(no ``initial_lr``, no wrapped ``step``), so with it nothing can tell, and
the docs say to give it a finite ``lr``.

The trainable parameters (``requires_grad``) are fixed by the first step: x,
the radius, the scale and the solver's state are all of that set laid end
to end, and a later step whose set differs is refused (a new optimizer
starts afresh on the new set).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from trustls._checkpoint import check_state_dict, restore, save, working_scale
from trustls._closure import (
    DOCS,
    check_closure_outputs,
    check_fresh_outputs,
    closure_outputs,
    flatten,
    lean_products_agree,
    unflatten,
    watch_backward,
)
from trustls._closure_model import (
    ClosureContext,
    ClosureModel,
    ScratchScaling,
    status_word,
)
from trustls._validation import check_lr, check_max_trials
from trustls.distributed import DataParallel, agree_on_linearization, fingerprint
from trustls.function import HALF
from trustls.models.gauss_newton import GaussNewtonModel
from trustls.result import IterationInfo, Status
from trustls.scaling import DiagonalScaling
from trustls.subproblem.steihaug_cg import SteihaugCG
from trustls.trust_region import TrustRegion

__all__ = ["TrustRegionOptimizer"]


class TrustRegionOptimizer(torch.optim.Optimizer):
    """One trust-region Gauss-Newton step per call of `step`, for any ``torch.nn`` network.

    Args:
        params: the tensors to optimize (any shapes, dense), or a list of
            one parameter-group dict whose ``"params"`` is an iterable of them
            (a generator such as ``net.parameters()`` included) or a single
            tensor, as in ``torch.optim``. Tensors with
            ``requires_grad=False`` at the first step are left alone; which
            tensors are trainable is fixed by that step (changing
            ``requires_grad`` later is refused at the next step: build a new
            optimizer for the new set).
        method: the `TrustRegion` whose model (a `GaussNewtonModel`, whose
            ``loss`` is the objective), solver, radius policy,
            ``initial_radius``, ``x_scale`` and ``callback`` are used. The
            solver must be matrix-free (``"cg"``, `SteihaugCG`); for training
            cap CG, e.g. ``SteihaugCG(max_iter=10)``. With CG the default
            scaling is Jacobi (``"jac"``), whose estimated column norms cost
            ``column_norm_probes`` VJPs after accepted steps 0, 1, 2, 4, 8,
            …, as `TrustRegion.solve` at its accepted points (a step after a
            rejected one keeps T).
        max_trials: trial steps per call of `step` (``None``: until one is
            accepted or a test stops the step, as in `TrustRegion.solve`; for
            full-batch training). ``method.max_nfev`` bounds the closure calls
            of one step.
        lr: an upper bound on the trust radius Δ, in the trust region's
            (scaled) norm; ``inf`` by default. Learning-rate schedulers that
            multiply it (``StepLR``, ``ExponentialLR``, ``ReduceLROnPlateau``)
            then anneal the largest step; those that interpolate from it
            (``CosineAnnealingLR``, ``SWALR``) need a finite ``lr``.
            ``OneCycleLR`` needs ``cycle_momentum=False``: there is no momentum.
            As in ``torch.optim``, ``lr = 0`` is valid (a warm-up from 0): the
            step evaluates the closure and returns the cost, and nothing moves;
            a 0-d tensor ``lr`` is read as its value (a tensor of another
            shape is refused). A scheduler attached to ``lr = inf`` changes
            nothing; the first step warns once where the scheduler left
            ``initial_lr`` (all but ``ReduceLROnPlateau``, which leaves no
            trace).
        data_parallel: a `trustls.distributed.DataParallel` (or ``True`` for
            the default process group) to sum the cost, gradient and every
            curvature product over the ranks, each evaluating its shard of the
            batch; all ranks then take the same steps.

    The closure:
        ``step(closure)`` calls ``closure()`` (no arguments) and expects **the
        residual vector r** of the current batch, a 1-D tensor whose cost
        ½‖r‖² is minimized, e.g. ``(net(X) - Y).reshape(-1)``, or **the pair
        ``(outputs, targets)``** for the model's loss, e.g. ``(net(X), y)``
        with ``GaussNewtonModel(loss="cross_entropy")`` — **not a scalar loss,
        and without calling ``backward``** (a closure that runs a backward pass
        into the parameters' ``.grad`` is refused). It is called once with a
        graph and once per trial at the trial point without, and must evaluate
        the same batch each time, computing its outputs anew (outputs returned
        again from an earlier call are refused). ``.grad`` is neither read nor
        written. A list of one-element tensors is stacked into r; other lists
        are refused. Sparse gradients (``Embedding(sparse=True)``) work, made
        dense in the flat vectors. A model compiled by ``torch.compile`` must
        run uncompiled (or with ``backend="eager"``) where the closure runs
        with a graph: the curvature products differentiate its backward pass
        (docs/training.md).

    Attributes:
        last: the `IterationInfo` of the last trial (cost before and after,
            ratio, radius and next radius, CG iterations, exit reason,
            products), the record ``method.callback`` receives.
        status: the `Status` of the last step when a test stopped it
            (``GTOL``, ``MAX_NFEV``, ``XTOL``, ``CALLBACK``, …), else ``None``
            (also after a step that raised).

    Examples:
        >>> import torch
        >>> from trustls import TrustRegion, GaussNewtonModel
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = torch.nn.Linear(3, 4)
        >>> X, y = torch.randn(32, 3), torch.randint(0, 4, (32,))
        >>> method = TrustRegion(GaussNewtonModel(loss="cross_entropy"), solver="cg")
        >>> opt = TrustRegionOptimizer(net.parameters(), method)
        >>> costs = [opt.step(lambda: (net(X), y)) for _ in range(5)]
        >>> costs[-1] < costs[0]
        True
    """

    def __init__(
        self,
        params: Iterable[Any],
        method: TrustRegion,
        *,
        max_trials: int | None = 1,
        lr: float = math.inf,
        data_parallel: DataParallel | bool | None = None,
    ):
        if not isinstance(method, TrustRegion):
            raise TypeError(f"method must be a TrustRegion, got {type(method).__name__}")
        model = method.model
        if not isinstance(model, GaussNewtonModel):
            raise TypeError(f"method.model must be a GaussNewtonModel, got {type(model).__name__}")
        if model.jacobian is not None:
            raise ValueError(
                "method.model must not have a jacobian= function: the optimizer differentiates its closure"
            )
        if method.solver.requires_jacobian:
            raise ValueError(
                f"method.solver must be matrix-free: TrustRegionOptimizer never builds J, got {method.solver!r}"
            )
        max_trials = check_max_trials(max_trials)
        check_lr(lr)
        if data_parallel is True:
            data_parallel = DataParallel()
        if data_parallel is not None and data_parallel is not False and not isinstance(data_parallel, DataParallel):
            raise TypeError(f"data_parallel must be a DataParallel, True or None, got {type(data_parallel).__name__}")
        if isinstance(params, (Tensor, dict)):
            # torch.optim refuses a bare tensor too; a dict alone is one group.
            kind = "a Tensor (pass [tensor])" if isinstance(params, Tensor) else "a dict (pass [group])"
            raise TypeError(f"params must be an iterable of tensors or a list of one parameter-group dict, got {kind}")
        params = list(params)
        if not params:
            raise ValueError("params must hold at least one tensor, got an empty parameter list")
        self.method = method
        self.last: IterationInfo | None = None
        self.status: Status | None = None
        # Record the double-backward graph without the cotangents it never needs
        # (trustls._closure), after one adjoint test on the first step.
        self._lean, self._lean_checked = True, False
        self._warned_lr = False
        # Which tensors of the group were trainable when the state was saved (None: no state yet).
        self._trainable: tuple[bool, ...] | None = None
        super().__init__(params, {"max_trials": max_trials, "lr": float(lr)})
        first = self.param_groups[0]["params"][0]
        self._reducer = data_parallel.reducer(first.device) if data_parallel else None
        self._method = method.replace(model=ClosureModel(model, self._reducer))
        solver = method.solver
        # With one trial per step (decided per step: the group's max_trials may change), a stored
        # CG path would never be reused: that step's method keeps none.
        self._one_trial = self._method
        if isinstance(solver, SteihaugCG) and solver.path_memory != 0:
            self._one_trial = self._method.replace(solver=dataclasses.replace(solver, path_memory=0))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.param_groups:
            raise ValueError("TrustRegionOptimizer takes a single parameter group (x is all parameters end to end)")
        if not isinstance(param_group, dict) or "params" not in param_group:
            got = sorted(param_group) if isinstance(param_group, dict) else type(param_group).__name__
            raise TypeError(f"a parameter group must be a dict with a 'params' entry, got {got}")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="optimizer contains a parameter group with duplicate")
            # torch reads "params" once: a generator, or a single tensor, becomes a list.
            super().add_param_group(param_group)
        group = self.param_groups[0]
        try:  # options given in the group itself are checked as the keywords are
            group["max_trials"] = check_max_trials(group["max_trials"])
            check_lr(group["lr"])
        except ValueError:
            self.param_groups.clear()
            raise
        params = group["params"]
        if not params:
            self.param_groups.clear()
            raise ValueError("params must hold at least one tensor, got an empty parameter list")
        sparse = [i for i, p in enumerate(params) if p.layout != torch.strided]
        if sparse:
            layout = params[sparse[0]].layout
            self.param_groups.clear()
            raise ValueError(
                f"params must be dense (strided) tensors, got {layout} tensors at positions {sparse} "
                "(sparse gradients of dense parameters, as from torch.nn.Embedding(sparse=True), are fine)"
            )
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
        parallel = "" if self._reducer is None else f", data_parallel={self._reducer!r}"
        return (
            f"TrustRegionOptimizer({self.method!r}, max_trials={group['max_trials']}, lr={group['lr']}{parallel}, "
            f"params={shapes})"
        )

    # -- the step -------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], Any]) -> float:  # type: ignore[override]
        """Take one trust-region step on the batch the closure evaluates.

        Returns:
            The cost at the parameters before the step, a Python float (the
            total over ranks with ``data_parallel``).
        """
        if not callable(closure):
            raise TypeError(f"closure must be callable and return the residual vector, got {type(closure).__name__}")
        group = self.param_groups[0]
        lr = check_lr(group["lr"])
        if math.isinf(lr) and "initial_lr" in group and not self._warned_lr:
            self._warned_lr = True  # a scheduler left initial_lr: it multiplies an infinite lr
            warnings.warn(
                "TrustRegionOptimizer: a learning-rate scheduler is attached but lr is inf, so it changes nothing; "
                "lr bounds the trust radius: give the optimizer a finite lr for the scheduler to anneal",
                UserWarning, stacklevel=2,
            )
        max_trials = group["max_trials"] = check_max_trials(group["max_trials"])
        trainable = tuple(p.requires_grad for p in group["params"])
        params = [p for p in group["params"] if p.requires_grad]
        if not params:
            raise ValueError("params must include a tensor with requires_grad=True at step time, got none")
        self.last, self.status = None, None  # the previous step's (also when this one raises); free its vectors
        dtype = params[0].dtype
        work = torch.float32 if dtype in HALF else dtype
        method = self._one_trial if max_trials == 1 else self._method
        model, reducer = method.model, self._reducer
        saved = self.state[group["params"][0]]
        self._check_trainable(trainable, saved)
        x = flatten(params, work)
        method.scale_policy.check(x)  # x_scale against the parameters end to end, as TrustRegion.init checks x0
        word = [] if reducer is None else list(fingerprint(x))
        error = loss = products = linearized = None
        shape: tuple[int, ...] = ()
        try:
            with torch.enable_grad():
                with watch_backward(params):
                    value = closure()
                outputs, targets = closure_outputs(value)  # a list is stacked with its graph
            del value
            check_closure_outputs(outputs, targets, params[0], self.method.model)
            shape = tuple(outputs.shape)
            # Its storage, kept through the trials so that a trial's outputs can be told from it.
            linearized = outputs.detach()
            loss, products = model.linearize_outputs(outputs, targets, params, work, lean=self._lean)
            if self._lean and not self._lean_checked:
                self._lean_checked = True
                if not lean_products_agree(products, torch.Generator().manual_seed(0)):
                    warnings.warn(
                        "TrustRegionOptimizer: the products from the lean double-backward graph failed the adjoint "
                        "test on this network; recording the full graph from now on (more memory, same results)",
                        RuntimeWarning, stacklevel=2,
                    )
                    self._lean = False
                    loss, products = model.linearize_outputs(outputs, targets, params, work, lean=False)
            if reducer is not None:
                word += status_word(model.loss, outputs, loss.value, x.numel(), saved.get("radius", 0.0))
            del outputs
        except Exception as caught:  # handed to every rank, then re-raised (trustls.distributed)
            if reducer is None:
                raise
            error = caught
        context, cost = ClosureContext(shape), None
        if reducer is not None:
            weights, rows, cost = agree_on_linearization(reducer, error, word)
            context = ClosureContext(shape, weights[reducer.rank], weights, rows)
        lin = model.assemble(x, loss, products, context, cost)
        del loss
        if not bool(torch.isfinite(lin.gradient).all()):  # the same on every rank: the gradient is summed
            raise ValueError(
                "closure must return outputs with a finite derivative at the current parameters, got a gradient of "
                "the cost with NaN or inf entries (e.g. sqrt at 0, or a torch.where branch whose gradient is NaN)"
            )
        if lr == 0.0:  # as torch.optim at lr = 0: nothing moves, and the radius is kept for a later lr
            return float(lin.cost)
        tr = restore(method, saved, lin, context, dtype)
        tr = dataclasses.replace(tr, radius=min(tr.radius, lr))
        if type(tr.scaling) is DiagonalScaling:  # the step may scale the gradient in place
            tr = dataclasses.replace(tr, scaling=ScratchScaling(tr.scaling.diagonal))
        release = products if max_trials == 1 else None

        def trial(x_new: Tensor) -> Any:
            if release is not None:  # the last trial of the step: no product follows, free both graphs first
                release.release()
            # Swapping .data leaves the version counters alone, so the graph of
            # the linearization stays valid for further trials.
            originals = [p.data for p in params]
            try:
                for p, value in zip(params, unflatten(x_new, params)):
                    p.data = value
                trial_outputs, trial_targets = closure_outputs(closure())
                if any(trial_outputs is p for p in params):  # a parameter itself (free logits): its data goes back
                    trial_outputs = trial_outputs.detach().clone()
            finally:
                for p, original in zip(params, originals):
                    p.data = original
            if tuple(trial_outputs.shape) != shape or trial_outputs.dtype != dtype:
                raise ValueError(
                    f"closure must return outputs of the same shape and dtype every time it is called within a step "
                    f"(the same batch), got {tuple(trial_outputs.shape)} {trial_outputs.dtype} after {shape} {dtype}; "
                    f"{DOCS}"
                )
            check_fresh_outputs(trial_outputs, linearized)
            return trial_outputs, trial_targets

        # max_nfev bounds the closure calls of one step, the linearization's
        # included (a budget over a whole run would stop every later step at
        # its first trial); the counts, the callback's included, run on.
        budget = method.max_nfev or 100 * tr.x.shape[0]
        tr = method.step(trial, tr, max_trials=max_trials, relinearize=False, max_nfev=tr.nfev - 1 + budget)
        # The trial's decision read the cost at x already; read it only when no trial ran.
        cost_before = tr.last.previous_cost if tr.last is not None else float(lin.cost)
        del lin, products
        linearized = None  # the trials are over
        if tr.x is not x:
            for p, value in zip(params, unflatten(tr.x, params)):
                p.copy_(value)
        accepted = tr.last is not None and tr.last.accepted
        # A step's budget spent on its last, accepted, trial stopped nothing.
        self.status = None if tr.status == Status.MAX_NFEV and accepted else tr.status
        save(saved, tr)
        self._trainable = trainable
        self.last = tr.last
        return cost_before

    def _check_trainable(self, trainable: tuple[bool, ...], saved: dict[str, Any]) -> None:
        """Refuse a step whose trainable tensors differ from those the saved state belongs to."""
        if self._trainable is None or "radius" not in saved or trainable == self._trainable:
            return
        frozen = [i for i, (was, now) in enumerate(zip(self._trainable, trainable)) if was and not now]
        unfrozen = [i for i, (was, now) in enumerate(zip(self._trainable, trainable)) if now and not was]
        changes = "; ".join(
            f"{what} at positions {where}" for what, where in (("frozen", frozen), ("unfrozen", unfrozen)) if where
        )
        raise ValueError(
            "params' requires_grad must stay as it was at the first step (the radius, the scale and the solver's "
            f"state belong to the trainable tensors laid end to end), got tensors {changes} since: build a new "
            "TrustRegionOptimizer over the parameters to train now (its state starts afresh)"
        )

    # -- checkpoints ----------------------------------------------------------

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a `state_dict`, after checking it belongs to this optimizer and these parameters.

        Raises:
            ValueError: a state from another optimizer or network, a corrupted
                entry, or a radius that is not a positive finite number.
        """
        group = self.param_groups[0]
        trainable = sum(p.numel() for p in group["params"] if p.requires_grad)
        scale = check_state_dict(state_dict, len(group["params"]), trainable)
        super().load_state_dict(state_dict)
        # The checkpoint fixes the number of trainable entries; the next step fixes which tensors.
        self._trainable = None
        if scale is not None:
            # torch casts state tensors to the parameters' dtype; the scale lives in the working dtype.
            first = group["params"][0]
            work = torch.float32 if first.dtype in HALF else first.dtype
            self.state[first]["scale"] = working_scale(scale, work, first.device)
