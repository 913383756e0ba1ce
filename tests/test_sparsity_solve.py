"""Solving with ``GaussNewtonModel(jac_sparsity=P)``: the residual and its pattern are all the user gives.

On a small sparse nonzero-residual problem, `TrustRegion` with the colored
Jacobian must reach scipy's minimum (``least_squares(jac_sparsity=...)``,
finite differences grouped by the same pattern) and dense trustls's, with CG
and with the dense "lstsq" solver; a residual that vmap cannot run must warn
once per solve.
"""

import warnings

import pytest
import torch

from tests.scipy_oracle import scipy_least_squares, scipy_least_squares_sparse
from trustls import GaussNewtonModel, TrustRegion
from trustls.operators import SparseOperator
from trustls.sparsity.colored import ColoredJacobian

N = 30
TOLERANCES = {"ftol": 1e-12, "xtol": 1e-12, "gtol": 1e-10}


def chained_fit():
    """r_i = x_i² + x_{i+1} − y_i (i < n−1) and r_{n−1+i} = x_i − ½: m = 2n − 1, nonzero residual at the minimum."""
    targets = torch.linspace(-1.0, 2.0, N - 1, dtype=torch.float64)

    def fun(x):
        return torch.cat([x[:-1] ** 2 + x[1:] - targets, x - 0.5])

    rows = torch.arange(N - 1)
    pattern = torch.zeros(2 * N - 1, N, dtype=torch.bool)
    pattern[rows, rows] = pattern[rows, rows + 1] = True
    pattern[N - 1 + torch.arange(N), torch.arange(N)] = True
    return fun, pattern, torch.full((N,), 0.3, dtype=torch.float64)


@pytest.mark.parametrize("solver", ["cg", "lstsq"])
def test_solve_matches_scipy_and_dense_trustls(solver):
    fun, pattern, x0 = chained_fit()
    model = GaussNewtonModel(jac_sparsity=pattern)
    result = TrustRegion(model, solver=solver, **TOLERANCES).solve(fun, x0)
    dense = TrustRegion(GaussNewtonModel(), solver="lstsq", **TOLERANCES).solve(fun, x0)
    reference = scipy_least_squares_sparse(fun, x0, pattern, ftol=1e-12, xtol=1e-12, gtol=1e-10)
    assert result.success and reference.success
    assert model.colored.n_colors == 2  # pattern rows hold at most 2 columns, adjacent ones
    assert result.cost == pytest.approx(reference.cost, rel=1e-8)
    assert result.cost == pytest.approx(dense.cost, rel=1e-10)
    torch.testing.assert_close(result.x, torch.from_numpy(reference.x), rtol=1e-5, atol=1e-6)
    # CG stops on ftol with an inexact step; the exact solver agrees to rounding.
    close = 1e-5 if solver == "cg" else 1e-9
    torch.testing.assert_close(result.x, dense.x, rtol=close, atol=close)


