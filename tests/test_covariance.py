"""Tests for trustls.covariance: NIST's certified standard deviations, the SVD and CG paths, inf policies.

NIST certifies, for each StRD problem, the standard deviations of the parameters:
√diag(s²(JᵀJ)⁻¹) at the certified minimizer, s² = RSS/(m − n), computed in 128-bit
arithmetic and printed to 11 significant digits. The standard errors from the point
trustls reaches must agree with them to at least 4 digits (LRE ≥ 4) on every problem;
Lanczos1 is the one exception, explained in its own test.
"""

from __future__ import annotations

import doctest
import math
import warnings

import pytest
import torch

import trustls
from trustls.covariance import (
    CovarianceEntries,
    CovarianceWarning,
    DenseSVD,
    MatrixFreeCG,
    conjugate_gradient,
    covariance,
    covariance_entries,
    estimates,
    methods,
    standard_errors,
)
from trustls.operators import DenseOperator, JacobianOperator, LinearOperator, jacobian_products
from trustls.problems import nist

F64 = torch.float64
# Tight enough that the solution is the certified one to ≥ 5 digits on every problem
# (x_scale="jac" is curve_fit's default); 593 evaluations in all.
NIST_OPTIONS = {"solver": "lstsq", "x_scale": "jac", "ftol": 1e-13, "xtol": 1e-13, "gtol": 1e-13}
# Lanczos1's data are an exact sum of exponentials rounded to 13 digits: the residuals
# at the minimizer (RSS 1.4e-25, residuals ~1e-13) are at the level of the rounding
# error of evaluating the model in float64, so its RSS, and s², have 2-3 digits only.
RSS_LIMITED = {"Lanczos1"}


@pytest.fixture(scope="module")
def nist_solutions():
    """Each problem solved once from NIST's start 2 with the exact dense solver."""
    solutions = {}
    for name in nist.names():
        problem = nist.load(name)
        result = trustls.least_squares(problem.residual, problem.starts[1], **NIST_OPTIONS)
        assert result.success, (name, result.status)
        jacobian = torch.func.jacfwd(problem.residual)(result.x)
        solutions[name] = (problem, result, jacobian)
    return solutions


