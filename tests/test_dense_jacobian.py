"""DenseJacobian: every route equals jacrev, the rule, the fallback and its one warning, call counts."""

import re
import warnings

import pytest
import torch
from autograd_functions import OnceSquare

from trustls import GaussNewtonModel, TrustRegion
from trustls.models.dense_jacobian import ROUTES, DenseJacobian
from trustls.operators import ResidualGraph
from trustls.problems import styled

F64 = torch.float64
STYLED = styled.names()
T = torch.linspace(0, 1, 6, dtype=F64)


def reference(fun, x):
    return torch.func.jacrev(fun)(x)


def assert_jacobian(J, expected):
    scale = float(expected.abs().max()) or 1.0
    torch.testing.assert_close(J, expected, rtol=1e-12, atol=1e-13 * scale)


@pytest.mark.parametrize("route", [*ROUTES, None])
@pytest.mark.parametrize("name", STYLED)
def test_every_route_equals_jacrev_on_styled_problems(name, route):
    problem = styled.get(name)
    expected = reference(problem.residual, problem.x0)
    jacobian = DenseJacobian(route)
    for _ in range(2 if route is None else 1):
        result = jacobian(problem.residual, problem.x0)
        assert_jacobian(result.matrix, expected)
        assert result.calls == 1 and result.route in ROUTES


def counted(fun):
    calls = []

    def wrapper(x):
        calls.append(None)
        return fun(x)

    return wrapper, calls


@pytest.mark.parametrize("route", [*ROUTES, None])
def test_call_counts_are_exact(route):
    problem = styled.get("osborne_1_loop")
    fun, calls = counted(problem.residual)
    jacobian = DenseJacobian(route)
    for k in range(1, 4):
        assert jacobian(fun, problem.x0).calls == 1
        assert len(calls) == k
    # From a graph the caller kept (an accepted trial's evaluation): no call at all.
    graph = ResidualGraph.evaluate(fun, problem.x0)
    result = jacobian(None, problem.x0, graph)
    assert result.calls == 0 and len(calls) == 4
    assert_jacobian(result.matrix, reference(problem.residual, problem.x0))


@pytest.mark.parametrize(
    ("m", "n", "route"),
    [(3, 5, "reverse-batched"), (40, 3, "reverse-batched"), (64, 3, "reverse-batched"), (65, 3, "forward-batched"),
     (200, 3, "forward-batched"), (2, 40, "reverse-batched")],
)  # fmt: skip
def test_rule_is_the_shape_and_reproducible(m, n, route, generator):
    # Reverse mode unless it needs more than 16 times forward mode's n + 1 passes; the same
    # route at every call, so that a solve is reproducible bit for bit.
    A = torch.randn(m, n, generator=generator, dtype=F64)

    def fun(x):
        return torch.tanh(A @ x)

    jacobian = DenseJacobian()
    results = [jacobian(fun, torch.full((n,), 0.1, dtype=F64)) for _ in range(3)]
    assert [r.route for r in results] == [route] * 3
    assert all(torch.equal(r.matrix, results[0].matrix) for r in results)


def test_unknown_route():
    with pytest.raises(ValueError, match=re.escape("route must be one of ['reverse-batched', 'reverse-loop', "
                                                   "'forward-batched', 'forward-loop'] or None, got 'jacfwd'")):
        DenseJacobian("jacfwd")


def test_zero_jacobian_and_float32():
    result = DenseJacobian()(lambda x: torch.ones(3, dtype=x.dtype), torch.ones(2, dtype=F64))
    assert torch.equal(result.matrix, torch.zeros(3, 2, dtype=F64))
    x = torch.tensor([0.5, -1.0])
    result = DenseJacobian()(styled.get("rosenbrock_stack").residual, x)
    assert result.matrix.dtype == torch.float32
    torch.testing.assert_close(result.matrix, reference(styled.get("rosenbrock_stack").residual, x))


# --- residuals that torch.func cannot vmap, and the fallback --------------------------------------


def random_data(x):
    # Data drawn inside fun: jacfwd (a vmapped call of fun) raises here; no route of ours does.
    g = torch.Generator().manual_seed(0)
    return x[0] * torch.exp(-x[1] * T) - torch.randn(6, generator=g, dtype=x.dtype)


