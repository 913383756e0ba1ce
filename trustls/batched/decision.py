"""The decide phase of one round of `solve_batch`, elementwise over the K running problems.

`decide` is `TrustRegion.step`'s decision for one trial of each of K
problems, on (K,) tensors: `trustls.decision.trial_decision` (the ratio
test, the radius update, ftol, xtol and the noise floor), then what the
single controller decides around it (``gtol`` at an accepted point, a radius
below the rounding of x, the budget), and the failures (a trial cost or a
gradient that is not finite), so that the host reads nothing of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from trustls.batched.fields import BatchStep
from trustls.batched.objective import Linearized
from trustls.decision import trial_decision
from trustls.radius import noise_level
from trustls.result import Status
from trustls.trial import converged_at_resolution

if TYPE_CHECKING:
    from trustls.trust_region import TrustRegion

__all__ = ["RUNNING", "decide"]

RUNNING = -1  # the status of a problem still iterating (not a Status code)


def decide(
    controller: TrustRegion,
    cost: Tensor,
    new: Linearized,
    step: BatchStep,
    radius: Tensor,
    p_norm: Tensor,
    x_norm: Tensor,
    x_scaled_norm: Tensor,
    nfev: Tensor,
    max_nfev: int,
    eps: float,
    tolerances: tuple[float, float],
    noise_step: Tensor,
    cut: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """`TrustRegion.step`'s decisions for one trial of K problems.

    Returns ``(accepted, linearized, status, radius, noise_step, cut)``: the
    trials taken, those linearized (taken, or failed for a non-finite
    gradient: `njev` counts them), the status codes (``RUNNING`` where the
    problem goes on), the next radii, the noise floor's step bounds
    (`trustls.decision.trial_decision`) and where a non-finite trial cut the
    radius (``ftol`` and ``xtol`` then do not stop a boundary step:
    `trustls.trial`).
    """
    policy = controller.radius_policy
    ftol, xtol = tolerances
    # The single solve's decision (ratio test, radius update, ftol/xtol, the noise floor), elementwise.
    decision = trial_decision(
        policy, cost=cost, trial_cost=new.cost, predicted_reduction=step.predicted_reduction, step_norm=step.norm,
        radius=radius, hits_boundary=step.hits_boundary, x_step_norm=p_norm, x_norm=x_norm, eps=eps,
        ftol=ftol, xtol=xtol, noise_step=noise_step,
    )
    finite, moves, next_radius = torch.isfinite(new.cost), decision.moves, decision.next_radius
    code = torch.where(decision.code != 0, decision.code, RUNNING)  # RUNNING where no test holds
    failed_radius = policy.after_failure(radius, step.norm)
    # A point whose gradient is not finite is a failed trial: shrink and retry from x.
    gradient_finite = torch.isfinite(new.gradient).all(0)
    failed = moves & ~gradient_finite
    accepted = moves & gradient_finite
    code = torch.where(failed, RUNNING, code)
    step_test = (code == Status.FTOL.value) | (code == Status.XTOL.value) | (code == Status.FTOL_XTOL.value)
    significant = decision.actual_reduction > noise_level(policy.rounding_noise, eps) * cost
    radius_limited = cut | ((decision.ratio > policy.expand_above) & significant)  # as `trustls.trial`
    code = torch.where(accepted & step.hits_boundary & radius_limited & step_test, RUNNING, code)
    cut = (cut | ~finite | failed) & ~(accepted & ~step.hits_boundary) & ~(finite & ~moves)  # as `trustls.trial`
    next_radius = torch.where(failed, failed_radius, next_radius)
    if controller.gtol is not None:
        converged = accepted & (code == RUNNING) & (new.gradient.abs().amax(0).double() < controller.gtol)
        code = torch.where(converged, Status.GTOL.value, code)
    # No step longer than the rounding of x remains: converged to working precision
    # after a finite trial, an unusable region after a non-finite one (cost or gradient).
    collapsed = ~accepted & (code == RUNNING) & (next_radius <= eps * (1.0 + x_scaled_norm))
    usable = finite & ~failed
    at_resolution = converged_at_resolution(controller.xtol).value  # XTOL, or NOISE_FLOOR with xtol=None
    code = torch.where(collapsed, torch.where(usable, at_resolution, Status.RADIUS_COLLAPSED.value), code)
    code = torch.where((code == RUNNING) & (nfev >= max_nfev), Status.MAX_NFEV.value, code)
    return accepted, moves, code, next_radius, torch.where(accepted, decision.noise_step, noise_step), cut
