"""The decide phase of a trial: ratio test, radius update and termination tests, as tensors.

`trial_decision` combines `RadiusPolicy` and `trustls.termination` into the
outcome of one trial, elementwise on tensors (0-d for one problem, ``(B,)``
for a batch) or on Python floats (`trustls._elementwise`). On an accelerator
the controller reads the outcome once per trial (`Decision.read`) and a
batched controller keeps it on the device; on the CPU, where a read costs
nothing but every 0-d tensor operation costs its dispatch, the controller reads
the inputs once and decides in floats, with the same arithmetic.

A trial whose cost is not finite (NaN or inf residuals at the trial point) is
a failure: it is not taken, its ratio is 0 and the radius shrinks to ¼ of the
step (of the radius when the step itself is not finite).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from trustls._elementwise import isfinite, where
from trustls.radius import RadiusPolicy, noise_level
from trustls.result import Status
from trustls.termination import step_termination

__all__ = ["Decision", "host_floats", "trial_decision"]


@dataclass(frozen=True)
class Decision:
    """The outcome of a trial, as float64 tensors (or, after `read`, Python values).

    Attributes:
        trial_cost: the cost at the trial point, inf when it was not finite.
        actual_reduction: cost − trial cost (−inf for a failed trial).
        predicted_reduction: the model's decrease.
        ratio: the ratio test's ρ (0 for a failed trial).
        next_radius: the radius for the next trial.
        step_norm: the step's length in the trust region's norm.
        code: the `Status` code a termination test gives (0: none).
        moves: whether the trial point is taken.
        noise_step: the bound on the next uphill step at the noise floor (`trial_decision`).
    """

    trial_cost: Tensor | float
    actual_reduction: Tensor | float
    predicted_reduction: Tensor | float
    ratio: Tensor | float
    next_radius: Tensor | float
    step_norm: Tensor | float
    code: Tensor | float
    moves: Tensor | float
    noise_step: Tensor | float

    def read(self, *extra: Tensor) -> tuple[Decision, list[float]]:
        """The host's copy, in one read, with ``extra`` 0-d tensors (or Python numbers) read alongside."""
        if not isinstance(self.trial_cost, Tensor):  # decided in floats
            return self, host_floats(*extra)
        k = len(fields(self))
        values = host_floats(*(getattr(self, f.name) for f in fields(self)), *extra)
        return Decision(*values[:k]), values[k:]

    @property
    def status(self) -> Status | None:
        """The termination test's `Status` (of a read decision), or ``None``."""
        return Status(int(self.code)) if self.code else None


def _as_tensor(value: float | Tensor, like: Tensor | float) -> Tensor | float:
    """A float64 tensor on ``like``'s device (a host float written by a fill, not a copy); a float
    when ``like`` is one."""
    if not isinstance(like, Tensor):
        return float(value)
    if isinstance(value, Tensor):
        return value.to(dtype=torch.float64)
    return torch.full((), float(value), dtype=torch.float64, device=like.device)


def host_floats(*values: Tensor | float) -> list[float]:
    """``values`` as Python floats, with one read for all the tensors among them."""
    tensors = [v.to(torch.float64) for v in values if isinstance(v, Tensor)]
    read = iter(torch.stack(tensors).tolist() if tensors else [])
    return [next(read) if isinstance(v, Tensor) else float(v) for v in values]


def trial_decision(
    policy: RadiusPolicy,
    *,
    cost: Tensor,
    trial_cost: Tensor,
    predicted_reduction: float | Tensor,
    step_norm: float | Tensor,
    radius: float | Tensor,
    hits_boundary: bool | Tensor,
    x_step_norm: Tensor,
    x_norm: Tensor,
    eps: float,
    ftol: float,
    xtol: float,
    strict: bool = False,
    noise_step: float | Tensor = math.inf,
) -> Decision:
    """The outcome of a trial (module docstring).

    Args:
        policy: the ratio test's constants.
        cost: the cost at the current point (float64).
        trial_cost: the cost at the trial point (float64; NaN or inf for a failure).
        predicted_reduction: the model's decrease along the step.
        step_norm: the step's length in the trust region's norm.
        radius: the radius the step was computed for.
        hits_boundary: whether the step lies on the trust region's boundary.
        x_step_norm: ‖p‖ in x, for xtol; x_norm: ‖x‖.
        eps: the machine epsilon of x's dtype (the rounding allowance, and the
            noise floor's step test ‖p‖ ≤ eps^(3/4)·(eps^(3/4) + ‖x‖)).
        ftol, xtol: the effective tolerances (0 disables).
        strict: take only decreases, never a step at the noise floor (half precision).
        noise_step: ‖p‖ in x of the last uphill step taken at the noise floor since the
            last measurable decrease (inf: none). An uphill step at the noise floor is
            taken only if it is shorter than that (`trustls.radius`); the returned
            `Decision.noise_step` is the bound for the next trial.
    """
    finite = isfinite(trial_cost)
    trial_cost = where(finite, trial_cost, math.inf)
    actual = where(finite, cost - trial_cost, -math.inf)
    predicted = _as_tensor(predicted_reduction, cost)
    step_norm = _as_tensor(step_norm, cost)
    radius = _as_tensor(radius, cost)
    x_step_norm, x_norm = _as_tensor(x_step_norm, cost), _as_tensor(x_norm, cost)
    noise = noise_level(policy.rounding_noise, eps) * cost
    ratio = where(finite, policy.ratio(actual, predicted, noise), 0.0)
    next_radius = where(
        finite,
        policy.update(radius, ratio=ratio, step_norm=step_norm, hits_boundary=hits_boundary),
        policy.after_failure(radius, step_norm),
    )
    code = where(finite, step_termination(actual, cost, x_step_norm, x_norm, ratio, ftol, xtol), 0)
    # At the noise floor, stop once the step is also below eps^(3/4) relative to x (`trustls.radius`).
    at_floor = finite & policy.at_noise_floor(actual, ratio, noise)
    small = x_step_norm <= eps**0.75 * (eps**0.75 + x_norm)
    code = where(at_floor & small & (code == 0), Status.NOISE_FLOOR.value, code)
    # Uphill steps at the noise floor are taken while they contract (`trustls.radius`); one
    # that does not is not taken, and the region shrinks to ¼ of it as after a poor ratio.
    contracts = x_step_norm < noise_step
    moves = finite & policy.moves(actual, ratio, noise, strict=strict, contracts=contracts)
    stalled = at_floor & ((x_step_norm >= noise_step) | strict)
    next_radius = where(stalled, policy.shrink_factor * step_norm, next_radius)
    noise_step = where(at_floor & moves, x_step_norm, where(actual > noise, math.inf, noise_step))
    return Decision(trial_cost, actual, predicted, ratio, next_radius, step_norm, code, moves, noise_step)
