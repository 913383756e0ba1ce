"""The ratio test: step acceptance and the trust-region radius update.

The ratio ρ = actual / predicted reduction measures how well the model
predicted the cost. The constants are those of scipy's ``trf`` and
MINPACK-style codes (Moré 1978; Nocedal & Wright 2006, Alg. 4.1):

* ρ < ¼: the model was poor; the radius becomes ¼‖p‖ (shrinking to the
  step actually taken, not the old radius, so a short interior step that
  failed shrinks the region at once);
* ρ > ¾ and the step reached the boundary (‖p‖ > 0.95Δ): double the radius;
* otherwise keep it.

A step is taken when the cost decreased (scipy's trf; the η = 0 choice of
Nocedal & Wright, Alg. 4.1, with Thm 4.5's guarantee).

Near a solution both reductions fall below the rounding error of the cost,
and their ratio is noise. Following Conn, Gould & Toint (2000, §17.4.2) both
are shifted by δ before the ratio is formed. When the cost changed by no more
than ±δ and the shifted ratio says the model was right, no further decrease is
measurable by comparing costs. In float32 and float64 the trial point is then
taken, the Gauss-Newton step being a better estimate of the minimizer than a
comparison of two costs within their rounding error (Roszman1's last step
predicts 4.8e-19 on a cost of 2.5e-4); the computed cost may then exceed the
previous one by at most δ. Such an uphill step is taken only if it is shorter
(in x) than the last uphill step taken at the noise floor since the last
decrease larger than δ: Gauss-Newton steps refining a solution contract, while
steps that wander in a flat valley, driven by the rounding of J and r, need
not, and taking them went back and forth between two points within δ of each
other until ``max_nfev`` on float32 problems (the step from a point is the same
every time it is visited, so a cycle repeats an uphill step of the same
length). One that is not shorter is not taken and the radius shrinks to ¼ of
it, as after a poor ratio. On the NIST StRD self-check this leaves every
float64 result unchanged. The controller stops there (status
``NOISE_FLOOR``) once the step is also below eps^(3/4) relative to x (the
level of `SteihaugCG`'s near-exact solves): a cost resolved to δ ≈ eps·f
certifies only about half the digits of x, and the Gauss-Newton steps inside
the noise band still add the rest. On the NIST StRD self-check, stopping at
the first noise-floor step gave a mean of 9.5 correct digits, stopping once
the step is below √eps 9.6–9.7, below eps^(3/4) 10.2, for about 6 % more
evaluations. In float16 and bfloat16 (``strict``), whose allowance is a sizeable
fraction of the cost, only a decrease is ever taken, so the accepted costs
decrease monotonically; a step at the noise floor shrinks the radius. δ = min(``rounding_noise``·eps, √eps/2)·f with
eps the machine epsilon of x's dtype and f the cost: 1000·eps·f in float64 and
float32, and a few per cent of f at most in float16 and bfloat16, whose eps
(2⁻¹⁰, 2⁻⁷) would otherwise make 1000·eps exceed the cost itself.

Every function here works on tensors of any shape, elementwise: 0-d for one
problem, ``(B,)`` for a batch (`TrustRegion.solve_batch`), so no value is read
by the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from trustls._elementwise import isfinite, where

__all__ = ["RadiusPolicy", "noise_level"]


def noise_level(rounding_noise: float, eps: float) -> float:
    """The relative rounding allowance δ/f: min(rounding_noise·eps, √eps/2) (module docstring).

    Examples:
        >>> noise_level(1000.0, 2.0**-52) == 1000 * 2.0**-52, noise_level(1000.0, 2.0**-7)
        (True, 0.04419417382415922)
    """
    return min(rounding_noise * eps, 0.5 * math.sqrt(eps))


@dataclass(frozen=True)
class RadiusPolicy:
    """Constants of the ratio test (see the module docstring for their source), and the initial radius.

    ``initial_factor`` sets Δ₀ = factor·‖x0 / x_scale‖ (factor itself when that
    is 0) unless `TrustRegion`'s ``initial_radius`` is given: MINPACK's
    ``factor`` (Moré, Garbow & Hillstrom 1980), 100 in scipy's ``"lm"``; 1 by
    default, also for `trustls.least_squares`' ``method="lm"``, whose radius
    updates are not MINPACK's (its docstring says why).

    Examples:
        >>> import torch
        >>> RadiusPolicy().update(torch.tensor(1.0), ratio=torch.tensor(0.9), step_norm=torch.tensor(1.0),
        ...                       hits_boundary=torch.tensor(True))
        tensor(2.)
    """

    shrink_below: float = 0.25
    shrink_factor: float = 0.25
    expand_above: float = 0.75
    expand_factor: float = 2.0
    boundary_fraction: float = 0.95
    rounding_noise: float = 1000.0
    initial_factor: float = 1.0

    def __post_init__(self):
        for name in ("shrink_below", "shrink_factor", "expand_above", "boundary_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
        if not self.shrink_below <= self.expand_above:
            raise ValueError(
                f"shrink_below must not exceed expand_above, got {self.shrink_below!r} > {self.expand_above!r}"
            )
        if isinstance(self.expand_factor, bool) or not isinstance(self.expand_factor, (int, float)) or not (
            1 < self.expand_factor < math.inf
        ):
            raise ValueError(f"expand_factor must be a finite number above 1, got {self.expand_factor!r}")
        if isinstance(self.rounding_noise, bool) or not isinstance(self.rounding_noise, (int, float)) or not (
            0 <= self.rounding_noise < math.inf
        ):
            raise ValueError(f"rounding_noise must be a finite non-negative number, got {self.rounding_noise!r}")
        if isinstance(self.initial_factor, bool) or not isinstance(self.initial_factor, (int, float)) or not (
            0 < self.initial_factor < math.inf
        ):
            raise ValueError(f"initial_factor must be a finite positive number, got {self.initial_factor!r}")

    @staticmethod
    def ratio(actual_reduction: Tensor, predicted_reduction: Tensor, noise: Tensor | float = 0.0) -> Tensor:
        """ρ = (actual + δ) / (predicted + δ); 1 when both vanish, 0 when the model predicts no decrease."""
        predicts_decrease = predicted_reduction > 0
        safe = where(predicts_decrease, predicted_reduction + noise, 1.0)
        both_zero = (predicted_reduction == 0) & (actual_reduction == 0)
        return where(predicts_decrease, (actual_reduction + noise) / safe, where(both_zero, 1.0, 0.0))

    def moves(
        self,
        actual_reduction: Tensor,
        ratio: Tensor,
        noise: Tensor | float,
        *,
        strict: bool = False,
        contracts: Tensor | bool = True,
    ) -> Tensor:
        """Whether the trial point is taken: the cost decreased, or (unless ``strict``) it is at the
        noise floor and the step ``contracts`` (is shorter than the last uphill step taken there:
        module docstring)."""
        if strict:
            return actual_reduction > 0
        return (actual_reduction > 0) | (self.at_noise_floor(actual_reduction, ratio, noise) & contracts)

    def at_noise_floor(self, actual_reduction: Tensor, ratio: Tensor, noise: Tensor | float) -> Tensor:
        """No decrease, but a change within ±δ that the model predicted well: nothing more is measurable."""
        return (actual_reduction <= 0) & (abs(actual_reduction) <= noise) & (ratio > self.shrink_below)

    def update(self, radius: Tensor, *, ratio: Tensor, step_norm: Tensor, hits_boundary: Tensor | bool) -> Tensor:
        """The radius for the next trial."""
        if isinstance(radius, Tensor):
            hits_boundary = torch.as_tensor(hits_boundary, device=radius.device)
        else:
            hits_boundary = bool(hits_boundary)
        on_boundary = hits_boundary | (step_norm > self.boundary_fraction * radius)
        expanded = where((ratio > self.expand_above) & on_boundary, self.expand_factor * radius, radius)
        return where(ratio < self.shrink_below, self.shrink_factor * step_norm, expanded)

    def after_failure(self, radius: Tensor, step_norm: Tensor) -> Tensor:
        """The radius after a trial whose cost was not finite: ¼ of the step, or of the radius
        when the step itself is not finite (the subproblem overflowed)."""
        return self.shrink_factor * where(isfinite(step_norm), step_norm, radius)
