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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from trustls.models.gauss_newton import GaussNewtonModel
from trustls.operators.base import LinearOperator
from trustls.result import Result
from trustls.sparsity import find_blocks
from trustls.subproblem import DenseLstsq, IterativeSchur, SteihaugCG, SubproblemSolver
from trustls.trust_region import Callback, TrustRegion

__all__ = ["least_squares"]

_FINITE_DIFFERENCES = ("2-point", "3-point", "cs")
_TR_SOLVERS = {"exact": "lstsq", "lsmr": "cg"}
# scipy's lsmr options that a Steihaug-CG step can honour (module `_lsmr_options`).
_LSMR_OPTIONS = ("maxiter", "atol", "btol", "regularize", "damp", "conlim", "show")
#: ``tr_solver=None`` takes the exact solver up to this many variables (an SVD
#: of J then costs at most about 4·10⁶·m flops per point), matrix-free CG beyond.
_EXACT_UP_TO = 2000


def _with_arguments(fun: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> Callable[[Tensor], Any]:
    if not args and not kwargs:
        return fun
    return lambda x: fun(x, *args, **kwargs)


def _jacobian_function(jac: Callable[..., Any], args, kwargs) -> Callable[[Tensor], Tensor | LinearOperator]:
    """A user's ``jac`` returning a tensor, a `LinearOperator`, a numpy array or a scipy sparse matrix."""

    def jacobian(x: Tensor) -> Tensor | LinearOperator:
        J = jac(x, *args, **kwargs)
        if isinstance(J, (Tensor, LinearOperator)):
            return J
        if hasattr(J, "tocoo"):  # a scipy sparse matrix, duck-typed: scipy is never imported
            coo = J.tocoo()
            indices = torch.as_tensor([coo.row, coo.col], dtype=torch.int64, device=x.device)
            values = torch.as_tensor(coo.data, dtype=x.dtype, device=x.device)
            return torch.sparse_coo_tensor(indices, values, coo.shape)
        try:
            return torch.as_tensor(J, dtype=x.dtype, device=x.device)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"jac must return a tensor, a LinearOperator, an array or a sparse matrix, got {type(J).__name__}"
            ) from None

    return jacobian


def _eliminable(model: GaussNewtonModel) -> bool:
    """Whether the model's sparsity pattern splits into blocks that a Schur complement eliminates."""
    pattern = model.colored.pattern
    partition = find_blocks(pattern.rows, pattern.cols, *pattern.shape)
    return bool(partition.eliminated) and len(partition.eliminated) < len(partition.groups)


