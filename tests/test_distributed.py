"""Data parallelism: two gloo processes on loopback take the steps one process takes on the whole batch.

One start of two ranks (forked where the platform allows, float64, CPU) runs
every scenario in turn, so that the test pays for starting them once:

1. equality: 5 steps of ``TrustRegionOptimizer(..., data_parallel=True)`` on
   unequal shards (23 and 17 samples) equal 5 steps of one process on the
   whole batch to 1e-10, for cross-entropy with ``reduction="mean"`` (the
   global mean, not the mean of the shards' means) under Jacobi scaling with
   estimated column norms, for least squares (a sum) with ``max_trials=None``,
   and for a ``DistributedDataParallel``-wrapped module; radius, status and
   counters agree on both ranks;
2. failures: a closure that raises on one rank at the linearization, or
   returns a wrong-shaped residual on one rank at the trial, makes every rank
   raise (the failing one its own error, the other `DistributedStepError`
   naming it), with the parameters unchanged, and training then goes on;
   ranks that start from different parameters are refused.

The parent waits with a deadline and kills the ranks if it passes, so a hang
fails the test instead of blocking the suite.
"""

from __future__ import annotations

import datetime
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trustls import GaussNewtonModel, SteihaugCG, TrustRegion
from trustls.distributed import DataParallel, DistributedStepError
from trustls.optim import TrustRegionOptimizer

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")

WORLD, DEADLINE = 2, 90.0
F64 = torch.float64


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).to(F64)


def _data():
    generator = torch.Generator().manual_seed(1)
    X = torch.randn(40, 3, generator=generator, dtype=F64)
    y = torch.randint(0, 3, (40,), generator=generator)
    Y = torch.stack([torch.sin(X[:, 0]), X[:, 1] * X[:, 2], X[:, 0] - X[:, 2]], 1)
    return X, y, Y


def _shard(rank: int, tensor: torch.Tensor) -> torch.Tensor:
    return tensor[:23] if rank == 0 else tensor[23:]


