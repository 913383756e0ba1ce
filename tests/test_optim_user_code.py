"""TrustRegionOptimizer against the user code torch.optim users write: parameter groups, schedulers,
closures that reduce, call backward, return lists or stale outputs, sparse gradients, torch.compile,
requires_grad toggled between steps, and the callback's return value (found by a bug hunt)."""

import math
import warnings

import pytest
import torch

from trustls import (
    GaussNewtonModel,
    Status,
    SteihaugCG,
    TrustRegion,
    TrustRegionOptimizer,
)
from trustls._closure import flatten

F64 = torch.float64


def mlp(seed=0, dtype=F64):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).to(dtype)


def batch(m=24, seed=1, dtype=F64):
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(m, 3, generator=generator, dtype=dtype)
    return X, torch.stack([torch.sin(X[:, 0]), X[:, 1] * X[:, 2]], dim=1)


def method(loss="linear", **options):
    return TrustRegion(GaussNewtonModel(loss=loss), **{"solver": SteihaugCG(max_iter=5), **options})


def train(opt, closure, steps=3):
    return [opt.step(closure) for _ in range(steps)]


# -- 1. parameter groups as torch.optim takes them --------------------------------------------------------


def test_parameter_group_with_a_generator_or_a_single_tensor_trains_as_with_a_list():
    X, Y = batch()
    runs = {}
    for form in ("list", "generator", "group of a list", "group of a generator"):
        net = mlp()
        params = {
            "list": list(net.parameters()),
            "generator": net.parameters(),
            "group of a list": [{"params": list(net.parameters())}],
            "group of a generator": [{"params": net.parameters()}],
        }[form]
        opt = TrustRegionOptimizer(params, method())
        assert len(opt.param_groups[0]["params"]) == 4
        costs = train(opt, lambda: (net(X) - Y).reshape(-1))
        runs[form] = (costs, flatten(list(net.parameters())))
    for form, (costs, x) in runs.items():
        assert costs == runs["list"][0], form
        assert torch.equal(x, runs["list"][1]), form
    assert runs["list"][0][-1] < runs["list"][0][0]

    w = torch.tensor(0.5, dtype=F64, requires_grad=True)  # a single 0-d tensor as the group's params
    opt = TrustRegionOptimizer([{"params": w}], method())
    assert opt.param_groups[0]["params"] == [w]
    cost = opt.step(lambda: (w * X[:, 0] - 2 * X[:, 0]))
    assert cost == pytest.approx(0.5 * float(((0.5 - 2) * X[:, 0]).pow(2).sum()), rel=1e-14)
    assert abs(float(w.detach()) - 2.0) < 1.5


def test_parameter_forms_torch_refuses_are_refused_naming_params():
    w = torch.tensor(0.5, requires_grad=True)
    with pytest.raises(TypeError, match=r"^params must be an iterable of tensors or a list of one parameter-group "
                                        r"dict, got a Tensor \(pass \[tensor\]\)$"):
        TrustRegionOptimizer(w, method())
    with pytest.raises(TypeError, match=r"got a dict \(pass \[group\]\)$"):
        TrustRegionOptimizer({"params": [w]}, method())
    with pytest.raises(TypeError, match=r"^a parameter group must be a dict with a 'params' entry, got \['lr'\]$"):
        TrustRegionOptimizer([{"lr": 1.0}], method())
    with pytest.raises(ValueError, match="^params must hold at least one tensor, got an empty parameter list$"):
        TrustRegionOptimizer([{"params": iter([])}], method())


# -- 9. a tensor lr ----------------------------------------------------------------------------------


def test_a_tensor_lr_of_several_elements_is_refused_naming_its_shape():
    net = mlp()
    with pytest.raises(ValueError, match=r"got tensor\(\[1\., 2\.\]\); a tensor lr must be 0-d \(one number\), "
                                         r"got shape \(2,\)$"):
        TrustRegionOptimizer(net.parameters(), method(), lr=torch.tensor([1.0, 2.0]))
    opt = TrustRegionOptimizer(net.parameters(), method())
    opt.param_groups[0]["lr"] = torch.tensor([[0.5]])
    X, Y = batch()
    with pytest.raises(ValueError, match=r"a tensor lr must be 0-d \(one number\), got shape \(1, 1\)$"):
        opt.step(lambda: (net(X) - Y).reshape(-1))


