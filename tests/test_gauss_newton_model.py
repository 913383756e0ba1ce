"""The Gauss-Newton model against ``torch.func.jacrev``.

`GaussNewtonModel.linearize` must give the residual r(x), the cost ½‖r‖²
(accumulated in float64), the gradient Jᵀr, and the operators J and JᵀJ of
the dense Jacobian, whether matrix-free (every product method) or dense. `Linearization.scaled`
gives the problem in z = x / d: g·d, D B D and J D.
"""

import re

import pytest
import torch
from torch import Tensor

from trustls.models import GaussNewtonModel, Linearization
from trustls.operators import PRODUCT_METHODS, DenseOperator, NormalOperator, SparseOperator

METHODS = sorted(PRODUCT_METHODS)
MODES = [("dense", None)] + [("implicit", method) for method in METHODS]
MODE_IDS = ["dense"] + METHODS
RTOL = 1e-12


def _tanh_net(inputs: Tensor, targets: Tensor, hidden: int):
    """Residuals of a 1-hidden-layer tanh network with parameters x = (W₁, b₁, w₂, b₂)."""
    d_in = inputs.shape[1]

    def fun(x: Tensor) -> Tensor:
        W1 = x[: hidden * d_in].reshape(hidden, d_in)
        b1 = x[hidden * d_in : hidden * d_in + hidden]
        w2 = x[hidden * d_in + hidden : hidden * d_in + 2 * hidden]
        b2 = x[-1]
        return torch.tanh(torch.tanh(inputs @ W1.T + b1) @ w2 + b2) - targets

    return fun, hidden * d_in + 2 * hidden + 1


def make_problem(name: str, generator: torch.Generator, dtype=torch.float64):
    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype)

    if name == "rosenbrock":  # m = n = 2

        def fun(x):
            return torch.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])

        return fun, torch.tensor([-1.2, 1.0], dtype=dtype)
    if name == "exponential_tall":  # m = 8 > n = 2: y = a·exp(b·t)
        t = torch.linspace(0, 1, 8, dtype=dtype)
        y = randn(8)

        def fun(x):
            return x[0] * torch.exp(x[1] * t) - y

        return fun, torch.tensor([1.0, -0.5], dtype=dtype)
    if name in ("tanh_net_tall", "tanh_net_wide"):  # n = 13; m = 20 or 5
        batch = 20 if name == "tanh_net_tall" else 5
        fun, n = _tanh_net(randn(batch, 2), randn(batch), hidden=3)
        return fun, 0.7 * randn(n)
    raise AssertionError(name)


PROBLEMS = ["rosenbrock", "exponential_tall", "tanh_net_tall", "tanh_net_wide"]


def linearize(fun, x, mode: str, method: str | None) -> Linearization:
    if mode == "dense":
        return GaussNewtonModel().linearize(fun, x, dense=True)
    return GaussNewtonModel(products=method).linearize(fun, x)


def _size(t: Tensor) -> float:
    return float(t.abs().max())


