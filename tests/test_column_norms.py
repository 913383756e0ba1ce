"""Column norms of matrix-free Jacobians: exact ones, and the diluted estimate against dense ground truth."""

import pytest
import torch
from torch import Tensor

from trustls.models import GaussNewtonModel
from trustls.operators import (
    DenseOperator,
    JacobianOperator,
    LinearOperator,
    SparseOperator,
    jacobian_products,
)
from trustls.operators.column_norms import diluted_column_norms, exact_column_norms
from trustls.problems.structured import broyden_tridiagonal, extended_rosenbrock

F64 = torch.float64


def banded(generator, m, n, width, dtype=F64):
    """An (m, n) J whose row i holds columns near i·n/m: rows sharing a column lie within a few rows."""
    J = torch.zeros(m, n, dtype=dtype)
    for i in range(m):
        center = i * n // m
        lo, hi = max(0, center - width), min(n, center + width + 1)
        J[i, lo:hi] = torch.randn(hi - lo, generator=generator, dtype=F64).to(dtype)
    return J


def stages(J, classes, seed=0):
    return list(diluted_column_norms(DenseOperator(J), classes, torch.Generator().manual_seed(seed)))


def test_exact_column_norms_from_jvps(generator):
    J = torch.randn(7, 5, generator=generator, dtype=F64)
    torch.testing.assert_close(exact_column_norms(DenseOperator(J)), torch.linalg.vector_norm(J, dim=0))


@pytest.mark.parametrize("classes", [8, 16, 32])
def test_diluted_estimate_is_exact_on_banded_jacobians(generator, classes):
    J = banded(generator, 300, 200, 2)  # a column's rows span at most 7 consecutive rows
    *_, last = stages(J, classes)
    torch.testing.assert_close(last, torch.linalg.vector_norm(J, dim=0), rtol=1e-14, atol=0)


def test_stages_are_the_estimates_with_8_16_32_row_classes(generator):
    # The Walsh probes of the first P stages span the diluted probes σ ⊙ 1[i ≡ a mod P].
    m = 100
    J = torch.randn(m, 40, generator=generator, dtype=F64)
    estimates = stages(J, 32, seed=3)
    assert len(estimates) == 3
    signs = torch.randint(0, 2, (m,), generator=torch.Generator().manual_seed(3)).to(F64) * 2 - 1
    for classes, estimate in zip((8, 16, 32), estimates):
        probes = [torch.where(torch.arange(m) % classes == a, signs, 0.0) for a in range(classes)]
        expected = torch.sqrt(sum((J.T @ z) ** 2 for z in probes))
        torch.testing.assert_close(estimate, expected, rtol=1e-13, atol=0)


def test_later_stages_make_more_jacobians_exact(generator):
    J = banded(generator, 400, 100, 1)  # a column's rows span about 12 rows
    truth = torch.linalg.vector_norm(J, dim=0)
    errors = [float((estimate / truth - 1).abs().max()) for estimate in stages(J, 32)]
    assert errors[0] > 1e-3  # 8 classes: rows 8 apart collide
    assert errors[1] < 1e-13 and errors[2] < 1e-13


def test_diluted_estimate_is_unbiased_on_a_dense_jacobian(generator):
    J = torch.randn(64, 6, generator=generator, dtype=F64)
    squares = torch.stack([stages(J, 8, seed)[0] ** 2 for seed in range(1000)])
    truth = torch.linalg.vector_norm(J, dim=0) ** 2
    # The mean of 1,000 draws of an estimate whose relative standard deviation
    # is about 1/√8: 0.06 is five standard deviations of the mean.
    torch.testing.assert_close(squares.mean(0), truth, rtol=0.06, atol=0)


@pytest.mark.parametrize("classes", [4, 12])
def test_one_stage_of_row_classes_when_not_a_power_of_two_above_8(generator, classes):
    J = banded(generator, 30, 30, 1)  # a column's rows span 3 consecutive rows
    estimates = stages(J, classes)
    assert len(estimates) == 1
    torch.testing.assert_close(estimates[0], torch.linalg.vector_norm(J, dim=0), rtol=1e-14, atol=0)


def test_fewer_rows_than_classes_is_exact(generator):
    J = torch.randn(5, 40, generator=generator, dtype=F64)  # dense, but every row its own class
    torch.testing.assert_close(stages(J, 12)[0], torch.linalg.vector_norm(J, dim=0), rtol=1e-14, atol=0)


def test_estimate_is_reproducible(generator):
    J = torch.randn(50, 20, generator=generator, dtype=F64)
    first, second = stages(J, 32, seed=7), stages(J, 32, seed=7)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("make", [extended_rosenbrock, broyden_tridiagonal], ids=["rosenbrock", "broyden"])
def test_matrix_free_norms_of_structured_problems_are_exact(make):
    problem = make(200)
    x = problem.x0 + 0.1
    model = GaussNewtonModel()
    lin = model.linearize(problem.residual, x)
    assert model.column_norms_are_estimated(lin)
    rows, cols, values = problem.jacobian_coo(x)
    exact = SparseOperator(rows, cols, values, (problem.m, problem.n)).column_norms()
    estimates = list(model.column_norm_estimates(lin))
    assert len(estimates) == 3  # after 8, 16 and 32 VJPs
    for estimate in estimates:
        torch.testing.assert_close(estimate, exact, rtol=1e-14, atol=0)
    torch.testing.assert_close(model.column_norms(lin), exact, rtol=1e-14, atol=0)