# -- 3. a reduced loss is refused for every loss ------------------------------------------------------------


@pytest.mark.parametrize("loss", ["huber", "soft_l1", "gaussian_nll", "cross_entropy", "bce_with_logits",
                                  "poisson_nll"])
@pytest.mark.parametrize("with_targets", [False, True])
def test_a_0d_closure_output_is_refused_for_every_loss(loss, with_targets):
    X, Y = batch()
    net = mlp()
    opt = TrustRegionOptimizer(net.parameters(), method(loss))
    targets = torch.zeros((), dtype=F64) if with_targets else None
    what, example = (r"the outputs", r"\(net\(X\), y\)") if with_targets else (
        r"the residual vector r", r"\(net\(X\) - Y\)\.reshape\(-1\)")
    before = flatten(list(net.parameters()))
    with pytest.raises(ValueError, match=rf"^closure must return {what} that the loss .* reduces \(one entry per "
                                         rf"sample or element\), got a 0-d tensor: return them before any reduction "
                                         rf"to a scalar loss, e\.g\. {example}, and reshape a single output"):
        opt.step(lambda: (((net(X) - Y) ** 2).mean(), targets) if with_targets else ((net(X) - Y) ** 2).mean())
    assert torch.equal(flatten(list(net.parameters())), before)


# -- 4. the callback's return value ----------------------------------------------------------------------------


@pytest.mark.parametrize("stop", ["true", "StopIteration"])
def test_a_stopping_callback_ends_the_step_after_its_trial_and_the_next_step_runs(stop):
    X, Y = batch()
    net = mlp()
    records = []

    def callback(info):
        records.append(info)
        if stop == "StopIteration":
            raise StopIteration
        return True

    trials = []

    def closure():  # the first trial point is non-finite, so its trial is rejected; max_trials=None would retry
        r = (net(X) - Y).reshape(-1)
        if not torch.is_grad_enabled():
            trials.append(None)
            return r + math.inf if len(trials) == 1 else r
        return r

    opt = TrustRegionOptimizer(net.parameters(), method(callback=callback), max_trials=None)
    before = flatten(list(net.parameters()))
    opt.step(closure)
    assert len(records) == 1 and not records[0].accepted
    assert opt.status == Status.CALLBACK
    assert torch.equal(flatten(list(net.parameters())), before)
    opt.step(closure)  # the next step runs, and the callback stops it again after its (accepted) trial
    assert len(records) == 2 and records[1].accepted and opt.status == Status.CALLBACK
    assert torch.equal(flatten(list(net.parameters())), records[1].x)
    trials.clear()
    keep_going = TrustRegionOptimizer(net.parameters(), method(callback=lambda info: None), max_trials=None)
    keep_going.step(closure)
    assert len(trials) == 2 and keep_going.last.accepted and keep_going.status is None


# -- 5. backward() inside the closure ----------------------------------------------------------------------


@pytest.mark.parametrize("retain_graph", [False, True])
def test_a_closure_that_calls_backward_is_refused_before_anything_moves(retain_graph):
    X, Y = batch()
    net = mlp()
    opt = TrustRegionOptimizer(net.parameters(), method())

    def closure():  # the torch.optim habit
        opt.zero_grad()
        r = (net(X) - Y).reshape(-1)
        (0.5 * (r**2).sum()).backward(retain_graph=retain_graph)
        return r

    before = flatten(list(net.parameters()))
    with pytest.raises(ValueError, match=r"^closure must return its outputs \(or residual vector\) without calling "
                                         r"backward\(\): it ran a backward pass into the parameters' \.grad"):
        opt.step(closure)
    assert torch.equal(flatten(list(net.parameters())), before)
    assert opt.state[next(net.parameters())] == {}
    # Gradients of other tensors, or autograd.grad inside the closure, are the closure's business.
    other = torch.ones(2, dtype=F64, requires_grad=True)

    def harmless():
        if torch.is_grad_enabled():
            (other**2).sum().backward()
        return (net(X) - Y).reshape(-1)

    opt.step(harmless)
    assert opt.last is not None


