"""The stored path of a Steihaug-Toint CG solve, and the steps it gives for smaller radii.

CG's iterates do not depend on the radius until they reach the boundary, so
the path computed for radius Δ contains the solution for every smaller radius:
its first crossing of the smaller sphere. Along each segment p_k + σ(p_{k+1} −
p_k) the model is the quadratic m_k + σ·slope_k + ½σ²·curvature_k, recorded
while CG ran, so a step for a smaller radius costs no product. By default
(`SteihaugCG`'s ``path_memory=None``) the path is kept, up to
`DEFAULT_PATH_MEMORY` elements, only for matrix-free operators
(`LinearOperator.is_matrix_free`: a product costs a gradient evaluation or
more); for a stored matrix a product costs about as much memory traffic as
keeping an iterate, so rerunning CG after a rejection is as fast.

`normalizing_factor` is the power of two that keeps CG's squared norms of a
float32 gradient within range (`trustls.subproblem.steihaug_cg`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from trustls.subproblem.base import Step, boundary_step_length

__all__ = ["DEFAULT_PATH_MEMORY", "CGPath", "normalizing_factor", "step_from_path"]

# Elements of the stored CG path for matrix-free operators (32 MiB in float64).
DEFAULT_PATH_MEMORY = 2**22


def normalizing_factor(largest: float, radius: float, dtype: torch.dtype) -> float:
    """A power of two c with ‖c·g‖∞ in [½, 1) when ‖g‖∞ lies outside [2⁻ᵏ, 2ᵏ], else 1.

    k is a quarter of the dtype's largest binary exponent (32 in float32, 256
    in float64), so that ‖g‖² and dᵀBd neither overflow nor underflow. CG's
    iterates scale by c as well and stay within c·Δ, so c is taken only if
    c·Δ also lies in [2⁻ᵏ, 2ᵏ] (or Δ = ∞): with Jacobi scaling (B of unit
    diagonal) the iterates are then of the size of c·g. Scaling by a power of two is exact:
    CG in the normalized units computes the same iterates, times c, bit for bit.

    Args:
        largest: ‖g‖∞.
        radius: Δ.
        dtype: g's dtype.

    Examples:
        >>> normalizing_factor(1e19, 1.0, torch.float32), normalizing_factor(1e19, 1.0, torch.float64)
        (1.0, 1.0)
        >>> normalizing_factor(1e19, 1e19, torch.float32) == 2.0**-64
        True
    """
    limit = 2.0 ** (math.frexp(torch.finfo(dtype).max)[1] // 4)
    if largest == 0.0 or not math.isfinite(largest) or 1.0 / limit <= largest <= limit:
        return 1.0
    factor = 2.0 ** -math.frexp(largest)[1]
    return factor if math.isinf(radius) or 1.0 / limit <= factor * radius <= limit else 1.0


@dataclass
class CGPath:
    """The CG path at one point: iterates and the model along each segment."""

    linearization: object
    reference: float | None = None  # the forcing term's reference ‖g‖ (the solver's state)
    points: list[Tensor] = field(default_factory=list)  # p_0 = 0, p_1, ..., p_K
    norms: list[float] = field(default_factory=list)
    model_values: list[float] = field(default_factory=list)  # m(p_k)
    slopes: list[float] = field(default_factory=list)  # m'(σ=0) on segment k
    curvatures: list[float] = field(default_factory=list)  # m''(σ) on segment k
    radius: float = 0.0  # the radius the path was computed for
    factor: float = 1.0  # the path is stored in units where g is c·g (`normalizing_factor`)
    complete: bool = False  # the path ends where CG stopped for that radius
    last: Step | None = None


def step_from_path(path: CGPath, radius: float) -> Step:
    """The first crossing of the sphere of ``radius`` by the stored path."""
    last = path.last
    if radius >= last.norm:
        return Step(last.step, last.norm, last.predicted_reduction, last.hits_boundary, 0, 0, last.reason)
    factor = path.factor  # the path is stored in the normalized units of `_run`
    sphere = radius * factor
    k = next(i for i in range(len(path.norms) - 1) if path.norms[i + 1] >= sphere)
    start = path.points[k]
    delta = path.points[k + 1] - start
    sigma = float(boundary_step_length(start, delta, sphere))
    model = path.model_values[k] + sigma * path.slopes[k] + 0.5 * sigma * sigma * path.curvatures[k]
    on_last = k == len(path.norms) - 2 and last.reason == "negative_curvature"
    reason = "negative_curvature" if on_last else "boundary"
    step = start + sigma * delta
    if factor != 1.0:
        step, model = step / factor, model / (factor * factor)
    return Step(step, radius, -model, True, 0, 0, reason)
