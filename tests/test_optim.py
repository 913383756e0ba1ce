"""TrustRegionOptimizer: agreement with TrustRegion.solve, checkpoints, mini-batches, products, input errors."""

import copy
import doctest
import io
import math
import re
import warnings

import pytest
import torch

import trustls._closure
import trustls.distributed
import trustls.optim
from trustls import GaussNewtonModel, Status, SteihaugCG, TrustRegion
from trustls._closure import ClosureProducts, flatten, parameter_products, unflatten
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
    for _ in range(25):  # solve's max_nfev: a regression that rejects every step fails, rather than loops forever
        if len(iterates) == min(len(expected), 12):
            break
        opt.step(lambda: (net(X) - Y).reshape(-1))
        if opt.last.accepted:
            iterates.append(flatten(params))
    assert len(iterates) == min(len(expected), 12) >= 8
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


def test_outputs_and_targets_errors_name_the_closure():
    # A closure returning (outputs, targets) is checked as the closure it is, not as fun(x).
    net, (X, _) = Net(), data()
    y = torch.zeros(40, dtype=torch.long)
    opt = TrustRegionOptimizer(net.parameters(), TrustRegion(GaussNewtonModel(loss="cross_entropy"), solver="cg"))
    with pytest.raises(TypeError, match=r"^closure must return outputs of the parameters' dtype torch.float64, "
                                        r"got torch.float32$"):
        opt.step(lambda: (net(X).float(), y))
    with pytest.raises(TypeError, match=r"^closure must return floating outputs, got dtype torch.int64$"):
        opt.step(lambda: (net(X).round().long(), y))
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


@pytest.mark.parametrize("max_trials", [0, -1, 2.5, "2", True])
def test_max_trials_edited_in_the_parameter_group_is_checked_at_step_time(max_trials):
    # param_groups are the user's to edit (as schedulers edit lr): a bad max_trials is refused
    # before the closure runs, as a bad lr is, rather than taken as some number of trials.
    w = torch.nn.Parameter(torch.tensor([4.0, 9.0], dtype=torch.float64))
    opt = TrustRegionOptimizer([w], method(solver="cg"))
    opt.param_groups[0]["max_trials"] = max_trials
    calls = []
    with pytest.raises(ValueError, match=rf"^max_trials must be a positive int or None, got {re.escape(repr(max_trials))}$"):
        opt.step(lambda: calls.append(None) or torch.sqrt(w) - 1.0)
    assert calls == [] and torch.equal(w.detach(), torch.tensor([4.0, 9.0], dtype=torch.float64))


@pytest.mark.parametrize("length", [1, 3])
def test_x_scale_of_another_length_than_the_parameters_is_refused(length):
    # As TrustRegion.solve refuses it: not a size mismatch from inside torch (length 3), nor a
    # silent broadcast (length 1).
    w = torch.nn.Parameter(torch.tensor([4.0, 9.0], dtype=torch.float64))
    opt = TrustRegionOptimizer([w], method(solver="cg", x_scale=torch.ones(length, dtype=torch.float64)))
    with pytest.raises(ValueError, match=rf"^x_scale must have x0's shape \(2,\), got shape \({length},\)$"):
        opt.step(lambda: torch.sqrt(w) - 1.0)
    assert torch.equal(w.detach(), torch.tensor([4.0, 9.0], dtype=torch.float64)) and opt.state[w] == {}


def test_repr_and_defaults():
    net = Net()
    opt = TrustRegionOptimizer(net.parameters(), TrustRegion(GaussNewtonModel(), solver="cg"))
    text = repr(opt)
    assert text.startswith("TrustRegionOptimizer(TrustRegion(GaussNewtonModel(") and "max_trials=1" in text
    assert "params=[(2, 6), (), (2,), (6, 3), (6,)]" in text
    # One trial per batch: the CG path would never be reused, so that step's method stores none.
    assert opt._one_trial.solver.path_memory == 0 and opt.method.solver.path_memory is None
    assert opt._method.solver.path_memory is None and opt._method.scale_policy == JacobiScale()