def chained(x):
    """Two residuals per variable, interleaved: x_i² and x_{i+1} − x_i (0 for the last)."""
    differences = torch.cat([x[1:] - x[:-1], x.new_zeros(1)])
    return torch.stack([x**2, differences], dim=1).reshape(-1)


@pytest.mark.parametrize(("n", "probes", "estimated", "stages"),
                         [(32, 32, False, 1), (33, 32, True, 3), (40, 64, False, 1), (40, 8, True, 1)])
def test_norms_are_exact_up_to_32_variables_or_the_probes(n, probes, estimated, stages):
    model = GaussNewtonModel(column_norm_probes=probes)
    lin = model.linearize(chained, torch.linspace(0.5, 2.0, n, dtype=F64))
    assert model.column_norms_are_estimated(lin) is estimated
    assert len(list(model.column_norm_estimates(lin))) == stages
    dense = torch.func.jacrev(chained)(lin.x)
    torch.testing.assert_close(model.column_norms(lin), torch.linalg.vector_norm(dense, dim=0), rtol=1e-13, atol=0)


def test_concatenated_residual_groups_collide_but_stay_close(generator):
    # torch.cat([x², x_{i+1} − x_i]): a column's rows lie n − 1 apart, a multiple of
    # 32 here, so they share a class at every stage; the estimate stays unbiased.
    n = 65
    fun = lambda x: torch.cat([x**2, x[1:] - x[:-1]])  # noqa: E731
    model = GaussNewtonModel()
    lin = model.linearize(fun, torch.linspace(0.5, 2.0, n, dtype=F64))
    truth = torch.linalg.vector_norm(torch.func.jacrev(fun)(lin.x), dim=0)
    error = (model.column_norms(lin) / truth - 1).abs()
    assert float(error.max()) > 1e-3
    assert float(error.max()) < 0.5


def test_float32_estimate_of_an_autograd_jacobian():
    x = torch.linspace(-1.0, 1.0, 500)
    products = jacobian_products(lambda v: torch.stack([v**2, 3 * v], dim=1).reshape(-1), x)
    estimate, *_ = diluted_column_norms(JacobianOperator(products, 500), 32, torch.Generator().manual_seed(0))
    assert estimate.dtype == torch.float32
    torch.testing.assert_close(estimate, torch.sqrt(4 * x**2 + 9), rtol=1e-6, atol=0)


class _Recorder(LinearOperator):
    """An (m, n) operator that records the vectors of its ``rmatvec`` and returns ones."""

    def __init__(self, m: int, n: int):
        super().__init__((m, n), torch.float64, torch.device("cpu"))
        self.probes: list[Tensor] = []

    def matvec(self, v):
        raise AssertionError("only rmatvec is called")

    def rmatvec(self, u):
        self.probes.append(u.clone())
        return torch.ones(self.shape[1], dtype=torch.float64)


@pytest.mark.parametrize("classes", [6, 32])
def test_the_parts_of_a_split_jacobian_draw_the_slices_of_the_whole_probes(classes):
    # Data parallelism: each rank holds rows offset..offset+m-1 and must probe with
    # the same vectors, restricted to its rows, as one process over all rows.
    whole, first, second = _Recorder(45, 7), _Recorder(19, 7), _Recorder(26, 7)
    for J, rows in ((whole, None), (first, (0, 45)), (second, (19, 45))):
        list(diluted_column_norms(J, classes, torch.Generator().manual_seed(3), rows=rows))
    assert len(whole.probes) == len(first.probes) == len(second.probes) == classes
    for w, a, b in zip(whole.probes, first.probes, second.probes):
        assert torch.equal(w, torch.cat([a, b]))


def _exact_columns(J):
    return torch.linalg.vector_norm(J, dim=0)


def test_rows_16_apart_are_exact_with_32_classes():
    """A review's counterexample to stopping when two stages agree: rows 16 apart collide in
    the stages of 8 and 16 classes alike, so those agree while both are wrong; 32 are exact."""
    def lagged(x):
        return x[16:] - 0.5 * x[:-16] ** 2

    x = torch.linspace(0.5, 2.0, 200, dtype=F64)
    model = GaussNewtonModel()
    lin = model.linearize(lagged, x)
    exact = _exact_columns(torch.func.jacrev(lagged)(x))
    *_, last = model.column_norm_estimates(lin)
    torch.testing.assert_close(last, exact, rtol=1e-14, atol=0)


@pytest.mark.parametrize("N", [17, 24, 49])
def test_a_five_point_stencil_on_an_n_by_n_grid_is_exact(generator, N):
    # Rows j ± 1 and j ± N share column j: distances 1, 2, N − 1, N, N + 1, 2N, none ≡ 0 mod 32.
    n = N * N
    J = torch.zeros(n, n, dtype=F64)
    index = torch.arange(n)
    for shift in (0, 1, -1, N, -N):
        rows = index[(index + shift >= 0) & (index + shift < n)]
        if shift in (1, -1):
            rows = rows[(rows % N + shift >= 0) & (rows % N + shift < N)]
        J[rows, rows + shift] = torch.randn(rows.numel(), generator=generator, dtype=F64)
    *_, last = stages(J, 32)
    torch.testing.assert_close(last, _exact_columns(J), rtol=1e-13, atol=0)
