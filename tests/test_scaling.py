"""Scaled trust regions: diagonal and block-diagonal operators, block-Jacobi scaling, user Jacobians."""

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from scipy_oracle import scipy_least_squares
from trustls import GaussNewtonModel, SteihaugCG, TrustRegion, least_squares
from trustls.operators import (
    BlockDiagonalOperator,
    NormalOperator,
    DenseOperator,
    DiagonalOperator,
    ScaledOperator,
    SparseOperator,
)
from trustls.problems.structured import broyden_tridiagonal, extended_rosenbrock
from trustls.result import Status
from trustls.scaling import (
    BlockJacobi,
    DiagonalScaling,
    JacobiScale,
    UniformScaling,
    resolve_x_scale,
)

F64 = torch.float64


def random_sparse(generator, m=12, n=10, density=0.4):
    dense = torch.randn(m, n, generator=generator, dtype=F64)
    dense = dense * (torch.rand(m, n, generator=generator, dtype=F64) < density)
    rows, cols = torch.nonzero(dense, as_tuple=True)
    order = torch.randperm(rows.numel(), generator=generator)  # unsorted triplets
    return dense, SparseOperator(rows[order], cols[order], dense[rows, cols][order], (m, n))


def test_sparse_operator_matches_dense_and_with_values(generator):
    dense, A = random_sparse(generator)
    v = torch.randn(10, generator=generator, dtype=F64)
    u = torch.randn(12, generator=generator, dtype=F64)
    torch.testing.assert_close(A @ v, dense @ v)
    torch.testing.assert_close(A.rmatvec(u), dense.T @ u)
    torch.testing.assert_close(A.column_norms(), torch.linalg.vector_norm(dense, dim=0))
    B = A.with_values(3 * A.values)
    assert B.pattern is A.pattern
    torch.testing.assert_close(B.to_dense(), 3 * dense)
    assert not A.is_matrix_free and not NormalOperator(A).is_matrix_free


def test_sparse_operator_sums_duplicates_and_checks_input():
    A = SparseOperator(torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([1.0, 2.0]), (1, 2))
    torch.testing.assert_close(A.to_dense(), torch.tensor([[0.0, 3.0]]))
    with pytest.raises(TypeError, match=r"rows must be a 1-D int64 tensor, got torch.int32"):
        SparseOperator(torch.tensor([0], dtype=torch.int32), torch.tensor([0]), torch.tensor([1.0]), (1, 1))
    with pytest.raises(ValueError, match=r"rows, cols and values must have the same length, got 1, 2, 1"):
        SparseOperator(torch.tensor([0]), torch.tensor([0, 1]), torch.tensor([1.0]), (1, 2))
    with pytest.raises(ValueError, match=r"values must be a tensor of shape \(2,\), got \(3,\)"):
        A.with_values(torch.ones(3))


def test_diagonal_and_block_diagonal_operators(generator):
    d = torch.rand(4, generator=generator, dtype=F64) + 0.5
    D = DiagonalOperator(d)
    v = torch.randn(4, generator=generator, dtype=F64)
    torch.testing.assert_close(D.to_dense() @ v, D @ v)
    torch.testing.assert_close(D.inverse_matvec(D @ v), v)
    blocks = [torch.randn(2, 3, 3, generator=generator, dtype=F64) + 3 * torch.eye(3, dtype=F64),
              torch.randn(3, 1, 1, generator=generator, dtype=F64) + 2]
    B = BlockDiagonalOperator(blocks, [torch.linalg.inv(b) for b in blocks])
    w = torch.randn(9, generator=generator, dtype=F64)
    dense = B.to_dense()
    torch.testing.assert_close(B @ w, dense @ w)
    torch.testing.assert_close(B.rmatvec(w), dense.T @ w)
    torch.testing.assert_close(B.inverse_matvec(B @ w), w)
    with pytest.raises(ValueError, match=r"blocks must be a non-empty list of \(count, size, size\) tensors"):
        BlockDiagonalOperator([torch.ones(2, 3)])
    with pytest.raises(ValueError, match=r"inverse_matvec needs inverse_blocks"):
        BlockDiagonalOperator(blocks).inverse_matvec(w)


def test_scaled_operator_with_block_transform(generator):
    A = torch.randn(9, 9, generator=generator, dtype=F64)
    A = A @ A.T
    T = BlockDiagonalOperator([torch.randn(3, 3, 3, generator=generator, dtype=F64)])
    Td = T.to_dense()
    torch.testing.assert_close(ScaledOperator(DenseOperator(A), T).to_dense(), Td.T @ A @ Td)
    J = torch.randn(5, 9, generator=generator, dtype=F64)
    scaled_J = ScaledOperator(DenseOperator(J), T, left=False)
    torch.testing.assert_close(scaled_J.to_dense(), J @ Td)
    u = torch.randn(5, generator=generator, dtype=F64)
    torch.testing.assert_close(scaled_J.rmatvec(u), Td.T @ J.T @ u)


