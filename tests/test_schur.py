"""The Schur-complement Levenberg-Marquardt solver against dense oracles."""

import math
from dataclasses import replace

import pytest
import torch
from block_structured import block_problem

import trustls.operators.block_cholesky as block_cholesky_module
import trustls.sparsity.normal_blocks as normal_blocks_module
import trustls.subproblem.schur as schur_module
from trustls import BlockJacobi, GaussNewtonModel, TrustRegion
from trustls.operators import DenseOperator, SparseOperator
from trustls.problems.bal import BundleAdjustmentProblem
from trustls.sparsity import BlockPartition, block_jacobi_scaling
from trustls.subproblem import IterativeSchur
from trustls.subproblem.schur_structure import (
    inverse_factors,
    schur_blocks,
    schur_jacobi_blocks,
)

F64 = torch.float64


def linearize(dense, J, generator, scale=None):
    """The linearization of r(x) = J x − y at x = 0, scaled by T when given; and its dense J, g."""
    y = torch.randn(dense.shape[0], generator=generator, dtype=F64).to(dense.dtype)
    lin = GaussNewtonModel(jacobian=lambda x: J).linearize(lambda x: dense @ x - y, torch.zeros(dense.shape[1],
                                                                                                 dtype=dense.dtype))
    if scale is None:
        return lin, dense, lin.gradient
    T = scale.to_dense() if not isinstance(scale, torch.Tensor) else torch.diag(scale)
    return lin.scaled(scale), dense @ T, T.T @ lin.gradient


def damped_step(matrix, gradient, damping):
    """−(JᵀJ + λI)⁻¹g as the least-squares solution of [J; √λ I] p ≈ [−r; 0] (JᵀJ is not formed)."""
    n = matrix.shape[1]
    residual = torch.linalg.lstsq(matrix.T, gradient.unsqueeze(1), driver="gelsd").solution.squeeze(1)  # Jᵀr = g
    stacked = torch.cat([matrix, math.sqrt(damping) * torch.eye(n, dtype=matrix.dtype)])
    rhs = torch.cat([-residual, torch.zeros(n, dtype=matrix.dtype)])
    return torch.linalg.lstsq(stacked, rhs.unsqueeze(1), driver="gelsd").solution.squeeze(1)


def exact_solver(partition, secular_steps=0):
    return IterativeSchur(partition, forcing=1e-15, secular_steps=secular_steps)


@pytest.mark.parametrize("radius_factor", [1e-2, 0.3, 3.0, 1e3])
@pytest.mark.parametrize(
    "layout",
    [
        {"contiguous": True},
        {"contiguous": False},
        {"contiguous": False, "full_slots": False},
        {"contiguous": False, "duplicates": True},
        {"free": ((5, 3),), "eliminated": ((8, 3),)},
        {"free": ((2, 4), (3, 1)), "eliminated": ((4, 1), (5, 3), (3, 2))},
    ],
    ids=["contiguous", "permuted", "partial-slots", "duplicates", "one-size", "several-sizes"],
)
def test_step_equals_the_dense_damped_step(layout, radius_factor, generator):
    dense, J, partition = block_problem(generator, **layout)
    lin, matrix, g = linearize(dense, J, generator)
    g_norm = float(torch.linalg.vector_norm(g))
    radius = radius_factor * g_norm
    step = exact_solver(partition).solve(exact_solver(partition).prepare(lin), radius)
    expected = damped_step(matrix, g, g_norm / radius)
    torch.testing.assert_close(step.step, expected, rtol=1e-10, atol=1e-10 * float(expected.abs().max()))
    assert step.norm <= radius and step.hits_boundary
    Jp = matrix @ step.step
    assert step.predicted_reduction == pytest.approx(-float(g @ step.step + 0.5 * Jp @ Jp), rel=1e-12)