def test_linearization_holds_the_sparse_jacobian():
    fun, pattern, x0 = chained_fit()
    model = GaussNewtonModel(jac_sparsity=pattern)
    lin = model.linearize(fun, x0)
    assert isinstance(lin.jacobian, SparseOperator)
    J = torch.func.jacrev(fun)(x0)
    torch.testing.assert_close(lin.jacobian.to_dense(), J, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(lin.gradient, J.T @ fun(x0), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(model.column_norms(lin), torch.linalg.vector_norm(J, dim=0), rtol=1e-14, atol=0)
    assert not model.column_norms_are_estimated(lin)
    dense = model.linearize(fun, x0, dense=True)
    torch.testing.assert_close(dense.jacobian_matrix, J, rtol=1e-14, atol=1e-14)


def test_a_residual_with_random_draws_needs_no_fallback_in_a_solve():
    # In a solve the colored products are double-backward passes through the
    # graph the accepted trial kept: no vmap (which refuses random draws), no
    # warning, and no call of fun beyond the trials.
    fun, pattern, x0 = chained_fit()
    calls = []

    def noisy(x):  # the seed makes every call the same function
        calls.append(None)
        generator = torch.Generator().manual_seed(0)
        return fun(x) + 1e-3 * torch.rand(2 * N - 1, generator=generator, dtype=x.dtype)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = TrustRegion(GaussNewtonModel(jac_sparsity=pattern), solver="cg", **TOLERANCES).solve(noisy, x0)
    assert not [w for w in caught if "jac_sparsity" in str(w.message)]
    assert len(calls) == result.nfev
    assert result.success and result.njev > 1
    exact = GaussNewtonModel(jacobian=lambda x: torch.autograd.functional.jacobian(noisy, x))
    dense = TrustRegion(exact, solver="lstsq", **TOLERANCES).solve(noisy, x0)
    assert result.cost == pytest.approx(dense.cost, rel=1e-10)


def test_model_arguments():
    _, pattern, _ = chained_fit()
    with pytest.raises(ValueError, match="pass at most one of jacobian and jac_sparsity, got both"):
        GaussNewtonModel(jacobian=lambda x: x, jac_sparsity=pattern)
    with pytest.raises(ValueError, match=r"jac_sparsity must be 2-D"):
        GaussNewtonModel(jac_sparsity=torch.ones(3, dtype=torch.bool))
    colored = ColoredJacobian(pattern)
    model = GaussNewtonModel(jac_sparsity=colored)
    assert model.colored is colored
    assert "jac_sparsity=ColoredJacobian(shape=(59, 30), nnz=88, n_colors=2" in repr(model)


def rotation_only_bundle_adjustment(cameras=4, points=30):
    """Cameras of three rotation parameters and points of three coordinates, written plainly in torch."""
    generator = torch.Generator().manual_seed(0)
    camera = torch.arange(cameras).repeat(points)
    point = torch.arange(points).repeat_interleave(cameras)
    truth_w = 0.05 * torch.randn(cameras, 3, generator=generator, dtype=torch.float64)
    truth_X = torch.randn(points, 3, generator=generator, dtype=torch.float64)

    def project(w, X):
        w, X = w[camera], X[point]
        theta = torch.sqrt((w * w).sum(1, keepdim=True) + 1e-30)
        k = w / theta
        rotated = (X * torch.cos(theta) + torch.cross(k, X, dim=1) * torch.sin(theta)
                   + k * (k * X).sum(1, keepdim=True) * (1 - torch.cos(theta)))
        shifted = rotated + torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64)
        return shifted[:, :2] / shifted[:, 2:]

    observed = project(truth_w, truth_X) + 0.01 * torch.randn(cameras * points, 2, generator=generator,
                                                              dtype=torch.float64)

    def fun(x):
        return (project(x[: 3 * cameras].reshape(cameras, 3), x[3 * cameras :].reshape(points, 3)) - observed).reshape(-1)

    pattern = torch.zeros(2 * cameras * points, 3 * (cameras + points), dtype=torch.bool)
    for i, (c, p) in enumerate(zip(camera.tolist(), point.tolist())):
        pattern[2 * i : 2 * i + 2, 3 * c : 3 * c + 3] = True
        pattern[2 * i : 2 * i + 2, 3 * cameras + 3 * p : 3 * cameras + 3 * p + 3] = True
    x0 = torch.cat([torch.zeros(3 * cameras, dtype=torch.float64), (truth_X + 0.1).reshape(-1)])
    return fun, x0, pattern


def test_equal_size_cameras_and_points_take_the_schur_solver_by_default():
    """Found by a bug hunt: with cameras and points of equal size nothing was eliminated, and the
    default route took lsmr (488 evaluations on the hunter's problem)."""
    import trustls
    from trustls.subproblem import IterativeSchur

    fun, x0, pattern = rotation_only_bundle_adjustment()
    result = trustls.least_squares(fun, x0, jac_sparsity=pattern, **TOLERANCES)
    reference = scipy_least_squares(fun, x0, **TOLERANCES)  # scipy given the exact dense J
    assert result.success and result.cost == pytest.approx(reference.cost, rel=1e-9)
    model = GaussNewtonModel(jac_sparsity=pattern)
    assert isinstance(trustls.api._solver("trf", None, None, None, x0.numel(), True, model), IterativeSchur)


def test_least_squares_finds_the_blocks_of_a_pattern_once(monkeypatch):
    """The choice of the Schur solver and the solver itself share one `find_blocks` of the pattern."""
    import trustls
    from trustls.sparsity import blocks

    calls = []
    for name in ("find_blocks", "_pattern_partition"):  # the search, from raw indices or a normalized pattern
        original = getattr(blocks, name, None)
        if original is None:
            continue
        counted = lambda *args, original=original: calls.append(1) or original(*args)  # noqa: E731
        for module in (blocks, trustls.sparsity, trustls.api):  # every binding of the name
            if hasattr(module, name):
                monkeypatch.setattr(module, name, counted)
    fun, x0, pattern = rotation_only_bundle_adjustment()
    result = trustls.least_squares(fun, x0, jac_sparsity=pattern, **TOLERANCES)
    assert result.success and len(calls) == 1