def _train(net, opt, closure, steps=5):
    for _ in range(steps):
        opt.step(closure)
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def _scenarios(rank: int) -> None:
    X, y, Y = _data()
    Xk, yk, Yk = _shard(rank, X), _shard(rank, y), _shard(rank, Y)
    configs = {
        "cross_entropy": (GaussNewtonModel(loss="cross_entropy"), None, 1, lambda net, A, a, B: (net(A), a)),
        "least_squares": (GaussNewtonModel(), 1.0, None, lambda net, A, a, B: (net(A) - B).reshape(-1)),
    }
    for name, (model, x_scale, max_trials, closure) in configs.items():
        method = TrustRegion(model, solver=SteihaugCG(max_iter=4), x_scale=x_scale)
        reference_net = _net()
        reference = TrustRegionOptimizer(reference_net.parameters(), method, max_trials=max_trials)
        expected = _train(reference_net, reference, lambda: closure(reference_net, X, y, Y))
        net = _net()
        opt = TrustRegionOptimizer(net.parameters(), method, max_trials=max_trials, data_parallel=True)
        got = _train(net, opt, lambda: closure(net, Xk, yk, Yk))
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10, msg=name)
        mine, theirs = opt.state[next(net.parameters())], reference.state[next(reference_net.parameters())]
        assert mine["radius"] == pytest.approx(theirs["radius"], rel=1e-10), name
        counters = ("nit", "nfev", "njev", "inner_iterations", "products", "accepted_steps")
        assert [mine[k] for k in counters] == [theirs[k] for k in counters], name
        assert opt.status == reference.status

    # A module wrapped in DistributedDataParallel: its forward works, its gradient hooks never fire.
    net = _net()
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    method = TrustRegion(GaussNewtonModel(loss="cross_entropy"), solver=SteihaugCG(max_iter=4))
    opt = TrustRegionOptimizer(ddp.parameters(), method, data_parallel=DataParallel())
    got = _train(net, opt, lambda: (ddp(Xk), yk), steps=3)
    reference_net = _net()
    reference = TrustRegionOptimizer(reference_net.parameters(), method)
    expected = _train(reference_net, reference, lambda: (reference_net(X), y), steps=3)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10, msg="DDP")

    # Failures: every rank raises, nothing moves, and the next step works.
    net = _net()
    opt = TrustRegionOptimizer(net.parameters(), method, data_parallel=True)
    opt.step(lambda: (net(Xk), yk))
    before = [p.detach().clone() for p in net.parameters()]

    def raising():
        if rank == 1:
            raise KeyError("the batch went missing")
        return net(Xk), yk

    if rank == 1:
        with pytest.raises(KeyError, match="the batch went missing"):
            opt.step(raising)
    else:
        with pytest.raises(DistributedStepError, match=r"linearization .*rank\(s\) \[1\].*KeyError.*went missing"):
            opt.step(raising)
    calls = []

    def shrinking():  # rank 1 returns fewer outputs at the trial than at the linearization
        calls.append(None)
        rows = len(yk) - (len(calls) - 1) * (rank == 1)
        return net(Xk[:rows]), yk[:rows]

    if rank == 1:
        with pytest.raises(ValueError, match="same shape and dtype every time"):
            opt.step(shrinking)
    else:
        with pytest.raises(DistributedStepError, match=r"trial evaluation failed on rank\(s\) \[1\].*same shape"):
            opt.step(shrinking)
    for p, q in zip(net.parameters(), before):
        assert torch.equal(p, q)
    opt.step(lambda: (net(Xk), yk))
    assert opt.last.accepted

    # bfloat16 (found by a bug hunt): the half-precision products balance each rank's u by its own power
    # of two; applied after the sum over ranks, that factor scaled the other ranks' parts wrongly, the
    # ranks' radii drifted apart, and the third step refused them. Rank 1's residuals are 8 times larger.
    net = _net().to(torch.bfloat16)
    scale = 8.0 if rank == 1 else 1.0
    opt = TrustRegionOptimizer(net.parameters(), TrustRegion(GaussNewtonModel(), solver=SteihaugCG(max_iter=4),
                                                             x_scale=1.0), data_parallel=True)
    for _ in range(4):
        opt.step(lambda: (net(Xk.to(torch.bfloat16)) - scale * Yk.to(torch.bfloat16)).reshape(-1))
    radii = [None] * WORLD
    dist.all_gather_object(radii, opt.state[next(net.parameters())]["radius"])
    assert radii[0] == radii[1]

    # MINPACK's cosine test (review): ‖r‖ came from this rank's residual while g was summed over the
    # ranks, so the ranks disagreed on convergence and one stopped while the other waited in a collective.
    net = torch.nn.Linear(3, 1).to(F64)
    shard_targets = Yk[:, :1] * (10.0 if rank == 1 else 1.0)
    opt = TrustRegionOptimizer(net.parameters(), TrustRegion(GaussNewtonModel(), solver=SteihaugCG(),
                                                             gtol_test="cosine", gtol=1.0), data_parallel=True)
    opt.step(lambda: (net(Xk) - shard_targets).reshape(-1))
    statuses = [None] * WORLD
    dist.all_gather_object(statuses, opt.status)
    assert statuses[0] == statuses[1]

    # Ranks that start from different parameters are refused on every rank.
    net = _net()
    if rank == 1:
        with torch.no_grad():
            net[0].bias[0] += 1e-12
    opt = TrustRegionOptimizer(net.parameters(), method, data_parallel=True)
    with pytest.raises(ValueError, match="same parameters .* on every rank"):
        opt.step(lambda: (net(Xk), yk))


def _worker(rank: int, port: int) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=datetime.timedelta(seconds=30),
    )
    try:
        _scenarios(rank)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_on_loopback():
    # Forked ranks inherit the imported torch, trustls and torch._dynamo (which
    # torch.optim imports at an optimizer's first use): starting two fresh
    # interpreters would take most of the test's time.
    import torch._dynamo  # noqa: F401

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    context = mp.start_processes(_worker, args=(_free_port(),), nprocs=WORLD, join=False, start_method=method)
    deadline = time.monotonic() + DEADLINE
    try:
        while not context.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                pytest.fail(f"the ranks did not finish within {DEADLINE:g} s (a hang)")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
