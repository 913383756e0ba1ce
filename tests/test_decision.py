"""The decide phase gives the same bits on tensors (the device path) and on Python floats (the CPU path)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trustls.decision import Decision, host_floats, trial_decision
from trustls.radius import RadiusPolicy
from trustls.result import Status

F64 = torch.float64
EPS = torch.finfo(F64).eps

# Values where the tests switch: zero, the noise band, tiny and huge, non-finite costs.
special = st.sampled_from([0.0, 1e-300, 1e-17, 1e-12, 0.25, 1.0, 3.0, 1e12, 1e300, math.inf, -math.inf, math.nan])
number = st.one_of(special, st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))
positive = st.one_of(st.sampled_from([0.0, 1e-300, 1e-12, 1.0, 1e12, math.inf]), st.floats(0.0, 1e6))


def decide(values, **options):
    cost, trial_cost, predicted, step_norm, radius, hits, x_step_norm, x_norm = values
    return trial_decision(
        RadiusPolicy(), cost=cost, trial_cost=trial_cost, predicted_reduction=predicted, step_norm=step_norm,
        radius=radius, hits_boundary=hits, x_step_norm=x_step_norm, x_norm=x_norm, eps=EPS, **options,
    )


def same(a, b) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@settings(derandomize=True, max_examples=400, deadline=None)
@given(
    cost=positive, trial_cost=st.one_of(positive, special), predicted=number, step_norm=positive,
    radius=positive, hits=st.booleans(), x_step_norm=positive, x_norm=positive,
    ftol=st.sampled_from([0.0, 1e-8]), xtol=st.sampled_from([0.0, 1e-8]), strict=st.booleans(),
)
def test_floats_and_tensors_decide_alike(
    cost, trial_cost, predicted, step_norm, radius, hits, x_step_norm, x_norm, ftol, xtol, strict
):
    values = [cost, trial_cost, predicted, step_norm, radius, hits, x_step_norm, x_norm]
    options = dict(ftol=ftol, xtol=xtol, strict=strict)
    on_host = decide(values, **options)
    tensors = [torch.tensor(v, dtype=torch.bool if isinstance(v, bool) else F64) for v in values]
    on_device, _ = decide(tensors, **options).read()
    assert not isinstance(on_host.ratio, torch.Tensor)
    for name in ("trial_cost", "actual_reduction", "predicted_reduction", "ratio", "next_radius", "step_norm"):
        assert same(float(getattr(on_host, name)), float(getattr(on_device, name))), name
    assert int(on_host.code) == int(on_device.code)
    assert bool(on_host.moves) == bool(on_device.moves > 0)


def test_a_trial_that_is_not_finite_fails_on_the_host():
    decision = decide([2.0, math.nan, 1.0, 0.5, 1.0, True, 0.5, 1.0], ftol=1e-8, xtol=1e-8)
    assert decision.trial_cost == math.inf and decision.actual_reduction == -math.inf
    assert decision.ratio == 0.0 and not decision.moves and decision.next_radius == 0.125
    assert decision.status is None


def test_a_good_boundary_step_doubles_the_radius_on_the_host():
    decision = decide([2.0, 1.0, 1.0, 1.0, 1.0, True, 1.0, 10.0], ftol=1e-8, xtol=1e-8)
    assert decision.ratio == 1.0 and decision.moves and decision.next_radius == 2.0


def test_ftol_on_the_host():
    decision = decide([1.0, 1.0 - 1e-12, 1e-12, 0.1, 1.0, False, 1e-3, 1.0], ftol=1e-8, xtol=1e-8)
    assert decision.status == Status.FTOL


def test_read_of_a_host_decision_returns_it_and_reads_the_extras():
    decision = decide([2.0, 1.0, 1.0, 1.0, 1.0, True, 1.0, 10.0], ftol=0.0, xtol=0.0)
    read, extra = decision.read(torch.tensor(3.0, dtype=F64), 4)
    assert read is decision and extra == [3.0, 4.0]
    assert isinstance(decision, Decision)


@pytest.mark.parametrize("values", [[], [1, 2.5], [torch.tensor(2.0), 1, torch.tensor(True)]])
def test_host_floats(values):
    assert host_floats(*values) == [float(v) for v in values]