@pytest.mark.parametrize("form", ["sparse", "dense", "implicit"])
def test_block_jacobi_whitens_the_blocks_of_every_form_of_J(form, generator):
    # From a sparse J, a dense one, or autodiff products (formed from n JVPs):
    # the same T, under which the diagonal blocks of TᵀJᵀJT are the identity.
    dense, sparse = random_sparse(generator, m=15, n=10, density=0.5)
    spec = BlockJacobi(((2, 3), (4, 1)), damping=0.0)
    model = GaussNewtonModel(jacobian=(lambda x: sparse) if form == "sparse" else (lambda x: dense))
    if form == "implicit":
        model = GaussNewtonModel()
    lin = model.linearize(lambda x: dense @ x, torch.zeros(10, dtype=F64))
    T = spec.scaling(model, lin, None, 0).operator.to_dense()
    whitened = T.T @ dense.T @ dense @ T
    for block in (slice(0, 3), slice(3, 6), *(slice(i, i + 1) for i in range(6, 10))):
        torch.testing.assert_close(whitened[block, block], torch.eye(block.stop - block.start, dtype=F64))


def test_block_jacobi_whitens_the_diagonal_blocks(generator):
    dense, sparse = random_sparse(generator, m=20, n=6, density=0.9)
    lin = GaussNewtonModel(jacobian=lambda x: sparse).linearize(lambda x: dense @ x, torch.zeros(6, dtype=F64))
    T = BlockJacobi(((2, 3),), damping=0.0).scaling(GaussNewtonModel(), lin, None, 0).operator
    whitened = ScaledOperator(lin.operator, T).to_dense()
    torch.testing.assert_close(whitened[:3, :3], torch.eye(3, dtype=F64))
    torch.testing.assert_close(whitened[3:, 3:], torch.eye(3, dtype=F64))


@pytest.mark.parametrize("make, blocks", [(lambda: extended_rosenbrock(10), ((5, 2),)),
                                          (lambda: broyden_tridiagonal(9), ((3, 3),))])
def test_block_jacobi_solves_structured_problems_with_sparse_jacobians(make, blocks):
    problem = make()
    n = problem.x0.shape[0]
    m = problem.residual(problem.x0).shape[0]

    def jacobian(x):
        rows, cols, values = problem.jacobian_coo(x)
        return SparseOperator(rows, cols, values, (m, n))

    result = TrustRegion(GaussNewtonModel(jacobian=jacobian), solver="cg", x_scale=BlockJacobi(blocks)).solve(
        problem.residual, problem.x0
    )
    reference = scipy_least_squares(problem.residual, problem.x0)
    assert result.success
    assert result.cost <= max(reference.cost, 1e-14 * (1 + 0.5 * float(problem.residual(problem.x0).square().sum())))


def two_close_exponentials(groups=6):
    """Independent fits of y = exp(−a t) + exp(−b t) with close rates: 2-column blocks, nearly singular."""
    generator = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 5, 40, dtype=F64)
    y = torch.exp(-t) + torch.exp(-1.2 * t) + 0.01 * torch.randn(groups, 40, generator=generator, dtype=F64)

    def fun(x):
        x = x.reshape(groups, 2)
        return (torch.exp(-x[:, :1] * t) + torch.exp(-x[:, 1:] * t) - y).reshape(-1)

    pattern = torch.block_diag(*[torch.ones(40, 2, dtype=torch.bool)] * groups)
    return fun, pattern, torch.tensor([0.3, 3.0] * groups, dtype=F64)


def test_automatic_block_jacobi_region_is_at_most_ten_times_longer_than_jacobis():
    """Found by a bug hunt: with the exact block whitening the region along a nearly singular block's
    near-null direction was up to 10⁵ times Jacobi's, the steps Gauss-Newton's, and ``ftol`` stopped
    this fit at cost 0.011724 (1.2 % above the minimum 0.011587) reporting success. T's floor
    (B_k + μ D_k, μ = 10⁻²) bounds ‖D^½ T‖ by 1/√μ = 10."""
    fun, pattern, x0 = two_close_exponentials()
    model = GaussNewtonModel(jac_sparsity=pattern)
    result = TrustRegion(model, solver="cg").solve(fun, x0)
    reference = scipy_least_squares(fun, x0, ftol=1e-10, xtol=1e-10, gtol=1e-10)
    assert result.success and result.cost <= reference.cost * (1 + 1e-8)
    lin = model.linearize(fun, result.x)
    T = JacobiScale().scaling(model, lin, None, 0).operator.to_dense()
    D = lin.jacobian.to_dense().square().sum(0)
    elongation = torch.linalg.matrix_norm(D.sqrt()[:, None] * T, ord=2)
    assert 5.0 < elongation <= 10.0 * (1 + 1e-12)  # the floor binds: near the minimum the blocks are nearly singular


