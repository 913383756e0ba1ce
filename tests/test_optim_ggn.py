"""The optimizer's generalized Gauss-Newton model, end to end.

1. Through the optimizer's own closure products (`ClosureModel`, lean and
   full double-backward graphs), the curvature product on small networks
   equals the dense Jᵀ H_L J, with J from ``torch.func.jacrev`` and H_L the
   Hessian of the torch loss in the outputs (float64, 1e-10 relative); the
   gradient and the cost equal autograd's and torch's.
2. Full-batch logistic regression (binary with ``bce_with_logits``,
   multinomial with ``cross_entropy``) reaches the optimum of scikit-learn's
   ``LogisticRegression`` (lbfgs, C = 10¹², so the penalty is negligible) to
   1e-8 in the mean loss, with and without an intercept, both through
   ``TrustRegion.solve`` with ``"cg"`` and through the optimizer with
   ``max_trials=None``, which then stops on a convergence test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trustls import GaussNewtonModel, Status, SteihaugCG, TrustRegion
from trustls._closure import flatten, unflatten
from trustls._closure_model import ClosureContext, ClosureModel
from trustls.optim import TrustRegionOptimizer

F64 = torch.float64
SAMPLES, CLASSES = 9, 3


def _network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Tanh(), torch.nn.Linear(4, CLASSES)).to(F64)


def _problem(name: str):
    """Inputs, targets and the torch loss of the outputs, with targets made as users make them."""
    generator = torch.Generator().manual_seed(3)
    X = torch.randn(SAMPLES, 2, generator=generator, dtype=F64)
    if name == "cross_entropy":
        y = torch.randint(0, CLASSES, (SAMPLES,), generator=generator)
        return X, y, lambda z: F.cross_entropy(z, y)
    if name == "bce_with_logits":
        y = torch.rand(SAMPLES, CLASSES, generator=generator, dtype=F64)
        return X, y, lambda z: F.binary_cross_entropy_with_logits(z, y)
    if name == "poisson_nll":
        y = torch.randint(0, 5, (SAMPLES, CLASSES), generator=generator).to(F64)
        return X, y, lambda z: F.poisson_nll_loss(z, y)
    if name == "gaussian_nll":
        y = torch.randn(SAMPLES, CLASSES, generator=generator, dtype=F64)
        return X, y, lambda z: 0.5 * ((z - y) ** 2).mean()
    y = torch.randn(SAMPLES, CLASSES, generator=generator, dtype=F64)
    return X, y, lambda z: 0.5 * ((z - y) ** 2).sum()


@pytest.mark.parametrize("lean", [True, False])
@pytest.mark.parametrize("name", ["cross_entropy", "bce_with_logits", "poisson_nll", "gaussian_nll", "linear"])
def test_closure_products_equal_dense_generalized_gauss_newton(name, lean):
    net, (X, y, torch_loss) = _network(), _problem(name)
    params = list(net.parameters())
    x = flatten(params)

    def outputs_of(theta):
        weights = dict(zip([k for k, _ in net.named_parameters()], unflatten(theta, params)))
        return torch.func.functional_call(net, weights, (X,))

    J = torch.func.jacrev(lambda theta: outputs_of(theta).reshape(-1))(x)
    z = outputs_of(x).detach()
    H = torch.func.hessian(lambda flat: torch_loss(flat.reshape(z.shape)))(z.reshape(-1))
    dense = J.T @ H @ J

    model = ClosureModel(GaussNewtonModel(loss=name))
    with torch.enable_grad():
        outputs = net(X)
    if name == "linear":  # least squares takes the residual vector
        outputs, targets = (outputs - y).reshape(-1), None
    else:
        targets = y
    loss, products = model.linearize_outputs(outputs, targets, params, F64, lean=lean)
    lin = model.assemble(x, loss, products, ClosureContext(tuple(outputs.shape)), None)
    eye = torch.eye(x.shape[0], dtype=F64)
    product = torch.stack([lin.operator.matvec(e) for e in eye], 1)
    scale = dense.abs().max()
    torch.testing.assert_close(product / scale, dense / scale, rtol=0, atol=1e-10)

    with torch.enable_grad():
        value = torch_loss(net(X))
        gradient = flatten(torch.autograd.grad(value, params))
    torch.testing.assert_close(lin.gradient, gradient, rtol=1e-10, atol=1e-12)
    assert float(lin.cost) == pytest.approx(float(value.detach()), rel=1e-12)


# -- logistic regression against scikit-learn --------------------------------


def _classification(classes: int):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(240, 3))
    W = rng.normal(size=(3, classes))
    logits = X @ W + rng.normal(size=classes) + 1.5 * rng.normal(size=(240, classes))  # overlapping classes
    y = logits.argmax(1)
    return X, y


def _sklearn_loss(X, y, classes, fit_intercept):
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=1e12, tol=1e-14, max_iter=100_000, fit_intercept=fit_intercept).fit(X, y)
    z = X @ clf.coef_.T + clf.intercept_
    if classes == 2:
        z = z[:, 0]
        return float(np.mean(np.logaddexp(0, z) - y * z))
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-np.mean(logp[np.arange(len(y)), y]))


def _torch_problem(X, y, classes):
    Xt = torch.tensor(X, dtype=F64)
    if classes == 2:
        return Xt, torch.tensor(y, dtype=F64), "bce_with_logits", 1
    return Xt, torch.tensor(y), "cross_entropy", classes


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("classes", [2, 3])
def test_logistic_regression_matches_sklearn_with_solve(classes, fit_intercept):
    X, y = _classification(classes)
    expected = _sklearn_loss(X, y, classes, fit_intercept)
    Xt, yt, loss, outputs = _torch_problem(X, y, classes)
    d = Xt.shape[1]

    def fun(x):
        W = x[: d * outputs].reshape(d, outputs)
        z = Xt @ W + (x[d * outputs :] if fit_intercept else 0.0)
        return (z[:, 0] if classes == 2 else z), yt

    x0 = torch.zeros(d * outputs + (outputs if fit_intercept else 0), dtype=F64)
    result = TrustRegion(GaussNewtonModel(loss=loss), solver="cg", gtol=1e-12).solve(fun, x0)
    assert result.success
    assert result.cost == pytest.approx(expected, abs=1e-8)
    assert result.cost <= expected + 1e-12


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("classes", [2, 3])
def test_logistic_regression_matches_sklearn_with_the_optimizer(classes, fit_intercept):
    X, y = _classification(classes)
    expected = _sklearn_loss(X, y, classes, fit_intercept)
    Xt, yt, loss, outputs = _torch_problem(X, y, classes)
    net = torch.nn.Linear(Xt.shape[1], outputs, bias=fit_intercept).to(F64)
    torch.nn.init.zeros_(net.weight)
    if fit_intercept:  # from zero, not from torch's unseeded default initialization
        torch.nn.init.zeros_(net.bias)
    method = TrustRegion(GaussNewtonModel(loss=loss), solver=SteihaugCG(), gtol=1e-12)
    opt = TrustRegionOptimizer(net.parameters(), method, max_trials=None)

    def closure():
        z = net(Xt)
        return (z[:, 0] if classes == 2 else z), yt

    for _ in range(50):
        opt.step(closure)
        if opt.status is not None:
            break
    assert opt.status in (Status.GTOL, Status.FTOL, Status.XTOL, Status.FTOL_XTOL, Status.NOISE_FLOOR)
    with torch.no_grad():
        z, targets = closure()
        cost = float(F.binary_cross_entropy_with_logits(z, targets) if classes == 2 else F.cross_entropy(z, targets))
    assert cost == pytest.approx(expected, abs=1e-8)
    assert cost <= expected + 1e-12


def test_robust_loss_trains_through_the_optimizer():
    """scipy's robust losses take the residual vector, as least squares does."""
    net, (X, y, _) = _network(), _problem("linear")
    y = y.clone()
    y[0, 0] += 50.0  # an outlier
    model = GaussNewtonModel(loss="huber", f_scale=0.5)
    opt = TrustRegionOptimizer(net.parameters(), TrustRegion(model, solver=SteihaugCG(max_iter=10)))
    costs = [opt.step(lambda: (net(X) - y).reshape(-1)) for _ in range(15)]
    with torch.no_grad():
        final = float(model.loss.value((net(X) - y).reshape(-1)))
    assert final < costs[0] and all(b <= a for a, b in zip(costs, costs[1:]))