@pytest.mark.parametrize("radius_factor", [1e-2, 0.3, 3.0, 1e3])
def test_secular_correction_takes_the_damped_step_for_the_corrected_damping(radius_factor, generator, monkeypatch):
    # λ₁ = λ₀‖p(λ₀)‖/Δ while ‖p(λ₀)‖ < Δ/2; ‖p(λ₁)‖ ≤ Δ since λ‖p(λ)‖ increases with λ.
    # The probing solve at λ₀ is made exact, so that λ₁ is the oracle's.
    monkeypatch.setattr(schur_module, "_PROBE_FORCING", 0.0)
    dense, J, partition = block_problem(generator, contiguous=False)
    lin, matrix, g = linearize(dense, J, generator)
    g_norm = float(torch.linalg.vector_norm(g))
    radius = radius_factor * g_norm
    damping = g_norm / radius
    first = damped_step(matrix, g, damping)
    first_norm = float(torch.linalg.vector_norm(first))
    expected, bounded = first, True
    if first_norm < 0.5 * radius:
        damping *= first_norm / radius
        expected = damped_step(matrix, g, damping)
        bounded = float(torch.linalg.vector_norm(expected)) > 1.1 * first_norm
    step = exact_solver(partition, secular_steps=1).solve(exact_solver(partition).prepare(lin), radius)
    # The damped normal equations hold to rounding whatever their condition (λ₁ can be tiny
    # with singular blocks), and the step agrees with the oracle to that condition.
    residual = matrix.T @ (matrix @ step.step) + damping * step.step + g
    condition = 1.0 / min(damping, 1.0)  # of the reduced system, up to the scale of B
    assert float(torch.linalg.vector_norm(residual)) <= 1e-12 * condition * float(torch.linalg.vector_norm(g))
    if damping > 1e-3:
        torch.testing.assert_close(step.step, expected, rtol=1e-10 * condition,
                                   atol=1e-10 * condition * float(expected.abs().max()))
    assert step.norm <= radius and step.hits_boundary == bounded


def test_secular_corrections_stop_at_the_gauss_newton_step(generator, monkeypatch):
    monkeypatch.setattr(schur_module, "_PROBE_FORCING", 0.0)
    # A full-rank J and a huge radius: the corrections drive λ to about 0 and
    # the step to the Gauss-Newton step, reported interior.
    dense, J, partition = block_problem(generator, free=((2, 2),), eliminated=((6, 2),))
    lin, matrix, g = linearize(dense, J, generator)
    radius = 1e6 * float(torch.linalg.vector_norm(g))
    step = exact_solver(partition, secular_steps=8).solve(exact_solver(partition).prepare(lin), radius)
    gauss_newton = damped_step(matrix, g, 0.0)
    torch.testing.assert_close(step.step, gauss_newton, rtol=1e-4, atol=1e-4 * float(gauss_newton.abs().max()))
    assert not step.hits_boundary


@pytest.fixture(params=["default", "unrolled", "scattered"])
def kernels(request, monkeypatch):
    """The batched kernels for many small blocks, forced on the small test problems."""
    if request.param == "unrolled":
        monkeypatch.setattr(block_cholesky_module, "_MIN_UNROLLED_COUNT", 0)
    if request.param == "scattered":
        monkeypatch.setattr(normal_blocks_module, "_MAX_LOOPED_BLOCKS", 0)
    return request.param


@pytest.mark.parametrize("preconditioner", ["schur_jacobi", "block_jacobi"])
@pytest.mark.parametrize(
    "layout",
    [{"contiguous": False, "full_slots": False}, {"free": ((2, 7), (3, 2)), "eliminated": ((5, 7), (6, 1))}],
    ids=["small-blocks", "blocks-of-7"],
)
def test_every_kernel_gives_the_dense_damped_step(layout, preconditioner, kernels, generator):
    dense, J, partition = block_problem(generator, **layout)
    lin, matrix, g = linearize(dense, J, generator)
    radius = 0.2 * float(torch.linalg.vector_norm(g))
    solver = IterativeSchur(partition, forcing=1e-15, preconditioner=preconditioner, secular_steps=0)
    step = solver.solve(solver.prepare(lin), radius)
    expected = damped_step(matrix, g, float(torch.linalg.vector_norm(g)) / radius)
    torch.testing.assert_close(step.step, expected, rtol=1e-10, atol=1e-10 * float(expected.abs().max()))