def test_block_jacobi_plans_its_blocks_once_per_pattern(generator):
    # The slot plans are cached on J's pattern under the identity of the column
    # tensors: fresh tensors at every point would rebuild them and grow the cache.
    dense, sparse = random_sparse(generator, m=15, n=10, density=0.5)
    lin = GaussNewtonModel(jacobian=lambda x: sparse).linearize(lambda x: dense @ x, torch.zeros(10, dtype=F64))
    policy = BlockJacobi(((2, 3), (4, 1)))
    first = policy.scaling(GaussNewtonModel(), lin, None, 0)
    cached = len(sparse.pattern.cache)
    second = policy.scaling(GaussNewtonModel(), lin, first, 1)
    assert len(sparse.pattern.cache) == cached
    assert all(a is b for a, b in zip(first.operator.columns, second.operator.columns))
    torch.testing.assert_close(second.operator.to_dense(), first.operator.to_dense(), rtol=0, atol=0)


def test_block_jacobi_on_the_jacobians_device(device, generator):
    # The partition indexes J's entries and x: on a CUDA J, CPU indices failed at the first product.
    dense, sparse = random_sparse(generator, m=15, n=10, density=0.5)
    on_device = SparseOperator(sparse.rows.to(device), sparse.cols.to(device), sparse.values.to(device), sparse.shape)
    policy = BlockJacobi(((2, 3), (4, 1)), damping=0.0)
    groups = policy.partition(device)
    assert policy.partition(device) is groups and all(g.device.type == torch.device(device).type for g in groups)
    lin = GaussNewtonModel(jacobian=lambda x: on_device).linearize(
        lambda x: dense.to(device) @ x, torch.zeros(10, dtype=F64, device=device)
    )
    T = policy.scaling(GaussNewtonModel(), lin, None, 0).operator
    v = torch.randn(10, generator=generator, dtype=F64)
    reference = policy.scaling(GaussNewtonModel(), GaussNewtonModel(jacobian=lambda x: sparse).linearize(
        lambda x: dense @ x, torch.zeros(10, dtype=F64)), None, 0).operator
    torch.testing.assert_close((T @ v.to(device)).cpu(), reference @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lin.scaled(T).jacobian.matvec(v.to(device)).cpu(), dense @ (reference @ v))


def test_user_jacobian_forms_agree(generator):
    A = torch.randn(8, 3, generator=generator, dtype=F64)
    b = torch.randn(8, generator=generator, dtype=F64)
    x0 = torch.zeros(3, dtype=F64)
    costs = []
    for jacobian in (lambda x: A, lambda x: A.to_sparse(), lambda x: DenseOperator(A)):
        result = TrustRegion(GaussNewtonModel(jacobian=jacobian), solver="lstsq").solve(lambda x: A @ x - b, x0)
        costs.append(result.cost)
    assert costs[0] == pytest.approx(costs[1], rel=1e-12) == pytest.approx(costs[2], rel=1e-12)