@pytest.mark.parametrize("module", [trustls.optim, trustls._closure, trustls.distributed])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# -- lr: an upper bound on the radius, for schedulers (issue 11, item 6) ------


def opt_net(opt):
    return torch.nn.ParameterList(opt.param_groups[0]["params"])


def scheduled(lr=1.0, **options):
    net, (X, Y) = Net(), data()
    opt = TrustRegionOptimizer(net.parameters(), method(solver=SteihaugCG(max_iter=5), **options), lr=lr)
    return net, opt, lambda: (net(X) - Y).reshape(-1)


def test_lr_bounds_the_radius_of_every_trial():
    _, opt, closure = scheduled(lr=1e-3, initial_radius=10.0)
    for _ in range(5):
        opt.step(closure)
        assert opt.last.radius <= 1e-3 and opt.last.step_norm <= 1e-3 * (1 + 1e-12)
    _, unbounded, closure = scheduled(lr=math.inf, initial_radius=10.0)
    unbounded.step(closure)
    assert unbounded.last.radius == 10.0


SCHEDULERS = {
    "StepLR": (lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5), lambda s, cost: s.step()),
    "ExponentialLR": (lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, 0.5), lambda s, cost: s.step()),
    "ReduceLROnPlateau": (lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0),
                          lambda s, cost: s.step(1.0)),  # a metric that never improves: reduce every step
    "CosineAnnealingLR": (lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8), lambda s, c: s.step()),
    "SWALR": (lambda opt: torch.optim.swa_utils.SWALR(opt, swa_lr=0.01, anneal_epochs=3), lambda s, c: s.step()),
    "OneCycleLR": (lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10,
                                                                   cycle_momentum=False), lambda s, c: s.step()),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_schedulers_anneal_the_largest_step(name):
    build, advance = SCHEDULERS[name]
    _, opt, closure = scheduled(lr=1.0, initial_radius=100.0)
    scheduler = build(opt)
    seen = []
    for _ in range(6):
        lr = opt.param_groups[0]["lr"]
        cost = opt.step(closure)
        assert opt.last.radius <= lr
        seen.append(lr)
        advance(scheduler, cost)
    assert len(set(seen)) > 1 and min(seen) < 1.0


def test_one_cycle_lr_cycling_momentum_is_refused_by_torch_naming_the_option():
    _, opt, _ = scheduled()
    with pytest.raises(ValueError, match="cycle_momentum"):
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10)


def test_a_scheduler_on_an_infinite_lr_warns_once_and_an_unusable_lr_is_refused():
    _, opt, closure = scheduled(lr=math.inf)
    torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    with pytest.warns(UserWarning, match="lr is inf"):
        opt.step(closure)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(closure)
    _, opt, closure = scheduled(lr=math.inf)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2)
    with pytest.warns(UserWarning, match="lr is inf"):
        opt.step(closure)
    scheduler.step(), scheduler.step()  # interpolating from inf: inf - inf is nan
    before = flatten(trainable(opt_net(opt)))
    with pytest.raises(ValueError, match=r"lr must be a non-negative number or inf .* got nan; a scheduler"):
        opt.step(closure)
    assert torch.equal(flatten(trainable(opt_net(opt))), before)
    for lr in (-1.0, math.nan, "1", True, torch.tensor([1.0, 2.0])):
        with pytest.raises(ValueError, match="lr must be a non-negative number or inf"):
            scheduled(lr=lr)


def test_lr_zero_moves_nothing_and_keeps_the_radius_for_a_later_lr():
    # A warm-up from 0 (a LambdaLR starting at 0) reaches lr = 0: torch.optim takes it.
    # Found by a bug hunt: it raised, and a radius clamped to 0 would have stayed 0 for good.
    _, opt, closure = scheduled(lr=0.0)
    before = flatten(trainable(opt_net(opt)))
    cost = opt.step(closure)
    assert torch.equal(flatten(trainable(opt_net(opt))), before) and opt.status is None
    opt.param_groups[0]["lr"] = torch.tensor(1.0)  # a 0-d tensor lr, as some schedulers leave it
    costs = [opt.step(closure) for _ in range(3)]
    assert costs[0] == cost and costs[-1] < cost


