"""ResidualGraph: products from one kept autograd graph, against jacrev."""

import pytest
import torch
from autograd_functions import OnceSquare

from trustls.operators import ResidualGraph

F64 = torch.float64


def tall(x):
    t = torch.linspace(0, 2, 7, dtype=x.dtype)
    return x[0] * torch.exp(-x[1] * t) + torch.sin(x[2] * t)


def wide(x):
    return torch.stack([x[:3].prod(), (x**2).sum(), torch.atan(x[4] - x[0])])


@pytest.mark.parametrize("fun, n", [(tall, 3), (wide, 5)])
def test_products_match_jacrev(fun, n, generator):
    x = torch.randn(n, generator=generator, dtype=F64)
    x_copy = x.clone()
    J = torch.func.jacrev(fun)(x)
    graph = ResidualGraph.evaluate(fun, x)
    m = J.shape[0]
    u = torch.randn(m, generator=generator, dtype=F64)
    v = torch.randn(n, generator=generator, dtype=F64)
    U = torch.randn(4, m, generator=generator, dtype=F64)
    V = torch.randn(4, n, generator=generator, dtype=F64)
    assert graph.shape == (m, n)
    torch.testing.assert_close(graph.residual.detach(), fun(x), rtol=0, atol=0)
    torch.testing.assert_close(graph.vjp(u), J.T @ u, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(graph.jvp(v), J @ v, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(graph.vjp_batched(U), U @ J, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(graph.jvp_batched(V), V @ J.T, rtol=1e-13, atol=1e-13)
    assert torch.equal(x, x_copy) and not x.requires_grad


def test_products_under_no_grad(generator):
    x = torch.randn(3, generator=generator, dtype=F64)
    J = torch.func.jacrev(tall)(x)
    with torch.no_grad():
        graph = ResidualGraph.evaluate(tall, x)
        v = torch.ones(3, dtype=F64)
        torch.testing.assert_close(graph.jvp(v), J @ v, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(graph.vjp(graph.residual.detach()), J.T @ tall(x), rtol=1e-13, atol=1e-13)


def test_residual_independent_of_x_has_zero_jacobian():
    graph = ResidualGraph.evaluate(lambda x: torch.ones(4, dtype=x.dtype), torch.ones(2, dtype=F64))
    assert not graph.depends_on_x
    assert torch.equal(graph.vjp(torch.ones(4, dtype=F64)), torch.zeros(2, dtype=F64))
    assert torch.equal(graph.jvp(torch.ones(2, dtype=F64)), torch.zeros(4, dtype=F64))
    assert torch.equal(graph.vjp_batched(torch.eye(4, dtype=F64)), torch.zeros(4, 2, dtype=F64))
    assert torch.equal(graph.jvp_batched(torch.eye(2, dtype=F64)), torch.zeros(2, 4, dtype=F64))


def test_once_differentiable_backward_refuses_jvp():
    # Double backward would silently drop the once-differentiable path: it must raise instead.
    graph = ResidualGraph.evaluate(lambda x: OnceSquare.apply(torch.exp(x)), torch.ones(2, dtype=F64))
    with pytest.raises(RuntimeError, match="^the backward of fun is not differentiable"):
        graph.jvp(torch.ones(2, dtype=F64))
    torch.testing.assert_close(graph.vjp(torch.ones(2, dtype=F64)), 2 * torch.exp(torch.ones(2, dtype=F64)) ** 2)


def test_float32_smoke(generator):
    x = torch.randn(3, generator=generator)
    graph = ResidualGraph.evaluate(tall, x)
    J = torch.func.jacrev(tall)(x)
    assert graph.jvp_batched(torch.eye(3)).dtype == torch.float32
    torch.testing.assert_close(graph.jvp_batched(torch.eye(3)).T, J, rtol=1e-5, atol=1e-5)


# --- measuring the graph (saved_elements) ------------------------------------------------------


def modifies_a_saved_tensor(x):
    y = x * 2
    r = y.sin()  # sin saves y
    y.add_(1.0)  # so its backward would read the wrong y
    return r


def test_measuring_keeps_autograd_in_place_check():
    x = torch.tensor([0.3, 0.7], dtype=F64)
    for measure in (False, True):
        graph = ResidualGraph.evaluate(modifies_a_saved_tensor, x, measure=measure)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            graph.vjp(torch.ones(2, dtype=F64))


def test_measuring_changes_no_product(generator):
    x = torch.randn(3, generator=generator, dtype=F64)
    plain, measured = ResidualGraph.evaluate(tall, x), ResidualGraph.evaluate(tall, x, measure=True)
    assert plain.saved_elements is None and measured.saved_elements > 0
    eye = torch.eye(3, dtype=F64)
    assert torch.equal(plain.jvp_batched(eye), measured.jvp_batched(eye))
    assert torch.equal(plain.vjp(plain.residual.detach()), measured.vjp(measured.residual.detach()))


def test_the_callers_hooks_take_precedence():
    packed = []

    def pack(tensor):
        packed.append(tensor.numel())
        return tensor

    x = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        graph = ResidualGraph.evaluate(tall, x, measure=True)
    assert graph.saved_elements is None and packed  # not measured: the caller's hooks ran
    torch.testing.assert_close(graph.vjp_batched(torch.eye(7, dtype=F64)), torch.func.jacrev(tall)(x))


def gradient_of_a_potential(x):
    """A residual that differentiates inside itself with torch.func (an equilibrium condition)."""
    potential = lambda q: ((q - x) ** 2).sum() + x[0] * q.pow(4).sum()  # noqa: E731
    return torch.func.grad(potential)(torch.tensor([0.5, 0.7], dtype=x.dtype)) - torch.tensor([0.3, -0.2], dtype=x.dtype)


def test_a_function_that_refuses_saved_tensor_hooks_is_evaluated_without_them():
    # torch.func.grad raises under saved-tensor hooks ("don't yet support saved tensor hooks"): the
    # measured evaluation calls fun again without them and measures nothing.
    x = torch.tensor([0.1, 1.0], dtype=F64)
    graph = ResidualGraph.evaluate(gradient_of_a_potential, x, measure=True)
    assert graph.saved_elements is None
    torch.testing.assert_close(graph.vjp(torch.tensor([1.0, 0.0], dtype=F64)),
                               torch.func.jacrev(gradient_of_a_potential)(x)[0])


@pytest.mark.parametrize("solver", ["cg", "lstsq"])
def test_torch_func_inside_fun_solves_and_counts_its_calls(solver):
    """Found by a hunt: every solve of a residual that calls torch.func.grad raised torch's "torch.func.{grad,
    vjp, jacrev, hessian} don't yet support saved tensor hooks" from the measured first evaluation. It
    solves now; the first evaluation costs two calls (counted) and later ones one."""
    from trustls import GaussNewtonModel, TrustRegion

    calls = []

    def fun(x):
        calls.append(1)
        return gradient_of_a_potential(x)

    result = TrustRegion(GaussNewtonModel(), solver=solver).solve(fun, torch.tensor([0.1, 1.0], dtype=F64))
    assert result.success and result.cost < 1e-25
    assert result.nfev == len(calls) == result.njev + 1  # one retry at x0, then one call per evaluation