def test_user_jacobian_errors():
    with pytest.raises(TypeError, match=r"jacobian must be callable or None, got int"):
        GaussNewtonModel(jacobian=3)
    model = GaussNewtonModel(jacobian=lambda x: torch.ones(2, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"jacobian must return shape \(3, 2\), got \(2, 2\)"):
        model.linearize(lambda x: torch.cat([x, x[:1]]), torch.ones(2, dtype=F64))
    model = GaussNewtonModel(jacobian=lambda x: [[1.0]])
    with pytest.raises(TypeError, match=r"jacobian must return a Tensor or a LinearOperator, got list"):
        model.linearize(lambda x: x, torch.ones(1, dtype=F64))
    # A J of another dtype failed inside the first product ("addmv input tensors must have the same dtype").
    for J in (torch.eye(2), torch.eye(2).to_sparse(), DenseOperator(torch.eye(2))):
        model = GaussNewtonModel(jacobian=lambda x, J=J: J)
        with pytest.raises(TypeError, match=r"jacobian must return J of x's dtype torch.float64, got torch.float32"):
            model.linearize(lambda x: x, torch.ones(2, dtype=F64))
    with pytest.raises(TypeError, match=r"jacobian must return J of x's dtype torch.float64, got torch.float32"):
        least_squares(lambda x: x - 1.0, [0.0, 0.0], jac=lambda x: torch.eye(2))


@pytest.mark.parametrize(
    "blocks, damping, match",
    [
        ((), 1e-10, r"blocks must be a non-empty sequence of \(count, size\) pairs of positive ints, got \(\)"),
        (((2, 0),), 1e-10, r"blocks must be a non-empty sequence of \(count, size\) pairs"),
        (((2, 3),), 1.5, r"damping must be a number in \[0, 1\), got 1.5"),
    ],
)
def test_block_jacobi_validation(blocks, damping, match):
    with pytest.raises(ValueError, match=match):
        BlockJacobi(blocks, damping)


def test_block_jacobi_must_cover_x():
    controller = TrustRegion(GaussNewtonModel(), solver="cg", x_scale=BlockJacobi(((1, 3),)))
    with pytest.raises(ValueError, match=r"x_scale=BlockJacobi must cover the 2 variables, its blocks cover 3"):
        controller.solve(lambda x: x - 1, torch.zeros(2, dtype=F64))


def test_block_jacobi_refuses_large_implicit_jacobians():
    controller = TrustRegion(GaussNewtonModel(), solver=SteihaugCG(max_iter=5), x_scale=BlockJacobi(((300, 1),)))
    with pytest.raises(ValueError, match=r"x_scale=BlockJacobi needs a dense or sparse Jacobian when n > 256: pass"):
        controller.solve(lambda x: x - 1, torch.zeros(300, dtype=F64))


class CountingModel(GaussNewtonModel):
    """Counts the column-norm computations (`column_norms` goes through `column_norm_estimates`)."""

    def __init__(self, **options):
        super().__init__(**options)
        self.calls = 0
        self.stages = 0

    def column_norm_estimates(self, linearization):
        self.calls += 1
        for estimate in super().column_norm_estimates(linearization):
            self.stages += 1
            yield estimate


def in_units(problem, spread, seed=0):
    """``problem`` in the variables y = x / s, s = spread^U(−½, ½): column norms spread about ``spread``."""
    s = spread ** (torch.rand(problem.n, generator=torch.Generator().manual_seed(seed), dtype=F64) - 0.5)
    return (lambda y: problem.residual(s * y)), problem.x0 / s, s


def test_estimated_column_norms_are_refreshed_on_a_doubling_schedule():
    fun, y0, _ = in_units(extended_rosenbrock(64), 1e4)  # n = 64 > 32: estimated; badly scaled: Jacobi
    model = CountingModel()
    controller = TrustRegion(model, solver="cg", x_scale="jac", ftol=1e-14, xtol=1e-14, gtol=1e-14)
    state, linearized_at = controller.init(fun, y0), [0]
    while state.status is None:
        state = controller.step(fun, state)
        if state.status is None:
            linearized_at.append(state.nit)
    assert not isinstance(state.scaling, UniformScaling)
    assert len(linearized_at) > 8
    assert model.calls == sum(1 for k in linearized_at if k & (k - 1) == 0)


def lagged(x):
    """Rows 16 apart share a column: the estimate's stages of 8 and 16 row classes are both off."""
    return x[16:] - 0.5 * x[:-16] ** 2


@pytest.mark.parametrize(("fun", "settled"), [(broyden_tridiagonal(200).residual, 1), (lagged, 3)],
                         ids=["tridiagonal", "rows-16-apart"])
def test_refreshes_take_the_stages_that_gave_the_full_estimate(fun, settled):
    """An estimate exact after 8 probes (a tridiagonal J) is refreshed with 8; one that only the
    last stage gets right (rows 16 apart) with all 32. n = 200, column norms spread over 10⁶."""
    problem = SimpleNamespace(residual=fun, x0=torch.linspace(0.5, 2.0, 200, dtype=F64), n=200)
    scaled, y0, _ = in_units(problem, 1e6)
    model, policy = CountingModel(), resolve_x_scale("jac")
    lin = model.linearize(scaled, y0)
    first = policy.scaling(model, lin, None, 0)
    assert model.stages == 3 and first.estimate_stages == settled
    later = model.linearize(scaled, 1.1 * y0)
    refreshed = policy.scaling(model, later, first, 2)  # iteration 1 makes the full estimate again
    assert model.stages == 3 + settled and refreshed.estimate_stages == settled
    # What the refresh reads equals the full estimate there: T is the running minimum of the two.
    full = policy.scaling(model, later, None, 0)
    torch.testing.assert_close(refreshed.diagonal, torch.minimum(first.diagonal, full.diagonal), rtol=1e-14, atol=0)
    # At iteration 8 (then 64, 512, …) the estimate is made in full again, keeping the running minimum.
    stages = model.stages
    again = policy.scaling(model, later, refreshed, 8)
    assert model.stages == stages + 3 and again.estimate_stages == settled
    torch.testing.assert_close(again.diagonal, refreshed.diagonal, rtol=1e-14, atol=0)


def test_entries_that_vanish_at_x0_are_seen_by_the_full_estimate_at_iteration_1():
    """Found by a hunt: products of variables that start at zero hide rows 8, 16 and 24 apart that
    share a column, so at x0 the first 8 probes are exact; refreshed with 8 after that, the scale
    was off by factors 0.16 to 1.98 and a solve took 66 evaluations instead of 54 (scipy 14)."""
    n = 200
    units = 10.0 ** (2 * torch.rand(n, generator=torch.Generator().manual_seed(3), dtype=F64) - 1)

    def coupled(y):
        x = y * units
        products = x * (torch.roll(x, 8) + torch.roll(x, 16) + torch.roll(x, 24))
        return torch.cat([x - 0.3 * torch.roll(x, 1) - 1, 2.0 * products - 0.1])

    model, policy = CountingModel(), resolve_x_scale("jac")
    first = policy.scaling(model, model.linearize(coupled, torch.zeros(n, dtype=F64)), None, 0)
    assert first.estimate_stages == 1
    later = model.linearize(coupled, torch.full((n,), 0.1, dtype=F64))
    stages = model.stages
    second = policy.scaling(model, later, first, 1)
    assert model.stages == stages + 3 and second.estimate_stages == 3
    stages = model.stages
    policy.scaling(model, later, second, 2)
    assert model.stages == stages + 3  # refreshed with all 32 probes from now on


def test_exact_column_norms_are_refreshed_every_iteration():
    problem = extended_rosenbrock(10)
    model = CountingModel()
    result = TrustRegion(model, solver="cg", x_scale="jac").solve(problem.residual, problem.x0)
    # Every linearization but the last: the solve stops at an accepted step,
    # and no subproblem follows to use the scale.
    assert result.status in (Status.XTOL, Status.FTOL, Status.GTOL)
    assert model.calls == result.njev - 1


def test_jac_scale_carries_the_running_maximum_of_column_norms():
    # Column norms (3, 0, 4) then (1, 2, 8): T = 1 / (3, 2, 8); the column
    # that was zero at the first point is scaled by 1 until it is not.
    J0 = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 4.0]], dtype=F64)
    J1 = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 8.0]], dtype=F64)
    model = GaussNewtonModel()
    first = model.linearize(lambda x: J0 @ x, torch.zeros(3, dtype=F64))
    policy = resolve_x_scale("jac")
    T0 = policy.scaling(model, first, None, 0)
    torch.testing.assert_close(T0.diagonal, torch.tensor([1 / 3, 1.0, 1 / 4], dtype=F64))
    second = model.linearize(lambda x: J1 @ x, torch.zeros(3, dtype=F64))
    T1 = policy.scaling(model, second, T0, 1)
    torch.testing.assert_close(T1.diagonal, torch.tensor([1 / 3, 1 / 2, 1 / 8], dtype=F64), rtol=0, atol=0)


