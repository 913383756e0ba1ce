"""Tests for trustls.result: `Result.covariance` and `Result.standard_errors` (the rest of `Result` and
`Status` is exercised by every solve; `tests/test_api.py` checks the mapping and the status codes).
"""

from __future__ import annotations

import dataclasses
import doctest
import warnings

import numpy as np
import pytest
import torch

import trustls
import trustls.result
from trustls import CovarianceWarning, curve_fit, least_squares
from trustls.covariance import covariance, standard_errors
from trustls.operators import LinearOperator
from trustls.problems import nist

F64 = torch.float64
TIGHT = {"ftol": 1e-14, "xtol": 1e-14, "gtol": 1e-14}


def decay(x, a, b, c):
    return a * torch.exp(-b * x) + c


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(20240611)
    x = torch.linspace(0, 4, 50, dtype=F64)
    y = decay(x, 2.5, 1.3, 0.5) + 0.2 * torch.from_numpy(rng.normal(size=50))
    outliers = y.clone()
    outliers[[3, 17, 30, 41]] += torch.tensor([1.5, -1.0, 2.0, 1.2], dtype=F64)
    sigma = 0.1 + 0.05 * x
    return x, y, outliers, sigma


@pytest.mark.parametrize("solver", ["lstsq", "cg"])
@pytest.mark.parametrize("loss", ["linear", "soft_l1"])
@pytest.mark.parametrize("absolute_sigma", [False, True])
def test_covariance_is_curve_fits_pcov(data, solver, loss, absolute_sigma):
    x, _, y, sigma = data
    popt, pcov = curve_fit(decay, x, y, sigma=sigma, absolute_sigma=absolute_sigma, loss=loss, f_scale=1.0,
                           solver=solver, **TIGHT)
    result = least_squares(lambda p: (decay(x, *p) - y) / sigma, torch.ones(3, dtype=F64), loss=loss, f_scale=1.0,
                           solver=solver, x_scale="jac", **TIGHT)
    assert isinstance(result.jac, torch.Tensor if solver == "lstsq" else LinearOperator)
    torch.testing.assert_close(result.x, popt, rtol=1e-12, atol=0)
    torch.testing.assert_close(result.covariance(absolute_sigma=absolute_sigma), pcov, rtol=1e-10, atol=0)
    torch.testing.assert_close(result.standard_errors(absolute_sigma=absolute_sigma), pcov.diagonal().sqrt(),
                               rtol=1e-10, atol=0)


def test_methods_are_trustls_covariance_of_jac_and_cost(data):
    x, y, _, _ = data
    result = least_squares(lambda p: decay(x, *p) - y, [1.0, 1.0, 1.0], solver="cg")
    J = result.jac.to_dense()
    torch.testing.assert_close(result.covariance(), covariance(J, result.cost), rtol=1e-12, atol=0)
    torch.testing.assert_close(result.covariance(method="cg"), covariance(J, result.cost), rtol=1e-8, atol=0)
    torch.testing.assert_close(result.standard_errors(method="svd"), standard_errors(J, result.cost),
                               rtol=1e-12, atol=0)
    assert set(result.keys()) == {f.name for f in dataclasses.fields(result)} | {"message", "success"}


# Problems of every NIST difficulty whose J spans up to 9 orders of magnitude of column scale.
NIST_PROBLEMS = ["Misra1a", "Thurber", "BoxBOD", "Eckerle4", "MGH10"]


@pytest.mark.parametrize("name", NIST_PROBLEMS)
def test_nist_standard_errors_from_a_least_squares_result(name):
    problem = nist.load(name)
    result = least_squares(problem.residual, problem.starts[1], method="lm", **{k: 1e-13 for k in TIGHT})
    assert result.success and nist.lre(result.x, problem.certified_params) >= 5
    assert nist.lre(result.standard_errors(), problem.certified_std) >= 4
    torch.testing.assert_close(result.standard_errors(), result.covariance().diagonal().sqrt(), rtol=1e-12, atol=0)


def test_warnings_point_at_the_caller():
    # One residual per parameter: no degrees of freedom for s².
    result = least_squares(lambda p: p - torch.tensor([1.0, 2.0], dtype=F64), [0.0, 0.0])
    with pytest.warns(CovarianceWarning, match="needs more residuals than parameters") as record:
        C = result.covariance()
    assert record[0].filename == __file__
    assert bool(torch.isinf(C).all())
    with pytest.warns(CovarianceWarning, match="needs more residuals than parameters") as record:
        se = result.standard_errors()
    assert record[0].filename == __file__ and bool(torch.isinf(se).all())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(result.covariance(absolute_sigma=True), torch.eye(2, dtype=F64))
    with pytest.raises(TypeError, match="absolute_sigma must be a bool, got int"):
        result.covariance(absolute_sigma=1)


def test_docstring_examples():
    failures, tried = doctest.testmod(trustls.result)
    assert failures == 0 and tried >= 3