@pytest.mark.parametrize("problem", ["random", "bundle-adjustment"])
@pytest.mark.parametrize("damping", [0.0, 0.37])
def test_schur_jacobi_blocks_are_the_diagonal_blocks_of_the_schur_complement(damping, problem, kernels, generator):
    if problem == "random":  # (camera, point) pairs with different numbers of shared rows
        dense, J, partition = block_problem(generator, contiguous=False, full_slots=False)
    else:  # two rows per pair: the coupling blocks are summed without a scatter
        ba = synthetic_bundle_adjustment(generator)
        J = SparseOperator(*ba.jacobian_coo(ba.x0), (ba.n_residuals, ba.n_parameters))
        dense, partition = J.to_dense(), bundle_adjustment_partition(ba)
    blocks = schur_blocks(J, partition)
    factors = [inverse_factors(C, damping) for C in blocks.eliminated_blocks]
    F, E = blocks.plan.free_columns, blocks.plan.eliminated_columns
    B = dense.T @ dense
    C = B[E][:, E] + damping * torch.eye(len(E), dtype=F64)
    if damping == 0.0:  # the singular eliminated blocks are jittered exactly as the solver does
        C = torch.block_diag(*[torch.linalg.inv(X.T @ X) for Xs in factors for X in Xs])
    S = B[F][:, F] + damping * torch.eye(len(F), dtype=F64) - B[F][:, E] @ torch.linalg.solve(C, B[E][:, F])
    offset = 0
    for index, got in zip(blocks.plan.free, schur_jacobi_blocks(blocks, factors, damping)):
        count, size = partition.groups[index].shape
        starts = [offset + k * size for k in range(count)]
        expected = torch.stack([S[start : start + size, start : start + size] for start in starts])
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
        offset += count * size


def test_step_in_block_jacobi_variables_of_a_permuted_partition(generator):
    dense, J, partition = block_problem(generator, contiguous=False, full_slots=False)
    T = block_jacobi_scaling(J, partition)
    lin, matrix, g = linearize(dense, J, generator, scale=T)
    radius = 0.5 * float(torch.linalg.vector_norm(g))
    solver = exact_solver(partition)
    step = solver.solve(solver.prepare(lin), radius)
    expected = damped_step(matrix, g, float(torch.linalg.vector_norm(g)) / radius)
    torch.testing.assert_close(step.step, expected, rtol=1e-9, atol=1e-9 * float(expected.abs().max()))


def test_step_with_a_diagonal_scale(generator):
    dense, J, partition = block_problem(generator)
    scale = torch.rand(J.shape[1], generator=generator, dtype=F64) + 0.5
    lin, matrix, g = linearize(dense, J, generator, scale=scale)
    solver = exact_solver(partition)
    step = solver.solve(solver.prepare(lin), 1.0)
    torch.testing.assert_close(step.step, damped_step(matrix, g, float(torch.linalg.vector_norm(g))), rtol=1e-10,
                               atol=1e-12)


def cauchy_decrease(matrix, g, radius):
    g_norm = float(torch.linalg.vector_norm(g))
    curvature = float(torch.linalg.vector_norm(matrix @ g) ** 2)
    tau = min(radius / g_norm, g_norm**2 / curvature)
    return tau * g_norm**2 - 0.5 * tau**2 * curvature


