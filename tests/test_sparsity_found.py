"""`trustls.sparsity.found`: J's pattern found from products, and its use by `GaussNewtonModel`.

The search must return exactly J's nonzeros or nothing: on random sparse J
(hypothesis) a returned pattern equals the nonzeros of J, and it is returned
whenever some stage separates every row's columns. In a solve the matrix-free
J's products stay J's after the search (which runs at its `SEARCH_AFTER`-th
product), the colored J must equal J at every later point (``jacrev``
densified), also where the pattern changes with x (the check finds it and the
search runs again), and the solve must reach the matrix-free solve's and
scipy's minimum.
"""

import math

import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trustls import GaussNewtonModel, TrustRegion
from trustls.operators import JacobianOperator, SparseOperator
from trustls.sparsity.found import (
    FIND_FROM,
    MAX_COLORS,
    MAX_SEARCHES,
    SEARCH_AFTER,
    STAGES,
    FoundSparsity,
    disagreeing_rows,
    find_pattern,
)


def _products(J: torch.Tensor):
    return lambda seeds: seeds @ J.T


def _separable(dense: torch.Tensor) -> bool:
    """Whether every nonzero is, at some stage K, the only one of its row in its class j mod K, and
    some nonzero is by K = 7 (else the search takes J for dense)."""
    n = dense.shape[1]
    alone = torch.zeros_like(dense)
    for K in STAGES:
        counts = dense.double() @ torch.nn.functional.one_hot(torch.arange(n) % K, K).double()  # (m, K)
        alone |= counts[:, torch.arange(n) % K] == 1
        if K == 7 and not (alone & dense).any():
            return False
    return bool((alone | ~dense).all())


@st.composite
def sparse_jacobians(draw):
    m, n = draw(st.integers(1, 40)), draw(st.integers(1, 60))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    if draw(st.booleans()):  # banded, the structured problems' kind
        width = draw(st.integers(1, 16))
        i, j = torch.arange(m)[:, None], torch.arange(n)[None, :]
        offset = draw(st.integers(-3, 3))
        dense = ((j - i - offset) >= 0) & ((j - i - offset) < width)
    else:  # scattered
        dense = torch.rand(m, n, generator=generator) < draw(st.floats(0.0, 0.3))
    values = (1 + torch.rand(m, n, generator=generator, dtype=torch.float64)) * (
        torch.randint(0, 2, (m, n), generator=generator) * 2 - 1)
    return torch.where(dense, values, 0.0)


@settings(derandomize=True, max_examples=120, deadline=None)
@given(sparse_jacobians())
def test_found_pattern_is_the_nonzeros_of_J_or_nothing(J):
    m, n = J.shape
    pattern, spent, reason = find_pattern(_products(J), n, m, generator=torch.Generator().manual_seed(1))
    if pattern is None:
        assert not _separable(J != 0) and reason
    else:
        assert reason is None
        assert torch.equal(pattern.to_dense(), J != 0)
    if _separable(J != 0) and (J != 0).any():
        assert pattern is not None
    assert spent in {2 * sum(STAGES[:k]) for k in range(1, len(STAGES) + 1)}