@pytest.mark.parametrize("order", ["sorted", "two runs", "row-major band", "random"])
@pytest.mark.parametrize("with_numpy", [True, False])
def test_stable_order_sorts_stably_on_every_path(order, with_numpy, monkeypatch):
    import trustls.operators.sparse as sparse_module

    if not with_numpy:
        monkeypatch.setattr(sparse_module, "numpy", None)
    generator = torch.Generator().manual_seed(3)
    n = 500
    keys = {
        "sorted": torch.arange(3 * n) // 3,
        "two runs": torch.cat([torch.arange(n), torch.arange(n)]),
        "row-major band": (torch.arange(n)[:, None] + torch.tensor([-1, 0, 1])).clamp(0, n - 1).reshape(-1),
        "random": torch.randint(0, n, (3 * n,), generator=generator),
    }[order]
    permutation = sparse_module._stable_order(keys, n)
    if order == "sorted":
        assert permutation is None
        return
    assert permutation.dtype == torch.int64
    torch.testing.assert_close(permutation, torch.argsort(keys, stable=True), rtol=0, atol=0)


# -- JacobiScale's decision for estimated column norms ----------------------------------------------------------


def solve(fun, x0, **options):
    tolerances = dict(ftol=1e-12, xtol=1e-12, gtol=1e-12)
    return TrustRegion(options.pop("model", GaussNewtonModel()), solver="cg", **{**tolerances, **options}).solve(fun, x0)


def test_well_scaled_jacobian_gets_the_identity_after_one_stage():
    problem = broyden_tridiagonal(200)
    model = CountingModel()
    lin = model.linearize(problem.residual, problem.x0)
    T = resolve_x_scale("jac").scaling(model, lin, None, 0)
    assert isinstance(T, UniformScaling)
    assert (model.calls, model.stages) == (1, 1)  # 8 VJPs; the 16- and 32-probe stages never run
    assert T.transform(lin) is lin