@pytest.mark.parametrize("radius_factor", [1e-3, 0.1, 1.0, 10.0, 1e4])
@pytest.mark.parametrize("forcing, max_iter, fraction", [(1e-15, None, 4 / 9), (0.5, 1, 0.25)])
def test_decrease_is_a_fraction_of_the_cauchy_decrease(forcing, max_iter, fraction, radius_factor, generator):
    # The exact damped step with λ = ‖g‖/Δ achieves 4/9 of the Cauchy decrease
    # for Δ (module docstring); an inexact one is guarded to achieve ¼.
    dense, J, partition = block_problem(generator, contiguous=False)
    lin, matrix, g = linearize(dense, J, generator)
    radius = radius_factor * float(torch.linalg.vector_norm(g))
    solver = IterativeSchur(partition, forcing=forcing, max_iter=max_iter)
    step = solver.solve(solver.prepare(lin), radius)
    assert step.norm <= radius * (1 + 1e-12)
    assert step.predicted_reduction >= fraction * cauchy_decrease(matrix, g, radius)


def test_inexact_steps_stay_in_the_region_and_report_their_work(generator):
    dense, J, partition = block_problem(generator, free=((6, 4),), eliminated=((10, 3),))
    lin, matrix, g = linearize(dense, J, generator)
    solver = IterativeSchur(partition, forcing=0.5, max_iter=2, secular_steps=0)
    prepared = solver.prepare(lin)
    for radius in (1e-3, 1.0, 1e3, math.inf):
        step = solver.solve(prepared, radius)
        assert step.norm <= radius and step.iterations <= 2
        assert step.products == step.iterations + 2
        assert step.hits_boundary == math.isfinite(radius)
        Jp = matrix @ step.step
        assert step.predicted_reduction == pytest.approx(-float(g @ step.step + 0.5 * Jp @ Jp), rel=1e-8)


def test_zero_gradient_and_non_finite_jacobian(generator):
    dense, J, partition = block_problem(generator)
    lin = GaussNewtonModel(jacobian=lambda x: J).linearize(lambda x: dense @ x, torch.zeros(J.shape[1], dtype=F64))
    step = exact_solver(partition).solve(exact_solver(partition).prepare(lin), 1.0)
    assert step.reason == "zero_gradient" and step.norm == 0.0 and not bool(step.step.any())
    bad = J.with_values(torch.where(torch.arange(J.values.numel()) == 3, math.nan, J.values))
    lin, _, _ = linearize(dense, bad, generator)
    step = exact_solver(partition).solve(exact_solver(partition).prepare(lin), 1.0)
    assert not math.isfinite(step.norm)  # the controller shrinks the radius from such a step


def test_float32_smoke(generator):
    dense, J, partition = block_problem(generator, dtype=torch.float32)
    lin, _, _ = linearize(dense, J, generator)
    step = IterativeSchur(partition).solve(IterativeSchur(partition).prepare(lin), 1.0)
    assert step.step.dtype == torch.float32 and step.norm <= 1.0 and step.predicted_reduction > 0


def test_validation(generator):
    dense, J, partition = block_problem(generator)
    lin, _, _ = linearize(dense, J, generator)
    with pytest.raises(TypeError, match=r"partition must be a BlockPartition or None, got tuple"):
        IterativeSchur(partition.groups)
    with pytest.raises(ValueError, match=r"forcing must be a number in \(0, 1\), got 1"):
        IterativeSchur(partition, forcing=1)
    with pytest.raises(ValueError, match=r"max_iter must be a positive int or None, got 0"):
        IterativeSchur(partition, max_iter=0)
    dense_lin = GaussNewtonModel(jacobian=lambda x: dense).linearize(lambda x: dense @ x, torch.ones(J.shape[1],
                                                                                                     dtype=F64))
    with pytest.raises(TypeError, match=r"IterativeSchur needs a sparse Jacobian"):
        IterativeSchur(partition).prepare(dense_lin)
    n = J.shape[1]
    with pytest.raises(ValueError, match=rf"partition must cover the {n} variables of J, it covers {n + 1}"):
        IterativeSchur(BlockPartition(n + 1, partition.groups, partition.eliminated)).prepare(lin)
    with pytest.raises(ValueError, match=r"partition.eliminated must name at least one of the 4 groups, got \(\)"):
        IterativeSchur(BlockPartition(n, partition.groups, ())).prepare(lin)
    with pytest.raises(ValueError, match=r"partition.eliminated must leave at least one group of blocks free"):
        IterativeSchur(BlockPartition(n, partition.groups, (0, 1, 2, 3))).prepare(lin)
    with pytest.raises(ValueError, match=r"partition.eliminated must name groups whose blocks share no row of J, "
                                         r"got row \d+ in \d+ eliminated blocks"):
        IterativeSchur(BlockPartition(n, partition.groups, (0, 1))).prepare(lin)