@pytest.mark.parametrize("name", nist.names())
def test_nist_standard_errors_match_the_certified_values(nist_solutions, name):
    problem, result, J = nist_solutions[name]
    assert nist.lre(result.x, problem.certified_params) >= 5  # the certified fit is reached
    se = standard_errors(J, result.cost)
    if name in RSS_LIMITED:
        # The Jacobian part is right: with NIST's own RSS for s², 10 digits agree.
        assert nist.lre(2 * result.cost, problem.certified_rss) < 4
        assert nist.lre(standard_errors(J, problem.certified_rss / 2), problem.certified_std) >= 10
    else:
        assert nist.lre(se, problem.certified_std) >= 4
    # The diagonal shortcut is the diagonal of the full matrix.
    torch.testing.assert_close(se, covariance(J, result.cost).diagonal().sqrt(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", nist.names())
def test_nist_matrix_free_standard_errors_agree_with_the_svd(nist_solutions, name):
    problem, result, J = nist_solutions[name]
    n = J.shape[1]
    operator = JacobianOperator(jacobian_products(problem.residual, result.x), n)
    entries = covariance_entries(operator, None, result.cost, method="cg")
    assert bool(entries.converged.all())
    assert float(entries.error_estimates.max()) <= torch.finfo(F64).eps ** 0.75
    # Condition numbers of J reach 1.5e9 (Hahn1); the Jacobi scale removes the column scaling.
    torch.testing.assert_close(entries.diagonal.sqrt(), standard_errors(J, result.cost), rtol=1e-8, atol=0)
    # n ≤ 32: exact column norms (n products), CG (2 per iteration), true residuals (2 per column).
    assert entries.products == n + 2 * int(entries.iterations.sum()) + 2 * n


# -- the dense path -----------------------------------------------------------------------


def _jacobian(m: int, n: int, seed: int = 0, dtype=F64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, generator=generator, dtype=F64).to(dtype)


def test_covariance_is_s2_times_the_inverse_of_the_normal_matrix():
    J = _jacobian(40, 5)
    cost = 3.7
    reference = 2 * cost / (40 - 5) * torch.linalg.inv(J.T @ J)  # fine for a well-conditioned J
    torch.testing.assert_close(covariance(J, cost), reference, rtol=1e-12, atol=0)
    torch.testing.assert_close(covariance(J, absolute_sigma=True), torch.linalg.inv(J.T @ J), rtol=1e-12, atol=0)
    torch.testing.assert_close(standard_errors(J, cost), reference.diagonal().sqrt(), rtol=1e-12, atol=0)
    C = covariance(J, cost)
    assert torch.equal(C, C.T)


def test_cost_may_be_a_tensor_and_operators_give_the_same_matrix():
    J = _jacobian(30, 4)
    reference = covariance(J, 1.5)
    torch.testing.assert_close(covariance(J, torch.tensor(1.5, dtype=F64)), reference, rtol=0, atol=0)
    torch.testing.assert_close(covariance(DenseOperator(J), 1.5), reference, rtol=0, atol=0)
    entries = covariance_entries(_Matrix(J), [2, 0], 1.5, method="svd")
    assert entries.products == 4  # an operator is densified by n products
    torch.testing.assert_close(entries.columns, reference[:, [2, 0]], rtol=1e-14, atol=0)
    assert entries.converged.tolist() == [True, True] and entries.iterations is None


def test_cost_is_ignored_with_absolute_sigma():
    J = _jacobian(10, 3)
    torch.testing.assert_close(covariance(J, 123.0, absolute_sigma=True), covariance(J, absolute_sigma=True))


def test_rank_deficient_jacobian_gives_the_pseudo_inverse_and_a_warning():
    J = _jacobian(20, 3)
    J = torch.cat([J, J[:, :1] * 2], dim=1)  # column 3 = 2 · column 0: rank 3 of 4
    with pytest.warns(CovarianceWarning, match=r"rank 3 < n = 4 .* not the zero that the pseudo-inverse gives"):
        C = covariance(J, 1.0)
    # scipy's formula: V S⁻² Vᵀ over the singular values above eps·max(m, n)·s_max.
    _, s, Vh = torch.linalg.svd(J, full_matrices=False)
    keep = s > torch.finfo(F64).eps * 20 * s[0]
    reference = 2 * 1.0 / (20 - 4) * (Vh[keep].T / s[keep] ** 2) @ Vh[keep]
    torch.testing.assert_close(C, reference, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(C, 2 / 16 * torch.linalg.pinv(J.T @ J, hermitian=True), rtol=1e-6, atol=1e-12)


def test_rcond_sets_the_cutoff():
    J = _jacobian(20, 3) * torch.tensor([1.0, 1.0, 1e-6], dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        standard_errors(J, 1.0)  # full rank at the default cut-off
    with pytest.warns(CovarianceWarning, match="rank 2 < n = 3"):
        se = standard_errors(J, 1.0, method=DenseSVD(rcond=1e-4))
    assert se[2] < 1e-3 * standard_errors(J, 1.0)[2]


def test_zero_jacobian_gives_zeros_as_scipy_with_a_warning():
    with pytest.warns(CovarianceWarning, match="rank 0 < n = 2"):
        C = covariance(torch.zeros(5, 2, dtype=F64), 1.0)
    assert torch.equal(C, torch.zeros(2, 2, dtype=F64))


@pytest.mark.parametrize("m", [2, 3])
def test_no_more_residuals_than_parameters_gives_inf_and_a_warning(m):
    J = _jacobian(m, 3)
    for function in (covariance, standard_errors):
        with pytest.warns(CovarianceWarning, match=rf"could not be estimated: .* m = {m} and n = 3.*returning inf"):
            result = function(J, 1.0)
        assert bool(torch.isinf(result).all())
    with pytest.warns(CovarianceWarning, match="could not be estimated"):
        entries = covariance_entries(J, [1], 1.0, method="cg")
    assert bool(torch.isinf(entries.columns).all()) and entries.converged.tolist() == [False]


def test_square_full_rank_jacobian_with_absolute_sigma_is_the_inverse():
    J = _jacobian(3, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        C = covariance(J, absolute_sigma=True)
    torch.testing.assert_close(C, torch.linalg.inv(J.T @ J), rtol=1e-9, atol=0)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_jacobian_or_cost_gives_inf_and_a_warning(bad):
    J = _jacobian(6, 2)
    J[3, 1] = bad
    with pytest.warns(CovarianceWarning, match="Jacobian has NaN or inf entries; returning inf"):
        assert bool(torch.isinf(covariance(J, 1.0)).all())
    with pytest.warns(CovarianceWarning, match="Jacobian products gave NaN or inf"):
        assert bool(torch.isinf(standard_errors(J, 1.0, method="cg")).all())
    with pytest.warns(CovarianceWarning, match=f"the cost is {bad}"):
        assert bool(torch.isinf(standard_errors(_jacobian(6, 2), bad)).all())


def test_warnings_point_at_the_caller():
    calls = [
        lambda: covariance(_jacobian(2, 3), 1.0),
        lambda: covariance_entries(_jacobian(8, 3)[:, [0, 0, 1]], [0], 1.0),
        lambda: standard_errors(_jacobian(8, 3) * torch.tensor([1.0, 1.0, 0.0], dtype=F64), 1.0, method="cg"),
        lambda: estimates.standard_error_vector(_jacobian(2, 3), 1.0, False, None, stacklevel=2),
    ]
    for call in calls:
        with pytest.warns(CovarianceWarning) as record:
            call()
        assert [w.filename for w in record] == [__file__]


def test_float32_agrees_with_float64():
    J = _jacobian(50, 4)
    reference = standard_errors(J, 2.0)
    for method in ("svd", "cg"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            se = standard_errors(J.float(), 2.0, method=method)
        assert se.dtype == torch.float32
        torch.testing.assert_close(se.double(), reference, rtol=1e-5, atol=0)


# -- the matrix-free path ---------------------------------------------------------------


class _Matrix(LinearOperator):
    """A dense matrix seen only through products (so that no shortcut applies)."""

    def __init__(self, matrix: torch.Tensor):
        super().__init__(tuple(matrix.shape), matrix.dtype, matrix.device)
        self.matrix = matrix
        self.calls = 0

    def matvec(self, v):
        self.calls += 1
        return self.matrix @ v

    def rmatvec(self, u):
        self.calls += 1
        return self.matrix.T @ u


M_LARGE, N_LARGE = 900, 300


@pytest.fixture(scope="module")
def large_problem():
    """A tall nonlinear residual with n = 300 and columns scaled over four decades."""
    generator = torch.Generator().manual_seed(7)
    A = torch.randn(M_LARGE, N_LARGE, generator=generator, dtype=F64) / M_LARGE**0.5
    A = A * torch.logspace(-2, 2, N_LARGE, dtype=F64)
    B = torch.randn(M_LARGE, N_LARGE, generator=generator, dtype=F64) / M_LARGE**0.5
    y = torch.randn(M_LARGE, generator=generator, dtype=F64)
    x = torch.randn(N_LARGE, generator=generator, dtype=F64) * 0.1

    def residual(x):
        return A @ x + 0.1 * torch.tanh(B @ x) - y

    operator = JacobianOperator(jacobian_products(residual, x), N_LARGE)
    dense = A + 0.1 * (1 - torch.tanh(B @ x) ** 2)[:, None] * B
    return operator, dense, 0.5 * float(residual(x).square().sum())


def test_matrix_free_entries_match_the_dense_covariance(large_problem):
    operator, dense, cost = large_problem
    reference = covariance(dense, cost)
    columns = [0, 17, 150, 299]
    entries = covariance_entries(operator, columns, cost, method="cg")
    assert isinstance(entries, CovarianceEntries) and isinstance(entries.method, MatrixFreeCG)
    assert bool(entries.converged.all())
    assert entries.products == conjugate_gradient._NORM_PROBES + 2 * int(entries.iterations.sum()) + 2 * len(columns)
    assert int(entries.iterations.max()) < 100  # Jacobi-preconditioned: far fewer than n
    variances = reference.diagonal()[columns]
    relative = (entries.diagonal - variances).abs() / variances
    assert float(relative.max()) <= 1e-10
    assert float(entries.error_estimates.max()) <= torch.finfo(F64).eps ** 0.75
    scale = variances.sqrt()[None, :] * reference.diagonal().sqrt()[:, None]
    assert float(((entries.columns - reference[:, columns]).abs() / scale).max()) <= 1e-6  # √rtol bound
    assert float(entries.residual_norms.max()) < 1e-4


def test_matrix_free_standard_errors_and_covariance():
    # Every column of a smaller problem (n columns of a 300-parameter problem cost n solves).
    generator = torch.Generator().manual_seed(3)
    A = torch.randn(90, 30, generator=generator, dtype=F64) * torch.logspace(-2, 2, 30, dtype=F64)
    x = torch.randn(30, generator=generator, dtype=F64)

    def residual(x):
        return A @ x + 0.1 * torch.sin(x).repeat(3) - 1

    operator = JacobianOperator(jacobian_products(residual, x), 30)
    dense = A + 0.1 * torch.diag(torch.cos(x)).repeat(3, 1)
    cost = 0.5 * float(residual(x).square().sum())
    torch.testing.assert_close(
        standard_errors(operator, cost, method="cg"), standard_errors(dense, cost), rtol=1e-10, atol=0
    )
    C = covariance(operator, cost, method="cg")
    assert torch.equal(C, C.T)
    reference = covariance(dense, cost)
    d = reference.diagonal().sqrt()
    assert float(((C - reference).abs() / (d[:, None] * d[None, :])).max()) <= 1e-6


@pytest.mark.parametrize("scale", ["jac", None, "tensor"])
def test_the_preconditioner_changes_cost_not_results(scale):
    J = _jacobian(60, 8) * torch.logspace(-1, 1, 8, dtype=F64)
    if scale == "tensor":
        scale = 1 / torch.linalg.vector_norm(J, dim=0)
    entries = covariance_entries(_Matrix(J), None, 1.0, method=MatrixFreeCG(scale=scale))
    assert bool(entries.converged.all())
    torch.testing.assert_close(entries.diagonal, covariance(J, 1.0).diagonal(), rtol=1e-10, atol=0)


def test_jacobi_scale_of_a_banded_operator_is_exact():
    # Matrix-free with n > 32: the 32 probes are diluted (the estimate of x_scale="jac"),
    # exact when the rows of every column lie within 8 consecutive rows, as here.
    n = 40
    generator = torch.Generator().manual_seed(5)
    J = torch.zeros(2 * n, n, dtype=F64)
    index = torch.arange(n)
    J[2 * index, index] = torch.randn(n, generator=generator, dtype=F64)
    J[2 * index[:-1] + 1, index[:-1]] = torch.randn(n - 1, generator=generator, dtype=F64)
    J[2 * index[:-1] + 1, index[1:]] = torch.randn(n - 1, generator=generator, dtype=F64)
    operator = _Matrix(J * torch.logspace(-3, 3, n, dtype=F64))
    scale, products = conjugate_gradient.jacobi_scale(operator)
    assert products == operator.calls == conjugate_gradient._NORM_PROBES
    torch.testing.assert_close(scale, 1 / torch.linalg.vector_norm(operator.matrix, dim=0), rtol=1e-13, atol=0)


def test_products_are_counted():
    J = _Matrix(_jacobian(40, 6))
    entries = covariance_entries(J, [1, 4], 1.0, method=MatrixFreeCG(scale=None))
    assert entries.products == J.calls == 2 * int(entries.iterations.sum()) + 2 * 2


def test_singular_normal_matrix_is_reported_not_converged():
    J = _jacobian(30, 3)
    J = torch.cat([J, J[:, :1] + J[:, 1:2]], dim=1)  # rank 3 of 4
    with pytest.warns(
        CovarianceWarning, match=r"CG did not reach rtol for \d of 4 covariance columns: column 0 .*rank-deficient"
    ):
        entries = covariance_entries(_Matrix(J), None, 1.0, method=MatrixFreeCG(scale=None))
    assert not bool(entries.converged.all())


def test_zero_column_is_reported_not_converged():
    J = _jacobian(30, 3) * torch.tensor([1.0, 0.0, 1.0], dtype=F64)
    with pytest.warns(CovarianceWarning, match=r"CG did not reach rtol for 1 of 3 covariance columns: column 1 "):
        entries = covariance_entries(J, None, 1.0, method="cg")
    assert entries.converged.tolist() == [True, False, True]


def test_too_few_iterations_are_reported():
    J = _jacobian(40, 10) * torch.logspace(-2, 2, 10, dtype=F64)
    with pytest.warns(CovarianceWarning, match=r"CG did not reach rtol .* after 2 iterations\).*raise max_iter"):
        entries = covariance_entries(J, [0], 1.0, method=MatrixFreeCG(max_iter=2, scale=None))
    assert entries.converged.tolist() == [False] and entries.iterations.tolist() == [2]
    # CG's variance estimate increases towards the variance: not converged means too small.
    assert float(entries.diagonal[0]) < float(covariance(J, 1.0)[0, 0])


def test_exact_solves_stop_at_once():
    entries = covariance_entries(torch.eye(3, dtype=F64), [0, 2], absolute_sigma=True, method="cg")
    assert entries.iterations.tolist() == [1, 1] and entries.error_estimates.tolist() == [0.0, 0.0]
    assert entries.diagonal.tolist() == [1.0, 1.0]


def test_default_method_depends_on_the_jacobian(monkeypatch):
    J = _jacobian(10, 2)
    assert methods.resolve_method(None, J) == DenseSVD()
    assert methods.resolve_method(None, DenseOperator(J)) == DenseSVD()
    assert methods.resolve_method(None, _Matrix(J)) == DenseSVD()  # 20 entries: densified by 2 products
    assert methods.resolve_method("cg", J) == MatrixFreeCG()
    assert covariance_entries(_Matrix(J), [0], 1.0).products == 2
    monkeypatch.setattr(methods, "DENSE_ENTRIES_LIMIT", 19)
    assert methods.resolve_method(None, _Matrix(J)) == MatrixFreeCG()
    assert methods.resolve_method(None, J) == DenseSVD()  # a stored dense J is never solved by CG by default
    operator = _Matrix(J)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entries = covariance_entries(operator, [1], 1.0)
    assert isinstance(entries.method, MatrixFreeCG) and operator.calls == entries.products


# -- errors -----------------------------------------------------------------------------


def test_argument_errors():
    J = _jacobian(10, 3)
    with pytest.raises(TypeError, match="jacobian must be a torch.Tensor or a LinearOperator, got list"):
        covariance([[1.0]], 1.0)
    with pytest.raises(ValueError, match="jacobian must be a dense 2-D floating tensor, got a 1-D tensor"):
        covariance(torch.ones(3), 1.0)
    with pytest.raises(ValueError, match="jacobian must be a dense 2-D floating tensor, .* dtype torch.int64"):
        covariance(torch.ones(3, 2, dtype=torch.int64), 1.0)
    with pytest.raises(ValueError, match=r"cost must be given unless absolute_sigma=True"):
        covariance(J)
    with pytest.raises(ValueError, match=r"cost must be non-negative \(it is ½‖r‖²\), got -1.0"):
        standard_errors(J, -1.0)
    with pytest.raises(TypeError, match="cost must be a number .*, got str"):
        standard_errors(J, "1")
    with pytest.raises(ValueError, match=r"cost must be a number or a one-element floating tensor, got shape \(2,\)"):
        standard_errors(J, torch.ones(2))
    with pytest.raises(TypeError, match="absolute_sigma must be a bool, got int"):
        covariance(J, 1.0, absolute_sigma=1)
    with pytest.raises(
        ValueError, match=r"method must be one of \['cg', 'svd'\], a DenseSVD or a MatrixFreeCG, got 'qr'"
    ):
        covariance(J, 1.0, method="qr")
    with pytest.raises(TypeError, match="method must be 'svd', 'cg', a DenseSVD, a MatrixFreeCG or None, got int"):
        covariance(J, 1.0, method=3)


def test_column_errors():
    J = _jacobian(10, 3)
    with pytest.raises(ValueError, match=r"columns must be a non-empty sequence of ints in \[0, 3\), got \[3\]"):
        covariance_entries(J, [3], 1.0)
    with pytest.raises(ValueError, match=r"columns must be a non-empty sequence of ints in \[0, 3\), got \[\]"):
        covariance_entries(J, [], 1.0)
    with pytest.raises(ValueError, match=r"in \[0, 3\), got \[True\]"):
        covariance_entries(J, [True], 1.0)
    with pytest.raises(ValueError, match="columns must be a 1-D integer tensor when a tensor"):
        covariance_entries(J, torch.tensor([0.0]), 1.0)
    with pytest.raises(TypeError, match="columns must be a sequence of ints, a 1-D integer tensor or None, got int"):
        covariance_entries(J, 1, 1.0)
    entries = covariance_entries(J, torch.tensor([2, 0]), 1.0)
    assert entries.indices.tolist() == [2, 0]


def test_method_configuration_errors():
    with pytest.raises(ValueError, match="rcond must be a finite non-negative number or None, got -1"):
        DenseSVD(rcond=-1)
    with pytest.raises(ValueError, match=r"rtol must be a number in \(0, 1\) or None, got 0"):
        MatrixFreeCG(rtol=0)
    with pytest.raises(ValueError, match="max_iter must be a positive int or None, got 0"):
        MatrixFreeCG(max_iter=0)
    with pytest.raises(ValueError, match="scale must be 'jac', a 1-D positive tensor or None, got 'ones'"):
        MatrixFreeCG(scale="ones")
    with pytest.raises(ValueError, match="scale must have finite positive entries when a tensor"):
        MatrixFreeCG(scale=torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"scale must be a 1-D floating tensor when a tensor, got shape \(1, 2\)"):
        MatrixFreeCG(scale=torch.ones(1, 2))
    with pytest.raises(
        ValueError, match=r"scale must have shape \(3,\) on the Jacobian's device cpu, got shape \(2,\)"
    ):
        covariance_entries(_jacobian(10, 3), [0], 1.0, method=MatrixFreeCG(scale=torch.ones(2, dtype=F64)))


@pytest.mark.cuda
def test_cuda_matches_cpu(device):
    if device.type == "cpu":
        pytest.skip("compares a run on CUDA with the CPU's: no CUDA here")
    J = _jacobian(40, 5)
    for method in ("svd", "cg"):
        se = standard_errors(J.to(device), torch.tensor(1.3, dtype=F64, device=device), method=method)
        assert se.device == device
        torch.testing.assert_close(se.cpu(), standard_errors(J, 1.3), rtol=1e-9, atol=0)


def test_docstring_examples():
    for module in (estimates, methods):
        failures, tried = doctest.testmod(module)
        assert failures == 0 and tried > 0, module.__name__


def test_float32_covariance_keeps_parameters_whose_units_differ():
    """Found by a bug hunt: a*exp(-b t) + c with t up to 1000 (a ≈ 1000, b ≈ 0.003) has cond(J) = 4·10⁵
    but 7.8 with unit columns; in float32 the cutoff eps·max(m, n)·s_max dropped two singular values,
    warned "rank 1 < n = 3" and gave standard errors 2.4e-11 where float64 gives 2.80. The rank is now
    decided with unit columns, and a J of full rank there is inverted exactly, column-scaled."""
    t = torch.linspace(0, 1000, 60, dtype=torch.float64)
    p = torch.tensor([996.06, 0.0029628, 2.3536], dtype=torch.float64)
    J = torch.stack([torch.exp(-p[1] * t), -p[0] * t * torch.exp(-p[1] * t), torch.ones_like(t)], 1)
    expected = covariance(J, absolute_sigma=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no rank warning
        got = covariance(J.float(), absolute_sigma=True)
    torch.testing.assert_close(got.diagonal().double().sqrt(), expected.diagonal().sqrt(), rtol=1e-4, atol=0)


def test_matrix_free_variances_are_second_order_accurate_when_cg_runs_long():
    """Found by a bug hunt: every column reported converged at an estimated 1.8e-12, but the variances
    were off by 1.7e-8: bᵀy errs to first order in the computed residual once CG runs about n
    iterations; bᵀy + yᵀ(b − Ay) errs to second order."""
    generator = torch.Generator().manual_seed(0)
    Q1, _ = torch.linalg.qr(torch.randn(200, 40, generator=generator, dtype=F64))
    Q2, _ = torch.linalg.qr(torch.randn(40, 40, generator=generator, dtype=F64))
    J = Q1 @ torch.diag(torch.logspace(0, 1, 40, dtype=F64)) @ Q2  # cond(J) = 10
    exact = covariance(J, absolute_sigma=True).diagonal()
    free = covariance(DenseOperator(J), absolute_sigma=True, method=MatrixFreeCG()).diagonal()
    torch.testing.assert_close(free, exact, rtol=1e-11, atol=0)


def test_matrix_free_variances_of_unconverged_columns_stay_lower_bounds():
    """Review: along a singular JᵀJ the second-order correction yᵀ(b − Ay) is rounding of size
    eps·‖A‖‖y‖ and of any sign: it made variances negative (standard errors NaN). Columns that did
    not converge keep bᵀy, the lower bound the warning promises."""
    generator = torch.Generator().manual_seed(0)
    J = torch.randn(30, 5, generator=generator, dtype=F64)
    J = torch.cat([J, J[:, :1]], dim=1)  # a duplicated column: JᵀJ singular
    with pytest.warns(CovarianceWarning, match="CG did not reach rtol"):
        C = covariance(DenseOperator(J), absolute_sigma=True, method=MatrixFreeCG())
    assert bool((C.diagonal() > 0).all()) and bool(torch.isfinite(C).all())