@pytest.mark.parametrize("make", [extended_rosenbrock, broyden_tridiagonal], ids=["rosenbrock", "broyden"])
def test_on_a_well_scaled_problem_the_default_is_the_unscaled_solve(make):
    problem = make(100)
    default, unscaled = solve(problem.residual, problem.x0), solve(problem.residual, problem.x0, x_scale=1.0)
    assert default.success
    assert torch.equal(default.x, unscaled.x)
    assert (default.nfev, default.inner_iterations) == (unscaled.nfev, unscaled.inner_iterations)


def test_badly_scaled_jacobian_gets_jacobi_scaling_from_the_full_estimate():
    problem = broyden_tridiagonal(200)
    fun, y0, s = in_units(problem, 1e6)
    model = CountingModel()
    lin = model.linearize(fun, y0)
    T = resolve_x_scale("jac").scaling(model, lin, None, 0)
    assert not isinstance(T, UniformScaling) and model.stages == 3
    rows, cols, values = problem.jacobian_coo(s * y0)
    exact = SparseOperator(rows, cols, values * s[cols], (problem.m, problem.n)).column_norms()
    torch.testing.assert_close(T.diagonal, 1 / exact, rtol=1e-13, atol=0)


@pytest.mark.parametrize(
    ("largest", "uniform_spread", "uniform"),
    [(4.0, 4.0, True), (4.0 * (1 + 1e-9), 4.0, False), (4.0, 1.0, False), (1e6, math.inf, True), (1.0, 1.0, True)],
)
def test_uniform_below_the_spread_of_the_column_norms(largest, uniform_spread, uniform):
    d = torch.linspace(1.0, largest, 64, dtype=F64)  # J = diag(d): every estimate exact
    lin = GaussNewtonModel().linearize(lambda x: d * x - 1, torch.zeros(64, dtype=F64))
    T = JacobiScale(uniform_spread=uniform_spread).scaling(GaussNewtonModel(), lin, None, 0)
    assert isinstance(T, UniformScaling) is uniform


def test_a_jacobian_of_zeros_is_uniform():
    lin = GaussNewtonModel().linearize(lambda x: torch.zeros(70, dtype=F64) * x.sum(), torch.ones(40, dtype=F64))
    assert isinstance(JacobiScale().scaling(GaussNewtonModel(), lin, None, 0), UniformScaling)


@pytest.mark.parametrize("value", [0.5, True, "4", math.nan])
def test_uniform_spread_validation(value):
    with pytest.raises(ValueError, match=r"uniform_spread must be a number of at least 1, got"):
        JacobiScale(uniform_spread=value)


def test_the_decision_is_checked_again_at_iterations_8_64_512():
    problem = extended_rosenbrock(64)  # column norms within 2.4: T = I
    model = CountingModel()
    controller = TrustRegion(model, solver="cg", ftol=1e-14, xtol=1e-14, gtol=1e-14)
    state, linearized_at = controller.init(problem.residual, problem.x0), [0]
    while state.status is None:
        state = controller.step(problem.residual, state)
        if state.status is None:
            linearized_at.append(state.nit)
    assert isinstance(state.scaling, UniformScaling)
    assert max(linearized_at) >= 8
    assert model.calls == sum(1 for k in linearized_at if k in (0, 8, 64, 512))
    assert model.stages == model.calls


def test_a_problem_that_becomes_badly_scaled_switches_to_jacobi():
    # Column norms 2|x_i|: all 2 at x0 = 1, spread over 10³ at the solution √t.
    t = 10.0 ** (6 * torch.rand(64, generator=torch.Generator().manual_seed(1), dtype=F64) - 3)
    fun = lambda x: x**2 - t  # noqa: E731
    controller = TrustRegion(GaussNewtonModel(), solver="cg", ftol=1e-12, xtol=1e-12, gtol=1e-12)
    state = controller.init(fun, torch.ones(64, dtype=F64))
    assert isinstance(state.scaling, UniformScaling)
    while state.status is None:
        state = controller.step(fun, state)
        if state.status is None and state.nit == 8:
            norms = 2 * state.x.abs()
            assert not isinstance(state.scaling, UniformScaling)
            # After T = I, Jacobi's T = max c / c keeps the largest column's units.
            torch.testing.assert_close(state.scaling.diagonal, norms.max() / norms, rtol=1e-12, atol=0)
    result = controller.result(state)
    assert result.success
    torch.testing.assert_close(result.x, t.sqrt(), rtol=1e-8, atol=0)