def synthetic_bundle_adjustment(generator, cameras=4, points=40, views=3):
    """A small BAL problem: true cameras and points, observations with noise, a perturbed start."""
    camera_params = torch.zeros(cameras, 9, dtype=F64)
    camera_params[:, 0:3] = 0.1 * torch.randn(cameras, 3, generator=generator, dtype=F64)
    camera_params[:, 3:5] = 0.2 * torch.randn(cameras, 2, generator=generator, dtype=F64)
    camera_params[:, 5] = -5.0
    camera_params[:, 6] = 1.0 + 0.1 * torch.rand(cameras, generator=generator, dtype=F64)
    point_params = torch.randn(points, 3, generator=generator, dtype=F64)
    camera_index = torch.stack([torch.randperm(cameras, generator=generator)[:views] for _ in range(points)])
    point_index = torch.arange(points).repeat_interleave(views)
    truth = torch.cat([camera_params.reshape(-1), point_params.reshape(-1)])
    problem = BundleAdjustmentProblem(cameras, points, points * views, camera_index.reshape(-1), point_index,
                                      torch.zeros(points * views, 2, dtype=F64), truth)
    observed = problem.residual(truth).view(-1, 2) + 1e-3 * torch.randn(points * views, 2, generator=generator,
                                                                          dtype=F64)
    x0 = truth + 0.01 * torch.randn(truth.shape, generator=generator, dtype=F64)
    return BundleAdjustmentProblem(cameras, points, points * views, camera_index.reshape(-1), point_index, observed,
                                   x0)


def bundle_adjustment_partition(problem):
    C, N = problem.n_cameras, problem.n_points
    return BlockPartition(problem.n_parameters,
                          (torch.arange(9 * C).view(C, 9), 9 * C + torch.arange(3 * N).view(N, 3)), (1,))


def test_bundle_adjustment_solve_reaches_the_lstsq_cost(generator):
    problem = synthetic_bundle_adjustment(generator)
    shape = (problem.n_residuals, problem.n_parameters)

    def jacobian(x):
        return SparseOperator(*problem.jacobian_coo(x), shape)

    C, N = problem.n_cameras, problem.n_points
    partition = bundle_adjustment_partition(problem)
    dense = GaussNewtonModel(jacobian=lambda x: jacobian(x).to_dense())
    for x_scale, preconditioner in ((BlockJacobi(((C, 9), (N, 3))), "schur_jacobi"), (None, "block_jacobi")):
        solver = IterativeSchur(partition, preconditioner=preconditioner)
        result = TrustRegion(GaussNewtonModel(jacobian=jacobian), solver=solver, x_scale=x_scale).solve(
            problem.residual, problem.x0
        )
        reference = TrustRegion(dense, solver="lstsq", x_scale=x_scale or "jac").solve(problem.residual, problem.x0)
        assert result.success and reference.success
        assert result.cost == pytest.approx(reference.cost, rel=1e-8)
        assert result.cost < 1e-2 * 0.5 * float(problem.residual(problem.x0).square().sum())