# -- checkpoints: validated at load time ---------------------------------------


def trained(steps=2, dtype=torch.float64, **options):
    net, (X, Y) = Net(dtype), data(dtype=dtype)
    opt = TrustRegionOptimizer(net.parameters(), method(x_scale="jac", **options))
    for _ in range(steps):
        opt.step(lambda: (net(X) - Y).reshape(-1))
    return net, opt


def test_state_dict_loads_with_weights_only():
    _, opt = trained()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    _, fresh = trained(steps=0)
    fresh.load_state_dict(loaded)
    assert fresh.state_dict()["state"][0]["radius"] == opt.state_dict()["state"][0]["radius"]


def corrupt(path, value):
    def apply(state):
        target = state
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return state

    return apply


CORRUPTIONS = {
    "negative radius": (corrupt(("state", 0, "radius"), -1.0), r"radius must be a positive finite number, got -1.0"),
    "zero radius": (corrupt(("state", 0, "radius"), 0.0), r"radius must be a positive finite number"),
    "nan radius": (corrupt(("state", 0, "radius"), math.nan), r"radius must be a positive finite number, got nan"),
    "text radius": (corrupt(("state", 0, "radius"), "1.0"), r"radius must be a positive finite number, got '1.0'"),
    "bool radius": (corrupt(("state", 0, "radius"), True), r"radius must be a positive finite number, got True"),
    "missing radius": (corrupt(("state", 0, "radius"), KeyError), r"must hold exactly \[.*\], got \["),
    "extra entry": (corrupt(("state", 0, "exp_avg"), 1.0), r"must hold exactly"),
    "negative counter": (corrupt(("state", 0, "nit"), -3), r"nit must be a non-negative int, got -3"),
    "float counter": (corrupt(("state", 0, "nfev"), 2.5), r"nfev must be a non-negative int, got 2.5"),
    "short scale": (corrupt(("state", 0, "scale"), torch.ones(3)),
                    r"scale must be None or a floating tensor of shape \(37,\), got shape \(3,\)"),
    "negative scale": (corrupt(("state", 0, "scale"), -torch.ones(37, dtype=torch.float64)),
                       r"scale must have positive finite entries"),
    "state under another tensor": (corrupt(("state", 3), {}), r"state only under the first parameter"),
    "no lr": (corrupt(("param_groups", 0, "lr"), KeyError), r"parameter group lacks \['lr'\]"),
    "bad max_trials": (corrupt(("param_groups", 0, "max_trials"), 0), r"max_trials must be a positive int or None"),
    "not a mapping": (lambda state: [state], r"a mapping with 'state' and 'param_groups', got list"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupted_state_dict_is_refused_at_load_time(name):
    change, message = CORRUPTIONS[name]
    _, opt = trained()
    state = change(copy.deepcopy(opt.state_dict()))
    _, fresh = trained(steps=0)
    before = copy.deepcopy(fresh.state_dict())
    with pytest.raises((ValueError, TypeError), match=message):
        fresh.load_state_dict(state)
    assert fresh.state_dict() == before


def test_state_dict_of_another_network_or_optimizer_is_refused():
    _, opt = trained()
    shapes = [(2, 5), (), (2,), (5, 3), (5,)]  # Net's five tensors, one hidden unit fewer
    other = [torch.nn.Parameter(torch.zeros(shape, dtype=torch.float64), requires_grad=shape != (2,))
             for shape in shapes]
    fresh = TrustRegionOptimizer(other, method())
    with pytest.raises(ValueError, match=r"state_dict belongs to 37 trainable parameters but the optimizer has 31"):
        fresh.load_state_dict(opt.state_dict())
    net = Net()
    adam = torch.optim.Adam(trainable(net))
    adam.zero_grad()
    (net(data()[0]).sum()).backward()
    adam.step()
    with pytest.raises(ValueError, match=r"parameter group lacks \['max_trials'\] \(a state dict of another optimizer"):
        TrustRegionOptimizer(trainable(net), method()).load_state_dict(adam.state_dict())


def test_checkpoint_keeps_the_uniform_scale_and_resumes_identically():
    # A well-scaled J (a linear layer on standard-normal inputs, n = 36 > 32: estimated
    # column norms) makes "jac" keep T = I (UniformScaling), which JacobiScale tells from
    # the stride-0 diagonal the optimizer saves; a checkpoint must keep that, or the
    # resumed run switches to Jacobi's T at its next power-of-two step.
    generator = torch.Generator().manual_seed(4)
    X = torch.randn(64, 8, generator=generator, dtype=torch.float64)
    Y = torch.tanh(X[:, :4] - X[:, 4:])
    batches = [(X[i : i + 32], Y[i : i + 32]) for i in (0, 32)] * 6

    def network():
        net = torch.nn.Linear(8, 4).double()
        with torch.no_grad():
            net.weight.copy_(torch.randn(4, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
            net.bias.zero_()
        return net

    def make(net):
        return TrustRegionOptimizer(net.parameters(), TrustRegion(GaussNewtonModel(), solver=SteihaugCG(max_iter=3)))

    def train(net, opt, steps):
        for xb, yb in steps:
            opt.step(lambda xb=xb, yb=yb: (net(xb) - yb).reshape(-1))

    net = network()
    opt = make(net)
    train(net, opt, batches)
    assert opt.state[net.weight]["scale"].stride() == (0,)  # T = I throughout: the case under test

    resumed_net = network()
    resumed_opt = make(resumed_net)
    train(resumed_net, resumed_opt, batches[:3])
    buffer = io.BytesIO()
    torch.save({"net": resumed_net.state_dict(), "opt": resumed_opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    fresh_net = network()
    fresh_net.load_state_dict(checkpoint["net"])
    fresh_opt = make(fresh_net)
    fresh_opt.load_state_dict(checkpoint["opt"])
    assert fresh_opt.state[fresh_net.weight]["scale"].stride() == (0,)
    train(fresh_net, fresh_opt, batches[3:])
    for a, b in zip(net.parameters(), fresh_net.parameters()):
        assert torch.equal(a, b)
    assert fresh_opt.state[fresh_net.weight]["radius"] == opt.state[net.weight]["radius"]


def test_half_precision_state_keeps_its_float32_scale_through_a_checkpoint():
    net, opt = trained(dtype=torch.bfloat16)
    state = opt.state_dict()
    fresh_net = Net(torch.bfloat16)
    fresh_net.load_state_dict(net.state_dict())
    fresh = TrustRegionOptimizer(fresh_net.parameters(), method(x_scale="jac"))
    fresh.load_state_dict(state)
    assert fresh.state[next(fresh_net.parameters())]["scale"].dtype == torch.float32
    assert torch.equal(fresh.state[next(fresh_net.parameters())]["scale"], opt.state[next(net.parameters())]["scale"])


# -- faults of a step (issue 11, item 6) ----------------------------------------


def test_closure_that_does_not_reach_the_parameters_is_refused():
    net, (X, Y) = Net(), data()
    other = torch.nn.Linear(3, 2).double()
    opt = TrustRegionOptimizer(net.parameters(), method())
    with pytest.raises(ValueError, match=r"closure must return outputs that depend on the optimizer's parameters"):
        opt.step(lambda: (other(X) - Y).reshape(-1))
    with pytest.raises(ValueError, match=r"closure must return outputs with a finite derivative"):
        opt.step(lambda: (net(X) - Y).reshape(-1) + 0.0 * torch.sqrt(net.gain - net.gain))
    assert opt.state[next(net.parameters())] == {}


@pytest.mark.parametrize("max_trials", [1, 2, None])
def test_parameters_are_bitwise_unchanged_after_a_rejected_or_failed_step(max_trials):
    net, (X, Y) = Net(), data()
    opt = TrustRegionOptimizer(net.parameters(), method(initial_radius=1e4), max_trials=max_trials)
    before = [p.detach().clone() for p in net.parameters()]
    calls = []

    def failing_at_the_trial():
        calls.append(None)
        if len(calls) == 2:
            raise RuntimeError("the data loader broke")
        return (net(X) - Y).reshape(-1)

    with pytest.raises(RuntimeError, match="the data loader broke"):
        opt.step(failing_at_the_trial)
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))
    assert opt.state[next(net.parameters())] == {}
    # Any trial that moves the gain is infinite: every trial is rejected, however many the step takes.
    opt.step(lambda: (net(X) - Y).reshape(-1) * torch.where(net.gain.detach() != 0.8, math.inf, 1.0))
    assert not opt.last.accepted and opt.last.trial_cost == math.inf
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))


def test_max_trials_none_budget_is_per_step_and_reported_in_status():
    w = torch.nn.Parameter(torch.tensor([4.0, 9.0], dtype=torch.float64))
    w0, target = w.detach().clone(), torch.tensor([1.0, 1.0], dtype=torch.float64)

    def closure():  # NaN beyond 1e-3 of w0: from a radius of 1 it takes 5 shrinking trials to get there
        return (torch.sqrt(w) - target) * torch.where((w.detach() - w0).abs().max() > 1e-3, math.nan, 1.0)

    opt = TrustRegionOptimizer([w], method(solver="cg", initial_radius=1.0, max_nfev=4), max_trials=None)
    opt.step(closure)
    assert opt.status == Status.MAX_NFEV and not opt.last.accepted and torch.equal(w.detach(), w0)
    assert opt.state[w]["nfev"] == 4  # 1 linearization + 3 trials: max_nfev bounds the calls of one step
    opt.step(closure)  # the budget is per step: this one gets 3 trials of its own, from the smaller radius
    assert opt.last.accepted and opt.status is None and opt.state[w]["nfev"] == 8


def test_a_step_that_raises_leaves_no_status_of_the_step_before():
    w = torch.nn.Parameter(torch.tensor([4.0, 9.0], dtype=torch.float64))
    w0 = w.detach().clone()

    def closure():  # NaN beyond 1e-3 of w0: the first step spends its budget (MAX_NFEV)
        return torch.sqrt(w) * torch.where((w.detach() - w0).abs().max() > 1e-3, math.nan, 1.0)

    opt = TrustRegionOptimizer([w], method(solver="cg", initial_radius=1.0, max_nfev=4), max_trials=None)
    opt.step(closure)
    assert opt.status == Status.MAX_NFEV

    def broken():
        raise RuntimeError("the data loader failed")

    with pytest.raises(RuntimeError, match="the data loader failed"):
        opt.step(broken)
    assert opt.status is None and opt.last is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("loss", ["linear", "cross_entropy"])
def test_half_precision_accepted_steps_never_raise_the_batch_cost(dtype, loss):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(dtype)
    generator = torch.Generator().manual_seed(1)
    X = torch.randn(64, 4, generator=generator).to(dtype)
    y = torch.randint(0, 3, (64,), generator=generator)
    Y = torch.nn.functional.one_hot(y, 3).to(dtype)
    model = GaussNewtonModel(loss=loss)
    opt = TrustRegionOptimizer(net.parameters(), TrustRegion(model, solver=SteihaugCG(max_iter=10)))
    closure = (lambda: (net(X), y)) if loss == "cross_entropy" else (lambda: (net(X) - Y).reshape(-1))

    def batch_cost():  # in float64 from the half-precision outputs, as the optimizer measures it
        with torch.no_grad():
            outputs, targets = (closure(), None) if loss == "linear" else closure()
            return float(model.loss.value(outputs.float(), targets))

    accepted, initial = 0, batch_cost()
    for _ in range(25):
        before = batch_cost()
        reported = opt.step(closure)
        assert reported == pytest.approx(before, rel=1e-6)
        after = batch_cost()
        if opt.last.accepted:
            accepted += 1
            assert after <= before
            assert opt.last.trial_cost == pytest.approx(after, rel=1e-6)
        else:
            assert after == before
    assert accepted >= 10 and batch_cost() < 0.5 * initial
    assert all(p.dtype == dtype for p in net.parameters())


# -- the lean double-backward graph --------------------------------------------


def test_failed_adjoint_test_falls_back_to_the_full_graph(monkeypatch):
    X, Y = data()
    results = []
    for lean_passes in (True, False):
        monkeypatch.setattr(trustls.optim, "lean_products_agree", lambda products, generator: lean_passes)
        net = Net()
        opt = TrustRegionOptimizer(net.parameters(), method())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                opt.step(lambda: (net(X) - Y).reshape(-1))
        assert sum("adjoint test" in str(w.message) for w in caught) == (0 if lean_passes else 1)
        assert opt._lean is lean_passes
        results.append(flatten(trainable(net)))
    assert torch.equal(results[0], results[1])  # the same products, bit for bit


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_adjoint_test_passes_the_recorded_graph_and_fails_a_wrong_product(dtype):
    net, (X, Y) = Net(dtype), data(dtype=dtype)
    work = torch.float32 if dtype == torch.bfloat16 else dtype
    with torch.enable_grad():
        outputs = (net(X) - Y).reshape(-1)
    at = torch.linspace(-1.0, 1.0, outputs.numel(), dtype=work)
    agree = lambda products: trustls._closure.lean_products_agree(products, torch.Generator().manual_seed(0))
    assert agree(ClosureProducts(outputs, trainable(net), at=at, dtype=work, lean=True))
    assert agree(ClosureProducts(outputs, trainable(net), at=at, dtype=work, lean=False))
    wrong = ClosureProducts(outputs, trainable(net), at=at, dtype=work)
    jvp = wrong.jvp
    wrong.jvp = lambda v: jvp(v) * 1.5  # a structural error: beyond the allowance in float64, not in bfloat16's
    assert agree(wrong) is (dtype == torch.bfloat16)
    wrong.jvp = lambda v: torch.full_like(jvp(v), math.nan)  # a dropped cotangent that was read
    assert not agree(wrong)
    # A NaN Jᵀw is the closure's own derivative, not the recording's fault: the optimizer refuses the gradient.
    nan_vjp = ClosureProducts(outputs, trainable(net), at=at, dtype=work)
    nan_vjp.vjp = lambda u: torch.full_like(nan_vjp.gradient, math.nan)
    assert agree(nan_vjp)


def test_released_products_refuse_further_products():
    w = torch.tensor([1.0, 3.0], requires_grad=True)
    products = ClosureProducts(w**2, [w], at=torch.ones(2))
    products.release()
    assert products.released
    with pytest.raises(RuntimeError, match="released"):
        products.jvp(torch.ones(2))


def test_rejected_steps_do_not_estimate_the_scale_again(monkeypatch):
    # The estimated Jacobi scale is refreshed at steps 0, 1, 2, 4, 8, … counted whether or not
    # they were accepted: steps rejected at the same accepted count must not each pay K VJPs.
    import trustls.models.gauss_newton as gauss_newton

    estimates = []
    diluted = gauss_newton.diluted_column_norms

    def counted(*args, **kwargs):
        estimates.append(1)
        yield from diluted(*args, **kwargs)

    monkeypatch.setattr(gauss_newton, "diluted_column_norms", counted)
    generator = torch.Generator().manual_seed(3)
    X = torch.randn(64, 4, generator=generator, dtype=torch.float64)
    Y = torch.sin(3 * X[:, :1]) * X[:, 1:2]
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
    # A huge first radius: the first steps are rejected (max_trials=1) while the radius shrinks.
    method = TrustRegion(GaussNewtonModel(), solver=SteihaugCG(max_iter=20), initial_radius=1e8,
                         x_scale=JacobiScale(uniform_spread=1.0))
    opt = TrustRegionOptimizer(net.parameters(), method, max_trials=1)
    steps = 12
    for _ in range(steps):
        opt.step(lambda: (net(X) - Y).reshape(-1))
    saved = opt.state_dict()["state"][0]
    assert saved["accepted_steps"] <= steps - 3  # the case under test: several rejected steps
    refreshes = 1 + sum(1 for k in range(1, steps) if k & (k - 1) == 0)  # steps 0, 1, 2, 4, 8
    assert len(estimates) <= refreshes
