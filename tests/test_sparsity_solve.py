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


# -- a jac that returns J as a sparse matrix: its structure is reused, its blocks found --------


def sparse_jacobian_of(fun, pattern, layout):
    """``jacobian(x)``: J of ``fun`` at x as a new torch sparse tensor of ``layout`` at every call, built as a
    user builds one (the pattern's entries, in a fixed order that is not sorted, values from jacrev)."""
    rows, cols = pattern.nonzero(as_tuple=True)
    order = torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(0))
    rows, cols = rows[order], cols[order]

    def jacobian(x):
        values = torch.func.jacrev(fun)(x)[rows, cols]
        J = torch.sparse_coo_tensor(torch.stack([rows, cols]), values, tuple(pattern.shape), check_invariants=True)
        if layout == "coo, coalesced":
            return J.coalesce()
        if layout == "coo, each entry split in two":
            indices = torch.stack([rows.repeat(2), cols.repeat(2)])
            return torch.sparse_coo_tensor(indices, torch.cat([values, values]) / 2, tuple(pattern.shape),
                                           check_invariants=True)
        return {"coo": J, "csr": J.to_sparse_csr(), "csc": J.to_sparse_csc()}[layout]

    return jacobian


LAYOUTS = ["coo", "coo, coalesced", "csr", "csc", "coo, each entry split in two"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_sparse_jacobian_reuses_its_structure_from_point_to_point(layout):
    from trustls.models.user_jacobian import SparseStructure, jacobian_operator

    fun, pattern, x0 = chained_fit()
    jacobian = sparse_jacobian_of(fun, pattern, layout)
    structure = SparseStructure()
    m = pattern.shape[0]
    first = jacobian_operator(jacobian(x0), m, x0, structure)
    x1 = x0 + torch.linspace(-0.2, 0.4, N, dtype=torch.float64)
    second = jacobian_operator(jacobian(x1), m, x0, structure)
    J1 = torch.func.jacrev(fun)(x1)
    torch.testing.assert_close(second.to_dense(), J1, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(second.column_norms(), torch.linalg.vector_norm(J1, dim=0), rtol=1e-15, atol=0)
    # Repeated coordinates are summed before anything is taken from the entries: no structure is kept.
    assert (second.pattern is first.pattern) == ("split" not in layout)


def test_a_sparse_jacobian_with_another_pattern_gets_its_own_structure():
    from trustls.models.user_jacobian import SparseStructure, jacobian_operator

    structure = SparseStructure()
    x = torch.zeros(3, dtype=torch.float64)
    first = jacobian_operator(torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0]]).double().to_sparse(), 2, x, structure)
    moved = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]], dtype=torch.float64)
    second = jacobian_operator(moved.to_sparse(), 2, x, structure)
    assert second.pattern is not first.pattern and torch.equal(second.to_dense(), moved)
    third = jacobian_operator(moved.to_sparse(), 2, x, structure)
    assert third.pattern is second.pattern


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_solve_with_a_sparse_jacobian_matches_the_dense_one(layout):
    fun, pattern, x0 = chained_fit()
    model = GaussNewtonModel(jacobian=sparse_jacobian_of(fun, pattern, layout))
    result = TrustRegion(model, solver="cg", **TOLERANCES).solve(fun, x0)
    dense = TrustRegion(GaussNewtonModel(), solver="lstsq", **TOLERANCES).solve(fun, x0)
    assert result.success and result.njev > 2
    assert result.cost == pytest.approx(dense.cost, rel=1e-10)
    torch.testing.assert_close(result.x, dense.x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", ["coo", "csr", "coo, each entry split in two", "scipy csr"])
def test_a_jac_returning_a_sparse_j_runs_the_schur_solver_as_jac_sparsity_does(layout, monkeypatch):
    """With solver="schur", a jac returning J as a sparse tensor or matrix gives the jac_sparsity solve
    (its blocks found in J's pattern, kept from point to point)."""
    import scipy.sparse

    import trustls
    from trustls.subproblem import IterativeSchur

    prepared = []
    original = IterativeSchur.prepare
    monkeypatch.setattr(IterativeSchur, "prepare", lambda self, *args: prepared.append(1) or original(self, *args))
    fun, x0, pattern = rotation_only_bundle_adjustment()
    jacobian = sparse_jacobian_of(fun, pattern, "coo" if layout.startswith("scipy") else layout)
    def scipy_jac(x):  # built from the triplets, as scipy users build theirs: stored zeros stay stored
        J = jacobian(torch.as_tensor(x)).coalesce()
        return scipy.sparse.csr_matrix((J.values().numpy(), J.indices().numpy()), shape=tuple(J.shape))

    jac = scipy_jac if layout.startswith("scipy") else jacobian
    result = trustls.least_squares(fun, x0, jac=jac, solver="schur", **TOLERANCES)
    reference = scipy_least_squares(fun, x0, **TOLERANCES)
    assert result.success and result.cost == pytest.approx(reference.cost, rel=1e-9)
    assert len(prepared) == result.njev - 1  # IterativeSchur took every step (none from the final point)
    by_pattern = trustls.least_squares(fun, x0, jac_sparsity=pattern, **TOLERANCES)
    assert result.nfev == by_pattern.nfev
    torch.testing.assert_close(result.x, by_pattern.x, rtol=1e-9, atol=1e-12)


def test_least_squares_finds_the_blocks_of_a_jac_once(monkeypatch):
    import trustls
    from trustls.sparsity import blocks

    calls = []
    original = blocks.find_blocks
    monkeypatch.setattr(blocks, "find_blocks", lambda *args: calls.append(1) or original(*args))
    fun, x0, pattern = rotation_only_bundle_adjustment()
    result = trustls.least_squares(fun, x0, jac=sparse_jacobian_of(fun, pattern, "coo"), solver="schur", **TOLERANCES)
    assert result.success and result.njev > 2 and len(calls) == 1


def test_a_jac_whose_sparse_j_drops_its_zeros_solves_by_default():
    """Found by a hunt: scipy users build a sparse J as csr_matrix(dense J), which drops exact zeros. At
    x0 = 0 the chain's couplings 2u are zero, so J(x0)'s pattern split into blocks; the Schur solver
    chosen from it raised at the next point ("IterativeSchur needs column blocks that no row shares")."""
    import scipy.sparse

    import trustls

    k = 10
    targets = torch.linspace(0.5, 1.5, k, dtype=torch.float64)

    def fun(x):
        u, w = x[:k], x[k]
        return torch.cat([u + w - targets + torch.cat([u.new_zeros(1), u[:-1] ** 2]), u - 0.5])

    def jac(x):
        return scipy.sparse.csr_matrix(torch.func.jacrev(fun)(torch.as_tensor(x)).numpy())

    x0 = torch.zeros(k + 1, dtype=torch.float64)
    result = trustls.least_squares(fun, x0, jac=jac, **TOLERANCES)
    reference = scipy_least_squares(fun, x0, **TOLERANCES)
    assert result.success and result.cost == pytest.approx(reference.cost, rel=1e-9)


def test_x_scale_jac_is_the_solvers_own_jacobi_scaling():
    """Found with the scipy cookbook's bundle-adjustment call (x_scale='jac'): with the Schur solver "jac"
    meant block-Jacobi, which took BAL-49 31 evaluations where the solver's own Jacobi takes 19."""
    import trustls
    from trustls.scaling import JacobiScale
    from trustls.subproblem import IterativeSchur

    assert TrustRegion(GaussNewtonModel(), solver="schur", x_scale="jac").x_scale == JacobiScale(blocks=False)
    assert TrustRegion(GaussNewtonModel(), solver=IterativeSchur(), x_scale="jac").x_scale == IterativeSchur.default_x_scale
    assert TrustRegion(GaussNewtonModel(), solver="cg", x_scale="jac").x_scale == JacobiScale()
    fun, x0, pattern = rotation_only_bundle_adjustment()
    by_default = trustls.least_squares(fun, x0, jac_sparsity=pattern, **TOLERANCES)
    by_jac = trustls.least_squares(fun, x0, jac_sparsity=pattern, x_scale="jac", **TOLERANCES)
    assert by_default.success and torch.equal(by_jac.x, by_default.x) and by_jac.nfev == by_default.nfev


# -- the colored products in one batched pass where the graph's tensors are small ---------------


def chained_fit_in_a_loop():
    """`chained_fit` written row by row, as scipy's cookbook writes residuals: a graph of many small tensors."""
    fun, pattern, x0 = chained_fit()
    targets = torch.linspace(-1.0, 2.0, N - 1, dtype=torch.float64)

    def looped(x):
        rows = [x[i] ** 2 + x[i + 1] - targets[i] for i in range(N - 1)]
        return torch.stack(rows + [x[i] - 0.5 for i in range(N)])

    return looped, pattern, x0


def test_a_residual_of_small_tensors_gets_its_colored_products_from_one_batched_pass(monkeypatch):
    """Found by a hunt: on Broyden banded written as a loop over 2,000 rows, each of the 7 colored
    products was a double-backward pass through the whole graph (2.9 s per point; scipy's finite
    differences took 5 s for the solve, trustls 21 s); one vmapped pass takes 0.5-0.75 s."""
    from trustls.operators.residual_graph import ResidualGraph

    looped, pattern, x0 = chained_fit_in_a_loop()
    fun, _, _ = chained_fit()
    reference = TrustRegion(GaussNewtonModel(jac_sparsity=pattern), solver="lstsq", **TOLERANCES).solve(fun, x0)
    batched, single = [], []
    for name, calls in (("jvp_batched", batched), ("jvp", single)):
        original = getattr(ResidualGraph, name)
        monkeypatch.setattr(ResidualGraph, name, lambda self, v, original=original, calls=calls:
                            calls.append(1) or original(self, v))
    result = TrustRegion(GaussNewtonModel(jac_sparsity=pattern), solver="lstsq", **TOLERANCES).solve(looped, x0)
    assert result.success and len(batched) == result.njev
    assert len(single) == 1  # the batched pass checked once against a single pass
    assert result.nfev == reference.nfev and result.cost == pytest.approx(reference.cost, rel=1e-12)
    torch.testing.assert_close(result.x, reference.x, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("saved, tensors, batched", [(1000, 10, True), (2**15 * 10, 10, False), (None, None, False),
                                                      (2**22, 2**10, False)])
@pytest.mark.parametrize("by", ["columns", "rows"])
def test_colored_products_are_batched_only_where_it_pays(saved, tensors, batched, by, monkeypatch):
    # Batched: saved tensors of at most 2¹⁴ elements on average, and k copies within BATCH_ELEMENTS (2²²).
    from trustls.models.dense_jacobian import DenseJacobian
    from trustls.operators.residual_graph import ResidualGraph

    calls = []
    name = "jvp_batched" if by == "columns" else "vjp_batched"
    original = getattr(ResidualGraph, name)
    monkeypatch.setattr(ResidualGraph, name, lambda self, seeds: calls.append(1) or original(self, seeds))
    if by == "columns":
        fun, pattern, x = chained_fit()
    else:
        fun, _, pattern, x0 = broyden_in_a_loop()
        x = x0 + torch.linspace(0.0, 1.0, N, dtype=torch.float64)
    colored = ColoredJacobian(pattern)
    jacobian = DenseJacobian()
    jacobian.saved_elements, jacobian.saved_tensors = saved, tensors
    graph = ResidualGraph.evaluate(fun, x)
    if by == "columns":
        J = colored.from_products(jacobian.compressed_columns(graph, colored.seeds(x)), x)
    else:
        J = colored.from_row_products(jacobian.compressed_rows(graph, colored.row_seeds(graph.residual)), x)
    assert bool(calls) == batched
    torch.testing.assert_close(J.to_dense(), torch.func.jacrev(fun)(x), rtol=1e-15, atol=1e-15)


# -- the colored products by rows, where a row coloring needs no more colors --------------------


def broyden_in_a_loop():
    """Broyden tridiagonal, vectorized and row by row: a square band whose rows color with as few
    colors as its columns (3), so J comes from backward passes alone (`ColoredJacobian.row_coloring`)."""
    def fun(x):
        padded = torch.cat([x.new_zeros(1), x, x.new_zeros(1)])
        return (3.0 - 2.0 * x) * x - padded[:-2] - 2.0 * padded[2:] + 1.0

    def looped(x):
        rows = []
        for i in range(N):
            left = x[i - 1] if i > 0 else 0.0
            right = x[i + 1] if i < N - 1 else 0.0
            rows.append((3.0 - 2.0 * x[i]) * x[i] - left - 2.0 * right + 1.0)
        return torch.stack(rows)

    band = torch.arange(N)
    pattern = (band[:, None] - band[None, :]).abs() <= 1
    return fun, looped, pattern, torch.full((N,), -1.0, dtype=torch.float64)


def test_a_square_band_gets_its_colored_products_by_rows_in_one_batched_backward_pass(monkeypatch):
    """Found on Broyden banded written as a loop over 2,000 rows: by columns each point took a
    ``create_graph`` backward pass and a vmapped double-backward pass (1.2 s), by rows one vmapped
    backward pass (0.65 s); the solve went from 18.7x scipy's time to 9.5x."""
    from trustls.operators.residual_graph import ResidualGraph

    fun, looped, pattern, x0 = broyden_in_a_loop()
    colored = ColoredJacobian(pattern)
    assert (colored.n_colors, colored.row_coloring.n_colors) == (3, 3)
    reference = TrustRegion(GaussNewtonModel(jacobian=torch.func.jacrev(fun)), solver="lstsq", **TOLERANCES).solve(
        fun, x0)
    calls = {name: [] for name in ("vjp_batched", "vjp", "prepare_jvp", "jvp", "jvp_batched")}
    for name, made in calls.items():
        original = getattr(ResidualGraph, name)
        monkeypatch.setattr(ResidualGraph, name, lambda self, *args, original=original, made=made:
                            made.append(1) or original(self, *args))
    result = TrustRegion(GaussNewtonModel(jac_sparsity=colored), solver="lstsq", **TOLERANCES).solve(looped, x0)
    assert result.success and len(calls["vjp_batched"]) == result.njev
    assert len(calls["vjp"]) == 1  # the batched pass checked once against a single pass
    assert not (calls["prepare_jvp"] or calls["jvp"] or calls["jvp_batched"])  # no double backward
    assert result.nfev == reference.nfev and result.cost == pytest.approx(reference.cost, rel=1e-12, abs=1e-28)
    torch.testing.assert_close(result.x, reference.x, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("by", ["columns", "rows"])
def test_colored_products_without_a_batching_rule_warn_once_and_come_one_by_one(by):
    if by == "columns":
        (fun, pattern, x0), shared = chained_fit(), N - 1
    else:
        (fun, _, pattern, x0), shared = broyden_in_a_loop(), N
    sparse = torch.eye(shared, dtype=torch.float64).to_sparse()

    def with_a_sparse_product(x):  # the backward of torch.sparse.mm has no batching rule
        r = fun(x)
        return torch.cat([torch.sparse.mm(sparse, r[:shared, None])[:, 0], r[shared:]])

    with pytest.warns(UserWarning, match=r"could not batch the Jacobian's rows or columns") as record:
        result = TrustRegion(GaussNewtonModel(jac_sparsity=pattern), solver="lstsq", **TOLERANCES).solve(
            with_a_sparse_product, x0)
    assert len([w for w in record if "trustls could not" in str(w.message)]) == 1
    reference = TrustRegion(GaussNewtonModel(jac_sparsity=pattern), solver="lstsq", **TOLERANCES).solve(fun, x0)
    assert result.success and result.njev > 2
    assert result.cost == pytest.approx(reference.cost, rel=1e-10, abs=1e-28)
    torch.testing.assert_close(result.x, reference.x, rtol=1e-10, atol=1e-12)


def test_a_pattern_whose_columns_meet_many_rows_keeps_its_products_by_columns():
    """Bundle adjustment: a camera's column meets every row of its observations, so its rows would
    need more colors than the 12 columns do, and J stays by columns."""
    fun, x0, pattern = rotation_only_bundle_adjustment()
    colored = ColoredJacobian(pattern)
    assert colored.row_coloring is None
    assert int(colored.pattern.column_counts().max()) > colored.n_colors