# -- 6. torch.compile ------------------------------------------------------------------------------------------


needs_dynamo = pytest.mark.skipif(
    not torch._dynamo.is_dynamo_supported(), reason="torch.compile (Dynamo) is not supported on this Python/platform"
)


@needs_dynamo
def test_a_compiled_model_is_explained_and_the_documented_ways_out_work():
    X, Y = batch(dtype=torch.float32)
    net = mlp(dtype=torch.float32)
    compiled = torch.compile(net, backend="aot_eager")  # AOT autograd, as inductor, without a C++ compiler
    opt = TrustRegionOptimizer(net.parameters(), method())
    before = flatten(list(net.parameters()))
    with pytest.raises(ValueError, match=r"^closure must run a model whose backward pass can be differentiated "
                                         r"again: .*torch\.compile .*backend='eager'") as caught:
        opt.step(lambda: (compiled(X) - Y).reshape(-1))
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert "double backward" in str(caught.value.__cause__)
    assert torch.equal(flatten(list(net.parameters())), before)

    reference = mlp(dtype=torch.float32)
    expected = train(TrustRegionOptimizer(reference.parameters(), method()), lambda: (reference(X) - Y).reshape(-1))
    for backend in ("switch", "eager"):
        net = mlp(dtype=torch.float32)
        if backend == "switch":  # uncompiled with a graph, compiled at the trials
            compiled = torch.compile(net, backend="aot_eager")
            closure = lambda: ((net if torch.is_grad_enabled() else compiled)(X) - Y).reshape(-1)  # noqa: E731
        else:
            compiled = torch.compile(net, backend="eager")
            closure = lambda: (compiled(X) - Y).reshape(-1)  # noqa: E731
        costs = train(TrustRegionOptimizer(net.parameters(), method()), closure)
        assert costs == pytest.approx(expected, rel=1e-5), backend
        assert flatten(list(net.parameters())).sub(flatten(list(reference.parameters()))).abs().max() < 1e-4


# -- 7. requires_grad toggled after the first step -----------------------------------------------------------


@pytest.mark.parametrize("change", ["freeze", "unfreeze", "swap"])
def test_changing_which_tensors_are_trainable_after_the_first_step_is_refused(change):
    X, Y = batch()
    net = mlp()
    first, last = net[0].bias, net[2].bias  # 5 and 2 entries
    if change != "freeze":
        last.requires_grad_(False)
    opt = TrustRegionOptimizer(net.parameters(), method())
    closure = lambda: (net(X) - Y).reshape(-1)  # noqa: E731
    opt.step(closure)
    if change in ("freeze", "swap"):
        first.requires_grad_(False)
    if change in ("unfreeze", "swap"):
        last.requires_grad_(True)
    expected = {"freeze": r"frozen at positions \[1\]", "unfreeze": r"unfrozen at positions \[3\]",
                "swap": r"frozen at positions \[1\]; unfrozen at positions \[3\]"}[change]
    before = flatten(list(net.parameters()))
    with pytest.raises(ValueError, match=rf"^params' requires_grad must stay as it was at the first step .* got "
                                         rf"tensors {expected} since: build a new TrustRegionOptimizer"):
        opt.step(closure)
    assert torch.equal(flatten(list(net.parameters())), before)
    fresh = TrustRegionOptimizer(net.parameters(), method())
    train(fresh, closure, 2)
    assert fresh.state[next(net.parameters())]["numel"] == sum(p.numel() for p in net.parameters() if p.requires_grad)


