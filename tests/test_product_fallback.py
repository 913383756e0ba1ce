"""Matrix-free products never fail on valid torch code: every method on residuals torch.func cannot run.

Each residual below is differentiable by classic autograd; some ``torch.func``
transform cannot run it. Every product method must give exact products,
falling back to ``"autograd"`` with one warning where ``torch.func`` fails,
and a `ProductFallback` shared by the linearizations of a solve keeps it to
one warning per solve.
"""

import re
import warnings

import pytest
import torch
from autograd_functions import OldStyleSquare, OnceSquare

from trustls import GaussNewtonModel, TrustRegion
from trustls.operators import (
    DEFAULT_PRODUCT_METHOD,
    PRODUCT_METHODS,
    ProductFallback,
    jacobian_products,
)

F64 = torch.float64
METHODS = sorted(PRODUCT_METHODS)
T = torch.linspace(0, 1, 6, dtype=F64)


def random_data(x):
    g = torch.Generator().manual_seed(0)
    return x[0] * torch.exp(-x[1] * T) - torch.randn(6, generator=g, dtype=x.dtype)


def item_branch(x):
    scale = x[0] if x[0].item() > 0 else -x[0]
    return scale * torch.exp(-x[1] * T) - 0.5


def control_flow(x):
    if x[1] > 0:  # a Python branch on a tensor's value
        return x[0] * torch.exp(-x[1] * T) - 0.5
    return x[0] * (1 - x[1] * T) - 0.5


def old_style_function(x):
    return OldStyleSquare.apply(x[0] * torch.exp(-x[1] * T)) - 0.3


def once_differentiable(x):
    return OnceSquare.apply(x[0] * torch.exp(-x[1] * T)) - 0.3


SPARSE = (torch.eye(6, 2, dtype=F64) + torch.ones(6, 2, dtype=F64)).to_sparse()


def sparse_product(x):
    return torch.sparse.mm(SPARSE, torch.exp(x)[:, None])[:, 0] - 2.0


RESIDUALS = {
    "random": random_data, "item": item_branch, "control_flow": control_flow,
    "autograd.Function": old_style_function, "once_differentiable": once_differentiable, "sparse.mm": sparse_product,
}  # fmt: skip
X = torch.tensor([1.0, 0.5], dtype=F64)


def classic_jacobian(fun, x):
    z = x.detach().requires_grad_()
    r = fun(z)
    return torch.stack([torch.autograd.grad(r, z, e, retain_graph=True)[0] for e in torch.eye(r.shape[0], dtype=F64)])


def trustls_warnings(record):
    return [w for w in record if "trustls could not" in str(w.message)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", RESIDUALS)
def test_products_are_exact_whatever_torch_func_supports(name, method):
    fun = RESIDUALS[name]
    J = classic_jacobian(fun, X)
    v = torch.tensor([0.3, -0.7], dtype=F64)
    u = torch.linspace(-1, 1, 6, dtype=F64)
    fallback = ProductFallback()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(2):  # two linearizations of one solve
            products = jacobian_products(fun, X, method, fallback=fallback)
            torch.testing.assert_close(products.jvp(v), J @ v, rtol=1e-13, atol=1e-14)
            torch.testing.assert_close(products.vjp(u), J.T @ u, rtol=1e-13, atol=1e-14)
            torch.testing.assert_close(products.jvp(v), J @ v, rtol=1e-13, atol=1e-14)
    # One warning per solve at most, naming the first reason.
    assert len(trustls_warnings(record)) == int(fallback.reason is not None or fallback.rows_reason is not None)
    if fallback.reason is not None:
        assert "use torch.func" in str(trustls_warnings(record)[0].message)


@pytest.mark.parametrize(
    ("method", "name", "message"),
    [("vjp+double-backward", "autograd.Function", "could not use torch.func for the 'vjp+double-backward' products "
      "(RuntimeError: In order to use an autograd.Function with functorch transforms"),
     ("linearize", "item", "could not use torch.func for the 'linearize' products (RuntimeError: "),
     ("vjp+jvp", "sparse.mm", "could not use torch.func for the 'vjp+jvp' products (NotImplementedError: "
      "Trying to use forward AD with _sparse_addmm")],
)  # fmt: skip
def test_torch_func_failure_warns_once_per_solve(method, name, message):
    x0 = X.clone()
    with pytest.warns(UserWarning, match=re.escape(message)) as record:
        result = TrustRegion(GaussNewtonModel(products=method), solver="cg").solve(RESIDUALS[name], x0)
    assert result.njev > 1
    assert len(trustls_warnings(record)) == 1


def widened(fun):
    """``fun`` of the first two variables and 38 more rows for 38 more variables: n = 40 > 32, so
    that the linearization stays matrix-free (up to 32 variables it stores J)."""

    def wide(x):
        return torch.cat([fun(x[:2]), 0.1 * (x[2:] - 1.0)])

    return wide


@pytest.mark.parametrize("n", [2, 40])
@pytest.mark.parametrize("name", RESIDUALS)
def test_default_products_need_no_torch_func(name, n):
    assert DEFAULT_PRODUCT_METHOD == "autograd"
    fun = RESIDUALS[name] if n == 2 else widened(RESIDUALS[name])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = TrustRegion(GaussNewtonModel(), solver="cg").solve(fun, torch.cat([X, torch.zeros(n - 2, dtype=F64)]))
    assert result.success
    messages = [str(w.message) for w in trustls_warnings(record)]
    if name == "once_differentiable" and n > 32:
        assert len(messages) == 1 and messages[0].startswith("trustls could not compute J v by double backward")
    elif name == "sparse.mm" and n <= 32:  # the stored J's rows one by one: said once, as for "lstsq"
        assert len(messages) == 1 and messages[0].startswith("trustls could not batch the Jacobian's rows")
    else:  # a stored J of a small problem comes by reverse mode here: no double backward at all
        assert messages == []


def test_autograd_products_from_a_kept_graph_call_fun_not_at_all():
    from trustls.operators import ResidualGraph

    calls = []

    def fun(x):
        calls.append(None)
        return random_data(x)

    graph = ResidualGraph.evaluate(fun, X)
    products = jacobian_products(fun, X, "autograd", graph=graph)
    J = classic_jacobian(random_data, X)
    v = torch.tensor([0.3, -0.7], dtype=F64)
    torch.testing.assert_close(products.jvp(v), J @ v, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(products.vjp(products.residual), J.T @ random_data(X), rtol=1e-13, atol=1e-14)
    assert len(calls) == 1  # the caller's evaluation only
    with pytest.raises(ValueError, match="^graph is taken by the 'autograd' method only, got method 'fresh'$"):
        jacobian_products(fun, X, "fresh", graph=graph)
