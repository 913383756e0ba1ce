"""``curve_fit``: scipy's curve-fitting interface on the trust-region solver, with torch models.

Given a model f(x; β), data (x_k, y_k) and, optionally, the uncertainty of y,
`curve_fit` minimizes χ²(β) = ½‖r(β)‖² over the whitened residuals

    r = (f(x; β) − y) / σ            (1-D sigma: standard deviations),
    r = L⁻¹ (f(x; β) − y),  C = LLᵀ  (2-D sigma: the covariance C of y),

so that ‖r‖² = (f − y)ᵀC⁻¹(f − y) (the generalized least-squares criterion; Seber &
Wild 1989, §2.1.4). L is the Cholesky factor of C, applied with a triangular solve,
never as C⁻¹. It returns the estimate and its covariance s²(JᵀJ)⁻¹ from
`trustls.covariance` (J = ∂r/∂β at the estimate, s² = ‖r‖²/(m − n)); with
``absolute_sigma=True`` the covariance is (JᵀJ)⁻¹: sigma is then taken as the true
standard deviations, not as relative weights.

Methods. scipy uses MINPACK's Levenberg-Marquardt ("lm") without bounds and "trf"
with bounds. MINPACK's ``lmder`` is Moré's (1978) trust-region method with the
subproblem solved exactly and the variables scaled by the column norms of J; trustls'
``solver="lstsq"`` solves the same subproblem exactly from an SVD, and
``x_scale="jac"`` is the same scaling. So ``method=None`` (unbounded) and ``"lm"``
run ``least_squares(method="lm")`` with ``solver="lstsq", x_scale="jac"``, which also
takes MINPACK's initial radius and its gradient test (on the cosines between J's
columns and r, whatever the units of the data); ``"trf"`` (and ``method=None`` with bounds)
runs ``solver="lstsq"`` with least_squares' default scaling. The exact dense solver
is the right default here: curve fits have few parameters, where one SVD per
iteration costs less than an iterative solve. Any of these can be overridden through
``**kwargs``, which go to `trustls.least_squares` by scipy's names.

Deviations from scipy, all deliberate:

* Jacobians come from automatic differentiation unless ``jac`` is given: exact, where
  scipy differentiates by finite differences. ``f`` must therefore be written with
  torch operations.
* Tensors keep their dtype and device; other inputs become float64, as in scipy.
* ``infodict`` holds ``nfev``, ``njev``, ``nit``, ``fvec`` and ``jac`` (the whitened J
  at ``popt`` that ``pcov`` comes from: ``Result.jac`` of the solve, a tensor for the
  exact solver and a `LinearOperator` for a matrix-free one), not MINPACK's QR factors
  ``fjac``, ``ipvt``, ``qtf``: trustls factors J by SVD.
* With a robust ``loss`` (any method here; scipy needs "trf"), ``pcov`` is scipy's:
  s²(J̃ᵀJ̃)⁻¹ with the loss-weighted J̃ = S J and s² = 2·cost/(m − n) from the robust
  cost, both taken from the `Result`.
* A rank-deficient J gives the pseudo-inverse, as scipy's "trf", plus a
  `CovarianceWarning` (scipy's "lm" gives inf only when a pivot is exactly zero).
* A 1-D sigma must be positive; a 2-D sigma must be symmetric. Invalid
  ``nan_policy`` values raise even when ``check_finite`` is True. Errors that scipy
  raises as ``TypeError`` for a bad value (more parameters than data with "lm",
  which ``method=None`` without bounds is)
  are ``ValueError`` here.

References:
    J. J. Moré, "The Levenberg-Marquardt algorithm: implementation and theory",
    Numerical Analysis, Lecture Notes in Mathematics 630, Springer, 1978, pp. 105-116.
    G. A. F. Seber, C. J. Wild, Nonlinear Regression, Wiley, 1989.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from torch import Tensor

from trustls import _fit_data as data
from trustls.api import least_squares
from trustls.covariance.estimates import covariance_matrix
from trustls.covariance.methods import DenseSVD
from trustls.radius import RadiusPolicy

__all__ = ["curve_fit"]

_METHODS = (None, "lm", "trf", "dogbox")
_NAN_POLICIES = (None, "raise", "omit", "propagate")


def _reference_device(*values: object) -> torch.device:
    return next((v.device for v in values if isinstance(v, Tensor)), torch.device("cpu"))


def _check_finite(name: str, value: object) -> None:
    if isinstance(value, Tensor) and not bool(torch.isfinite(value).all()):
        raise ValueError(
            f"{name} must be finite when check_finite is True (its default without nan_policy), "
            "got NaN or inf entries; nan_policy='omit' drops observations with NaN"
        )


def _model_residual(f: Callable, xdata: object, ydata: Tensor, whiten: data.Whitening) -> Callable[[Tensor], Tensor]:
    def residual(p: Tensor) -> Tensor:
        model = f(xdata, *p)
        if not isinstance(model, Tensor):
            raise TypeError(
                f"f must return a torch.Tensor (write the model with torch operations so that it can be "
                f"differentiated), got {type(model).__name__}"
            )
        if model.shape != ydata.shape:
            if model.shape not in ((), (1,)):
                raise ValueError(
                    f"f(xdata, *params) must return shape {tuple(ydata.shape)} (ydata's) or one value for all, "
                    f"got {tuple(model.shape)}"
                )
            model = model.expand(ydata.shape)
        # The residual takes the parameters' dtype: float32 data may be fitted in float64, and so on.
        return whiten(model - ydata).to(p.dtype)

    return residual


def _model_jacobian(jac: Callable, xdata: object, m: int, whiten: data.Whitening) -> Callable[[Tensor], Tensor]:
    def jacobian(p: Tensor) -> Tensor:
        J = jac(xdata, *p)
        if not isinstance(J, Tensor):
            raise TypeError(f"jac must return a torch.Tensor, got {type(J).__name__}")
        if J.shape != (m, p.shape[0]):
            raise ValueError(f"jac(xdata, *params) must return shape ({m}, {p.shape[0]}), got {tuple(J.shape)}")
        return whiten(J).to(p.dtype)

    return jacobian


def _solver_options(method: object, bounded: bool, m: int, n: int, kwargs: dict) -> dict:
    """least_squares' options from scipy's method and kwargs (see the module docstring)."""
    if method not in _METHODS:
        raise ValueError(f"method must be one of None, 'lm', 'trf', 'dogbox', got {method!r}")
    if "args" in kwargs:
        raise ValueError("'args' is not a supported keyword argument: f(x, *params) takes no extra arguments")
    options = dict(kwargs)
    if "maxfev" in options:  # leastsq's name, renamed as scipy does
        if "max_nfev" in options:
            raise ValueError("maxfev and max_nfev must not both be given: they are the same budget")
        options["max_nfev"] = options.pop("maxfev")
    if method == "lm" and bounded:
        raise ValueError("Method 'lm' only works for unconstrained problems. Use 'trf' or 'dogbox' instead.")
    if method in (None, "lm") and not bounded and m != 1 and n > m:  # scipy: method=None unbounded is 'lm'
        which = "method 'lm'" if method == "lm" else "method=None without bounds (MINPACK's 'lm')"
        raise ValueError(f"{which} needs no more parameters than data points, got n = {n} > m = {m}")
    if method == "dogbox":
        options["method"] = method
    if "solver" not in options and "tr_solver" not in options:
        options["solver"] = "lstsq"
    if method in (None, "lm") and not bounded:
        _leastsq_keywords(options, n)
        options.setdefault("x_scale", "jac")
        if "solver" not in kwargs and "tr_solver" not in kwargs:
            options["method"] = "lm"  # MINPACK's lmder: its initial radius and its gradient test
    return options


def _leastsq_keywords(options: dict, n: int) -> None:
    """scipy's ``leastsq`` keywords, which its ``curve_fit`` passes on for "lm", read as trustls can.

    ``epsfcn`` sets a finite-difference step: J is exact here, so it is
    accepted and unused, as ``diff_step`` is. ``diag`` is MINPACK's variable
    scaling D: ``x_scale = 1/diag`` (scipy's own mapping in ``least_squares``).
    ``factor`` sets Δ₀ = factor·‖D x0‖ when given (MINPACK's default, 100, is
    not trustls': see `trustls.least_squares`' ``method``). ``col_deriv``
    transposes a ``Dfun``'s result: only its default (rows are data points)
    is taken.
    """
    options.pop("epsfcn", None)
    if options.pop("col_deriv", False):
        raise ValueError("col_deriv=True is not supported: jac must return J with one row per data point (m, n)")
    factor = options.pop("factor", None)
    if factor is not None:
        if "radius_policy" in options:
            raise ValueError("factor and radius_policy must not both be given: factor is radius_policy's initial_factor")
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not 0 < factor < math.inf:
            raise ValueError(f"factor must be a positive finite number (Δ₀ = factor·‖D p0‖), got {factor!r}")
        options["radius_policy"] = RadiusPolicy(initial_factor=float(factor))
    if "diag" in options:
        if "x_scale" in options:
            raise ValueError("diag and x_scale must not both be given: diag is MINPACK's scaling, 1/x_scale")
        diag = torch.as_tensor(options.pop("diag"), dtype=torch.float64)
        if diag.shape != (n,) or not bool((diag > 0).all()) or not bool(torch.isfinite(diag).all()):
            raise ValueError(f"diag must hold {n} positive finite numbers (one per parameter), got {diag.tolist()!r}")
        options["x_scale"] = 1.0 / diag


def curve_fit(
    f: Callable[..., Tensor],
    xdata: object,
    ydata: object,
    p0: object = None,
    sigma: object = None,
    absolute_sigma: bool = False,
    check_finite: bool | None = None,
    bounds: object = (-math.inf, math.inf),
    method: str | None = None,
    jac: Callable[..., Tensor] | str | None = None,
    *,
    full_output: bool = False,
    nan_policy: str | None = None,
    **kwargs,
):
    """Fit ``f(xdata, *params)`` to ``ydata`` by nonlinear least squares (scipy's ``curve_fit``).

    Args:
        f: the model ``f(x, a, b, ...)`` (or ``f(x, *params)`` with ``p0``), written
            with torch operations; returns a tensor of ydata's shape, or one value.
        xdata: passed to ``f`` unchanged when a tensor or an object scipy would not
            convert; arrays, lists and numbers become float64 tensors.
        ydata: the m observations, 1-D.
        p0: the starting parameters; ``None``: ones (midpoints or offsets inside
            finite bounds), their number read from f's signature.
        sigma: ``None``, a scalar or 1-D standard deviations of ydata, or its 2-D
            covariance matrix (symmetric positive definite).
        absolute_sigma: sigma holds true standard deviations: ``pcov`` is not
            rescaled by the residual variance s².
        check_finite: raise on NaN or inf in xdata and ydata; ``None``: True unless
            ``nan_policy`` is given.
        bounds: ``(lb, ub)``, scalars or length-n, or a ``scipy.optimize.Bounds``.
        method: ``None``, ``"lm"``, ``"trf"`` or ``"dogbox"`` (see the module docstring).
        jac: ``jac(x, *params)`` returning the ``(m, n)`` Jacobian of ``f``, or a
            string for least_squares; ``None``: automatic differentiation.
        full_output: also return ``infodict``, ``mesg`` and ``ier``.
        nan_policy: ``None``, ``"raise"`` or ``"omit"`` (scipy's meanings;
            ``"propagate"`` is rejected, as in scipy).
        **kwargs (Any): passed to `trustls.least_squares` (``ftol``, ``max_nfev``
            or ``maxfev``, ``x_scale``, ``solver``, ...).

    Returns:
        (tuple): ``(popt, pcov)``, tensors of shapes ``(n,)`` and ``(n, n)``; with
            ``full_output``, ``(popt, pcov, infodict, mesg, ier)``, where ``mesg``
            and ``ier`` are the solve's `Status` message and code (1 to 5 on
            success: scipy's 1 to 4, and 5 when the cost stopped changing above
            its rounding error).

    Raises:
        RuntimeError: the solve did not converge ("Optimal parameters not found: ...").
        ValueError, TypeError: invalid inputs, named in the message.

    Warns:
        CovarianceWarning: ``pcov`` could not be estimated (inf) or J is rank-deficient.

    Examples:
        >>> import torch
        >>> x = torch.linspace(0, 4, 50, dtype=torch.float64)
        >>> y = 2.5 * torch.exp(-1.3 * x) + 0.5 + 0.01 * torch.sin(40 * x)
        >>> popt, pcov = curve_fit(lambda x, a, b, c: a * torch.exp(-b * x) + c, x, y)
        >>> [round(v, 2) for v in popt.tolist()], pcov.shape
        ([2.5, 1.3, 0.5], torch.Size([3, 3]))
    """
    if not callable(f):
        raise TypeError(f"f must be callable, got {type(f).__name__}")
    for name, flag in (("absolute_sigma", absolute_sigma), ("full_output", full_output)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if nan_policy not in _NAN_POLICIES:
        raise ValueError(f"nan_policy must be one of {{None, 'raise', 'omit'}}, got {nan_policy!r}")
    if nan_policy == "propagate":
        raise ValueError("`nan_policy='propagate'` is not supported by this function.")
    if check_finite is None:
        check_finite = nan_policy is None
    if not isinstance(check_finite, bool):
        raise TypeError(f"check_finite must be a bool or None, got {type(check_finite).__name__}")
    if jac is not None and not callable(jac) and not isinstance(jac, str):
        raise TypeError(f"jac must be callable, a string or None, got {type(jac).__name__}")

    device = _reference_device(p0, ydata, xdata, sigma)
    ydata = torch.atleast_1d(data.as_float_tensor("ydata", ydata, device))
    if ydata.ndim != 1:
        raise ValueError(f"ydata must be 1-D (the m observations), got shape {tuple(ydata.shape)}")
    if ydata.numel() == 0:
        raise ValueError("ydata must not be empty")
    if data.convertible(xdata):
        xdata = data.as_float_tensor("xdata", xdata, device)
    sigma = None if sigma is None else data.as_float_tensor("sigma", sigma, device)
    if check_finite:
        _check_finite("ydata", ydata)
        _check_finite("xdata", xdata)
    elif nan_policy == "raise":
        if bool(torch.isnan(ydata).any()) or (
            isinstance(xdata, Tensor) and xdata.is_floating_point() and bool(torch.isnan(xdata).any())
        ):
            raise ValueError("The input contains nan values")
    elif nan_policy == "omit":
        xdata, ydata, sigma = data.omit_nan(xdata, ydata, sigma)
        if ydata.numel() == 0:
            raise ValueError("ydata must not be empty: every observation holds NaN")
    m = ydata.shape[0]
    whiten = data.whitening(sigma, m)

    if p0 is None:
        n = data.parameter_count(f)
        dtype = ydata.dtype if ydata.is_floating_point() else torch.float64
    else:
        p0 = torch.atleast_1d(data.as_float_tensor("p0", p0, device))
        if p0.ndim == 1 and not p0.is_floating_point() and not p0.is_complex() and p0.dtype != torch.bool:
            p0 = p0.to(torch.float64)  # integer starts, as scipy and least_squares read them
        if p0.ndim != 1 or not p0.is_floating_point():
            raise ValueError(f"p0 must be 1-D and floating, got shape {tuple(p0.shape)} and dtype {p0.dtype}")
        if not bool(torch.isfinite(p0).all()):
            raise ValueError("p0 must be finite, got NaN or inf entries")
        n, dtype = p0.shape[0], p0.dtype
    lb, ub = data.prepare_bounds(bounds, n, dtype, device)
    bounded = data.is_bounded(lb, ub)
    if p0 is None:
        p0 = data.feasible_start(lb, ub)
    options = _solver_options(method, bounded, m, n, kwargs)
    if bounded:
        options["bounds"] = (lb, ub)
    residual = _model_residual(f, xdata, ydata, whiten)
    jacobian = _model_jacobian(jac, xdata, m, whiten) if callable(jac) else None
    if jac is not None:
        options["jac"] = jacobian if jacobian is not None else jac

    result = least_squares(residual, p0, **options)
    if not result.success:
        raise RuntimeError("Optimal parameters not found: " + result.message)
    popt = result.x
    # J and the cost of the solve at popt, as scipy's "trf" takes them from its result: with a
    # robust loss, J̃ = S J and the robust cost (pcov = s²(J̃ᵀJ̃)⁻¹, s² = 2·cost/(m − n)).
    J = result.jac
    pcov = covariance_matrix(J, result.cost, absolute_sigma, DenseSVD(), stacklevel=2)
    if not full_output:
        return popt, pcov
    infodict = {"nfev": result.nfev, "njev": result.njev, "nit": result.nit, "fvec": result.fun, "jac": J}
    return popt, pcov, infodict, result.message, result.status.code
