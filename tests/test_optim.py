"""TrustRegionOptimizer: agreement with TrustRegion.solve, checkpoints, mini-batches, products, input errors."""

import doctest
import math

import pytest
import torch

import trustls._closure
import trustls.optim
from trustls import GaussNewtonModel, SteihaugCG, TrustRegion
from trustls._closure import flatten, parameter_products, unflatten
from trustls.scaling import JacobiScale
from trustls.optim import TrustRegionOptimizer


class Net(torch.nn.Module):
    """Parameters of several shapes, a 0-d one included, and a frozen one."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.hidden = torch.nn.Linear(3, 6).to(dtype)
        self.out = torch.nn.Parameter(torch.randn(2, 6, generator=generator, dtype=dtype) / 3)
        self.gain = torch.nn.Parameter(torch.tensor(0.8, dtype=dtype))
        self.frozen = torch.nn.Parameter(torch.tensor([0.1, -0.2], dtype=dtype), requires_grad=False)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.randn(6, 3, generator=generator, dtype=dtype) / 2)
            self.hidden.bias.copy_(torch.randn(6, generator=generator, dtype=dtype) / 2)

    def forward(self, X):
        return self.gain * torch.tanh(self.hidden(X)) @ self.out.T + self.frozen


def data(m=40, dtype=torch.float64, seed=1):
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(m, 3, generator=generator, dtype=dtype)
    return X, torch.stack([torch.sin(X[:, 0]), X[:, 1] * X[:, 2]], dim=1)


def method(**options):
    return TrustRegion(GaussNewtonModel(), **{"solver": SteihaugCG(max_iter=5), "x_scale": 1.0, **options})


def trainable(net):
    return [p for p in net.parameters() if p.requires_grad]


# -- agreement with TrustRegion.solve ---------------------------------------


@pytest.mark.parametrize("max_trials", [None, 1])
@pytest.mark.parametrize("x_scale", [1.0, "jac"])
@pytest.mark.parametrize("solver", [SteihaugCG(max_iter=5), SteihaugCG()])
def test_full_batch_iterates_equal_solve(solver, x_scale, max_trials):
    net, (X, Y) = Net(), data()
    params = trainable(net)
    x0 = flatten(params).clone()

    def fun(x):  # the same residual as a function of the flattened parameters
        out, gain, W, b = unflatten(x, params)
        return (gain * torch.tanh(X @ W.T + b) @ out.T + net.frozen - Y).reshape(-1)

    infos = []
    TrustRegion(GaussNewtonModel(), solver=solver, x_scale=x_scale, callback=infos.append, max_nfev=25).solve(fun, x0)
    expected = [info.x for info in infos if info.accepted]
    opt = TrustRegionOptimizer(net.parameters(), method(solver=solver, x_scale=x_scale), max_trials=max_trials)
    iterates = []
    while len(iterates) < min(len(expected), 12):
        opt.step(lambda: (net(X) - Y).reshape(-1))
        if opt.last.accepted:
            iterates.append(flatten(params))
    assert len(iterates) >= 8
    for got, want in zip(iterates, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert torch.equal(net.frozen, torch.tensor([0.1, -0.2], dtype=torch.float64))


def test_optimizer_keeps_the_largest_gradient_norm_as_the_forcing_reference():
    # CG's forcing term measures ‖g‖ against the largest ‖g‖ of the run (as in
    # TrustRegion.solve), so the optimizer carries it from step to step.
    net, (X, Y) = Net(), data()
    params = trainable(net)
    opt = TrustRegionOptimizer(net.parameters(), method(x_scale=1.0))
    norms = []
    for _ in range(6):
        loss = 0.5 * (net(X) - Y).square().sum()
        norms.append(float(torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))))
        opt.step(lambda: (net(X) - Y).reshape(-1))
        reference = opt.state[params[0]]["solver_state"]
        assert reference == pytest.approx(max(norms), rel=1e-10)
    assert min(norms) < 0.5 * max(norms)  # the reference is not merely the latest norm


def test_step_reports_cost_and_statistics_and_calls_callback():
    net, (X, Y) = Net(), data()
    records = []
    opt = TrustRegionOptimizer(net.parameters(), method(callback=records.append))
    for _ in range(6):
        before = flatten(trainable(net))
        with torch.no_grad():
            expected_cost = 0.5 * float(((net(X) - Y) ** 2).sum())
        cost = opt.step(lambda: (net(X) - Y).reshape(-1))
        info = opt.last
        assert records[-1] is info
        assert cost == info.previous_cost == pytest.approx(expected_cost, rel=1e-14)
        assert info.step_norm <= info.radius * (1 + 1e-12) and 1 <= info.inner_iterations <= 5
        assert info.products == info.inner_iterations and info.reason in ("max_iter", "boundary", "converged")
        after = flatten(trainable(net))
        if info.accepted:
            assert info.trial_cost == info.cost < info.previous_cost
            torch.testing.assert_close(after, info.x, rtol=0, atol=0)
        else:
            assert torch.equal(after, before)
    state = opt.state[next(net.parameters())]
    assert state["nit"] == 6 and state["nfev"] == 12 and state["njev"] == 6
    assert state["radius"] == opt.last.next_radius


def test_rejected_and_non_finite_trials_restore_the_parameters_exactly():
    w = torch.nn.Parameter(torch.tensor([4.0, 9.0], dtype=torch.float64))
    target = torch.tensor([1.0, 1.0], dtype=torch.float64)
    # A huge first radius sends w negative: sqrt is NaN there, the step is rejected.
    opt = TrustRegionOptimizer([w], method(solver="cg", initial_radius=1e3))
    opt.step(lambda: torch.sqrt(w) - target)
    assert not opt.last.accepted and opt.last.trial_cost == math.inf
    assert torch.equal(w.detach(), torch.tensor([4.0, 9.0], dtype=torch.float64))
    assert opt.last.next_radius == pytest.approx(0.25 * opt.last.step_norm)
    for _ in range(30):
        opt.step(lambda: torch.sqrt(w) - target)
    torch.testing.assert_close(w.detach(), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-8)


# -- checkpoints -------------------------------------------------------------


@pytest.mark.parametrize("solver,x_scale", [(SteihaugCG(max_iter=4), 1.0), (SteihaugCG(max_iter=4), "jac")])
def test_state_dict_round_trip_resumes_identically(solver, x_scale):
    X, Y = data(m=64)
    batches = [(X[i : i + 16], Y[i : i + 16]) for i in range(0, 64, 16)] * 3

    def train(net, opt, steps):
        for xb, yb in steps:
            opt.step(lambda: (net(xb) - yb).reshape(-1))

    make = lambda net: TrustRegionOptimizer(net.parameters(), method(solver=solver, x_scale=x_scale))  # noqa: E731
    net = Net()
    opt = make(net)
    train(net, opt, batches)

    resumed_net = Net()
    resumed_opt = make(resumed_net)
    train(resumed_net, resumed_opt, batches[:5])
    checkpoint = {"net": resumed_net.state_dict(), "opt": resumed_opt.state_dict()}
    state = checkpoint["opt"]["state"][0]
    assert {"radius", "scale", "nit", "nfev", "njev", "inner_iterations", "products", "solver_state",
            "accepted_steps"} <= state.keys()
    fresh_net = Net()
    fresh_net.load_state_dict(checkpoint["net"])
    fresh_opt = make(fresh_net)
    fresh_opt.load_state_dict(checkpoint["opt"])
    train(fresh_net, fresh_opt, batches[5:])
    for a, b in zip(net.parameters(), fresh_net.parameters()):
        assert torch.equal(a, b)
    assert fresh_opt.state_dict()["state"][0]["radius"] == opt.state_dict()["state"][0]["radius"]


# -- mini-batches, modules, devices ------------------------------------------


def test_batchnorm_and_dropout_in_train_mode():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                              torch.nn.Dropout(0.1), torch.nn.Linear(8, 2))
    X, Y = data(m=64, dtype=torch.float32)
    opt = TrustRegionOptimizer(net.parameters(), method(solver=SteihaugCG(max_iter=10)))
    running_mean = net[1].running_mean.clone()
    costs = [opt.step(lambda: (net(X) - Y).reshape(-1)) for _ in range(20)]
    assert all(math.isfinite(c) for c in costs) and min(costs[-5:]) < costs[0]
    assert not torch.equal(net[1].running_mean, running_mean)


def test_float32_mlp_training_on_device(device):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).to(device)
    X, Y = (t.to(device) for t in data(m=128, dtype=torch.float32))
    opt = TrustRegionOptimizer(net.parameters(), method(solver=SteihaugCG(max_iter=10)))
    costs = []
    for epoch in range(5):
        for i in range(0, 128, 32):
            xb, yb = X[i : i + 32], Y[i : i + 32]
            costs.append(opt.step(lambda: (net(xb) - yb).reshape(-1)))
    assert costs[-1] < 0.5 * costs[0]
    assert all(p.device.type == device.type and p.grad is None for p in net.parameters())


def test_parameter_products_match_the_dense_jacobian(device):
    net, (X, Y) = Net(), data(m=7)
    net, X, Y = net.to(device), X.to(device), Y.to(device)
    params = trainable(net)

    def fun(x):
        out, gain, W, b = unflatten(x, params)
        return (gain * torch.tanh(X @ W.T + b) @ out.T + net.frozen - Y).reshape(-1)

    J = torch.func.jacrev(fun)(flatten(params))
    with torch.enable_grad():
        products = parameter_products((net(X) - Y).reshape(-1), params)
    eye_n = torch.eye(J.shape[1], dtype=J.dtype, device=device)
    eye_m = torch.eye(J.shape[0], dtype=J.dtype, device=device)
    torch.testing.assert_close(torch.stack([products.jvp(e) for e in eye_n], dim=1), J)
    torch.testing.assert_close(torch.stack([products.vjp(e) for e in eye_m]), J)


def test_unused_parameter_has_zero_jacobian_block():
    used = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    unused = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        products = parameter_products(used**2, [used, unused])
    v = torch.tensor([1.0, 1.0, 5.0], dtype=torch.float64)
    torch.testing.assert_close(products.jvp(v), torch.tensor([2.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(products.vjp(torch.ones(2, dtype=torch.float64)),
                               torch.tensor([2.0, 4.0, 0.0], dtype=torch.float64))


# -- input errors ------------------------------------------------------------


def test_closure_output_errors():
    net, (X, Y) = Net(), data()
    opt = TrustRegionOptimizer(net.parameters(), method())
    with pytest.raises(ValueError, match=r"got a 0-d tensor.*docs/training\.md"):
        opt.step(lambda: 0.5 * ((net(X) - Y) ** 2).sum())
    with pytest.raises(ValueError, match=r"1-D residual vector, got shape \(40, 2\)"):
        opt.step(lambda: net(X) - Y)
    with pytest.raises(TypeError, match="closure must return the residual vector as a torch.Tensor, got float"):
        opt.step(lambda: 1.0)
    with pytest.raises(TypeError, match="closure must be callable"):
        opt.step(None)
    with pytest.raises(TypeError, match=r"parameters' dtype torch.float64, got torch.float32"):
        opt.step(lambda: (net(X) - Y).reshape(-1).float())
    with pytest.raises(ValueError, match="finite outputs at the current parameters"):
        opt.step(lambda: (net(X) - Y).reshape(-1) / 0.0)
    with pytest.raises(ValueError, match="depend on the parameters through autograd"):
        opt.step(lambda: (net(X) - Y).reshape(-1).detach())
    calls = []

    def changing():  # a closure that draws a new batch on every call
        calls.append(None)
        return (net(X[: 40 - len(calls)]) - Y[: 40 - len(calls)]).reshape(-1)

    before = flatten(trainable(net))
    with pytest.raises(ValueError, match=r"same shape and dtype every time it is called within a step.*got \(76,\) torch.float64 after \(78,\)"):
        opt.step(changing)
    assert torch.equal(flatten(trainable(net)), before)
    assert opt.state[next(net.parameters())] == {}


def test_parameter_and_method_errors():
    net = Net()
    with pytest.raises(ValueError, match="empty parameter list"):
        TrustRegionOptimizer([], method())
    with pytest.raises(ValueError, match="empty parameter list"):
        TrustRegionOptimizer([{"params": []}], method())
    with pytest.raises(ValueError, match="same tensor twice"):
        TrustRegionOptimizer([net.out, net.gain, net.out], method())
    with pytest.raises(ValueError, match="single parameter group"):
        TrustRegionOptimizer([{"params": [net.out]}, {"params": [net.gain]}], method())
    with pytest.raises(ValueError, match="one floating dtype and one device"):
        TrustRegionOptimizer([net.out, torch.nn.Parameter(torch.ones(2))], method())
    with pytest.raises(TypeError, match="method must be a TrustRegion, got str"):
        TrustRegionOptimizer(net.parameters(), "cg")
    with pytest.raises(ValueError, match="matrix-free: TrustRegionOptimizer never builds J"):
        TrustRegionOptimizer(net.parameters(), TrustRegion(GaussNewtonModel(), solver="lstsq"))
    with pytest.raises(ValueError, match="max_trials must be a positive int or None, got 0"):
        TrustRegionOptimizer(net.parameters(), method(), max_trials=0)
    opt = TrustRegionOptimizer([net.frozen], method())
    with pytest.raises(ValueError, match="requires_grad=True at step time"):
        opt.step(lambda: net.frozen)


def test_repr_and_defaults():
    net = Net()
    opt = TrustRegionOptimizer(net.parameters(), TrustRegion(GaussNewtonModel(), solver="cg"))
    text = repr(opt)
    assert text.startswith("TrustRegionOptimizer(TrustRegion(GaussNewtonModel(") and "max_trials=1" in text
    assert "params=[(2, 6), (), (2,), (6, 3), (6,)]" in text
    # One trial per batch: the CG path would never be reused, so it is not stored.
    assert opt._method.solver.path_memory == 0 and opt.method.solver.path_memory is None
    assert opt._method.scale_policy.policy == JacobiScale()


@pytest.mark.parametrize("module", [trustls.optim, trustls._closure])
def test_docstring_examples(module):
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0