def test_dense_operator_is_refused_with_its_name(generator):
    dense, _, partition = block_problem(generator)
    lin = GaussNewtonModel(jacobian=lambda x: DenseOperator(dense)).linearize(lambda x: dense @ x,
                                                                              torch.ones(dense.shape[1], dtype=F64))
    with pytest.raises(TypeError, match=r"got DenseOperator\(shape="):
        IterativeSchur(partition).prepare(lin)


def test_step_on_every_device(device, generator):
    dense, J, partition = block_problem(generator, contiguous=False)
    lin, _, g = linearize(dense, J, generator)
    radius = 0.3 * float(torch.linalg.vector_norm(g))
    expected = exact_solver(partition).solve(exact_solver(partition).prepare(lin), radius)
    on_device = SparseOperator(J.rows.to(device), J.cols.to(device), J.values.to(device), J.shape)
    moved = BlockPartition(partition.n, tuple(c.to(device) for c in partition.groups), partition.eliminated)
    y = torch.randn(dense.shape[0], generator=generator, dtype=F64)
    lin = GaussNewtonModel(jacobian=lambda x: on_device).linearize(
        lambda x: dense.to(device) @ x - y.to(device), torch.zeros(dense.shape[1], dtype=F64, device=device)
    )
    lin = replace(lin, gradient=g.to(device))  # the same gradient as on the CPU
    step = exact_solver(moved).solve(exact_solver(moved).prepare(lin), radius)
    assert step.step.device.type == device.type
    torch.testing.assert_close(step.step.cpu(), expected.step, rtol=1e-9, atol=1e-9 * float(expected.step.abs().max()))


@pytest.mark.parametrize("radius_factor", [1e-2, 1.0, 1e3])
def test_bounded_step_takes_the_coleman_li_diagonal(radius_factor, generator):
    # With bounds the subproblem's curvature is ĴᵀĴ + C, C = diag(g ⊙ dv ⊙ s) ⪰ 0 (`trustls.bounds`):
    # the damped step solves (ĴᵀĴ + C + λI)p = −ĝ and predicts −(ĝᵀp + ½‖Ĵp‖² + ½pᵀCp), as CG and
    # the exact solver do on the same subproblem.
    from trustls.bounds import Bounds, BoundedSubproblem

    dense, J, partition = block_problem(generator)
    lin, _, _ = linearize(dense, J, generator)
    n = dense.shape[1]
    lower = -0.5 - torch.rand(n, generator=generator, dtype=F64)
    upper = 0.1 + torch.rand(n, generator=generator, dtype=F64)
    problem = BoundedSubproblem(lin, Bounds(lower, upper), torch.ones(n, dtype=F64))
    hat = problem.linearization
    c = problem.c
    assert bool((c > 0).any())
    g_norm = float(torch.linalg.vector_norm(hat.gradient))
    radius = radius_factor * g_norm
    solver = exact_solver(partition)
    step = solver.solve(solver.prepare(hat), radius)
    matrix = dense * problem.d
    stacked = torch.cat([matrix, torch.diag(torch.sqrt(c))])
    expected = damped_step(stacked, hat.gradient, g_norm / radius)
    torch.testing.assert_close(step.step, expected, rtol=1e-10, atol=1e-10 * float(expected.abs().max()))
    Jp = matrix @ step.step
    model = float(hat.gradient @ step.step + 0.5 * Jp @ Jp + 0.5 * (c * step.step) @ step.step)
    assert step.predicted_reduction == pytest.approx(-model, rel=1e-12)


