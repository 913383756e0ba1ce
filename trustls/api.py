"""``least_squares``: scipy's calling convention on trustls' solvers.

Every argument of ``scipy.optimize.least_squares`` is accepted with scipy's
meaning, and the result has scipy's fields. The deliberate differences
(docs/coming-from-scipy.md): derivatives are exact, by automatic
differentiation, so ``jac="2-point"``, ``"3-point"`` and ``"cs"`` (and
``diff_step``, ``workers``) mean "differentiate ``fun``"; ``method="lm"`` is
Moré's trust-region Levenberg-Marquardt, MINPACK's method, run by the exact
solver with Jacobi scaling; ``method="dogbox"`` is not offered.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from trustls._scipy_inputs import (
    UserJacobian,
    as_pattern,
    residual_function,
    scipy_callback,
)
from trustls._validation import as_tensor_x0, check_x0
from trustls.bounds import as_bounds
from trustls.losses.robust import RobustLoss
from trustls.models.gauss_newton import GaussNewtonModel
from trustls.operators.base import LinearOperator
from trustls.radius import RadiusPolicy
from trustls.result import Result
from trustls.sparsity import JacobianPattern, pattern_blocks
from trustls.subproblem import (
    GLTR,
    DenseLstsq,
    IterativeSchur,
    SteihaugCG,
    SubproblemSolver,
    resolve_solver,
)
from trustls.subproblem.lanczos import DEFAULT_MEMORY as DEFAULT_BASIS_MEMORY
from trustls.trust_region import Callback, TrustRegion

__all__ = ["least_squares"]

_FINITE_DIFFERENCES = ("2-point", "3-point", "cs")
# method="lm" as MINPACK's lmder, which scipy calls: the gradient test on the cosines between J's
# columns and r (scipy's documented gtol for "lm"). MINPACK's Δ₀ = 100·‖D x0‖ is not the default:
# MINPACK recovers from that overshoot by its own radius updates, which trustls' ratio test does
# not copy (NIST MGH10 from start 1: 16,756 evaluations here with it, 251 without; MINPACK 292);
# radius_policy=RadiusPolicy(initial_factor=100) asks for it.
_MINPACK = {"gtol_test": "cosine"}
_TR_SOLVERS = {"exact": "lstsq", "lsmr": "cg"}
# scipy's lsmr options that a Steihaug-CG step can honour (module `_lsmr_options`).
_LSMR_OPTIONS = ("maxiter", "atol", "btol", "regularize", "damp", "conlim", "show")
#: ``tr_solver="lsmr"`` with a robust loss takes `GLTR` up to this many variables (2¹⁷): its default
#: basis then holds at least 32 Lanczos vectors; Steihaug-Toint CG beyond.
_GLTR_UP_TO = DEFAULT_BASIS_MEMORY // 32
#: ``tr_solver=None`` takes the exact solver up to this many variables (an SVD
#: of J then costs at most about 4·10⁶·m flops per point), matrix-free CG beyond.
_EXACT_UP_TO = 2000


def _eliminable(pattern: JacobianPattern) -> bool:
    """Whether a sparsity pattern splits into blocks that a Schur complement eliminates."""
    partition = pattern_blocks(pattern)  # cached on the pattern: the solver's first J inherits it
    return bool(partition.eliminated) and len(partition.eliminated) < len(partition.groups)


def _solver(
    method: str, tr_solver: str | None, tr_options: Mapping[str, Any] | None, solver: str | SubproblemSolver | None,
    n: int, sparse: bool, model: GaussNewtonModel,
) -> SubproblemSolver:
    if solver is not None:
        if tr_solver is not None:
            raise ValueError(f"pass at most one of solver and tr_solver, got solver={solver!r} and tr_solver={tr_solver!r}")
        if tr_options:
            raise ValueError("tr_options apply to tr_solver; configure a SubproblemSolver instead when passing solver")
        return resolve_solver(solver)  # a name as its instance: solver="schur" keeps IterativeSchur's x_scale
    if tr_solver is not None and tr_solver not in _TR_SOLVERS:
        raise ValueError(f"tr_solver must be None, 'exact' or 'lsmr', got {tr_solver!r}")
    if method == "lm":
        return DenseLstsq()  # MINPACK's exact step; scipy ignores tr_solver and tr_options for 'lm'
    if tr_solver is None:
        if model.colored is not None and not tr_options and _eliminable(model.colored.pattern):
            return IterativeSchur()
        tr_solver = "lsmr" if sparse or n > _EXACT_UP_TO else "exact"
    options = dict(tr_options or {})
    if tr_solver == "exact":
        return DenseLstsq()  # scipy ignores tr_options for the exact solver
    unknown = sorted(set(options) - set(_LSMR_OPTIONS))
    if unknown:
        # An unknown keyword of scipy's lsmr: Python's TypeError, as scipy raises it.
        raise TypeError(
            f"tr_options got an unexpected option {unknown[0]!r} for tr_solver='lsmr' "
            f"(the options are scipy's lsmr keywords {list(_LSMR_OPTIONS)}), got {sorted(options)}"
        )
    cg: dict[str, Any] = {}
    if options.get("maxiter") is not None:
        maxiter = options["maxiter"]
        # scipy takes any integral value (np.int64, 2.0); lsmr's own floor is one iteration.
        if isinstance(maxiter, bool) or not isinstance(maxiter, numbers.Real) or maxiter != int(maxiter):
            raise ValueError(f"tr_options['maxiter'] must be a whole number or None, got {maxiter!r}")
        cg["max_iter"] = max(int(maxiter), 1)
    for name in ("atol", "btol"):
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise ValueError(f"tr_options[{name!r}] must be a number or None, got {value!r}")
    tolerance = float(max(options.get("atol") or 0.0, options.get("btol") or 0.0))
    if tolerance > 0:
        cg["forcing"] = min(tolerance, 0.5)
    if isinstance(model.loss, RobustLoss) and n <= _GLTR_UP_TO:
        # A robust loss's reweighted model sends steps to the boundary, where Steihaug's first
        # crossing can hold the radius fixed for thousands of steps (`trustls.subproblem.lanczos`).
        return GLTR(**cg)
    return SteihaugCG(**cg)


def least_squares(
    fun: Callable[..., Any],
    x0: Any,
    jac: str | Callable[..., Any] = "2-point",
    bounds: Any = (-math.inf, math.inf),
    method: str = "trf",
    ftol: float | None = 1e-8,
    xtol: float | None = 1e-8,
    gtol: float | None = 1e-8,
    x_scale: Any = None,
    loss: str | Callable[..., Any] = "linear",
    f_scale: float = 1.0,
    diff_step: Any = None,
    tr_solver: str | None = None,
    tr_options: Mapping[str, Any] | None = None,
    jac_sparsity: Any = None,
    max_nfev: int | None = None,
    verbose: int = 0,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
    workers: Any = None,
    *,
    solver: str | SubproblemSolver | None = None,
    initial_radius: float | None = None,
    radius_policy: RadiusPolicy | None = None,
) -> Result:
    """Minimize the cost of ``fun(x, *args, **kwargs)`` from ``x0``: ``scipy.optimize.least_squares`` in torch.

    Arguments mean what they mean in scipy; the differences:

    * ``fun`` must compute with torch and return a tensor of ``x0``'s dtype;
      a 0-d value is one residual (scipy's ``atleast_1d``). With a callable
      ``jac`` it is not differentiated, so it may also return a numpy array,
      a list or a number (converted to ``x0``'s dtype and device), as for
      scipy.
    * ``jac``: ``"2-point"``, ``"3-point"``, ``"cs"`` (scipy's finite
      differences) all mean automatic differentiation of ``fun``, exact;
      ``diff_step`` and ``workers`` are accepted and unused. A callable
      ``jac(x, *args, **kwargs)`` may return a tensor (dense or torch
      sparse), a `LinearOperator`, a numpy array, a scipy sparse matrix or a
      scipy ``LinearOperator``; a 1-D value is one row (scipy's
      ``atleast_2d``).
    * ``method``: ``"trf"`` (default); ``"lm"`` runs Moré's trust-region
      Levenberg-Marquardt (MINPACK's algorithm: the exact solver with
      ``x_scale="jac"`` by default and MINPACK's gradient test on the
      cosines between J's columns and r; ``tr_solver`` and ``tr_options``
      are ignored, as in scipy) and takes no bounds, but, unlike MINPACK,
      takes fewer residuals than variables, sparse and operator Jacobians,
      robust losses and callbacks; ``"dogbox"`` is a ``ValueError``.
      MINPACK's initial radius 100‖D x0‖ is asked for by
      ``radius_policy=RadiusPolicy(initial_factor=100)`` (trustls' default
      is ‖D x0‖; trustls' extras ``solver=``, ``initial_radius=`` and
      ``radius_policy=`` are `TrustRegion`'s).
    * ``tr_solver``: ``"exact"`` is trustls' ``"lstsq"`` (one SVD of J per
      point; a sparse or operator J is densified), ``"lsmr"`` its
      matrix-free ``"cg"`` (Steihaug-Toint CG), or, with a robust loss
      (``"soft_l1"``, ``"huber"``, ``"cauchy"``, ``"arctan"``, a callable) and
      up to 2¹⁷ variables, ``"gltr"`` (`GLTR`: the exact step in the same
      Krylov space, whose boundary steps keep such solves from crawling;
      beyond, its basis would not fit its default memory); from ``tr_options`` it takes
      ``maxiter`` as its cap and ``max(atol, btol)`` as its relative
      tolerance; ``regularize``, ``damp``, ``conlim``, ``show`` are accepted
      and unused; another key is a ``TypeError``, as in scipy). ``None``:
      with ``jac_sparsity`` whose columns split into blocks that no row
      shares beside others (the points and the cameras of bundle
      adjustment), the Schur-complement solver `IterativeSchur` (unless
      ``tr_options`` are given: they configure ``"lsmr"``; a sparse J from
      ``jac`` takes it only when asked, ``solver="schur"``: its pattern at
      ``x0`` may lack entries that are zero there); ``"lsmr"``
      when ``jac_sparsity`` is given otherwise or ``jac`` returns a sparse
      matrix or an operator at ``x0`` (scipy's rule); otherwise ``"exact"``
      up to n = 2,000 variables and ``"lsmr"`` beyond. trustls' ``solver=``
      (a name or a `SubproblemSolver`) may be passed instead.
    * ``x0`` keeps a tensor's dtype and device; numbers, lists and arrays
      become float64. ``x_scale=None`` is scipy's (1 for ``"trf"``, ``"jac"``
      for ``"lm"``), except with `IterativeSchur`, which keeps its Jacobi
      scaling. (`TrustRegion` takes each solver's own default: ``"jac"`` for
      ``"cg"``, its preconditioner; pass ``x_scale="jac"`` here for a large
      badly scaled problem.)
    * ``loss`` may also be a trustls loss (``"cross_entropy"``, a
      `trustls.losses.Loss`); see `GaussNewtonModel`.
    * ``callback`` is called after every trial (scipy calls it after every
      iteration), with scipy's calling convention: a callback whose only
      parameter is named ``intermediate_result`` receives an
      `IterationInfo` (it has scipy's ``x``, ``fun``, ``cost``, ``nit``,
      ``nfev`` fields and item access), any other a copy of x.
      `StopIteration` or a true return value stops the solve with status -2.
      (`TrustRegion` always passes the `IterationInfo`.)

    Examples:
        >>> import torch
        >>> import trustls
        >>> t = torch.linspace(0, 1, 20, dtype=torch.float64)
        >>> y = 2.0 * torch.exp(-1.5 * t)
        >>> result = trustls.least_squares(lambda b: b[0] * torch.exp(-b[1] * t) - y, [1.0, 1.0])
        >>> [round(v, 6) for v in result.x.tolist()], result.status
        ([2.0, 1.5], <Status.GTOL: 1>)
        >>> trustls.least_squares(lambda b: b - 2.0, [0.0, 0.5], bounds=(0.0, 1.0)).x
        tensor([1.0000, 1.0000], dtype=torch.float64)
    """
    if method not in ("trf", "lm", "dogbox"):
        raise ValueError(f"method must be 'trf', 'lm' or 'dogbox', got {method!r}")
    if method == "dogbox":
        raise ValueError(
            "method='dogbox' is not supported: use method='trf' (the default), which takes bounds by Coleman-Li "
            "scaling with reflective steps"
        )
    x0 = check_x0(as_tensor_x0(x0))
    free = as_bounds(bounds, x0) is None  # None, or ±inf everywhere (arrays, a scipy Bounds())
    if method == "lm" and not free:
        raise ValueError("Method 'lm' doesn't support bounds.")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise TypeError(f"kwargs must be a mapping or None, got {type(kwargs).__name__}")
    if not isinstance(args, (tuple, list)):
        args = (args,)
    kwargs = dict(kwargs or {})
    if isinstance(jac, str):
        if jac not in _FINITE_DIFFERENCES:
            raise ValueError(f"jac must be a callable or one of {list(_FINITE_DIFFERENCES)}, got {jac!r}")
        jacobian = None
    elif callable(jac):
        if jac_sparsity is not None:
            raise ValueError("pass at most one of a callable jac and jac_sparsity (scipy ignores jac_sparsity then)")
        jacobian = UserJacobian(jac, args, kwargs)
    else:
        raise TypeError(f"jac must be a callable or one of {list(_FINITE_DIFFERENCES)}, got {type(jac).__name__}")
    jac_sparsity = as_pattern(jac_sparsity)
    model = GaussNewtonModel(loss=loss, f_scale=f_scale, jacobian=jacobian, jac_sparsity=jac_sparsity)
    n = x0.shape[0]
    sparse = jac_sparsity is not None
    chosen = _solver(method, tr_solver, tr_options, solver, n, sparse, model)
    if x_scale is None and not isinstance(chosen, IterativeSchur):
        # scipy's default: 1 for trf, "jac" for lm. The Schur solver, which scipy lacks,
        # keeps its own (Jacobi scaling, its preconditioner).
        x_scale = "jac" if method == "lm" else 1.0
    controller = TrustRegion(
        model, solver=chosen, ftol=ftol, xtol=xtol, gtol=gtol, x_scale=x_scale, max_nfev=max_nfev,
        initial_radius=initial_radius, bounds=None if free else bounds, callback=scipy_callback(callback),
        verbose=verbose, **({} if radius_policy is None else {"radius_policy": radius_policy}),
        **(_MINPACK if method == "lm" else {}),
    )
    if isinstance(chosen, DenseLstsq) and jacobian is not None and solver is None and tr_solver is None:
        # scipy's default tr_solver follows J's kind: 'lsmr' for a sparse matrix or an operator.
        # Not the Schur solver, even where J(x0)'s pattern would split: a J that drops its exact
        # zeros (csr_matrix of a dense J) may gain the entries that join the blocks at the next
        # point. Every argument is checked by now (jac is called only for a solve that can run);
        # the solve's first linearization reuses this J. The solver changes, x_scale does not.
        J0 = jacobian.probe(x0)
        if isinstance(J0, LinearOperator) or J0.layout != torch.strided:
            controller = controller.replace(solver=_solver(method, None, tr_options, None, n, True, model))
    return controller.solve(residual_function(fun, args, kwargs, convert=jacobian is not None), x0)
