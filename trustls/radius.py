"""Trust-region radius update and step acceptance.

The ratio ρ = actual / predicted reduction measures how well the model
predicted the cost. The constants are those of scipy's ``trf`` and
MINPACK-style codes (Moré 1978; Nocedal & Wright 2006, Alg. 4.1):

* ρ < ¼: the model was poor; the radius becomes ¼‖p‖ (shrinking to the
  step actually taken, not the old radius, so a short interior step that
  failed shrinks the region at once);
* ρ > ¾ and the step reached the boundary (‖p‖ > 0.95Δ): double the radius;
* otherwise keep it.

A step is accepted when the actual reduction is positive (scipy's trf; the
η = 0 choice of Nocedal & Wright, Alg. 4.1, with Thm 4.5's guarantee).

Near a solution both reductions fall below the rounding error of the cost,
and their ratio is noise. Following Conn, Gould & Toint (2000, §17.4.2) both
are shifted by δ = ``rounding_noise``·eps·cost before the ratio is formed, and a
step whose actual change lies within ±δ is accepted when the shifted ratio
says the model was right; the controller then stops, since no further
decrease is measurable (status ``NOISE_FLOOR``). On the NIST StRD self-check
this raises ``"lstsq"``'s mean LRE from 9.03 to 9.5 (Roszman1 rejected a
Gauss-Newton step predicting 4.8e-19 on a cost of 2.5e-4).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RadiusPolicy"]


@dataclass(frozen=True)
class RadiusPolicy:
    """Constants of the ratio test (see the module docstring for their source).

    Examples:
        >>> RadiusPolicy().update(1.0, ratio=0.9, step_norm=1.0, hits_boundary=True)
        2.0
    """

    shrink_below: float = 0.25
    shrink_factor: float = 0.25
    expand_above: float = 0.75
    expand_factor: float = 2.0
    boundary_fraction: float = 0.95
    rounding_noise: float = 1000.0

    @staticmethod
    def ratio(actual_reduction: float, predicted_reduction: float, noise: float = 0.0) -> float:
        """ρ = (actual + δ) / (predicted + δ); 1 when both vanish, 0 when the model predicts no decrease."""
        if predicted_reduction > 0:
            return (actual_reduction + noise) / (predicted_reduction + noise)
        if predicted_reduction == actual_reduction == 0:
            return 1.0
        return 0.0

    def accepts(self, actual_reduction: float, ratio: float, noise: float) -> bool:
        """A decrease, or a change within the rounding noise δ that the model predicted well."""
        return actual_reduction > 0 or (abs(actual_reduction) <= noise and ratio > self.shrink_below)

    def update(self, radius: float, *, ratio: float, step_norm: float, hits_boundary: bool) -> float:
        """The radius for the next trial."""
        if ratio < self.shrink_below:
            return self.shrink_factor * step_norm
        if ratio > self.expand_above and (hits_boundary or step_norm > self.boundary_fraction * radius):
            return self.expand_factor * radius
        return radius
