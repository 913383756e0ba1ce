"""Tests for trustls.curve_fit: agreement with scipy's curve_fit, NIST's certified values, inputs, errors.

scipy is given the exact Jacobian (`tests/scipy_oracle.py`) and both sides tight
tolerances, so that popt agrees to about 1e-8 and pcov to about 1e-7; the tests
allow 1e-7 and 1e-6. (scipy's "lm" computes pcov from the last Jacobian MINPACK
evaluated, which may be one iterate before popt: that, not the covariance
formula, is the 4e-7 left with a 2-D sigma.)
"""

from __future__ import annotations

import doctest
import importlib
import math
import warnings

import numpy as np
import pytest
import scipy.optimize
import torch
from scipy_oracle import scipy_curve_fit

import trustls
from trustls import CovarianceWarning, curve_fit
from trustls.covariance import covariance
from trustls.operators import LinearOperator
from trustls.problems import nist
from trustls.radius import RadiusPolicy

F64 = torch.float64
SEED = 20240611
TIGHT = {"ftol": 1e-14, "xtol": 1e-14, "gtol": 1e-14}
fit_module = importlib.import_module("trustls.curve_fit")  # the name trustls.curve_fit is the function
fit_data = importlib.import_module("trustls._fit_data")


def decay(x, a, b, c):
    """The model of scipy's curve_fit documentation."""
    return a * torch.exp(-b * x) + c


@pytest.fixture(scope="module")
def decay_data():
    """scipy's documented example, with a seeded generator."""
    x = np.linspace(0, 4, 50)
    rng = np.random.default_rng(SEED)
    y = 2.5 * np.exp(-1.3 * x) + 0.5 + 0.2 * rng.normal(size=x.size)
    sigma = 0.1 + 0.05 * x
    covariance_of_y = 0.04 * np.exp(-np.abs(x[:, None] - x[None, :]) / 0.3)  # correlated errors
    return x, y, sigma, covariance_of_y


def _sigma(decay_data, kind):
    _, _, sigma, covariance_of_y = decay_data
    return {"none": None, "1-D": sigma, "scalar": 0.3, "2-D": covariance_of_y}[kind]


# -- agreement with scipy -----------------------------------------------------------------


@pytest.mark.parametrize("scipy_method", ["lm", "trf"])
@pytest.mark.parametrize("absolute_sigma", [False, True])
@pytest.mark.parametrize("kind", ["none", "1-D", "scalar", "2-D"])
def test_pcov_agrees_with_scipy(decay_data, kind, absolute_sigma, scipy_method):
    x, y, _, _ = decay_data
    sigma = _sigma(decay_data, kind)
    options = {"sigma": sigma, "absolute_sigma": absolute_sigma, **TIGHT}
    popt, pcov = curve_fit(decay, x, y, **options)
    expected_popt, expected_pcov = scipy_curve_fit(decay, x, y, [1.0, 1.0, 1.0], method=scipy_method, **options)
    assert popt.dtype == pcov.dtype == F64 and pcov.shape == (3, 3)
    np.testing.assert_allclose(popt.numpy(), expected_popt, rtol=1e-7)
    np.testing.assert_allclose(pcov.numpy(), expected_pcov, rtol=1e-6)


def test_scalar_sigma_scales_only_the_absolute_covariance(decay_data):
    x, y, _, _ = decay_data
    popt, pcov = curve_fit(decay, x, y, **TIGHT)
    popt_s, pcov_s = curve_fit(decay, x, y, sigma=0.3, **TIGHT)
    torch.testing.assert_close(popt_s, popt, rtol=1e-9, atol=0)
    torch.testing.assert_close(pcov_s, pcov, rtol=1e-7, atol=0)
    _, pcov_abs = curve_fit(decay, x, y, sigma=0.3, absolute_sigma=True, **TIGHT)
    _, pcov_unit = curve_fit(decay, x, y, absolute_sigma=True, **TIGHT)
    torch.testing.assert_close(pcov_abs, 0.09 * pcov_unit, rtol=1e-7, atol=0)


def test_diagonal_2d_sigma_is_the_1d_sigma_of_its_square_roots(decay_data):
    x, y, sigma, _ = decay_data
    popt_1, pcov_1 = curve_fit(decay, x, y, sigma=sigma, **TIGHT)
    popt_2, pcov_2 = curve_fit(decay, x, y, sigma=np.diag(sigma**2), **TIGHT)
    torch.testing.assert_close(popt_2, popt_1, rtol=1e-10, atol=0)
    torch.testing.assert_close(pcov_2, pcov_1, rtol=1e-8, atol=0)


def test_nan_policy_omit_agrees_with_scipy(decay_data):
    x, y, sigma, covariance_of_y = decay_data
    y = y.copy()
    y[[3, 17]] = np.nan
    x = x.copy()
    x[30] = np.nan
    for s in (sigma, covariance_of_y):
        popt, pcov = curve_fit(decay, x, y, sigma=s, nan_policy="omit", **TIGHT)
        expected_popt, expected_pcov = scipy_curve_fit(
            decay, x, y, [1.0, 1.0, 1.0], sigma=s, nan_policy="omit", **TIGHT
        )
        np.testing.assert_allclose(popt.numpy(), expected_popt, rtol=1e-7)
        np.testing.assert_allclose(pcov.numpy(), expected_pcov, rtol=1e-6)


