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
float32 gradient within range, and `smallest_factor` the one that CG restarts
with when a curvature sᵀBs leaves the range (`trustls.subproblem.steihaug_cg`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from trustls.subproblem.base import Step, boundary_step_length

__all__ = ["DEFAULT_PATH_MEMORY", "CGPath", "normalizing_factor", "range_exponents", "smallest_factor",
           "step_from_path"]

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


def smallest_factor(largest: float, radius: float, dtype: torch.dtype) -> float:
    """The smallest power of two c with which CG on c·g in the sphere of radius c·Δ loses nothing to underflow.

    CG's iterates are homogeneous of degree one in (g, Δ): on c·g and c·Δ the
    vectors p, r, s and Bs scale by c and the scalars ‖r‖², ‖p‖², Δ² and sᵀBs
    by c², while the step lengths α, β and τ do not change. A curvature sᵀBs
    or a product Bs that overflows therefore comes back into range for a small
    enough c, unless c would push the small quantities out of it. With E the
    dtype's largest binary exponent (1024 in float64, 128 in float32) and p
    its mantissa digits (53, 24), c is the smallest power of two with

    * c·Δ ≥ 2^(1−E/2): (c·Δ)², the boundary test's threshold, is a normal
      number (≥ 2^(2−E), ``finfo.tiny``);
    * c·‖g‖∞ ≥ 2^(p−E/2): ‖r‖² stays normal while CG reduces ‖r‖ down to
      ε‖g‖ (ε = 2^(1−p)), below any forcing tolerance that ``forcing`` and
      ``exact_up_to`` ask for but the tiniest.

    Scaling by a power of two is exact in normal arithmetic, so CG on c·g
    computes the iterates of the unscaled one, times c, wherever those are
    finite. If sᵀBs overflows even at this c, it overflows at every c that
    keeps Δ² or ‖r‖² in range: no factor fits. A Δ = ∞ sets no bound, and c
    is not taken below the smallest normal number (a subnormal c would round
    g; that c keeps the small quantities in range all the more).

    Args:
        largest: ‖g‖∞ (finite, positive).
        radius: Δ.
        dtype: g's dtype.

    Examples:
        >>> smallest_factor(1.0, 1.0, torch.float64) == 2.0**-459
        True
        >>> smallest_factor(1.0, 1.0, torch.float32) == 2.0**-40
        True
        >>> smallest_factor(1e200, 1.5, torch.float64) == 2.0**-511  # the radius binds
        True
    """
    finfo = torch.finfo(dtype)
    half, digits = range_exponents(dtype)
    factor = 2.0 ** (digits + 1 - half - math.frexp(largest)[1])  # c·‖g‖∞ ∈ [2^(p−E/2), 2^(p+1−E/2))
    if math.isfinite(radius):
        factor = max(factor, 2.0 ** (2 - half - math.frexp(radius)[1]))  # c·Δ ∈ [2^(1−E/2), 2^(2−E/2))
    return max(factor, finfo.tiny)  # a subnormal c would round g


def range_exponents(dtype: torch.dtype) -> tuple[int, int]:
    """(E/2, p): half the dtype's largest binary exponent E and its mantissa digits p (512, 53 in float64)."""
    finfo = torch.finfo(dtype)
    return math.frexp(finfo.max)[1] // 2, 2 - math.frexp(finfo.eps)[1]  # eps = 2^(1−p) = ½·2^(2−p)


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


def step_from_path(path: CGPath, radius: float) -> Step | None:
    """The first crossing of the sphere of ``radius`` by the stored path (``None`` if no stored norm reaches it)."""
    last = path.last
    if radius >= last.norm:
        return Step(last.step, last.norm, last.predicted_reduction, last.hits_boundary, 0, 0, last.reason)
    factor = path.factor  # the path is stored in the normalized units of `_run`
    sphere = radius * factor
    k = next((i for i in range(len(path.norms) - 1) if path.norms[i + 1] >= sphere), None)
    if k is None:  # rounding left every stored norm below the sphere (float32 near the range's ends)
        return None
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