def test_jacobi_after_the_identity_keeps_its_units_at_later_refreshes():
    # T = I at iteration 0, Jacobi's T = max c / c at 8; at 16 the running
    # maximum of the same column norms must leave T as it is, in those units
    # (not T = 1/c, a factor max c = 10³ smaller).
    d = torch.logspace(0, 3, 64, dtype=F64)  # J = diag(d): every estimate exact
    model, policy = GaussNewtonModel(), JacobiScale()
    well_scaled = model.linearize(lambda x: 2 * x - 1, torch.zeros(64, dtype=F64))
    T0 = policy.scaling(model, well_scaled, None, 0)
    assert isinstance(T0, UniformScaling)
    spread = model.linearize(lambda x: d * x - 1, torch.zeros(64, dtype=F64))
    T8 = policy.scaling(model, spread, T0, 8)
    torch.testing.assert_close(T8.diagonal, d.max() / d, rtol=1e-14, atol=0)
    T16 = policy.scaling(model, spread, T8, 16)
    torch.testing.assert_close(T16.diagonal, T8.diagonal, rtol=1e-14, atol=0)
    # Larger norms lower T in the same units: the running maximum of c.
    T32 = policy.scaling(model, model.linearize(lambda x: 2 * d * x - 1, torch.zeros(64, dtype=F64)), T16, 32)
    torch.testing.assert_close(T32.diagonal, d.max() / (2 * d), rtol=1e-14, atol=0)


def test_exact_norms_after_the_identity_keep_the_largest_columns_units():
    # A matrix-free J whose pattern is found mid-solve: T = I from estimates, then exact norms from the
    # sparse J. Jacobi's T = max c / c keeps the radius' meaning (T = 1/c would shrink it by max c = 10³).
    d = torch.logspace(0, 3, 64, dtype=F64)
    model, policy = GaussNewtonModel(), JacobiScale()
    T0 = policy.scaling(model, model.linearize(lambda x: 2 * x - 1, torch.zeros(64, dtype=F64)), None, 0)
    assert isinstance(T0, UniformScaling)
    exact = model.linearize(lambda x: d * x - 1, torch.zeros(64, dtype=F64))
    exact = replace(exact, jacobian=SparseOperator.from_tensor(torch.diag(d).to_sparse()))
    assert not model.column_norms_are_estimated(exact)
    T1 = policy.scaling(model, exact, T0, 1)
    torch.testing.assert_close(T1.diagonal, d.max() / d, rtol=1e-14, atol=0)
    assert T1.unit == float(d.max())
    T2 = policy.scaling(model, exact, T1, 2)  # the running maximum, in those units
    torch.testing.assert_close(T2.diagonal, T1.diagonal, rtol=1e-14, atol=0)


def test_a_restored_uniform_diagonal_is_recognized_without_probes():
    # TrustRegionOptimizer keeps T.diagonal and restores a DiagonalScaling from it.
    problem = broyden_tridiagonal(100)
    model = CountingModel()
    lin = model.linearize(problem.residual, problem.x0)
    restored = DiagonalScaling(UniformScaling(problem.x0).diagonal)
    assert isinstance(JacobiScale().scaling(model, lin, restored, 3), UniformScaling)
    assert model.calls == 0


def test_default_scaling_is_reproducible():
    fun, y0, _ = in_units(broyden_tridiagonal(100), 1e6)
    first, second = solve(fun, y0), solve(fun, y0)
    assert first.success
    assert torch.equal(first.x, second.x) and first.inner_iterations == second.inner_iterations


def test_float32_default_scaling_smoke():
    problem = broyden_tridiagonal(100)
    fun, y0, _ = in_units(problem, 1e4)
    result = TrustRegion(GaussNewtonModel(), solver="cg").solve(lambda y: fun(y.double()).float(), y0.float())
    assert result.success and result.x.dtype == torch.float32
    assert result.cost < 1e-8


def test_a_tensor_x_scale_is_copied_when_the_configuration_is_made():
    """Found by a hunt: the caller's tensor was kept, so changing it in place changed (and unvalidated)
    the frozen configuration; zeros made a false XTOL success at x0."""
    scale = torch.tensor([0.5, 2.0], dtype=torch.float64)
    policy = resolve_x_scale(scale)
    scale.zero_()
    assert torch.equal(policy.value, torch.tensor([0.5, 2.0], dtype=torch.float64))


def soft_switch_fit():
    """The smooth maximum of three regimes (logsumexp): the middle one dies out during the fit, and its
    parameter's column of J falls to nothing. J's pattern is dense: one block of four columns."""
    t = torch.linspace(0, 10, 50, dtype=F64)

    def model(p):
        return torch.logsumexp(3 * torch.stack([p[0] * t, p[1] + 0 * t, p[2] - p[3] * t]), 0) / 3

    noise = torch.randn(50, generator=torch.Generator().manual_seed(24), dtype=F64)
    y = model(torch.tensor([0.5, 2.0, 8.0, 0.4], dtype=F64)) + 0.02 * noise
    return (lambda p: model(p) - y), torch.tensor([0.3, 1.0, 6.0, 0.3], dtype=F64)