def test_unused_parameter_gives_scipy_trf_pseudo_inverse_and_a_warning(decay_data):
    x, y, _, _ = decay_data

    def model(x, a, b, c, d):  # d has no effect: a zero column of J
        return a * torch.exp(-b * x) + c

    with pytest.warns(CovarianceWarning, match="rank 3 < n = 4"):
        popt, pcov = curve_fit(model, x, y, **TIGHT)
    expected_popt, expected_pcov = scipy_curve_fit(model, x, y, [1.0] * 4, method="trf", **TIGHT)
    np.testing.assert_allclose(popt.numpy(), expected_popt, rtol=1e-7)
    np.testing.assert_allclose(pcov.numpy(), expected_pcov, rtol=1e-6, atol=1e-300)
    assert float(popt[3]) == 1.0 and bool((pcov[3] == 0).all())  # scipy's "lm" gives inf instead


def test_redundant_parameters_give_scipys_pseudo_inverse(decay_data):
    x, y, _, _ = decay_data

    def model(x, a, b, c, d):  # only a·d is determined (scipy's documented example)
        return a * d * torch.exp(-b * x) + c

    with pytest.warns(CovarianceWarning, match="rank 3 < n = 4"):
        popt, pcov, infodict, _, _ = curve_fit(model, x, y, full_output=True, **TIGHT)
    # The data do not fix a and d, so scipy's trf stops elsewhere along a·d = const;
    # its covariance code (scipy.optimize.curve_fit, method "trf") on our J and cost:
    J = infodict["jac"].numpy()
    _, s, VT = np.linalg.svd(J, full_matrices=False)
    keep = s > np.finfo(float).eps * max(J.shape) * s[0]
    expected = (VT[keep].T / s[keep] ** 2) @ VT[keep] * np.sum(infodict["fvec"].numpy() ** 2) / (50 - 4)
    np.testing.assert_allclose(pcov.numpy(), expected, rtol=1e-8)
    assert math.isclose(float(popt[0] * popt[3]), 2.43106751, rel_tol=1e-7)  # the unused-d fit's a


def test_as_many_parameters_as_data_gives_inf_and_a_warning_as_scipy():
    x = np.array([0.0, 1.0, 2.0])
    y = 2.5 * np.exp(-1.3 * x) + 0.5
    with pytest.warns(CovarianceWarning, match=r"m = 3 and n = 3.*returning inf") as record:
        popt, pcov = curve_fit(decay, x, y, **TIGHT)
    assert record[0].filename == __file__  # the warning points at the caller of curve_fit
    with pytest.warns(Warning, match="Covariance of the parameters could not be estimated"):
        expected_popt, expected_pcov = scipy_curve_fit(decay, x, y, [1.0, 1.0, 1.0], **TIGHT)
    np.testing.assert_allclose(popt.numpy(), expected_popt, rtol=1e-6)
    assert bool(torch.isinf(pcov).all()) and np.isinf(expected_pcov).all()


def test_fewer_data_than_parameters_gives_inf_and_a_warning_as_scipy_trf():
    x = np.array([0.0, 1.0])
    y = np.array([3.0, 1.2])
    with pytest.warns(CovarianceWarning, match=r"m = 2 and n = 3"):
        _, pcov = curve_fit(decay, x, y, method="trf")
    with pytest.warns(Warning, match="Covariance of the parameters could not be estimated"):
        _, expected_pcov = scipy_curve_fit(decay, x, y, [1.0, 1.0, 1.0], method="trf")
    assert bool(torch.isinf(pcov).all()) and np.isinf(expected_pcov).all()
    # method=None without bounds is "lm", which scipy refuses here (found by a differential hunt:
    # method=None took trf's route).
    for method, which in (("lm", r"method 'lm'"), (None, r"method=None without bounds \(MINPACK's 'lm'\)")):
        with pytest.raises(ValueError, match=which + r" needs no more parameters than data points, got n = 3 > m = 2"):
            curve_fit(decay, x, y, method=method)
    with pytest.raises(TypeError, match="must not exceed the number of data points"):
        scipy_curve_fit(decay, x, y, [1.0, 1.0, 1.0])


# -- NIST's certified values through curve_fit, models as users write them ------------------


def thurber(x, *b):
    # Horner's rule written as Python loops over the coefficients.
    numerator = sum(b[k] * x**k for k in range(4))
    denominator = 1 + sum(b[4 + k] * x ** (k + 1) for k in range(3))
    return numerator / denominator


def nelson(x, b1, b2, b3):
    # Two predictors in scipy's (k, M) layout: time and temperature.
    return b1 - b2 * x[0] * torch.exp(-b3 * x[1])


def misra1a(x, b1, b2):
    return b1 * (1 - torch.exp(-b2 * x))


def rat43(x, b1, b2, b3, b4):
    # One scalar expression per observation, stacked.
    return torch.stack([b1 / (1 + torch.exp(b2 - b3 * xi)) ** (1 / b4) for xi in x])