def test_bounded_solve_reaches_the_lstsq_solution(generator):
    # r(x) = A(x + 0.3x³) − y within a box that binds at the solution: the Schur steps (with C in
    # their curvature) and the exact dense steps converge to the same constrained minimizer.
    dense, J, partition = block_problem(generator)
    m, n = dense.shape
    y = torch.randn(m, generator=generator, dtype=F64)
    rows, cols, values = J.rows, J.cols, J.values

    def fun(x):
        return dense @ (x + 0.3 * x**3) - y

    def jacobian(x):
        return SparseOperator(rows, cols, values * (1 + 0.9 * x**2)[cols], (m, n))

    box = (torch.full((n,), -0.2, dtype=F64), torch.full((n,), 0.3, dtype=F64))
    x0 = torch.zeros(n, dtype=F64)
    options = dict(bounds=box, x_scale=1.0, ftol=1e-12, xtol=1e-12, gtol=1e-10)
    result = TrustRegion(GaussNewtonModel(jacobian=jacobian), solver=exact_solver(partition), **options).solve(fun, x0)
    reference = TrustRegion(GaussNewtonModel(jacobian=lambda x: jacobian(x).to_dense()), solver="lstsq",
                            **options).solve(fun, x0)
    assert reference.success and bool((reference.active_mask != 0).any())
    assert result.success
    assert result.cost == pytest.approx(reference.cost, rel=1e-10)
    torch.testing.assert_close(result.x, reference.x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_solve_with_a_sparsity_pattern(dtype):
    # A half-precision solve balanced every J by powers of two (`PowerOfTwoBalanced`), which hid the
    # SparseOperator of jac_sparsity: "IterativeSchur needs a sparse Jacobian". A stored J (float32
    # values) runs no product through the float16 function and is left as it is.
    a, b, p = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]), torch.arange(1.0, 5.0)
    y = (a[:, None] * p[None, :] + b[:, None]).to(dtype)

    def fun(x):  # cameras (a_k, b_k) at x[2k:2k+2], points at x[4:], each observation meets one of each
        observed = x[0:4:2, None] * x[None, 4:] + x[1:4:2, None] - y
        return torch.cat([observed.reshape(-1), x[4:] - p.to(dtype)])

    pattern = torch.zeros(12, 8, dtype=torch.bool)
    for k in range(2):
        for j in range(4):
            pattern[k * 4 + j, [2 * k, 2 * k + 1, 4 + j]] = True
    pattern[8 + torch.arange(4), 4 + torch.arange(4)] = True
    x0 = torch.tensor([1.5, 0.2, 3.0, 0.5, 1.2, 1.8, 3.3, 3.4], dtype=dtype)
    result = TrustRegion(GaussNewtonModel(jac_sparsity=pattern), solver="schur").solve(fun, x0)
    assert result.success and result.x.dtype == dtype
    expected = torch.tensor([1.0, 0.0, 2.0, 1.0, 1.0, 2.0, 3.0, 4.0])
    torch.testing.assert_close(result.x.float(), expected, rtol=0, atol=2e-2)


def test_a_pattern_of_independent_blocks_is_refused_with_the_route_that_solves_it():
    """Found by a hunt: a block-diagonal pattern (independent fits) was refused as having 'no such split'."""
    fits = 5
    t = torch.linspace(0, 1, 6, dtype=F64)

    def residual(b):
        b = b.view(fits, 2)
        return (b[:, :1] * torch.exp(-b[:, 1:] * t) - 1.0).reshape(-1)

    rows = torch.arange(6 * fits)
    pattern = torch.zeros(6 * fits, 2 * fits, dtype=torch.bool)
    pattern[rows, 2 * (rows // 6)] = pattern[rows, 2 * (rows // 6) + 1] = True
    x0 = torch.tensor([2.0, 0.5], dtype=F64).repeat(fits)
    with pytest.raises(ValueError, match=r"no row shares any two blocks \(independent problems\), so nothing is left "
                                         r"to reduce: use solver='cg' with x_scale='jac'"):
        TrustRegion(GaussNewtonModel(jac_sparsity=pattern), solver="schur").solve(residual, x0)
    result = TrustRegion(GaussNewtonModel(jac_sparsity=pattern), solver="cg", x_scale="jac").solve(residual, x0)
    assert result.success and float(result.cost) < 1e-20