@pytest.mark.parametrize(("mode", "method"), MODES, ids=MODE_IDS)
@pytest.mark.parametrize("name", PROBLEMS)
def test_linearization_matches_jacrev(name, mode, method, generator):
    fun, x = make_problem(name, generator)
    x_copy = x.clone()
    lin = linearize(fun, x, mode, method)
    r = fun(x)
    J = torch.func.jacrev(fun)(x)
    m, n = J.shape
    assert lin.x is x and torch.equal(x, x_copy)
    torch.testing.assert_close(lin.residual, r, rtol=RTOL, atol=RTOL * _size(r))
    assert not lin.residual.requires_grad and not lin.gradient.requires_grad
    assert lin.cost.dtype == torch.float64 and lin.cost.ndim == 0
    assert float(lin.cost) == pytest.approx(0.5 * float(r @ r), rel=1e-14)
    g = J.T @ r
    torch.testing.assert_close(lin.gradient, g, rtol=1e-10, atol=1e-12 * _size(J) * _size(r))
    assert lin.operator.shape == (n, n) and lin.jacobian.shape == (m, n)
    assert lin.operator.is_symmetric and lin.operator.is_positive_semidefinite
    torch.testing.assert_close(lin.jacobian.to_dense(), J, rtol=1e-10, atol=RTOL * _size(J))
    torch.testing.assert_close(lin.operator.to_dense(), J.T @ J, rtol=1e-10, atol=RTOL * _size(J) ** 2)
    v = torch.randn(n, generator=generator, dtype=torch.float64)
    u = torch.randn(m, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(lin.jacobian.rmatvec(u), J.T @ u, rtol=1e-10, atol=RTOL * _size(J) * _size(u))
    torch.testing.assert_close(lin.operator @ v, J.T @ (J @ v), rtol=1e-10, atol=RTOL * _size(J) ** 2 * _size(v))
    if mode == "dense":
        assert isinstance(lin.operator, NormalOperator) and isinstance(lin.jacobian, DenseOperator)
        torch.testing.assert_close(lin.jacobian_matrix, J, rtol=1e-10, atol=RTOL * _size(J))
    else:
        assert lin.jacobian_matrix is None


@pytest.mark.parametrize(("mode", "method"), MODES, ids=MODE_IDS)
def test_linearize_under_no_grad(mode, method, generator):
    # The controller linearizes inside torch.no_grad (torch.optim's convention).
    fun, x = make_problem("tanh_net_tall", generator)
    with torch.no_grad():
        lin = linearize(fun, x, mode, method)
        Bv = lin.operator @ torch.ones_like(x)
    J = torch.func.jacrev(fun)(x)
    torch.testing.assert_close(lin.gradient, J.T @ fun(x), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(Bv, J.T @ (J @ torch.ones_like(x)), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", ["tanh_net_wide", "tanh_net_tall", "rosenbrock"])
def test_dense_jacobian_matches_jacrev(name, generator):
    # The route is chosen by measurement (trustls.models.dense_jacobian); every route is exact.
    fun, x = make_problem(name, generator)
    model = GaussNewtonModel()
    for _ in range(3):  # the first two linearizations measure, the third uses the chosen route
        lin = model.linearize(fun, x, dense=True)
        torch.testing.assert_close(lin.jacobian_matrix, torch.func.jacrev(fun)(x), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "implicit"])
def test_linearization_after_a_kept_evaluation_calls_fun_no_more(dense, generator):
    # A trial evaluated with its graph kept is linearized from that graph:
    # the gradient, the products and a dense J need no second call of fun.
    from trustls.function import CountedFunction

    fun, x = make_problem("tanh_net_tall", generator)
    counted = CountedFunction(fun)
    model = GaussNewtonModel()
    evaluation = model.evaluate(counted, x, keep=True)
    lin = model.linearize(counted, evaluation, dense=dense)
    lin.operator @ torch.ones_like(x)
    assert counted.calls == 1
    J = torch.func.jacrev(fun)(x)
    torch.testing.assert_close(lin.jacobian.to_dense(), J, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(lin.gradient, J.T @ fun(x))


@pytest.mark.parametrize(("mode", "method"), MODES, ids=MODE_IDS)
@pytest.mark.parametrize("name", ["exponential_tall", "tanh_net_wide"])
def test_predicted_reduction(name, mode, method, generator):
    fun, x = make_problem(name, generator)
    lin = linearize(fun, x, mode, method)
    J = torch.func.jacrev(fun)(x)
    r = fun(x)
    for scale in [1e-3, 1.0]:
        p = scale * torch.randn(x.shape[0], generator=generator, dtype=torch.float64)
        Jp = J @ p
        expected = -float((J.T @ r) @ p + 0.5 * Jp @ Jp)
        cost = float(lin.cost)
        assert float(lin.predicted_reduction(p)) == pytest.approx(expected, rel=1e-10, abs=1e-14 * cost)
        # Same quantity as a difference of costs of the linear model: ½‖r‖² − ½‖r + Jp‖².
        assert float(lin.predicted_reduction(p)) == pytest.approx(
            cost - 0.5 * float((r + Jp) @ (r + Jp)), rel=1e-8, abs=1e-12 * cost
        )


@pytest.mark.parametrize(("mode", "method"), MODES, ids=MODE_IDS)
@pytest.mark.parametrize("name", ["exponential_tall", "tanh_net_wide"])
def test_scaled_linearization(name, mode, method, generator):
    fun, x = make_problem(name, generator)
    lin = linearize(fun, x, mode, method)
    n = x.shape[0]
    d = 0.1 + torch.rand(n, generator=generator, dtype=torch.float64)
    D = torch.diag(d)
    J = torch.func.jacrev(fun)(x)
    B = J.T @ J
    scaled = lin.scaled(d)
    assert scaled.x is lin.x  # the point stays in the original variables
    assert scaled.residual is lin.residual and scaled.cost == lin.cost
    torch.testing.assert_close(scaled.gradient, lin.gradient * d, rtol=0, atol=0)
    # B = J̃ᵀJ̃ stays the normal operator of the scaled Jacobian (scaled once for a stored J).
    assert isinstance(scaled.operator, NormalOperator) and scaled.operator.jacobian is scaled.jacobian
    assert scaled.operator.is_symmetric
    torch.testing.assert_close(scaled.operator.to_dense(), D @ B @ D, rtol=1e-10, atol=RTOL * _size(B))
    torch.testing.assert_close(scaled.jacobian.to_dense(), J @ D, rtol=1e-10, atol=RTOL * _size(J))
    u = torch.randn(J.shape[0], generator=generator, dtype=torch.float64)
    torch.testing.assert_close(scaled.jacobian.rmatvec(u), D @ J.T @ u, rtol=1e-10, atol=RTOL * _size(J) * _size(u))
    if mode == "dense":
        torch.testing.assert_close(scaled.jacobian_matrix, J @ D, rtol=1e-10, atol=RTOL * _size(J))
    else:
        assert scaled.jacobian_matrix is None
    # The model in z at z-step w equals the model in x at p = D w.
    w = torch.randn(n, generator=generator, dtype=torch.float64)
    assert float(scaled.predicted_reduction(w)) == pytest.approx(float(lin.predicted_reduction(d * w)), rel=1e-12)
    # The original is untouched.
    torch.testing.assert_close(lin.gradient, J.T @ fun(x), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize(("mode", "method"), MODES, ids=MODE_IDS)
def test_float32(mode, method):
    fun32, x32 = make_problem("tanh_net_tall", torch.Generator().manual_seed(3), dtype=torch.float32)
    fun64, x64 = make_problem("tanh_net_tall", torch.Generator().manual_seed(3))
    lin = linearize(fun32, x32, mode, method)
    exact = linearize(fun64, x64, "dense", None)
    assert lin.residual.dtype == lin.gradient.dtype == lin.operator.dtype == torch.float32
    assert lin.cost.dtype == torch.float64
    assert float(lin.cost) == pytest.approx(float(exact.cost), rel=1e-5)
    torch.testing.assert_close(lin.gradient.double(), exact.gradient, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(lin.operator.to_dense().double(), exact.operator.to_dense(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("mode", "method"), MODES, ids=MODE_IDS)
def test_cost_accumulates_in_float64(mode, method):
    # r = (4096, 2⁻¹⁰) in float32: r₀² = 2²⁴, and a float32 sum drops r₁² = 2⁻²⁰.
    r0 = torch.tensor([4096.0, 2.0**-10])

    def fun(x):
        return x - r0

    x = torch.zeros(2)
    lin = linearize(fun, x, mode, method)
    float32_sum = 0.5 * float(torch.dot(r0, r0))
    assert float32_sum == 2.0**23  # what float32 accumulation would give
    assert float(lin.cost) == 2.0**23 + 2.0**-21  # exact: ½(2²⁴ + 2⁻²⁰)


def test_unknown_products():
    with pytest.raises(ValueError, match=re.escape(f"products must be one of {METHODS}, got 'jvp'")):
        GaussNewtonModel(products="jvp")


def test_scaled_sparse_linearization_scales_the_matrix(generator):
    # A diagonal scale is folded into a sparse J's values once (JT on J's pattern),
    # so the CG products are sparse products only; the result is the same operator.
    fun, x = make_problem("exponential_tall", generator)
    J = torch.func.jacrev(fun)(x)
    sparse = SparseOperator.from_tensor(J.to_sparse())
    lin = GaussNewtonModel(jacobian=lambda _: sparse).linearize(fun, x)
    d = 0.1 + torch.rand(x.shape[0], generator=generator, dtype=torch.float64)
    scaled = lin.scaled(d)
    assert isinstance(scaled.jacobian, SparseOperator) and isinstance(scaled.operator, NormalOperator)
    assert scaled.operator.jacobian is scaled.jacobian
    D = torch.diag(d)
    torch.testing.assert_close(scaled.jacobian.to_dense(), J @ D, rtol=1e-14, atol=0)
    torch.testing.assert_close(scaled.operator.to_dense(), D @ J.T @ J @ D, rtol=1e-10, atol=RTOL * _size(J) ** 2)
    torch.testing.assert_close(scaled.gradient, lin.gradient * d, rtol=0, atol=0)
    assert torch.equal(lin.jacobian.to_dense(), J)  # the original is untouched


# --- small problems: a matrix-free linearization stores J ---------------------------------------


def _chain(n: int, m_per: int = 1):
    def fun(x):
        rows = [torch.sin(x[i]) * x[(i + 1) % n] - 0.1 * i for i in range(n)]
        return torch.stack(rows).repeat(m_per)

    return fun


def _through_a_large_intermediate(n: int, m: int, width: int):
    """m outputs of n variables through a (width,) intermediate: a small J, a large graph."""
    A = torch.randn(width, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) / n

    def fun(x):
        h = torch.tanh(A @ x)
        return (h * h).view(m, -1).sum(1) / 100 - 1.0

    return fun


@pytest.mark.parametrize(("name", "fun", "n", "dtype", "stored"), [
    ("32 variables", _chain(32), 32, torch.float64, True),
    ("float32", _chain(3, 4), 3, torch.float32, True),
    ("33 variables", _chain(33), 33, torch.float64, False),
    ("m·n above 2²⁰ entries", _chain(32, 2**15 + 1), 32, torch.float64, False),
    ("a small graph", _through_a_large_intermediate(8, 128, 128 * 8), 8, torch.float64, True),
    ("a large graph", _through_a_large_intermediate(8, 128, 128 * 4096), 8, torch.float64, False),
])  # fmt: skip
def test_small_matrix_free_linearization_stores_j(name, fun, n, dtype, stored):
    from trustls.function import CountedFunction
    from trustls.operators import JacobianOperator

    counted = CountedFunction(fun)
    x = torch.linspace(0.1, 1.0, n, dtype=torch.float64).to(dtype)
    model = GaussNewtonModel()
    lin = model.linearize(counted, model.evaluate(counted, x, keep=True))
    assert isinstance(lin.jacobian, DenseOperator if stored else JacobianOperator)
    assert lin.jacobian_matrix is None  # the dense solver's matrix is not set: only the operator changes
    assert counted.calls == 1  # J came from the kept graph, or products will
    if stored:
        torch.testing.assert_close(lin.jacobian.to_dense(), torch.func.jacrev(fun)(x))
    assert model.column_norms_are_estimated(lin) == (not stored and n > 32)


@pytest.mark.parametrize("name", ["gaussian_peaks", "osborne_2_loop", "chebyquad_trig"])
def test_stored_small_j_gives_the_matrix_free_solve(name):
    # The same CG subproblems whether the products come from a stored J or from autograd: the
    # same answer (the paths may part where rounding tips a decision, as on Chebyquad).
    from trustls import TrustRegion
    from trustls.models import gauss_newton
    from trustls.problems import styled

    problem = styled.get(name)
    fun, x0 = problem.residual, problem.x0
    stored = TrustRegion(GaussNewtonModel(), solver="cg", ftol=1e-12, xtol=1e-12, gtol=1e-12).solve(fun, x0)
    limit = gauss_newton._STORED_UP_TO
    try:
        gauss_newton._STORED_UP_TO = 0
        free = TrustRegion(GaussNewtonModel(), solver="cg", ftol=1e-12, xtol=1e-12, gtol=1e-12).solve(fun, x0)
    finally:
        gauss_newton._STORED_UP_TO = limit
    assert stored.success and free.success
    assert stored.cost == pytest.approx(free.cost, rel=1e-8, abs=1e-24)
    torch.testing.assert_close(stored.x, free.x, rtol=1e-6, atol=1e-8)


def test_a_malformed_user_jacobian_is_named():
    """Found by a hunt of the model's options: a 1-D, 3-D or hybrid sparse J failed inside torch."""
    from trustls import TrustRegion

    t = torch.linspace(0, 4, 40, dtype=torch.float64)
    y = 2.5 * torch.exp(-1.3 * t) + 0.5

    def residuals(x):
        return x[0] * torch.exp(-x[1] * t) + x[2] - y

    def jacobian(x):
        e = torch.exp(-x[1] * t)
        return torch.stack([e, -x[0] * t * e, torch.ones_like(t)], 1)

    x0 = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    cases = [
        (lambda x: jacobian(x).reshape(-1).to_sparse(), ValueError, r"got a 1-D tensor of shape \(120,\)"),
        (lambda x: jacobian(x).unsqueeze(-1), ValueError, r"got a 3-D tensor of shape \(40, 3, 1\)"),
        (lambda x: jacobian(x).to_sparse(sparse_dim=1), ValueError, r"shape \(40, 3\) with dense dimensions"),
        (lambda x: jacobian(x).to(torch.int32), TypeError, r"got torch.int32"),
    ]
    for bad, error, message in cases:
        with pytest.raises(error, match=r"jacobian must return .*" + message):
            TrustRegion(GaussNewtonModel(jacobian=bad)).solve(residuals, x0)