@pytest.mark.parametrize(
    ("name", "model"), [("Thurber", thurber), ("Nelson", nelson), ("Misra1a", misra1a), ("Rat43", rat43)]
)
def test_nist_certified_values_through_curve_fit(name, model):
    problem = nist.load(name)
    xdata = problem.predictors.T if name == "Nelson" else problem.predictors
    popt, pcov = curve_fit(model, xdata, problem.response, p0=problem.starts[1], **TIGHT)
    assert nist.lre(popt, problem.certified_params) >= 6
    assert nist.lre(pcov.diagonal().sqrt(), problem.certified_std) >= 4


# -- inputs -------------------------------------------------------------------------------


def test_inputs_convert_like_scipy(decay_data):
    x, y, sigma, _ = decay_data
    reference = curve_fit(decay, x, y, sigma=sigma, **TIGHT)
    for xs, ys, ss, p0 in [
        (x.tolist(), y.tolist(), sigma.tolist(), [1, 1, 1]),
        (torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(sigma), torch.ones(3, dtype=F64)),
        (x.astype(np.float32), y, sigma, np.ones(3, dtype=np.float32)),  # arrays become float64
    ]:
        popt, pcov = curve_fit(decay, xs, ys, p0=p0, sigma=ss, **TIGHT)
        assert popt.dtype == pcov.dtype == F64
        rtol = 1e-5 if isinstance(xs, np.ndarray) else 1e-9  # float32 x values differ in their 8th digit
        torch.testing.assert_close(popt, reference[0], rtol=rtol, atol=0)
        torch.testing.assert_close(pcov, reference[1], rtol=100 * rtol, atol=0)


def test_float32_tensors_keep_their_dtype(decay_data):
    x, y, _, _ = decay_data
    popt64, pcov64 = curve_fit(decay, torch.from_numpy(x), torch.from_numpy(y))
    popt, pcov = curve_fit(decay, torch.from_numpy(x).float(), torch.from_numpy(y).float())
    assert popt.dtype == pcov.dtype == torch.float32
    torch.testing.assert_close(popt.double(), popt64, rtol=1e-4, atol=0)
    torch.testing.assert_close(pcov.double(), pcov64, rtol=1e-3, atol=0)


def test_scalar_p0_and_a_one_parameter_model():
    x = torch.linspace(0, 1, 20, dtype=F64)
    y = 3.0 * x + 0.01 * torch.cos(30 * x)
    popt, pcov = curve_fit(lambda x, slope: slope * x, x, y, p0=2.0)
    slope = float(x @ y / (x @ x))  # the linear least-squares answer
    assert popt.shape == (1,) and math.isclose(float(popt[0]), slope, rel_tol=1e-10)
    s2 = float((y - slope * x).square().sum()) / 19
    assert math.isclose(float(pcov[0, 0]), s2 / float(x @ x), rel_tol=1e-8)


def test_xdata_of_any_type_reaches_f_unchanged_and_models_may_gather():
    # A linear model with a group offset read by indexing: pcov is s²(XᵀX)⁻¹ exactly.
    generator = torch.Generator().manual_seed(SEED)
    x = torch.rand(60, generator=generator, dtype=F64)
    group = torch.arange(60) % 3
    y = (
        2.0 * x
        + torch.tensor([0.5, -1.0, 0.25], dtype=F64)[group]
        + 0.05 * torch.randn(60, generator=generator, dtype=F64)
    )
    data = {"x": x, "group": group}

    def model(data, slope, o1, o2, o3):
        assert isinstance(data, dict)
        return slope * data["x"] + torch.stack([o1, o2, o3])[data["group"]]

    popt, pcov = curve_fit(model, data, y)
    X = torch.cat([x[:, None], torch.nn.functional.one_hot(group, 3).to(F64)], dim=1)
    beta = torch.linalg.lstsq(X, y[:, None]).solution[:, 0]
    torch.testing.assert_close(popt, beta, rtol=1e-9, atol=0)
    s2 = float((y - X @ beta).square().sum()) / (60 - 4)
    torch.testing.assert_close(pcov, s2 * torch.linalg.inv(X.T @ X), rtol=1e-8, atol=0)


def test_piecewise_model_with_where():
    x = torch.linspace(0, 10, 80, dtype=F64)
    y = torch.where(x < 4, 1.0 + 0.5 * x, 3.0 - 0.25 * (x - 4)) + 0.01 * torch.sin(7 * x)

    def hinge(x, a, b, c):  # the kink at x = 4 is known; both slopes are fitted
        return torch.where(x < 4, a + b * x, a + 4 * b + c * (x - 4))

    popt, pcov = curve_fit(hinge, x, y)
    torch.testing.assert_close(popt, torch.tensor([1.0, 0.5, -0.25], dtype=F64), rtol=0, atol=5e-3)
    assert bool((pcov.diagonal() > 0).all())


def test_constant_model_broadcasts():
    y = torch.tensor([1.0, 2.0, 4.0], dtype=F64)
    popt, pcov = curve_fit(lambda x, c: c, None, y, p0=[0.0])
    assert math.isclose(float(popt[0]), 7 / 3, rel_tol=1e-12)
    assert math.isclose(float(pcov[0, 0]), float((y - 7 / 3).square().sum()) / 2 / 3, rel_tol=1e-10)


