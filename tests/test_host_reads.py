"""How often the host reads a device value during a solve (issue 12: scalars stay tensors).

On a GPU every read of a tensor's value (``.item()``, ``float()``, ``bool()``,
``.tolist()``) waits for the device. The controller reads once per trial (the
decision), once per accepted point (the gradient test), `SteihaugCG` once per
CG iteration, `DenseLstsq` once per point (the secular equation runs on the
host). These tests count the reads on the CPU, where the same code runs, by
wrapping the tensor methods that read.
"""

import contextlib

import pytest
import torch

from trustls import GaussNewtonModel, TrustRegion
from trustls.problems.structured import extended_rosenbrock

READS = ("tolist", "item", "__float__", "__int__", "__bool__", "__index__")


@contextlib.contextmanager
def counting_reads():
    counts = {"reads": 0}
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def wrap(method):
        def counted(self, *args, **kwargs):
            counts["reads"] += 1
            return method(self, *args, **kwargs)

        return counted

    for name, method in saved.items():
        setattr(torch.Tensor, name, wrap(method))
    try:
        yield counts
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def solve_counting(method, problem):
    state = method.init(problem.residual, problem.x0)
    with counting_reads() as counts:
        while state.status is None:
            state = method.step(problem.residual, state)
    return method.result(state), counts["reads"]


@pytest.mark.parametrize("x_scale", ["jac", 1.0])
def test_cg_reads_once_per_trial_point_and_cg_iteration(x_scale):
    problem = extended_rosenbrock(100)
    method = TrustRegion(GaussNewtonModel(), solver="cg", x_scale=x_scale)
    result, reads = solve_counting(method, problem)
    trials = result.nfev - 1
    accepted = result.njev - 1
    # The matrix-free Jacobi default reads the spread of its column-norm estimate once
    # per check, at iterations 0, 8, 64, … while it keeps T = I (well scaled: this J).
    checks = sum(1 for k in (0, 8, 64, 512) if k <= accepted) if x_scale == "jac" else 0
    # A rejected trial answered from the stored CG path reads once more (the crossing's τ).
    assert reads <= trials + accepted + result.inner_iterations + (trials - accepted) + checks
    assert reads >= trials + accepted + result.inner_iterations + checks


def test_lstsq_reads_once_per_trial_and_twice_per_point():
    problem = extended_rosenbrock(100)
    method = TrustRegion(GaussNewtonModel(), solver="lstsq")
    result, reads = solve_counting(method, problem)
    trials = result.nfev - 1
    points = result.njev - 1
    assert result.inner_iterations > 0  # secular iterations ran, and read nothing
    assert reads == trials + 2 * points


def test_optimizer_step_reads_a_fixed_few_besides_cg():
    # Per step beyond one read per CG iteration: the closure's outputs are finite, the
    # gradient is finite (the optimizer's check and the controller's), the cost for the
    # state, and the trial's decision. The cost the step returns comes from that decision.
    from trustls import TrustRegionOptimizer

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    X = torch.randn(64, 3, dtype=torch.float64)
    Y = torch.sin(X.sum(1, keepdim=True))
    opt = TrustRegionOptimizer(net.parameters(), TrustRegion(GaussNewtonModel(), solver="cg", x_scale=1.0))

    def closure():
        return (net(X) - Y).reshape(-1)

    opt.step(closure)  # the first step also tests the lean graph once
    for _ in range(4):
        with counting_reads() as counts:
            cost = opt.step(closure)
        assert counts["reads"] == opt.last.inner_iterations + 5
        assert cost == opt.last.previous_cost