def _solver(
    method: str, tr_solver: str | None, tr_options: Mapping[str, Any] | None, solver: str | SubproblemSolver | None,
    x0: Any, model: GaussNewtonModel,
) -> str | SubproblemSolver:
    if solver is not None:
        if tr_solver is not None:
            raise ValueError(f"pass at most one of solver and tr_solver, got solver={solver!r} and tr_solver={tr_solver!r}")
        if tr_options:
            raise ValueError("tr_options apply to tr_solver; configure a SubproblemSolver instead when passing solver")
        return solver
    if tr_solver is not None and tr_solver not in _TR_SOLVERS:
        raise ValueError(f"tr_solver must be None, 'exact' or 'lsmr', got {tr_solver!r}")
    if method == "lm":
        if tr_solver == "lsmr":
            raise ValueError("method='lm' takes no tr_solver='lsmr' (it is the exact solver); use method='trf'")
        tr_solver = "exact"
    if tr_solver is None:
        if model.colored is not None:
            if not tr_options and _eliminable(model):
                return IterativeSchur()
            tr_solver = "lsmr"
        else:
            n = x0.numel() if isinstance(x0, Tensor) else max(1, len(x0) if hasattr(x0, "__len__") else 1)
            tr_solver = "exact" if n <= _EXACT_UP_TO else "lsmr"
    options = dict(tr_options or {})
    if tr_solver == "exact":
        return DenseLstsq()  # scipy ignores tr_options for the exact solver
    unknown = sorted(set(options) - set(_LSMR_OPTIONS))
    if unknown:
        raise ValueError(f"tr_options for tr_solver='lsmr' must be among {list(_LSMR_OPTIONS)}, got {unknown}")
    cg: dict[str, Any] = {}
    if options.get("maxiter") is not None:
        cg["max_iter"] = options["maxiter"]
    tolerance = max(options.get("atol") or 0.0, options.get("btol") or 0.0)
    if tolerance > 0:
        cg["forcing"] = min(tolerance, 0.5)
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
) -> Result:
    """Minimize the cost of ``fun(x, *args, **kwargs)`` from ``x0``: ``scipy.optimize.least_squares`` in torch.

    Arguments mean what they mean in scipy; the differences:

    * ``jac``: ``"2-point"``, ``"3-point"``, ``"cs"`` (scipy's finite
      differences) all mean automatic differentiation of ``fun``, exact;
      ``diff_step`` and ``workers`` are accepted and unused. A callable
      ``jac(x, *args, **kwargs)`` may return a tensor (dense or torch
      sparse), a `LinearOperator`, a numpy array or a scipy sparse matrix.
    * ``method``: ``"trf"`` (default); ``"lm"`` runs Moré's trust-region
      Levenberg-Marquardt (MINPACK's algorithm: the exact solver with
      ``x_scale="jac"`` by default) and takes no bounds; ``"dogbox"`` is a
      ``ValueError``.
    * ``tr_solver``: ``"exact"`` is trustls' ``"lstsq"`` (one SVD of J per
      point), ``"lsmr"`` its matrix-free ``"cg"`` (Steihaug-Toint CG; from
      ``tr_options`` it takes ``maxiter`` as its cap and ``max(atol, btol)``
      as its relative tolerance; ``regularize``, ``damp``, ``conlim``,
      ``show`` are accepted and unused). ``None``: ``"exact"`` up to n = 2,000
      variables and ``"lsmr"`` beyond; with ``jac_sparsity`` whose columns
      split into blocks that no row shares beside others (the points and the
      cameras of bundle adjustment), the Schur-complement solver
      `IterativeSchur`, else ``"lsmr"``. trustls' ``solver=`` (a name or a
      `SubproblemSolver`) may be passed instead.
    * ``x0`` keeps a tensor's dtype and device; numbers, lists and arrays
      become float64. ``x_scale=None`` is scipy's with the exact solver (1
      for ``"trf"``, ``"jac"`` for ``"lm"``); the iterative solvers keep their
      Jacobi scaling, which is their preconditioner.
    * ``loss`` may also be a trustls loss (``"cross_entropy"``, a
      `trustls.losses.Loss`); see `GaussNewtonModel`.
    * ``callback(intermediate_result)`` receives an `IterationInfo` (it has
      scipy's ``x``, ``fun``, ``cost``, ``nit``, ``nfev`` fields and item
      access) after every trial; `StopIteration` or a true return value stops
      the solve with status -2.

    Examples:
        >>> import torch
        >>> import trustls
        >>> t = torch.linspace(0, 1, 20, dtype=torch.float64)
        >>> y = 2.0 * torch.exp(-1.5 * t)
        >>> result = trustls.least_squares(lambda b: b[0] * torch.exp(-b[1] * t) - y, [1.0, 1.0])
        >>> [round(v, 6) for v in result.x.tolist()], result.status
        ([2.0, 1.5], <Status.GTOL: 1>)
        >>> trustls.least_squares(lambda b: b - 2.0, [0.0, 5.0], bounds=(0.0, 1.0)).x
        tensor([1.0000, 1.0000], dtype=torch.float64)
    """
    if method not in ("trf", "lm", "dogbox"):
        raise ValueError(f"method must be 'trf', 'lm' or 'dogbox', got {method!r}")
    if method == "dogbox":
        raise ValueError(
            "method='dogbox' is not supported: use method='trf' (the default), which takes bounds by Coleman-Li "
            "scaling with reflective steps"
        )
    free = bounds is None or (
        isinstance(bounds, (tuple, list)) and len(bounds) == 2
        and all(isinstance(b, (int, float)) and math.isinf(b) for b in bounds)
    )
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
        jacobian = _jacobian_function(jac, args, kwargs)
    else:
        raise TypeError(f"jac must be a callable or one of {list(_FINITE_DIFFERENCES)}, got {type(jac).__name__}")
    model = GaussNewtonModel(loss=loss, f_scale=f_scale, jacobian=jacobian, jac_sparsity=jac_sparsity)
    chosen = _solver(method, tr_solver, tr_options, solver, x0, model)
    if x_scale is None and (method == "lm" or isinstance(chosen, DenseLstsq) or chosen == "lstsq"):
        # scipy's default, where it decides the answer: 1 for trf, "jac" for lm. The
        # iterative solvers keep their own (Jacobi scaling, their preconditioner).
        x_scale = "jac" if method == "lm" else 1.0
    controller = TrustRegion(
        model, solver=chosen, ftol=ftol, xtol=xtol, gtol=gtol, x_scale=x_scale, max_nfev=max_nfev,
        initial_radius=initial_radius, bounds=None if free else bounds, callback=callback, verbose=verbose,
    )
    return controller.solve(_with_arguments(fun, args, kwargs), x0)