@pytest.mark.parametrize("solver", ["cg", "lstsq"])
def test_automatic_block_jacobi_keeps_the_running_maximum_of_the_column_norms(solver):
    """Found by a bug hunt: block-Jacobi T was recomputed at each point from that point's blocks only, so
    a column that fell to nothing (a regime of a soft maximum that died out) got an unbounded scale; the
    step ran along it (x[1] → −2.5·10³⁰) and ``xtol`` stopped at cost 0.0114371 with optimality 0.13,
    reporting success (on the hunt's data; without the pattern: 0.0114167). D_k in B_k + μD_k is the running maximum of the
    squared column norms, as Jacobi's T keeps the running maximum of the norms."""
    fun, x0 = soft_switch_fit()
    pattern = torch.ones(50, 4, dtype=torch.bool)
    result = TrustRegion(GaussNewtonModel(jac_sparsity=pattern), solver=solver, x_scale="jac").solve(fun, x0)
    reference = scipy_least_squares(fun, x0, x_scale="jac", ftol=1e-12, xtol=1e-12, gtol=1e-12)
    assert result.success and result.cost <= reference.cost * (1 + 1e-6)
    # x[1] still runs down the dead regime's flat valley (as with Jacobi's T), but not to 10¹⁸-10³⁰.
    assert float(result.x.abs().max()) < 1e6


def test_automatic_block_jacobi_region_stays_bounded_when_a_column_vanishes():
    # Column norms (3, 4) then (3, 10⁻¹²) in one block of two columns: with the running maximum the floor
    # μ·D keeps ‖T e_2‖ at most 1/(√μ·4) = 2.5, where the second point's own blocks would give 10¹¹.
    J0 = torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=F64)
    J1 = torch.tensor([[3.0, 0.0], [0.0, 1e-12]], dtype=F64)
    model = GaussNewtonModel(jac_sparsity=torch.ones(2, 2, dtype=torch.bool))
    policy = JacobiScale()
    first = model.linearize(lambda x: J0 @ x, torch.zeros(2, dtype=F64))
    T0 = policy.scaling(model, first, None, 0)
    second = model.linearize(lambda x: J1 @ x, torch.zeros(2, dtype=F64))
    T1 = policy.scaling(model, second, T0, 1).operator.to_dense()
    assert float(T1[:, 1].norm()) <= 1 / (0.1 * 4) * (1 + 1e-12)
    fresh = policy.scaling(model, second, None, 1).operator.to_dense()
    assert float(fresh[:, 1].norm()) > 1e10  # without the earlier point, the point's own norms


def test_with_a_robust_loss_jac_scale_stays_diagonal_on_a_sparse_jacobian():
    """Found by a hunt: a shared-offset fit of six decays with loss="huber", f_scale=0.3, jac_sparsity and
    x_scale="jac" stopped with ftol at cost 0.833 (optimality 0.02), reporting success, where the dense route
    and scipy reach 0.003574: block-Jacobi whitened J̃ = S J, whose Huber S is √EPS past f_scale. With a loss
    other than least squares T is Jacobi's diagonal, as scipy's."""
    t = torch.linspace(0, 3, 15, dtype=F64)
    generator = torch.Generator().manual_seed(1)
    amplitude, decay = 1 + torch.rand(6, generator=generator, dtype=F64), 0.5 + torch.rand(6, generator=generator, dtype=F64)
    noise = 0.01 * torch.randn(6, 15, generator=generator, dtype=F64)
    y = amplitude[:, None] * torch.exp(-decay[:, None] * t) + 0.3 + noise

    def fun(x):  # x = [offset, a0, b0, a1, b1, ...]
        return (x[1::2, None] * torch.exp(-x[2::2, None] * t) + x[0] - y).reshape(-1)

    pattern = torch.zeros(90, 13, dtype=torch.bool)
    for i in range(6):
        pattern[15 * i : 15 * (i + 1), [0, 1 + 2 * i, 2 + 2 * i]] = True
    x0 = torch.ones(13, dtype=F64)
    reference = scipy_least_squares(fun, x0, loss="huber", f_scale=0.3, x_scale="jac", ftol=1e-12, xtol=1e-12,
                                    gtol=1e-12)
    for tr_solver in ["lsmr", "exact"]:
        result = least_squares(fun, x0, jac_sparsity=pattern, x_scale="jac", tr_solver=tr_solver, loss="huber",
                               f_scale=0.3)
        assert result.success and result.cost <= reference.cost * (1 + 1e-6), tr_solver
    model = GaussNewtonModel(loss="huber", f_scale=0.3, jac_sparsity=pattern)
    assert isinstance(JacobiScale().scaling(model, model.linearize(fun, x0), None, 0), DiagonalScaling)