def item_branch(x):
    scale = x[0] if x[0].item() > 0 else -x[0]
    return scale * torch.exp(-x[1] * T) - 0.5


SPARSE = (torch.eye(6, 2, dtype=F64) + torch.ones(6, 2, dtype=F64)).to_sparse()


def sparse_product(x):
    # No batching rule for the backward of a sparse product: rows and columns one by one.
    return torch.sparse.mm(SPARSE, torch.exp(x)[:, None])[:, 0] - 2.0


class DataDependentBackward(torch.autograd.Function):
    """A square whose backward branches on a value: it cannot run under vmap."""

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad if bool(grad.abs().sum() > 0) else torch.zeros_like(x)


def custom_function(x):
    return DataDependentBackward.apply(x[0] * torch.exp(-x[1] * T)) - 0.3


def once_differentiable(x):
    return OnceSquare.apply(x[0] * torch.exp(-x[1] * T)) - 0.3


def classic_jacobian(fun, x):
    z = x.detach().requires_grad_()
    r = fun(z)
    return torch.stack([torch.autograd.grad(r, z, e, retain_graph=True)[0] for e in torch.eye(r.shape[0], dtype=F64)])


def solve(fun):
    x0 = torch.tensor([1.0, 0.5], dtype=F64)
    return TrustRegion(GaussNewtonModel(), solver="lstsq").solve(fun, x0)


@pytest.mark.parametrize("fun", [random_data, item_branch], ids=["random", "item"])
def test_random_ops_and_item_need_no_fallback(fun):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        result = solve(fun)
        for _ in range(3):
            J = DenseJacobian()(fun, result.x).matrix
    assert result.success
    assert_jacobian(J, classic_jacobian(fun, result.x))


@pytest.mark.parametrize(
    ("fun", "message"),
    [(sparse_product, "could not batch the Jacobian's rows or columns (RuntimeError: expand is unsupported"),
     (custom_function, "could not batch the Jacobian's rows or columns (RuntimeError: ")],
    ids=["sparse.mm", "autograd.Function"],
)  # fmt: skip
def test_fallback_warns_once_per_solve(fun, message):
    with pytest.warns(UserWarning, match=re.escape(message)) as record:
        result = solve(fun)
    assert len([w for w in record if "trustls could not" in str(w.message)]) == 1
    assert result.nfev > 1 and result.njev > 1
    jacobian = DenseJacobian()
    with pytest.warns(UserWarning, match=re.escape(message)) as record:
        for _ in range(3):
            J = jacobian(fun, result.x).matrix
            assert_jacobian(J, classic_jacobian(fun, result.x))
    assert len([w for w in record if "trustls could not" in str(w.message)]) == 1
    assert jacobian.unavailable


class SparseModel:
    """A residual written as a method: a new bound method object at every attribute access."""

    def residual(self, x):
        return sparse_product(x)


def test_bound_method_residual_warns_once_per_solve():
    model, x0 = SparseModel(), torch.tensor([1.0, 0.5], dtype=F64)
    with pytest.warns(UserWarning, match="could not batch") as record:
        result = TrustRegion(GaussNewtonModel(), solver="lstsq").solve(model.residual, x0)
    assert result.njev > 1
    assert len([w for w in record if "trustls could not" in str(w.message)]) == 1


def test_once_differentiable_backward_never_gives_a_wrong_jacobian():
    # Forward mode (double backward) cannot run; reverse mode can: at most one warning, and J
    # exact either way.
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = solve(once_differentiable)
        jacobian = DenseJacobian()
        for _ in range(3):
            expected = classic_jacobian(once_differentiable, result.x)
            assert_jacobian(jacobian(once_differentiable, result.x).matrix, expected)
    assert result.success
    messages = [str(w.message) for w in record if "trustls could not" in str(w.message)]
    assert len(messages) <= 2 and all("could not use forward mode" in message for message in messages)