def test_tridiagonal_is_found_at_the_first_stage_and_a_dense_J_is_given_up_after_the_second():
    n = 50
    J = torch.diag(torch.full((n,), 4.0, dtype=torch.float64)) + torch.diag(torch.ones(n - 1, dtype=torch.float64), 1)
    J += torch.diag(-2 * torch.ones(n - 1, dtype=torch.float64), -1)
    pattern, spent, _ = find_pattern(_products(J), n, n, generator=torch.Generator())
    assert spent == 2 * STAGES[0] and pattern.nnz == 3 * n - 2
    dense = torch.rand(30, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
    pattern, spent, reason = find_pattern(_products(dense), n, 30, generator=torch.Generator())
    assert pattern is None and spent == 2 * (4 + 7)
    assert reason == "no variable is alone in its class of 7 in any residual (J looks dense)"


def test_a_row_no_stage_can_split_is_named():
    stages = (4, 7, 11)
    d = math.lcm(*stages)  # x_j and x_{j+d} share a class at every stage
    n = d + 10
    J = torch.zeros(3, n, dtype=torch.float64)
    J[0, 0] = J[0, 1] = 1.0  # separated at K = 4
    J[1, 5], J[1, 5 + d] = 1.0, 2.0
    J[2, 7] = 3.0
    pattern, spent, reason = find_pattern(_products(J), n, 3, generator=torch.Generator(), stages=stages)
    assert pattern is None and spent == 2 * sum(stages)
    assert reason == "1 of 3 rows depend on variables that 3 stages do not tell apart"


def test_rows_are_explained_by_entries_found_alone_at_different_stages():
    # Row i reaches i, i + 1, i + 4, i + 15: mod 4, i and i + 4 share a class (i + 1 and i + 15 are alone);
    # mod 7, i + 1 and i + 15 do (i and i + 4 are alone). Neither stage alone tells a row apart; together
    # they find every entry, which then reproduce every product of both stages.
    n = 100
    J = torch.zeros(n, n, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    for offset in (0, 1, 4, 15):
        rows = torch.arange(n - offset)
        J[rows, rows + offset] = torch.rand(rows.numel(), dtype=torch.float64, generator=generator) + 1
    pattern, spent, _ = find_pattern(_products(J), n, n, generator=torch.Generator())
    assert torch.equal(pattern.to_dense(), J != 0)
    assert spent == 2 * (4 + 7)


def test_the_memory_bound_batches_the_classes_and_ends_the_search_below_one(monkeypatch):
    import trustls.sparsity.found as found_module

    n = 100
    J = torch.zeros(n, n, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    for offset in (0, 1, 4, 15):  # found at K = 7 (as in the test above)
        rows = torch.arange(n - offset)
        J[rows, rows + offset] = torch.rand(rows.numel(), dtype=torch.float64, generator=generator) + 1
    calls = []

    def products(seeds):
        calls.append(seeds.shape[0])
        return seeds @ J.T

    monkeypatch.setattr(found_module, "_STAGE_ELEMENTS", 3000)  # less than the 7 classes of the second stage
    pattern, spent, _ = find_pattern(products, n, n, generator=torch.Generator())
    assert torch.equal(pattern.to_dense(), J != 0) and spent == 2 * (4 + 7)
    assert max(calls) < 2 * 7 and sum(calls) == spent
    monkeypatch.setattr(found_module, "_STAGE_ELEMENTS", 2 * (n + n) - 1)  # not one class
    pattern, spent, reason = find_pattern(products, n, n, generator=torch.Generator())
    assert pattern is None and spent == 0
    assert reason == "the search's products for 100 variables and 100 residuals exceed its memory bound at 4 classes"


def test_positions_by_table_and_by_binary_search_agree():
    from trustls.sparsity.found import _STAGE_ELEMENTS, _positions

    generator = torch.Generator().manual_seed(0)
    sorted_keys = torch.unique(torch.randint(0, 1000, (300,), generator=generator))
    keys = torch.randint(0, 1000, (500,), generator=generator)
    at, hit = _positions(sorted_keys, keys, 1000)
    at_search, hit_search = _positions(sorted_keys, keys, _STAGE_ELEMENTS + 1)
    assert torch.equal(hit, torch.isin(keys, sorted_keys)) and torch.equal(hit, hit_search)
    assert torch.equal(at[hit], at_search[hit]) and torch.equal(sorted_keys[at[hit]], keys[hit])


def test_disagreeing_rows_allow_rounding_but_not_a_missing_entry():
    J = SparseOperator(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]),
                       torch.tensor([1.0, 1e-3, 5.0], dtype=torch.float64), (3, 3))
    v = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    exact = J.matvec(v) * (1 + 1e-14)
    assert disagreeing_rows(J, v, exact).numel() == 0
    exact[1] += 1e-7  # an entry of 5e-8 the pattern misses, in a row of scale 2e-3
    assert disagreeing_rows(J, v, exact).tolist() == [1]
    exact[1] = float("nan")
    assert disagreeing_rows(J, v, exact).tolist() == [1]


def _jacobian(found, J, x):
    return found.jacobian(_products(J), lambda u: J.T @ u, x, J.shape[0])


def test_an_entry_that_appears_is_repaired_from_its_row_and_column():
    n = 40
    base = torch.diag(torch.arange(1.0, n + 1, dtype=torch.float64))
    grown = base.clone()
    grown[3, 20] = 7.0  # a dependency whose derivative was zero at the first point
    found = FoundSparsity()
    x = torch.zeros(n, dtype=torch.float64)
    assert torch.equal(_jacobian(found, base, x).to_dense(), base)
    assert found.searches == 1
    J = _jacobian(found, grown, x)
    assert torch.equal(J.to_dense(), grown) and found.searches == 2  # the search, then one repair
    assert found.colored.pattern.nnz == n + 1  # the union
    assert torch.equal(_jacobian(found, base, x).to_dense(), base)  # the union still holds base
    assert found.searches == 2


def test_many_rows_that_leave_the_pattern_send_the_search_again():
    n = 200
    x = torch.zeros(n, dtype=torch.float64)
    diagonal = torch.diag(torch.arange(1.0, n + 1, dtype=torch.float64))
    bidiagonal = diagonal + torch.diag(torch.ones(n - 1, dtype=torch.float64), 1)  # 199 rows gain an entry
    found = FoundSparsity()
    _jacobian(found, diagonal, x)
    assert torch.equal(_jacobian(found, bidiagonal, x).to_dense(), bidiagonal)
    assert found.searches == 2 and found.colored.n_colors == 2


def test_a_tiny_global_parameter_is_kept_by_the_column_check():
    # u'' discretized (entries ~1e8) plus a parameter p entering every row with 1e-9: below the decoding's
    # rounding tolerance wherever p shares a class with a stencil column, and below √eps in every row.
    n = 200
    J = torch.diag(torch.full((n,), 2e8, dtype=torch.float64)) - torch.diag(torch.full((n - 1,), 1e8,
                                                                                         dtype=torch.float64), 1)
    J -= torch.diag(torch.full((n - 1,), 1e8, dtype=torch.float64), -1)
    J = torch.cat([J, torch.linspace(1e-9, 2e-9, n, dtype=torch.float64)[:, None]], 1)
    found = FoundSparsity()
    J_found = _jacobian(found, J, torch.zeros(n + 1, dtype=torch.float64))
    assert torch.equal(J_found.to_dense(), J)
    assert found.searches == 2  # the search lost p in some rows; the column check repaired its column


def test_a_dense_row_that_appears_gives_the_pattern_up():
    n = 100
    x = torch.zeros(n, dtype=torch.float64)
    J = torch.diag(torch.full((n,), 4.0, dtype=torch.float64)) - torch.diag(torch.ones(n - 1, dtype=torch.float64), 1)
    found = FoundSparsity()
    _jacobian(found, torch.cat([J, torch.zeros(1, n, dtype=torch.float64)]), x)  # an inactive penalty row
    # Now active, with entries negligible in their columns: only the row's check fails, and its repair
    # would make every later point cost a hundred products.
    assert _jacobian(found, torch.cat([J, torch.full((1, n), 1e-12, dtype=torch.float64)]), x) is None
    assert found.given_up == f"a row of J has {n} nonzeros, more than {MAX_COLORS} colors can hold"


def test_a_pattern_that_keeps_changing_is_given_up():
    n, found = 40, FoundSparsity()
    x = torch.zeros(n, dtype=torch.float64)
    for point in range(MAX_SEARCHES + 1):  # a different extra dependency at every point
        J = torch.eye(n, dtype=torch.float64)
        J[0, 1 + point] = 1.0
        J_found = _jacobian(found, J, x)
        if point < MAX_SEARCHES:
            assert torch.equal(J_found.to_dense(), J)
    assert J_found is None and found.searches == MAX_SEARCHES
    assert found.given_up == f"J left the pattern found after {MAX_SEARCHES} searches and repairs"
    assert _jacobian(found, torch.eye(n, dtype=torch.float64), x) is None  # given up for the rest of the solve


def test_a_five_point_stencil_with_a_stride_of_64_is_found():
    N = 64  # j ± 64 share a class with j mod 4 and 16, with j ± 1 mod 7: K = 11 tells them apart
    i = torch.arange(N * N)
    rows = torch.cat([i, i[i % N > 0], i[i % N < N - 1], i[i >= N], i[i < N * N - N]])
    cols = torch.cat([i, i[i % N > 0] - 1, i[i % N < N - 1] + 1, i[i >= N] - N, i[i < N * N - N] + N])
    J = torch.zeros(N * N, N * N, dtype=torch.float64)
    J[rows, cols] = torch.rand(rows.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 1
    pattern, spent, _ = find_pattern(_products(J), N * N, N * N, generator=torch.Generator())
    assert torch.equal(pattern.to_dense(), J != 0) and spent == 2 * (4 + 7 + 11)


# -- in GaussNewtonModel -------------------------------------------------------------------------

N = FIND_FROM + 76  # 1,100 variables: the search is on


def _bvp(x: torch.Tensor) -> torch.Tensor:
    """A discrete boundary-value problem in user style (F.pad of neighbors): ill-conditioned, so CG works hard."""
    h = 1.0 / (x.shape[0] + 1)
    t = torch.arange(1, x.shape[0] + 1, dtype=x.dtype) * h
    padded = torch.nn.functional.pad(x, (1, 1))
    return (2 * x - padded[:-2] - padded[2:]) / h**2 * 1e-4 + x + x**3 - 1 - t


def _where_neighbor(x: torch.Tensor) -> torch.Tensor:
    """Each residual reaches its left or its right neighbor by the sign of x: the pattern moves with x."""
    left = torch.cat([x[:1], x[:-1]])
    right = torch.cat([x[1:], x[-1:]])
    return torch.where(x > 0, x * left, x * right) + x - 0.5


def _linearize_twice(model, fun, x0, x1):
    """Linearize at x0, spend SEARCH_AFTER products there (the search runs at the next), then linearize at x1."""
    context = model.start(fun, x0, dense=False)
    first = model.linearize(fun, x0, context)
    first.jacobian.calls = SEARCH_AFTER  # as if CG had spent that many products
    v, u = torch.ones_like(x0), torch.ones(first.jacobian.shape[0], dtype=x0.dtype)
    J = torch.func.jacrev(fun)(x0)
    tol = 1e-12 if x0.dtype == torch.float64 else 1e-5
    torch.testing.assert_close(first.jacobian.matvec(v), J @ v, rtol=tol, atol=tol)
    torch.testing.assert_close(first.jacobian.rmatvec(u), J.T @ u, rtol=tol, atol=tol)
    return context, first, model.linearize(fun, x1, context)


@pytest.mark.parametrize("fun", [_bvp, _where_neighbor], ids=["pad", "where"])
def test_the_found_jacobian_equals_jacrev_at_every_point(fun):
    generator = torch.Generator().manual_seed(3)
    points = [torch.randn(N, dtype=torch.float64, generator=generator) for _ in range(4)]
    points[1] = -points[0]  # every sign flips: the second search's union holds both neighbors of every row
    model = GaussNewtonModel()
    context, first, second = _linearize_twice(model, fun, points[0], points[1])
    assert isinstance(first.jacobian, JacobianOperator) and isinstance(first.jacobian.sparse, SparseOperator)
    assert isinstance(second.jacobian, SparseOperator)
    for x in points[1:]:
        lin = model.linearize(fun, x, context)
        assert isinstance(lin.jacobian, SparseOperator)
        torch.testing.assert_close(lin.jacobian.to_dense(), torch.func.jacrev(fun)(x), rtol=1e-13, atol=0)
        torch.testing.assert_close(lin.gradient, torch.func.jacrev(fun)(x).T @ fun(x), rtol=1e-12, atol=1e-12)
    assert context.found.given_up is None
    # The signs moved once: the check sent the search again, and the union then held.
    assert context.found.searches == (2 if fun is _where_neighbor else 1)


def test_no_search_for_float32_few_variables_opt_out_or_a_dense_jacobian():
    x = torch.linspace(0.1, 1.0, N, dtype=torch.float64)
    for model, fun, x0 in [
        (GaussNewtonModel(), _bvp, x.float()),
        (GaussNewtonModel(), _bvp, x[: FIND_FROM - 1]),
        (GaussNewtonModel(find_sparsity=False), _bvp, x),
    ]:
        context, _, second = _linearize_twice(model, fun, x0, x0)
        assert isinstance(second.jacobian, JacobianOperator) and context.found.searches == 0
    A = torch.rand(N + 10, N, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    context, _, second = _linearize_twice(GaussNewtonModel(), lambda z: A @ z - 1, x, x)
    assert isinstance(second.jacobian, JacobianOperator)
    assert context.found.given_up == "no variable is alone in its class of 7 in any residual (J looks dense)"
    assert context.found.products == 2 * (4 + 7)


def test_find_sparsity_is_checked():
    with pytest.raises(TypeError, match="find_sparsity must be a bool, got str"):
        GaussNewtonModel(find_sparsity="yes")
    assert repr(GaussNewtonModel(find_sparsity=False)).endswith("find_sparsity=False)")


def test_a_hard_bvp_switches_to_the_found_pattern_and_reaches_scipys_minimum(monkeypatch):
    searches = []
    search = FoundSparsity._search
    monkeypatch.setattr(FoundSparsity, "_search", lambda self, *args: searches.append(1) or search(self, *args))
    x0 = torch.zeros(N, dtype=torch.float64)
    tol = dict(ftol=1e-12, xtol=1e-12, gtol=1e-12)
    found = TrustRegion(GaussNewtonModel(), solver="cg", **tol).solve(_bvp, x0)
    assert len(searches) == 1  # in the first CG solve, at its SEARCH_AFTER-th product
    free = TrustRegion(GaussNewtonModel(find_sparsity=False), solver="cg", **tol).solve(_bvp, x0)
    reference = scipy.optimize.least_squares(lambda z: _bvp(torch.from_numpy(z)).numpy(), np.zeros(N),
                                             method="trf", **tol)
    assert found.success and free.success
    assert found.cost <= 1e-20 and free.cost <= 1e-20 and reference.cost <= 1e-20
    torch.testing.assert_close(found.x, torch.from_numpy(reference.x), rtol=0, atol=1e-8)
    torch.testing.assert_close(found.x, free.x, rtol=0, atol=1e-8)