def test_the_trainable_set_is_fixed_again_after_load_state_dict():
    X, Y = batch()
    net = mlp()
    opt = TrustRegionOptimizer(net.parameters(), method())
    closure = lambda: (net(X) - Y).reshape(-1)  # noqa: E731
    opt.step(closure)
    state = opt.state_dict()
    restored = TrustRegionOptimizer(net.parameters(), method())
    restored.load_state_dict(state)
    restored.step(closure)
    net[0].bias.requires_grad_(False)
    with pytest.raises(ValueError, match=r"got tensors frozen at positions \[1\] since"):
        restored.step(closure)


# -- 8. losses' targets through the optimizer ------------------------------------------------------------------


def test_integer_counts_train_as_floating_counts_and_bad_targets_name_the_range():
    X, _ = batch()
    counts = torch.poisson(torch.exp(X[:, :2]), generator=torch.Generator().manual_seed(3))
    results = []
    for targets in (counts, counts.to(torch.int64)):
        net = mlp()
        opt = TrustRegionOptimizer(net.parameters(), method("poisson_nll"))
        results.append((train(opt, lambda: (net(X), targets)), flatten(list(net.parameters()))))
    assert results[0][0] == results[1][0] and torch.equal(results[0][1], results[1][1])
    net = mlp()
    opt = TrustRegionOptimizer(net.parameters(), method("poisson_nll"))
    with pytest.raises(ValueError, match=r"^targets of PoissonNLL must be non-negative counts, got a minimum of -1\.0"):
        opt.step(lambda: (net(X), counts - 1))
    opt = TrustRegionOptimizer(net.parameters(), method("bce_with_logits"))
    with pytest.raises(ValueError, match=r"^targets of BinaryCrossEntropyWithLogits must lie in \[0, 1\]"):
        opt.step(lambda: (net(X), counts))
    with pytest.raises(ValueError, match="^closure must return finite outputs at the current parameters, got NaN or inf$"):
        opt.step(lambda: (net(X) - math.inf, torch.zeros(24, 2, dtype=F64)))


# -- 9. lists, sparse gradients ----------------------------------------------------------------------------


def test_a_list_of_scalars_is_the_residual_vector_and_other_lists_are_refused():
    X, Y = batch(m=6)
    net, reference = mlp(), mlp()
    opt = TrustRegionOptimizer(net.parameters(), method())
    costs = train(opt, lambda: [r for r in (net(X) - Y).reshape(-1)])
    expected = train(TrustRegionOptimizer(reference.parameters(), method()), lambda: (reference(X) - Y).reshape(-1))
    assert costs == expected
    for rows in (slice(None), slice(0, 3)):  # of one length, or ragged
        with pytest.raises(TypeError, match=r"^closure must return one tensor \(the residual vector\) or a pair "
                                            r"\(outputs, targets\), got a list of 2 tensors of shapes \[\(6,\), "
                                            r"\(\d,\)\]: join them into one vector"):
            opt.step(lambda: [(net(X) - Y)[:, 0], (net(X) - Y)[rows, 1]])