def test_full_output(decay_data):
    x, y, sigma, _ = decay_data
    popt, pcov, infodict, mesg, ier = curve_fit(decay, x, y, sigma=sigma, full_output=True)
    assert set(infodict) == {"nfev", "njev", "nit", "fvec", "jac"}
    xt, yt, st = (torch.from_numpy(a) for a in (x, y, sigma))

    def residual(p):
        return (decay(xt, *p) - yt) / st

    torch.testing.assert_close(infodict["fvec"], residual(popt), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(infodict["jac"], torch.func.jacfwd(residual)(popt), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(pcov, covariance(infodict["jac"], 0.5 * float(infodict["fvec"].square().sum())))
    direct = trustls.least_squares(residual, torch.ones(3, dtype=F64), method="lm")
    assert (infodict["nfev"], infodict["njev"], infodict["nit"]) == (direct.nfev, direct.njev, direct.nit)
    assert mesg == direct.message and ier == direct.status.code and ier in (1, 2, 3, 4, 5)


def test_methods_map_to_the_exact_solver(decay_data):
    x, y, _, _ = decay_data
    for method in (None, "lm", "trf"):
        popt, _ = curve_fit(decay, x, y, method=method, **TIGHT)
        torch.testing.assert_close(popt, curve_fit(decay, x, y, **TIGHT)[0], rtol=1e-8, atol=0)
    options = fit_module._solver_options
    assert options(None, False, 50, 3, {}) == {"solver": "lstsq", "x_scale": "jac", "method": "lm"}
    assert options("lm", False, 50, 3, {}) == {"solver": "lstsq", "x_scale": "jac", "method": "lm"}
    assert options("trf", False, 50, 3, {}) == {"solver": "lstsq"}
    assert options(None, True, 50, 3, {}) == {"solver": "lstsq"}
    assert options("dogbox", True, 50, 3, {"tr_solver": "exact"}) == {"method": "dogbox", "tr_solver": "exact"}
    assert options(None, False, 50, 3, {"solver": "cg", "maxfev": 9}) == {
        "solver": "cg",
        "max_nfev": 9,
        "x_scale": "jac",
    }


def test_solver_options_pass_through(decay_data):
    x, y, _, _ = decay_data
    popt, _ = curve_fit(decay, x, y, solver="cg", **TIGHT)
    torch.testing.assert_close(popt, curve_fit(decay, x, y, **TIGHT)[0], rtol=1e-7, atol=0)
    with pytest.raises(RuntimeError, match="Optimal parameters not found: The maximum number of function evaluations"):
        curve_fit(decay, x, y, maxfev=2)
    with pytest.raises(RuntimeError, match="Optimal parameters not found: The maximum number of function evaluations"):
        curve_fit(decay, x, y, max_nfev=2)


def test_whitened_user_jacobian_matches_automatic_differentiation(decay_data):
    # curve_fit hands least_squares jac(x, *p) whitened like the residual; checked here on its own.
    x, y, sigma, covariance_of_y = decay_data
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def jac(x, a, b, c):
        e = torch.exp(-b * x)
        return torch.stack([e, -a * x * e, torch.ones_like(x)], dim=1)

    p = torch.tensor([2.0, 1.1, 0.4], dtype=F64)
    for s in (torch.from_numpy(sigma), torch.tensor(0.3, dtype=F64), torch.from_numpy(covariance_of_y)):
        whiten = fit_data.whitening(s, 50)
        residual = fit_module._model_residual(decay, xt, yt, whiten)
        jacobian = fit_module._model_jacobian(jac, xt, 50, whiten)
        torch.testing.assert_close(jacobian(p), torch.func.jacfwd(residual)(p), rtol=1e-12, atol=1e-13)


def test_feasible_start_is_scipys():
    inf = math.inf
    lb = torch.tensor([-inf, 0.0, -inf, 2.0], dtype=F64)
    ub = torch.tensor([inf, 4.0, 1.0, inf], dtype=F64)
    assert fit_data.feasible_start(lb, ub).tolist() == [1.0, 2.0, 0.0, 3.0]
    lb, ub = fit_data.prepare_bounds((0, [3.0, 1.0, 0.5]), 3, F64, torch.device("cpu"))
    assert lb.tolist() == [0.0, 0.0, 0.0] and ub.tolist() == [3.0, 1.0, 0.5]
    assert fit_data.is_bounded(lb, ub) and not fit_data.is_bounded(*fit_data.prepare_bounds((-inf, inf), 2, F64, "cpu"))


# -- bounds, Jacobians, solvers, losses (scipy's least_squares options) ------------------------


def _jac(x, a, b, c):
    e = torch.exp(-b * x)
    return torch.stack([e, -a * x * e, torch.ones_like(x)], dim=1)


BOX = (0, [3.0, 1.0, 0.5])


def test_scipys_bounded_example_agrees_with_scipy_trf(decay_data):
    # scipy's documented example: 0 <= a <= 3, 0 <= b <= 1, 0 <= c <= 0.5; b ends on its bound.
    x, y, _, _ = decay_data
    popt, pcov = curve_fit(decay, x, y, bounds=BOX, **TIGHT)
    # p0=None with bounds: scipy's start is the midpoints of the finite intervals.
    midpoints = [1.5, 0.5, 0.25]
    expected_popt, expected_pcov = scipy_curve_fit(decay, x, y, midpoints, method="trf", bounds=BOX, **TIGHT)
    np.testing.assert_allclose(popt.numpy(), expected_popt, rtol=1e-8)
    np.testing.assert_allclose(pcov.numpy(), expected_pcov, rtol=1e-6)
    assert float(popt[1]) == pytest.approx(1.0, abs=1e-9)
    torch.testing.assert_close(curve_fit(decay, x, y, p0=midpoints, bounds=BOX, **TIGHT)[0], popt, rtol=0, atol=0)
    # A scipy Bounds object and tensor limits mean the same box.
    from scipy.optimize import Bounds

    for box in (Bounds(0, [3.0, 1.0, 0.5]), (torch.zeros(3, dtype=F64), torch.tensor([3.0, 1.0, 0.5], dtype=F64))):
        torch.testing.assert_close(curve_fit(decay, x, y, bounds=box, **TIGHT)[0], popt, rtol=0, atol=0)


def test_an_infeasible_p0_is_an_error(decay_data):
    x, y, _, _ = decay_data
    with pytest.raises(ValueError, match=r"x0 must lie within the bounds \(x0 is infeasible\), got x0\[0\] = 5.0"):
        curve_fit(decay, x, y, p0=[5.0, 0.5, 0.2], bounds=BOX)


@pytest.mark.parametrize("scipy_method", ["lm", "trf"])
@pytest.mark.parametrize("kind", ["none", "1-D", "2-D"])
def test_callable_jac_with_sigma_agrees_with_scipy(decay_data, kind, scipy_method):
    x, y, _, _ = decay_data
    sigma = _sigma(decay_data, kind)
    popt, pcov = curve_fit(decay, x, y, sigma=sigma, jac=_jac, **TIGHT)
    expected_popt, expected_pcov = scipy_curve_fit(decay, x, y, [1.0, 1.0, 1.0], sigma=sigma, method=scipy_method,
                                                   **TIGHT)
    np.testing.assert_allclose(popt.numpy(), expected_popt, rtol=1e-7)
    np.testing.assert_allclose(pcov.numpy(), expected_pcov, rtol=1e-6)
    automatic = curve_fit(decay, x, y, sigma=sigma, **TIGHT)
    torch.testing.assert_close(pcov, automatic[1], rtol=1e-9, atol=0)


@pytest.mark.parametrize("jac", ["2-point", "3-point", "cs"])
def test_jac_strings_mean_automatic_differentiation(decay_data, jac):
    x, y, sigma, _ = decay_data
    popt, pcov = curve_fit(decay, x, y, sigma=sigma, jac=jac, **TIGHT)
    expected = curve_fit(decay, x, y, sigma=sigma, **TIGHT)
    # Equal to rounding: the dense Jacobian's route is chosen by timing (trustls.models.dense_jacobian).
    torch.testing.assert_close(popt, expected[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(pcov, expected[1], rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match=r"jac must be a callable or one of \['2-point', '3-point', 'cs'\], got 'oops'"):
        curve_fit(decay, x, y, jac="oops")


def test_tr_solver_takes_precedence_over_the_default_solver(decay_data):
    x, y, _, _ = decay_data
    assert fit_module._solver_options(None, False, 50, 3, {"tr_solver": "lsmr"}) == {
        "tr_solver": "lsmr",
        "x_scale": "jac",
    }
    popt, pcov, infodict, _, _ = curve_fit(decay, x, y, tr_solver="lsmr", full_output=True, **TIGHT)
    assert isinstance(infodict["jac"], LinearOperator)  # the matrix-free solver ran; J was never formed
    expected = curve_fit(decay, x, y, **TIGHT)
    torch.testing.assert_close(popt, expected[0], rtol=1e-8, atol=0)
    torch.testing.assert_close(pcov, expected[1], rtol=1e-7, atol=0)
    _, _, infodict, _, _ = curve_fit(decay, x, y, tr_solver="exact", full_output=True, **TIGHT)
    assert isinstance(infodict["jac"], torch.Tensor)


@pytest.fixture(scope="module")
def outlier_data(decay_data):
    x, y, sigma, _ = decay_data
    y = y.copy()
    y[[3, 17, 30, 41]] += [1.5, -1.0, 2.0, 1.2]
    return x, y, sigma


@pytest.mark.parametrize("solver", ["lstsq", "cg"])
@pytest.mark.parametrize("with_sigma", [False, True], ids=["no_sigma", "1-D_sigma"])
def test_soft_l1_pcov_agrees_with_scipy(outlier_data, solver, with_sigma):
    # scipy's pcov with a loss is s²(J̃ᵀJ̃)⁻¹ from its result: the loss-weighted J̃ and the robust cost.
    x, y, sigma = outlier_data
    options = {"loss": "soft_l1", "f_scale": 1.0 if with_sigma else 0.1, "sigma": sigma if with_sigma else None, **TIGHT}
    popt, pcov = curve_fit(decay, x, y, solver=solver, **options)
    expected_popt, expected_pcov = scipy_curve_fit(decay, x, y, [1.0, 1.0, 1.0], method="trf", **options)
    np.testing.assert_allclose(popt.numpy(), expected_popt, rtol=1e-7)
    np.testing.assert_allclose(pcov.numpy(), expected_pcov, rtol=1e-6)
    # Not the least-squares covariance of the same point: the loss down-weights the outliers.
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    st = torch.from_numpy(sigma) if with_sigma else 1.0
    J = torch.func.jacfwd(lambda p: (decay(xt, *p) - yt) / st)(popt)
    plain = covariance(J, 0.5 * float(((decay(xt, *popt) - yt) / st).square().sum()))
    assert float((pcov / plain - 1).abs().max()) > 0.5


def test_scipys_x_scale_example():
    # scipy's documented example: parameters six orders of magnitude apart fail without x_scale.
    x = np.linspace(0, 4, 50)
    y = decay(torch.from_numpy(x), 500000, 0.01, 15).numpy()
    with pytest.raises(RuntimeError, match="Optimal parameters not found: The maximum number of function evaluations"):
        curve_fit(decay, x, y, method="trf")
    popt, _ = curve_fit(decay, x, y, method="trf", x_scale=[1000, 1, 1])
    expected_popt, _ = scipy_curve_fit(decay, x, y, [1.0, 1.0, 1.0], method="trf", x_scale=[1000, 1, 1])
    np.testing.assert_allclose(popt.numpy(), [500000, 0.01, 15], rtol=1e-7)
    np.testing.assert_allclose(popt.numpy(), expected_popt, rtol=1e-7)


# -- errors -------------------------------------------------------------------------------


def test_parameter_count_errors():
    x, y = np.linspace(0, 1, 5), np.ones(5)
    with pytest.raises(
        ValueError, match=r"p0 is None, so the number of parameters is read from f's signature.*\(x, \*p\)"
    ):
        curve_fit(lambda x, *p: p[0] * x, x, y)
    with pytest.raises(ValueError, match=r"p0 is None, .*got the signature \(x\)"):
        curve_fit(lambda x: x, x, y)
    with pytest.raises(TypeError, match="f must be callable, got int"):
        curve_fit(3, x, y)


def test_data_errors():
    x, y = np.linspace(0, 1, 5), np.ones(5)
    model = lambda x, a: a * x
    with pytest.raises(ValueError, match=r"ydata must be 1-D \(the m observations\), got shape \(5, 1\)"):
        curve_fit(model, x, y[:, None])
    with pytest.raises(ValueError, match="ydata must not be empty"):
        curve_fit(model, x, [])
    with pytest.raises(TypeError, match="ydata must be a torch.Tensor, a numpy array, a list or a number, got str"):
        curve_fit(model, x, "y")
    bad = y.copy()
    bad[2] = np.nan
    with pytest.raises(ValueError, match=r"ydata must be finite when check_finite is True .*nan_policy='omit'"):
        curve_fit(model, x, bad)
    with pytest.raises(ValueError, match="xdata must be finite when check_finite is True"):
        curve_fit(model, [0, 1, np.inf, 2, 3], y)
    with pytest.raises(ValueError, match="The input contains nan values"):
        curve_fit(model, x, bad, nan_policy="raise")
    with pytest.raises(ValueError, match="fun\\(x0\\) must be finite"):
        curve_fit(model, x, bad, check_finite=False)  # no special handling: the solve refuses
    with pytest.raises(ValueError, match=r"`nan_policy='propagate'` is not supported by this function."):
        curve_fit(model, x, y, nan_policy="propagate")
    with pytest.raises(ValueError, match=r"nan_policy must be one of \{None, 'raise', 'omit'\}, got 'drop'"):
        curve_fit(model, x, y, nan_policy="drop")
    with pytest.raises(ValueError, match=r"nan_policy='omit' needs xdata's last axis to index the 5 observations"):
        curve_fit(model, np.ones((5, 2)), y, nan_policy="omit")
    with pytest.raises(TypeError, match="nan_policy='omit' needs xdata as a tensor, array or list .*, got dict"):
        curve_fit(lambda d, a: a * d["x"], {"x": torch.from_numpy(x)}, y, nan_policy="omit")
    with pytest.raises(TypeError, match="check_finite must be a bool or None, got str"):
        curve_fit(model, x, y, check_finite="yes")
    with pytest.raises(TypeError, match="absolute_sigma must be a bool, got int"):
        curve_fit(model, x, y, absolute_sigma=1)


def test_sigma_errors():
    x, y = np.linspace(0, 1, 4), np.ones(4)
    model = lambda x, a: a * x
    with pytest.raises(
        ValueError, match=r"sigma must be a scalar, of shape \(4,\) or \(4, 4\) for 4 observations, got shape \(3,\)"
    ):
        curve_fit(model, x, y, sigma=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="sigma must hold finite positive standard deviations"):
        curve_fit(model, x, y, sigma=[1.0, -1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="sigma must be positive definite when 2-D .* fails at column 1"):
        curve_fit(model, x, y, sigma=np.ones((4, 4)))
    asymmetric = np.eye(4)
    asymmetric[0, 1] = 0.5
    with pytest.raises(ValueError, match=r"sigma must be symmetric when 2-D .* got max \|sigma - sigma.T\| = 0.5"):
        curve_fit(model, x, y, sigma=asymmetric)


def test_model_and_option_errors():
    x, y = np.linspace(0, 1, 5), np.ones(5)
    with pytest.raises(TypeError, match="f must return a torch.Tensor .*, got ndarray"):
        curve_fit(lambda x, a: np.ones(5), x, y)
    with pytest.raises(
        ValueError, match=r"f\(xdata, \*params\) must return shape \(5,\) \(ydata.s\) or one value for all, got \(4,\)"
    ):
        curve_fit(lambda x, a: a * x[:4], x, y)
    with pytest.raises(ValueError, match="method must be one of None, 'lm', 'trf', 'dogbox', got 'newton'"):
        curve_fit(lambda x, a: a * x, x, y, method="newton")
    with pytest.raises(ValueError, match="Method 'lm' only works for unconstrained problems"):
        curve_fit(lambda x, a: a * x, x, y, method="lm", bounds=(0, 2))
    with pytest.raises(ValueError, match="'args' is not a supported keyword argument"):
        curve_fit(lambda x, a: a * x, x, y, args=(1,))
    with pytest.raises(ValueError, match="maxfev and max_nfev must not both be given"):
        curve_fit(lambda x, a: a * x, x, y, maxfev=5, max_nfev=5)
    with pytest.raises(TypeError, match="jac must be callable, a string or None, got int"):
        curve_fit(lambda x, a: a * x, x, y, jac=1)
    with pytest.raises(ValueError, match=r"p0 must be 1-D and floating, got shape \(1,\) and dtype torch.bool"):
        curve_fit(lambda x, a: a * x, x, y, p0=torch.tensor([True]))
    with pytest.raises(ValueError, match="p0 must be finite"):
        curve_fit(lambda x, a: a * x, x, y, p0=[math.nan])


def test_bounds_errors():
    x, y = np.linspace(0, 1, 5), np.ones(5)
    model = lambda x, a, b: a * x + b
    with pytest.raises(ValueError, match="bounds must have each lower limit strictly less than its upper limit"):
        curve_fit(model, x, y, bounds=([0, 1], [1, 1]))
    with pytest.raises(
        ValueError, match=r"bounds' upper limit must be a scalar or have shape \(2,\), got shape \(3,\)"
    ):
        curve_fit(model, x, y, bounds=(0, [1, 2, 3]))
    with pytest.raises(ValueError, match=r"bounds must be a 2-tuple \(lb, ub\) or a scipy.optimize.Bounds, got 5"):
        curve_fit(model, x, y, bounds=5)
    with pytest.raises(ValueError, match="bounds' lower limit must not contain NaN"):
        curve_fit(model, x, y, bounds=(math.nan, 1))


@pytest.mark.cuda
def test_cuda_matches_cpu(device, decay_data):
    x, y, sigma, covariance_of_y = decay_data
    for s in (sigma, covariance_of_y):
        args = [torch.from_numpy(a).to(device) for a in (x, y, s)]
        popt, pcov = curve_fit(decay, args[0], args[1], sigma=args[2], **TIGHT)
        assert popt.device == pcov.device == device
        expected = curve_fit(decay, x, y, sigma=s, **TIGHT)
        torch.testing.assert_close(popt.cpu(), expected[0], rtol=1e-8, atol=0)
        torch.testing.assert_close(pcov.cpu(), expected[1], rtol=1e-6, atol=0)


def test_docstring_examples():
    for module in (fit_module, fit_data):
        failures, _ = doctest.testmod(module)
        assert failures == 0, module.__name__
    assert doctest.testmod(fit_module)[1] > 0


def test_curve_fit_emits_no_warning_on_a_regular_fit(decay_data):
    x, y, _, _ = decay_data
    with warnings.catch_warnings():
        warnings.simplefilter("error", CovarianceWarning)
        curve_fit(decay, x, y)


# -- MINPACK's lmder, as scipy's default curve_fit runs it (found by a bug hunt) ----------


def small_current(scale):
    """An exponential decay measured in units where the data are ~scale (a current in amperes)."""
    generator = torch.Generator().manual_seed(3)
    t = torch.linspace(0, 4, 40, dtype=F64)
    y = scale * (2.5 * torch.exp(-1.3 * t) + 0.3) + 0.01 * scale * torch.randn(40, generator=generator, dtype=F64)
    return t, y


@pytest.mark.parametrize("scale", [1.0, 1e-5, 1e-10])
def test_the_default_fit_does_not_depend_on_the_units_of_the_data(scale):
    """It stopped at p0 with "gtol" success for data of size 1e-10: ‖Jᵀr‖∞ < 1e-8 there at any point.
    MINPACK's test (scipy's gtol for "lm") is on the cosines between J's columns and r."""
    t, y = small_current(scale)
    p0 = [scale, 1.0, 0.0]
    popt, pcov = curve_fit(lambda x, a, b, c: a * torch.exp(-b * x) + c, t, y, p0=p0)
    reference, reference_cov = scipy.optimize.curve_fit(
        lambda x, a, b, c: a * np.exp(-b * x) + c, t.numpy(), y.numpy(), p0=p0
    )
    torch.testing.assert_close(popt, torch.as_tensor(reference), rtol=1e-6, atol=1e-6 * scale)
    torch.testing.assert_close(pcov, torch.as_tensor(reference_cov), rtol=1e-4, atol=0)


def test_lm_starts_at_trustls_radius_or_minpacks_on_request_and_reaches_scipys_fit():
    """MINPACK (scipy's "lm") starts at Δ₀ = 100‖D p0‖, D the column norms of J at p0; trustls' "lm"
    starts at ‖D p0‖ (with MINPACK's start and trustls' radius updates NIST MGH10 took 16,756
    evaluations), and MINPACK's start is asked for by radius_policy= or curve_fit's factor=. Checked
    on the first trial of each, and on a fit from p0 = ones on counts of 30–280 that reaches scipy's
    (with Δ₀ = ‖D p0‖ it once stopped at 322 times the minimum with ftol success)."""
    generator = torch.Generator().manual_seed(1)
    t = torch.linspace(0, 4, 30, dtype=F64)
    y = 250 * torch.exp(-1.3 * t) + 30 + torch.randn(30, generator=generator, dtype=F64)
    model = lambda x, a, b, c: a * torch.exp(-b * x) + c  # noqa: E731
    p0 = torch.ones(3, dtype=F64)
    J0 = torch.func.jacrev(lambda p: model(t, *p) - y)(p0)
    radius = float(torch.linalg.vector_norm(torch.linalg.vector_norm(J0, dim=0) * p0))

    def first_radius(**options):
        radii = []
        trustls.least_squares(lambda p: model(t, *p) - y, p0, method="lm", max_nfev=3,
                              callback=lambda intermediate_result: radii.append(intermediate_result.radius), **options)
        return radii[0]

    assert first_radius() == pytest.approx(radius, rel=1e-12)
    assert first_radius(radius_policy=RadiusPolicy(initial_factor=100.0)) == pytest.approx(100 * radius, rel=1e-12)
    radii = []
    with pytest.raises(RuntimeError, match="Optimal parameters not found"):  # three calls are no fit
        curve_fit(model, t, y, callback=lambda intermediate_result: radii.append(intermediate_result.radius),
                  max_nfev=3, factor=100)
    assert radii[0] == pytest.approx(100 * radius, rel=1e-12)
    popt, _ = curve_fit(model, t, y)
    with np.errstate(over="ignore"):  # scipy's finite differences overflow exp on the way, harmlessly
        reference, _ = scipy.optimize.curve_fit(lambda x, a, b, c: a * np.exp(-b * x) + c, t.numpy(), y.numpy())
    torch.testing.assert_close(popt, torch.as_tensor(reference), rtol=1e-6, atol=0)


def test_leastsq_keywords_are_read_as_minpack_means_them(decay_data):
    x, y, _, _ = decay_data
    plain, _ = curve_fit(decay, x, y, **TIGHT)
    same, _ = curve_fit(decay, x, y, epsfcn=1e-8, factor=1, col_deriv=0, **TIGHT)  # factor 1: trustls' Δ₀
    torch.testing.assert_close(same, plain, rtol=0, atol=0)
    minpack, _ = curve_fit(decay, x, y, factor=100, **TIGHT)  # MINPACK's Δ₀: another path, the same fit
    torch.testing.assert_close(minpack, plain, rtol=1e-8, atol=0)
    scaled, _ = curve_fit(decay, x, y, diag=[1.0, 2.0, 4.0], **TIGHT)  # x_scale = 1/diag
    torch.testing.assert_close(scaled, plain, rtol=1e-8, atol=0)
    with pytest.raises(ValueError, match=r"factor must be a positive finite number \(Δ₀ = factor·‖D p0‖\), got 0"):
        curve_fit(decay, x, y, factor=0)
    with pytest.raises(ValueError, match=r"col_deriv=True is not supported"):
        curve_fit(decay, x, y, col_deriv=1)
    with pytest.raises(ValueError, match=r"diag must hold 3 positive finite numbers \(one per parameter\), got \[1\.0, 2\.0\]"):
        curve_fit(decay, x, y, diag=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"diag and x_scale must not both be given"):
        curve_fit(decay, x, y, diag=[1.0, 1.0, 1.0], x_scale=1.0)


def test_an_integer_p0_is_read_as_float64(decay_data):
    x, y, _, _ = decay_data
    popt, _ = curve_fit(decay, x, y, p0=torch.tensor([1, 1, 1]), **TIGHT)
    assert popt.dtype == F64
    torch.testing.assert_close(popt, curve_fit(decay, x, y, p0=[1.0, 1.0, 1.0], **TIGHT)[0], rtol=0, atol=0)


def test_the_default_fits_nist_mgh10_from_its_first_start():
    """Found by running the benchmarks: with MINPACK's Δ₀ = 100‖D p0‖ and trustls' radius updates the
    default took 16,756 evaluations on MGH10 from start 1 (Meyer's function) and failed within its budget;
    from ‖D p0‖ it takes 251 (MINPACK, with its own updates, 292)."""
    problem = nist.load("MGH10")
    popt, _, info, _, _ = curve_fit(lambda x, *b: problem.model(torch.stack(b)), None, problem.response,
                                    p0=problem.starts[0], full_output=True)
    torch.testing.assert_close(popt, problem.certified_params, rtol=1e-6, atol=0)
    assert info["nfev"] <= 300