def test_forced_route_that_cannot_run_falls_back():
    jacobian = DenseJacobian("forward-batched")
    with pytest.warns(UserWarning, match="could not use forward mode"):
        result = jacobian(once_differentiable, torch.tensor([1.0, 0.5], dtype=F64))
    assert result.route.startswith("reverse")
    assert_jacobian(result.matrix, classic_jacobian(once_differentiable, torch.tensor([1.0, 0.5], dtype=F64)))


def cdist_residual(x):
    # cdist's backward (this compute mode) has no derivative of its own: no double backward, so no
    # forward mode, and prepare_jvp cannot tell (the backward is recorded, not marked).
    points = torch.linspace(0, 1, 12, dtype=x.dtype).reshape(4, 3)
    return torch.cdist(points * x[:3], points + x[3], compute_mode="donot_use_mm_for_euclid_dist").reshape(-1)


@pytest.mark.parametrize("route", ["forward-batched", "forward-loop"])
def test_forward_mode_that_fails_in_its_passes_falls_back_to_reverse(route):
    x = torch.tensor([1.0, 0.8, 1.2, 0.1], dtype=F64)
    jacobian = DenseJacobian(route)
    with pytest.warns(UserWarning, match="could not"):
        result = jacobian(cdist_residual, x)
    assert result.route.startswith("reverse")
    assert_jacobian(result.matrix, classic_jacobian(cdist_residual, x))
    assert jacobian.family(16, 4) == "reverse"  # and the solve's later points go straight to reverse mode


def test_a_large_graph_takes_forward_mode_and_a_failing_one_reverse():
    # 64 outputs through a large intermediate: reverse mode's 64-row batch would hold more than
    # BATCH_ELEMENTS saved elements, so forward mode's 5 products are taken, unless they fail.
    from trustls.models.dense_jacobian import BATCH_ELEMENTS
    from trustls.operators import ResidualGraph

    A = torch.randn(200_000, 4, dtype=F64, generator=torch.Generator().manual_seed(0))

    def heavy(x):
        return torch.tanh(A @ x).reshape(64, -1).sum(1)

    x = torch.tensor([0.1, -0.2, 0.3, 0.05], dtype=F64)
    graph = ResidualGraph.evaluate(heavy, x, measure=True)
    assert 64 * graph.saved_elements > BATCH_ELEMENTS
    jacobian = DenseJacobian()
    jacobian.saved_elements = graph.saved_elements
    result = jacobian(heavy, x, graph=graph)
    assert result.route == "forward-batched"
    assert_jacobian(result.matrix, classic_jacobian(heavy, x))


def test_a_wrong_batching_rule_is_caught_by_one_single_pass():
    # torch's vmapped backward of this cdist gives a wrong J; one single VJP exposes it.
    x = torch.tensor([1.0, 0.8, 1.2, 0.1], dtype=F64)
    jacobian = DenseJacobian("reverse-batched")
    with pytest.warns(UserWarning, match="disagreed with a single pass"):
        result = jacobian(cdist_residual, x)
    assert result.route == "reverse-loop"
    assert_jacobian(result.matrix, classic_jacobian(cdist_residual, x))
    # A correct batching rule passes the check: no warning, the batched route kept.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert DenseJacobian()(random_data, torch.tensor([1.0, 0.5], dtype=F64)).route == "reverse-batched"


def test_a_column_of_rounding_noise_passes_the_single_pass_check():
    """Found by a hunt: a parameter that cancels out (a normalized profile, p[1] * e / mean(p[1] * e)) has a
    column of pure rounding noise (norms 9.2, 1.5e-15, 6.0, 6.3) that the batched and the single pass round
    differently (2.3e-15 against -6.0e-15); the check blamed "a wrong batching rule in torch" and left the
    batched route, though the batched J was bitwise the loop's."""
    t = torch.linspace(0, 4, 40, dtype=F64)
    y = 2.0 * torch.exp(-1.3 * t) / torch.exp(-1.3 * t).mean() + 0.3

    def fun(p):
        shape = p[1] * torch.exp(-p[2] * t)
        return p[0] * shape / shape.mean() + p[3] - y

    x = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = DenseJacobian()(fun, x)
    assert result.route == "reverse-batched"
    assert_jacobian(result.matrix, classic_jacobian(fun, x))