def test_sparse_embedding_gradients_take_the_steps_of_the_dense_embedding():
    indices = torch.tensor([1, 2, 2, 5, 7, 0, 9, 5])
    Y = torch.randn(8, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    runs = []
    for sparse in (False, True):
        torch.manual_seed(0)
        embedding = torch.nn.Embedding(10, 3, sparse=sparse).to(F64)
        head = torch.nn.Linear(3, 2).to(F64)
        params = [*embedding.parameters(), *head.parameters()]
        opt = TrustRegionOptimizer(params, method())  # default Jacobi scaling: VJPs of sparse gradients too
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the lean graph passes its adjoint test
            costs = train(opt, lambda: (torch.tanh(head(embedding(indices))) - Y).reshape(-1), 4)
        runs.append((costs, flatten(params)))
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    assert runs[0][0][-1] < runs[0][0][0]


def test_a_sparse_parameter_is_refused():
    weight = torch.eye(3, dtype=F64).to_sparse().requires_grad_()
    with pytest.raises(ValueError, match=r"^params must be dense \(strided\) tensors, got torch.sparse_coo tensors "
                                         r"at positions \[0\]"):
        TrustRegionOptimizer([weight], method())


# -- 10. stale outputs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["same tensor", "view", "detached", "pair"])
@pytest.mark.parametrize("max_trials", [1, None])
def test_outputs_returned_again_from_an_earlier_call_are_refused(form, max_trials):
    X, Y = batch()
    net = mlp()
    cache = []

    def closure():
        if not cache:
            cache.append((net(X) - Y).reshape(-1))
        r = cache[0]
        return {"same tensor": r, "view": r.view(24, 2), "detached": r.detach(), "pair": (r.view(24, 2), None)}[form]

    loss = "gaussian_nll" if form in ("view", "pair") else "linear"
    opt = TrustRegionOptimizer(net.parameters(), method(loss), max_trials=max_trials)
    before = flatten(list(net.parameters()))
    if form == "detached":  # no graph at the linearization already
        with pytest.raises(ValueError, match="depend on the parameters through autograd"):
            opt.step(closure)
        return
    with pytest.raises(ValueError, match=r"^closure must compute its outputs anew at every call, got at the trial "
                                         r"point the tensor \(or a view of the storage\) it returned at the current "
                                         r"parameters"):
        opt.step(closure)
    assert torch.equal(flatten(list(net.parameters())), before)


def test_attention_without_a_double_backward_is_explained_and_the_math_kernel_trains():
    """Found by a bug hunt: nn.TransformerEncoderLayer's fused attention kernel on the CPU has no
    derivative of its backward, and the step raised torch's bare RuntimeError."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    head = torch.nn.Linear(8, 3)
    X, y = torch.randn(16, 5, 8), torch.randint(0, 3, (16,))
    params = list(layer.parameters()) + list(head.parameters())
    opt = TrustRegionOptimizer(params, TrustRegion(GaussNewtonModel(loss="cross_entropy"), solver=SteihaugCG(max_iter=5)))
    closure = lambda: (head(layer(X).mean(1)), y)  # noqa: E731
    before = [p.detach().clone() for p in params]
    with pytest.raises(ValueError, match=r"torch has no derivative for aten::_scaled_dot_product\w*; "
                                         r"scaled_dot_product_attention's fused kernels lack it .*"
                                         r"sdpa_kernel\(SDPBackend.MATH\)") as caught:
        opt.step(closure)
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    with sdpa_kernel(SDPBackend.MATH):
        cost = opt.step(closure)
    assert opt.last.accepted and opt.last.cost < cost


def test_verbose_two_prints_the_optimizers_trials(capsys):
    """Review: the verbose=2 row read the accepted point's gradient, which the optimizer's steps
    (relinearize=False) do not compute: an AttributeError on the first accepted step."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1).double()
    X = torch.randn(20, 3, dtype=F64)
    Y = X.sum(1, keepdim=True)
    opt = TrustRegionOptimizer(net.parameters(), TrustRegion(GaussNewtonModel(), "cg", verbose=2))
    costs = [opt.step(lambda: (net(X) - Y).reshape(-1)) for _ in range(2)]
    assert costs[1] < costs[0]
    rows = [line for line in capsys.readouterr().out.splitlines() if line.strip() and line.split()[0].isdigit()]
    assert rows and all(line.split()[-1] == "nan" for line in rows if float(line.split()[3]) > 0)


# -- found by a hunt of torch.optim conventions ------------------------------------------------


def _classifier(seed=1):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()


def _classes(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(64, 4, generator=generator, dtype=F64) * 3, torch.randint(0, 3, (64,), generator=generator)


def test_a_resumed_run_with_max_trials_from_the_saved_group_is_the_uninterrupted_one():
    """max_trials=None restored into a default-built optimizer used to keep no CG path (decided once,
    from the keyword): its rejected trials solved CG again, 29 products instead of 20, other bits."""
    import copy

    X, y = _classes()
    method = TrustRegion(GaussNewtonModel(loss="cross_entropy"), solver=SteihaugCG(max_iter=20), initial_radius=100.0)
    net = _classifier()
    opt = TrustRegionOptimizer(net.parameters(), method, max_trials=None)
    # Saved before the first step, whose trials are rejected (Δ₀ = 100): the stored path serves them.
    checkpoint = copy.deepcopy((opt.state_dict(), net.state_dict()))  # state_dict() holds live state, as torch's
    for _ in range(6):
        opt.step(lambda: (net(X), y))
    resumed = _classifier()
    resumed.load_state_dict(checkpoint[1])
    opt2 = TrustRegionOptimizer(resumed.parameters(), method)  # max_trials comes back with the group
    opt2.load_state_dict(checkpoint[0])
    assert opt2.param_groups[0]["max_trials"] is None
    for _ in range(6):
        opt2.step(lambda: (resumed(X), y))
    assert opt2.state[resumed[0].weight]["products"] == opt.state[net[0].weight]["products"]
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), resumed.parameters()))


