"""Fault injection against `TrustRegionOptimizer` (GitHub issue 11).

Each example trains a small network (a linear layer or a one-hidden-layer MLP with tanh,
sin or sigmoid, in float16, bfloat16, float32 or float64) for a few steps, one fresh
mini-batch per step, with ``max_trials`` 1, 2 or ``None``, and one fault:

* ``nonfinite_region``: the closure returns NaN, inf or -inf where a seeded hash of the
  parameters says so (at trial points, or at the current parameters);
* ``nan_jacobian``: the residual stays finite, its derivative is NaN in such a region;
* ``raise_on_call``: the closure raises `InjectedFault` on its k-th call of step s;
* ``overflow``: the residual times a factor near the dtype's largest power of ten.

Every step is checked by `check_optimizer_step`, the optimizer half of the contract in
``tests/fault_contract.py``: costs reported match recomputations, parameters are bitwise
unchanged after a rejected or failed step, an accepted step does not raise the batch cost,
and the state_dict loads with ``weights_only=True``. Profiles as in ``test_faults.py``
(``TRUSTLS_FAULTS_PROFILE=thorough``).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from fault_contract import check_optimizer_step, fault_settings
from hypothesis import given
from hypothesis import strategies as st
from test_faults import DTYPES, region

from trustls import GaussNewtonModel, SteihaugCG, TrustRegion, TrustRegionOptimizer

ACTIVATIONS = {"tanh": torch.tanh, "sin": torch.sin, "sigmoid": torch.sigmoid}


@dataclasses.dataclass(frozen=True)
class Network:
    inputs: int
    hidden: int  # 0: a single linear layer
    outputs: int
    activation: str
    batch: int
    seed: int

    def build(self, dtype: torch.dtype) -> torch.nn.Module:
        layers = [torch.nn.Linear(self.inputs, self.outputs)] if self.hidden == 0 else [
            torch.nn.Linear(self.inputs, self.hidden), torch.nn.Linear(self.hidden, self.outputs)
        ]  # fmt: skip
        net = torch.nn.ModuleList(layers)
        generator = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))
        return net.to(dtype)

    def forward(self, net: torch.nn.Module, X: torch.Tensor) -> torch.Tensor:
        if self.hidden == 0:
            return net[0](X)
        return net[1](ACTIVATIONS[self.activation](net[0](X)))

    def batch_data(self, step: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(1000 * self.seed + step)
        X = torch.randn(self.batch, self.inputs, generator=generator)
        Y = torch.sin(X.sum(dim=1, keepdim=True).repeat(1, self.outputs))
        return X.to(dtype), Y.to(dtype)


@dataclasses.dataclass(frozen=True)
class OptimizerFault:
    kind: str
    seed: int = 0
    fraction: float = 0.0
    value: float = math.nan
    step: int = 0
    raise_on: int | None = None
    power: float = 0.0


def closure_for(network: Network, net: torch.nn.Module, fault: OptimizerFault, step: int, dtype: torch.dtype):
    X, Y = network.batch_data(step, dtype)
    params = list(net.parameters())

    def closure() -> torch.Tensor:
        r = (network.forward(net, X) - Y).reshape(-1)
        if fault.kind in ("nonfinite_region", "nan_jacobian"):
            flat = torch.cat([p.reshape(-1) for p in params])
            inside = region(flat, fault.seed, fault.fraction)
            if fault.kind == "nonfinite_region":
                return torch.where(inside, fault.value, r)
            on = inside.to(dtype)
            bump = (flat - flat.detach()).sum() * on + (1 - on)  # value 0 (inside) or 1; derivative `on`
            return r + 0.0 * torch.sqrt(bump)
        if fault.kind == "overflow":
            return 10.0 ** math.floor(fault.power * math.log10(torch.finfo(dtype).max)) * r
        return r

    return closure


def optimizer_faults() -> st.SearchStrategy:
    seeds = st.integers(0, 2**16)
    by_kind = {
        "none": st.just(OptimizerFault("none")),
        "nonfinite_region": st.builds(OptimizerFault, st.just("nonfinite_region"), seeds, st.sampled_from([0.2, 0.5]),
                                      st.sampled_from([math.nan, math.inf, -math.inf])),
        "nan_jacobian": st.builds(OptimizerFault, st.just("nan_jacobian"), seeds, st.sampled_from([0.2, 0.5])),
        "raise_on_call": st.builds(OptimizerFault, st.just("raise_on_call"), step=st.integers(0, 3),
                                   raise_on=st.integers(1, 4)),
        "overflow": st.builds(OptimizerFault, st.just("overflow"), power=st.sampled_from([0.3, 0.5, 0.8, 0.95])),
    }  # fmt: skip
    return st.sampled_from(sorted(by_kind)).flatmap(by_kind.__getitem__)


STRATEGIES = {
    "network": st.builds(Network, st.integers(1, 3), st.integers(0, 4), st.integers(1, 2),
                         st.sampled_from(sorted(ACTIVATIONS)), st.integers(2, 8), st.integers(0, 2**16)),
    "dtype": st.sampled_from(DTYPES),
    "fault": optimizer_faults(),
    "max_trials": st.sampled_from([1, 2, None]),
    "cg_iterations": st.sampled_from([None, 3]),
    "steps": st.integers(1, 5),
}  # fmt: skip


@fault_settings(80)
@given(**STRATEGIES)
def test_optimizer_keeps_the_contract(network, dtype, fault, max_trials, cg_iterations, steps):
    net = network.build(dtype)
    solver = "cg" if cg_iterations is None else SteihaugCG(max_iter=cg_iterations)
    opt = TrustRegionOptimizer(net.parameters(), TrustRegion(GaussNewtonModel(), solver), max_trials=max_trials)
    for step in range(steps):
        raise_on = fault.raise_on if fault.kind == "raise_on_call" and fault.step == step else None
        check_optimizer_step(opt, closure_for(network, net, fault, step, dtype), raise_on=raise_on)
