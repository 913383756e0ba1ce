"""Box bounds lb ≤ x ≤ ub: Coleman-Li affine scaling with reflective steps.

The method is that of scipy's ``trf`` (Branch, Coleman & Li 1999, "A subspace,
interior, and conjugate gradient method for large-scale bound-constrained
minimization problems"; Coleman & Li 1996), which suits a matrix-free step:
every quantity below is a product with J or a diagonal.

First-order optimality of min f(x), lb ≤ x ≤ ub, is v ⊙ g = 0 with the
Coleman-Li scaling vector v: for gᵢ < 0 and a finite upper bound vᵢ =
uᵢ − xᵢ (dvᵢ = −1); for gᵢ > 0 and a finite lower bound vᵢ = xᵢ − lᵢ (dvᵢ = 1);
else vᵢ = 1 (dvᵢ = 0). Newton's method on this system, in the variables
x = D x̂ with D = diag(v^½ ⊙ s) (s the scale of ``x_scale``, with v measured in
the scaled variables, vᵢ/sᵢ where dvᵢ ≠ 0), gives the trust-region subproblem

    min ĝᵀp̂ + ½ p̂ᵀ(ĴᵀĴ + C)p̂,  ‖p̂‖ ≤ Δ,

with ĝ = D g, Ĵ = J D and C = diag(g ⊙ dv ⊙ s) ⪰ 0 (the derivative of v in the
scaled variables, which is where the iterate's distance to an active bound
enters the curvature). The subproblem solver sees it as any other: the exact
solver factors the augmented Jacobian [Ĵ; C^½] (never ĴᵀĴ), CG takes products
with ĴᵀĴ + C.

The step p = D p̂ may leave the box. `select_step` then compares three
candidates by the model's value, as scipy does: the step cut at the first
bound it meets and pulled back by θ (θ = max(0.995, 1 − ‖v⊙g‖∞)) to stay
strictly feasible; its reflection in that bound, minimized along the
reflected direction up to the next bound or the trust region; and the scaled
steepest-descent step ĝ minimized within both. The predicted reduction is the
chosen candidate's model decrease. Iterates stay strictly inside the box
(`Bounds.strictly_feasible`). Each comparison costs a product with J, so a
step that meets a bound costs up to three more JVPs than a free one.

References:
    M. A. Branch, T. F. Coleman and Y. Li, "A subspace, interior, and conjugate
    gradient method for large-scale bound-constrained minimization problems",
    SIAM J. Sci. Comput. 21(1), 1999, pp. 1-23.
    T. F. Coleman and Y. Li, "An interior trust region approach for nonlinear
    minimization subject to bounds", SIAM J. Optim. 6(2), 1996, pp. 418-445.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from trustls.models.base import Linearization
from trustls.operators.base import LinearOperator
from trustls.operators.diagonal import ShiftedOperator
from trustls.scale_maps import DiagonalScaling, IdentityScaling, Scaling
from trustls.subproblem.base import Step, boundary_step_length

__all__ = ["Bounds", "BoundedSubproblem", "FreeSubproblem", "as_bounds", "optimality", "subproblem"]


def _as_bound(value: Any, name: str, x0: Tensor) -> Tensor:
    if isinstance(value, Tensor):
        tensor = value.detach()
    else:
        try:
            tensor = torch.as_tensor(value, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"bounds must be a pair (lb, ub) of numbers or 1-D sequences, got {name} of type "
                            f"{type(value).__name__}") from None
    if tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"bounds must be real, got {name} of dtype {tensor.dtype}")
    tensor = tensor.to(dtype=x0.dtype, device=x0.device)
    if tensor.ndim == 0:
        tensor = tensor.expand_as(x0)
    if tensor.shape != x0.shape:
        raise ValueError(f"bounds must be scalars or have x0's shape {tuple(x0.shape)}, got {name} of shape "
                         f"{tuple(tensor.shape)}")
    if bool(torch.isnan(tensor).any()):
        raise ValueError(f"bounds must not be NaN, got NaN in {name}")
    return tensor.clone()


@dataclass(frozen=True)
class Bounds:
    """The box lb ≤ x ≤ ub; ±inf where a variable is free on that side.

    Examples:
        >>> import torch
        >>> box = Bounds(torch.tensor([0.0, -math.inf]), torch.tensor([1.0, math.inf]))
        >>> box.active(torch.tensor([0.0, 3.0]), 1e-10)
        tensor([-1,  0])
    """

    lower: Tensor
    upper: Tensor

    def contains(self, x: Tensor) -> bool:
        return bool(((x >= self.lower) & (x <= self.upper)).all())

    def active(self, x: Tensor, rtol: float) -> Tensor:
        """−1 where x is within ``rtol``·max(1, |lb|) of lb (nearer than to ub), +1 likewise at ub, else 0 (scipy)."""
        lower_distance, upper_distance = x - self.lower, self.upper - x
        if rtol == 0:
            lower = x <= self.lower
            upper = x >= self.upper
        else:
            lower = torch.isfinite(self.lower) & (lower_distance <= torch.minimum(
                upper_distance, rtol * torch.clamp(self.lower.abs(), min=1.0)))
            upper = torch.isfinite(self.upper) & (upper_distance <= torch.minimum(
                lower_distance, rtol * torch.clamp(self.upper.abs(), min=1.0)))
        return torch.where(upper, 1, torch.where(lower, -1, 0))

    def strictly_feasible(self, x: Tensor, rstep: float = 1e-10, dtype: torch.dtype | None = None) -> Tensor:
        """x moved strictly inside the box: off an active bound by rstep·max(1, |bound|), or to the next float.

        The offset is at least one unit in the last place: in float32 (or
        half precision) rstep·|bound| rounds back onto a bound of magnitude
        above about 10⁻³ (scipy works in float64, where it never does), and an
        iterate on a bound has a Coleman-Li scale vᵢ = 0. ``dtype`` is the
        dtype whose values x must hold (a half-precision solve iterates in
        float32 on float16 values): x is rounded to it and moved there.
        """
        if dtype is not None and dtype != x.dtype:
            box = Bounds(self.lower.to(dtype), self.upper.to(dtype))
            return box.strictly_feasible(x.to(dtype), rstep).to(x.dtype)
        active = self.active(x, rstep)
        lower_value = torch.nextafter(self.lower, self.upper)
        upper_value = torch.nextafter(self.upper, self.lower)
        if rstep != 0:
            lower_value = torch.maximum(self.lower + rstep * torch.clamp(self.lower.abs(), min=1.0), lower_value)
            upper_value = torch.minimum(self.upper - rstep * torch.clamp(self.upper.abs(), min=1.0), upper_value)
        moved = torch.where(active == -1, lower_value, torch.where(active == 1, upper_value, x))
        # Bounds closer than the step: the middle.
        tight = (moved < self.lower) | (moved > self.upper)
        return torch.where(tight, 0.5 * (self.lower + self.upper), moved)

    def scaling_vector(self, x: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """The Coleman-Li v and its derivative dv (module docstring)."""
        to_upper = (g < 0) & torch.isfinite(self.upper)
        to_lower = (g > 0) & torch.isfinite(self.lower)
        v = torch.where(to_upper, self.upper - x, torch.where(to_lower, x - self.lower, torch.ones_like(x)))
        dv = torch.where(to_upper, -1.0, torch.where(to_lower, 1.0, 0.0)).to(x.dtype)
        return v, dv

    def step_to_bound(self, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """The largest t with lb ≤ x + t·s ≤ ub, and per variable ±1 where x + t·s meets a bound (scipy's hits)."""
        with torch.no_grad():
            safe = torch.where(s != 0, s, torch.ones_like(s))
            steps = torch.where(s != 0, torch.maximum((self.lower - x) / safe, (self.upper - x) / safe),
                                torch.full_like(x, math.inf))
        t = steps.min()
        return t, torch.where(steps == t, torch.sign(s), torch.zeros_like(s))


def as_bounds(bounds: Any, x0: Tensor) -> Bounds | None:
    """scipy's ``bounds=(lb, ub)`` (scalars, sequences, arrays or tensors; ±inf allowed) checked against ``x0``.

    ``None`` or ``(-inf, inf)`` everywhere means no bounds. Raises ``ValueError`` for ``lb >= ub`` or an ``x0``
    outside the box, ``TypeError``/``ValueError`` for shapes and types.
    """
    if bounds is None:
        return None
    lower = getattr(bounds, "lb", None)  # scipy.optimize.Bounds, duck-typed
    upper = getattr(bounds, "ub", None)
    if lower is None or upper is None:
        if isinstance(bounds, (str, bytes)) or not hasattr(bounds, "__len__") or len(bounds) != 2:
            raise ValueError(f"bounds must be a pair (lb, ub), got {type(bounds).__name__}"
                             + (f" of length {len(bounds)}" if hasattr(bounds, "__len__") else ""))
        lower, upper = bounds
    box = Bounds(_as_bound(lower, "lb", x0), _as_bound(upper, "ub", x0))
    if bool((box.lower >= box.upper).any()):
        index = int(torch.nonzero(box.lower >= box.upper)[0])
        raise ValueError(f"bounds must have lb < ub in every variable, got lb[{index}] = {float(box.lower[index])} "
                         f">= ub[{index}] = {float(box.upper[index])}")
    if not box.contains(x0):
        index = int(torch.nonzero((x0 < box.lower) | (x0 > box.upper))[0])
        raise ValueError(f"x0 must lie within the bounds (x0 is infeasible), got x0[{index}] = {float(x0[index])} "
                         f"outside [{float(box.lower[index])}, {float(box.upper[index])}]")
    if bool(torch.isinf(box.lower).all() & torch.isinf(box.upper).all()):
        return None
    return box


def optimality(linearization: Linearization, bounds: Bounds | None) -> Tensor:
    """The first-order optimality measure at a point (a 0-d tensor): ‖g‖∞, or ‖v ⊙ g‖∞ within
    ``bounds`` (scipy's; module docstring), without posing the subproblem."""
    g = linearization.gradient
    if bounds is None:
        return g.abs().max()
    v, _ = bounds.scaling_vector(linearization.x, g)
    return torch.linalg.vector_norm(v * g, ord=math.inf)


class _Quadratic:
    """The model q(p̂) = ĝᵀp̂ + ½‖Ĵp̂‖² + ½p̂ᵀCp̂ in the scaled variables, and its minimum along a line."""

    def __init__(self, jacobian: LinearOperator, gradient: Tensor, diagonal: Tensor):
        self.J, self.g, self.c = jacobian, gradient, diagonal

    def value(self, p: Tensor) -> Tensor:
        Jp = self.J.matvec(p)
        return torch.dot(self.g, p) + 0.5 * (torch.dot(Jp, Jp) + torch.dot(p * self.c, p))

    def along(self, s: Tensor, start: Tensor | None = None) -> tuple[float, float, float]:
        """q(start + t·s) = a·t² + b·t + c as (a, b, c)."""
        Js = self.J.matvec(s)
        a = 0.5 * (torch.dot(Js, Js) + torch.dot(s * self.c, s))
        b = torch.dot(self.g, s)
        if start is None:
            return tuple(torch.stack([a, b]).tolist()) + (0.0,)
        Ju = self.J.matvec(start)
        b = b + torch.dot(Ju, Js) + torch.dot(start * self.c, s)
        c = 0.5 * (torch.dot(Ju, Ju) + torch.dot(start * self.c, start)) + torch.dot(self.g, start)
        return tuple(torch.stack([a, b, c]).tolist())


def _minimize_1d(a: float, b: float, c: float, low: float, high: float) -> tuple[float, float]:
    """argmin and min of a·t² + b·t + c on [low, high]."""
    candidates = [low, high]
    if a != 0:
        extremum = -0.5 * b / a
        if low < extremum < high:
            candidates.append(extremum)
    values = [t * (a * t + b) + c for t in candidates]
    k = min(range(len(values)), key=values.__getitem__)
    return candidates[k], values[k]


class BoundedSubproblem:
    """The Coleman-Li subproblem at one point and the selection of its step (module docstring).

    Args:
        linearization: the (unscaled) linearization at x.
        bounds: the box.
        scale: s, the diagonal of ``x_scale`` (a tensor; ones for none).
    """

    def __init__(self, linearization: Linearization, bounds: Bounds, scale: Tensor):
        x, g = linearization.x, linearization.gradient
        self.x, self.bounds = x, bounds
        v, dv = bounds.scaling_vector(x, g)
        self.optimality = torch.linalg.vector_norm(v * g, ord=math.inf)  # `optimality`: before v is rescaled
        # θ keeps the cut step strictly inside; it tends to 1 as the iterate converges.
        self.theta = max(0.995, 1.0 - float(self.optimality))
        v = torch.where(dv != 0, v / scale, v)
        self.d = torch.sqrt(v) * scale
        self.c = g * dv * scale
        hat = linearization.scaled(self.d)
        J = hat.jacobian
        operator = ShiftedOperator(hat.operator, self.c)
        matrix = None if hat.jacobian_matrix is None else torch.cat([hat.jacobian_matrix, torch.diag(torch.sqrt(self.c))])
        whitened = None if hat.whitened_residual is None else torch.cat([hat.whitened_residual, torch.zeros_like(x)])
        self.linearization = replace(hat, operator=operator, jacobian_matrix=matrix, whitened_residual=whitened)
        self.model = _Quadratic(J, hat.gradient, self.c)

    def norm(self, x: Tensor) -> Tensor:
        """‖D⁻¹x‖, the scaled length (for the initial radius and the radius collapse test)."""
        return torch.linalg.vector_norm(x / self.d)

    def propose(self, step: Step, radius: float) -> tuple[Tensor, Any, Any, bool]:
        """The step p in x, its predicted reduction, its scaled length ‖p̂‖ and whether it is on the
        boundary (scipy's ``select_step``; the radius update tests ‖p̂‖ > 0.95Δ itself)."""
        x, box, d, model, theta = self.x, self.bounds, self.d, self.model, self.theta
        p_hat = step.step
        p = d * p_hat
        if box.contains(x + p):
            return p, step.predicted_reduction, step.norm, step.hits_boundary
        t_bound, hits = box.step_to_bound(x, p)
        t_bound = float(t_bound)
        r_hat = torch.where(hits != 0, -p_hat, p_hat)  # the reflection in the bounds met
        p, p_hat = p * t_bound, p_hat * t_bound
        on_bound = x + p
        to_trust_region = float(boundary_step_length(p_hat, r_hat, radius))
        to_bound = float(box.step_to_bound(on_bound, d * r_hat)[0])
        stride = min(to_bound, to_trust_region)
        r_value, reflected = math.inf, None
        if stride > 0:
            low = (1 - theta) * t_bound / stride
            high = theta * to_bound if stride == to_bound else to_trust_region
            if low <= high:
                a, b, c = model.along(r_hat, p_hat)
                t, r_value = _minimize_1d(a, b, c, low, high)
                reflected = p_hat + t * r_hat
        p_hat = theta * p_hat  # the cut step, strictly inside
        p_value = float(model.value(p_hat))
        ag_hat = -model.g
        to_trust_region = radius / float(torch.linalg.vector_norm(ag_hat))
        to_bound = float(box.step_to_bound(x, d * ag_hat)[0])
        high = theta * to_bound if to_bound < to_trust_region else to_trust_region
        a, b, _ = model.along(ag_hat)
        t, ag_value = _minimize_1d(a, b, 0.0, 0.0, high)
        # scipy's order of strict comparisons, so that the same step is chosen on ties.
        if p_value < r_value and p_value < ag_value:
            value, chosen = p_value, p_hat
        elif r_value < p_value and r_value < ag_value:
            value, chosen = r_value, reflected
        else:
            value, chosen = ag_value, t * ag_hat
        return d * chosen, -value, float(torch.linalg.vector_norm(chosen)), False


class FreeSubproblem:
    """The subproblem without bounds: the linearization in the variables of T (`trustls.scaling`)."""

    def __init__(self, linearization: Linearization, scaling: Scaling):
        self.scaling = scaling
        self.linearization = scaling.transform(linearization)
        self.optimality = optimality(linearization, None)

    def norm(self, x: Tensor) -> Tensor:
        return self.scaling.norm(x)

    def propose(self, step: Step, radius: float) -> tuple[Tensor, Any, Any, bool]:
        return self.scaling.apply(step.step), step.predicted_reduction, step.norm, step.hits_boundary


def subproblem(linearization: Linearization, scaling: Scaling, bounds: Bounds | None) -> FreeSubproblem | BoundedSubproblem:
    """The subproblem at a point: free, or Coleman-Li scaled within ``bounds`` (T must then be diagonal)."""
    if bounds is None:
        return FreeSubproblem(linearization, scaling)
    if isinstance(scaling, DiagonalScaling):
        scale = scaling.diagonal
    elif isinstance(scaling, IdentityScaling):
        scale = torch.ones_like(linearization.x)
    else:
        raise ValueError(f"bounds need a diagonal x_scale (a number, a sequence or 'jac'), got {type(scaling).__name__}")
    return BoundedSubproblem(linearization, bounds, scale)
