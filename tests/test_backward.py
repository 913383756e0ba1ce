"""trustls.operators.backward: the direct engine and vmap calls against torch's public functions."""

import functools

import pytest
import torch

from trustls.operators import backward as module
from trustls.operators.backward import backward, backward_batched

F64 = torch.float64


def public_rows(outputs, inputs, cotangents):
    def single(cotangent):
        return torch.autograd.grad(outputs, inputs, cotangent, retain_graph=True, materialize_grads=True)[0]

    return torch.func.vmap(single)(cotangents)


def graph(dtype=F64):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(4, dtype=dtype, generator=generator).requires_grad_()
    t = torch.linspace(0, 1, 6, dtype=dtype)
    rows = [x[0] * torch.exp(-x[1] * t[i]) + torch.where(x[2] > 0, x[2], x[3] ** 2) for i in range(6)]
    return x, torch.stack(rows)


def test_the_direct_calls_are_in_use_here():
    # Guards the speed-up itself: on the pinned torch the private entries exist and agree.
    assert module._direct_calls_agree()


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_backward_batched_equals_vmap_of_autograd_grad(dtype):
    x, r = graph(dtype)
    cotangents = torch.randn(5, 6, dtype=dtype, generator=torch.Generator().manual_seed(4))
    assert torch.equal(backward_batched(r, x, cotangents), public_rows(r, x, cotangents))
    assert torch.equal(backward(r, x, cotangents[2]), public_rows(r, x, cotangents)[2])


def test_the_graph_is_kept_and_jvp_by_double_backward_works():
    x, r = graph()
    with torch.enable_grad():
        u = torch.ones_like(r).requires_grad_()
        pullback = torch.autograd.grad(r, x, u, create_graph=True)[0]
    eye = torch.eye(4, dtype=F64)
    columns = backward_batched(pullback, u, eye).T  # J by columns, twice through the same graph
    assert torch.allclose(columns, torch.func.jacrev(lambda z: graph_at(z))(x.detach()), rtol=1e-14)
    assert torch.equal(backward_batched(pullback, u, eye).T, columns)


def graph_at(z):
    t = torch.linspace(0, 1, 6, dtype=z.dtype)
    return torch.stack([z[0] * torch.exp(-z[1] * t[i]) + torch.where(z[2] > 0, z[2], z[3] ** 2) for i in range(6)])


def test_an_unused_input_gives_zeros_in_both_forms():
    x = torch.ones(3, dtype=F64, requires_grad=True)
    other = torch.ones(2, dtype=F64, requires_grad=True)
    r = other * 3.0
    assert torch.equal(backward(r, x, torch.ones(2, dtype=F64)), torch.zeros(3, dtype=F64))
    assert torch.equal(backward_batched(r, x, torch.eye(2, dtype=F64)), torch.zeros(2, 3, dtype=F64))


def test_an_op_without_batching_rule_raises_and_leaves_no_vmap_level():
    sparse = (torch.eye(6, 2, dtype=F64) + torch.ones(6, 2, dtype=F64)).to_sparse()
    x = torch.tensor([0.1, 0.2], dtype=F64, requires_grad=True)
    r = torch.sparse.mm(sparse, torch.exp(x)[:, None])[:, 0]
    with pytest.raises((RuntimeError, NotImplementedError)):
        backward_batched(r, x, torch.eye(6, dtype=F64))
    assert torch._C._functorch.maybe_current_level() is None  # the level was popped
    # and the same graph still answers single products and a later vmap
    assert torch.allclose(backward(r, x, torch.ones(6, dtype=F64)), torch.exp(x.detach()) * 7.0)  # column sums of the matrix
    assert torch.equal(torch.func.vmap(torch.sin)(torch.zeros(2)), torch.zeros(2))


def test_public_functions_when_the_direct_calls_disagree(monkeypatch):
    calls = []
    monkeypatch.setattr(module, "_direct_calls_agree", lambda: False)
    monkeypatch.setattr(module, "_direct", functools.partial(calls.append))
    x, r = graph()
    eye = torch.eye(6, dtype=F64)
    assert torch.equal(backward_batched(r, x, eye), public_rows(r, x, eye))
    assert torch.equal(backward(r, x, eye[0]), public_rows(r, x, eye)[0])
    assert calls == []


def test_a_failing_private_entry_is_detected(monkeypatch):
    def broken(*args):
        raise TypeError("run_backward() takes 5 positional arguments but 7 were given")

    module._direct_calls_agree.cache_clear()
    monkeypatch.setattr(module, "_run_engine", broken)
    try:
        assert not module._direct_calls_agree()
        x, r = graph()
        eye = torch.eye(6, dtype=F64)
        assert torch.equal(backward_batched(r, x, eye), public_rows(r, x, eye))
    finally:
        module._direct_calls_agree.cache_clear()
    monkeypatch.undo()
    assert module._direct_calls_agree()


def test_a_cotangent_of_the_wrong_shape_gets_torch_error():
    x, r = graph()
    with pytest.raises(RuntimeError, match="Mismatch in shape"):
        backward(r, x, torch.ones(2, 3, dtype=F64))
    with pytest.raises(RuntimeError, match="Mismatch in shape"):
        backward_batched(r, x, torch.ones(4, 5, dtype=F64))


def test_direct_calls_under_a_device_context(monkeypatch):
    # torch.device(...) as a context is a TorchFunctionMode: plain tensors still take the direct calls.
    calls = []
    direct = module._direct
    monkeypatch.setattr(module, "_direct", lambda *args: calls.append(1) or direct(*args))
    x, r = graph()
    with torch.device("cpu"):
        torch.testing.assert_close(backward(r, x, torch.ones(6, dtype=F64)), public_rows(r, x, torch.eye(6, dtype=F64)).sum(0))
    assert calls == [1]