def test_options_of_a_parameter_group_are_checked_at_construction():
    method = TrustRegion(GaussNewtonModel(), solver="cg")
    weight = torch.nn.Parameter(torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match=r"lr must be a non-negative number or inf .*got -1"):
        TrustRegionOptimizer([{"params": [weight], "lr": -1}], method)
    with pytest.raises(ValueError, match=r"max_trials must be a positive int or None, got 2.5"):
        TrustRegionOptimizer([{"params": [weight], "max_trials": 2.5}], method)
    opt = TrustRegionOptimizer([{"params": [weight], "max_trials": 2.0}], method)
    assert type(opt.param_groups[0]["max_trials"]) is int and opt.param_groups[0]["max_trials"] == 2


def test_a_closure_may_return_a_parameter_itself():
    """Free logits fitted directly were refused as cached outputs: the trial read the parameter after
    its data had been swapped back."""
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    method = TrustRegion(GaussNewtonModel(loss="cross_entropy"), solver=SteihaugCG(max_iter=10))
    costs = {}
    for name, closure_of in [("itself", lambda z: lambda: (z, y)), ("a product", lambda z: lambda: (z * 1, y))]:
        logits = torch.nn.Parameter(torch.zeros(8, 3, dtype=F64))
        opt = TrustRegionOptimizer([logits], method)
        costs[name] = [opt.step(closure_of(logits)) for _ in range(3)]
    assert costs["itself"] == costs["a product"] and costs["itself"][2] < costs["itself"][0]


def test_the_callback_and_last_count_every_closure_call_so_far():
    X, y = _classes()
    net = _classifier()
    seen = []
    method = TrustRegion(GaussNewtonModel(loss="cross_entropy"), solver=SteihaugCG(max_iter=10),
                         callback=lambda info: seen.append(info.nfev))
    opt = TrustRegionOptimizer(net.parameters(), method)
    for _ in range(5):
        opt.step(lambda: (net(X), y))
    state = opt.state[net[0].weight]
    assert seen == [2, 4, 6, 8, 10] and opt.last.nfev == state["nfev"] == 10 and opt.last.nit == 5


def test_a_closure_returning_a_list_of_its_parameters_is_read_at_the_trial_point():
    """Found by a review: the outputs were read after the parameters' data went back, so a list of
    0-d parameters was stacked at the old point, every trial scored there and rejected (costs
    7, 7, 7); they are read at the trial point now."""
    params = [torch.nn.Parameter(torch.tensor(float(i + 1), dtype=F64)) for i in range(3)]
    opt = TrustRegionOptimizer(params, TrustRegion(GaussNewtonModel(), solver="cg"))
    costs = [opt.step(lambda: list(params)) for _ in range(3)]
    assert costs[0] == 7.0 and costs[1] < 1e-20 and opt.last.accepted
