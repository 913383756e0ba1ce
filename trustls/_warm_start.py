"""Steihaug-Toint CG started from the previous step (Martens 2010, §4.5).

Across the mini-batches of a training run the subproblems change slowly, and
Hessian-free optimization starts CG at the previous solution decayed by 0.95
rather than at 0, so that CG continues the previous solve (Martens 2010, §4.5).

In a trust region this needs care. Steihaug's analysis starts at p₀ = 0: the
iterate norms then grow monotonically and the first step is the Cauchy
direction −g (Steihaug 1983, Thm 2.1; Nocedal & Wright 2006, Alg. 7.2). From
p₀ ≠ 0 neither holds, so `WarmStartCG`

* scales the decayed start into the region, ‖p₀‖ ≤ decay·Δ, so every CG
  segment begins inside and the boundary exits stay feasible;
* runs CG on Bp = −g from p₀ (the first residual Bp₀ + g costs one product)
  with Steihaug's exits: boundary, non-positive curvature, and the forcing
  tolerance relative to ‖g‖. CG decreases the model monotonically from
  m(p₀) = ½p₀ᵀ(Bp₀ + 2g), and the model value is tracked along the way;
* falls back to the cold start p₀ = 0 when the result still has m ≥ 0 =
  m(0), so every step predicts a decrease. There is no Cauchy-decrease
  guarantee beyond that: a warm start trades it for continuity across
  batches.

The stored CG path of `SteihaugCG` relies on the monotone norms, so it is
not kept (``path_memory`` must be 0). Without a start (`TrustRegion.solve`,
the first step) the solver is `SteihaugCG`.

The warm-started loop differs from `SteihaugCG`'s in three ways, all for
mini-batch training where each subproblem is one noisy batch: its cap is n
iterations (training caps CG far lower with ``max_iter`` anyway), its forcing
term is the superlinear min(η_max, √ρ) with ρ = ‖g‖/‖g‖_ref (Nocedal & Wright
2006, eq. 7.3, measured against the largest gradient norm and floored at ε/ρ
as in `SteihaugCG`, so that η ≥ ε^(1/3): 6·10⁻⁶ in float64, and in float32
4.9·10⁻³, above the default η_max, which training in float32 therefore
always uses), not the quadratic min(η_max, ρ), which only pays near the
minimum of one fixed problem, and it computes its norms directly rather than
by recurrences, since it starts away from 0 (nor does it normalize g by a
power of two, `steihaug_cg.normalizing_factor`; its cold start does). ``exact_up_to`` applies as in `SteihaugCG`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from trustls.models.base import Linearization
from trustls.subproblem.base import Step, boundary_step_length
from trustls.subproblem.steihaug_cg import SteihaugCG

__all__ = ["WarmStartCG", "WarmStartLinearization"]


@dataclass(frozen=True)
class WarmStartLinearization(Linearization):
    """A `Linearization` carrying the previous step, in the subproblem's variables.

    `Linearization.scaled` keeps ``initial_step`` as is, so the optimizer
    stores it already scaled.
    """

    initial_step: Tensor | None = None


@dataclass(frozen=True)
class WarmStartCG(SteihaugCG):
    """Steihaug-Toint CG from ``decay`` times the previous step (see the module docstring).

    Args:
        max_iter: cap on CG iterations (``None``: the dimension n).
        forcing: η_max; the tolerance is min(η_max, max(√ρ, ε/ρ))·‖g‖ with
            ρ = ‖g‖/‖g‖_ref (module docstring; `SteihaugCG` for the floor ε/ρ).
        path_memory: must be 0 (see the module docstring).
        decay: factor applied to the previous step, in (0, 1]; Martens uses 0.95.

    Examples:
        >>> from trustls import TrustRegion, GaussNewtonModel
        >>> TrustRegion(GaussNewtonModel(), solver=WarmStartCG(max_iter=10)).solver.decay
        0.95
    """

    path_memory: int = 0
    decay: float = 0.95

    def __post_init__(self):
        super().__post_init__()
        if self.path_memory != 0:
            raise ValueError(f"path_memory must be 0 for WarmStartCG, got {self.path_memory!r}")
        if isinstance(self.decay, bool) or not isinstance(self.decay, (int, float)) or not 0 < self.decay <= 1:
            raise ValueError(f"decay must be a number in (0, 1], got {self.decay!r}")

    def _run(self, path, radius: float) -> Step:
        lin = path.linearization
        start = getattr(lin, "initial_step", None)
        if start is None:
            return super()._run(path, radius)
        g, B = lin.gradient, lin.operator
        g_norm = float(torch.linalg.vector_norm(g))
        if g_norm == 0.0:
            return Step(torch.zeros_like(g), 0.0, 0.0, False, 0, 0, "zero_gradient")
        p = self.decay * start
        p_norm = float(torch.linalg.vector_norm(p))
        if p_norm > self.decay * radius:
            p, p_norm = p * (self.decay * radius / p_norm), self.decay * radius
        r = B.matvec(p) + g
        model = 0.5 * float(torch.dot(p, r + g))
        tolerance = self._forcing_term(path, g, g_norm, power=0.5) * g_norm
        rr = float(torch.dot(r, r))
        d = -r
        reason, hits_boundary, iterations = "converged", False, 0
        max_iter = g.shape[0] if self.max_iter is None else self.max_iter
        while math.sqrt(rr) > tolerance:
            if iterations == max_iter:
                reason = "max_iter"
                break
            iterations += 1
            Bd = B.matvec(d)
            kappa, rd = torch.stack([torch.dot(d, Bd), torch.dot(r, d)]).tolist()
            if kappa > 0.0:
                alpha = rr / kappa
                p_next = p + alpha * d
                p_next_norm = float(torch.linalg.vector_norm(p_next))
            if kappa <= 0.0 or p_next_norm >= radius:
                tau = float(boundary_step_length(p, d, radius))
                model += tau * rd + 0.5 * tau * tau * kappa
                p, p_norm = p + tau * d, radius
                reason = "negative_curvature" if kappa <= 0.0 else "boundary"
                hits_boundary = True
                break
            model += alpha * rd + 0.5 * alpha * alpha * kappa
            p, p_norm = p_next, p_next_norm
            r = r + alpha * Bd
            rr_next = float(torch.dot(r, r))
            d = -r + (rr_next / rr) * d
            rr = rr_next
        if not model < 0.0:
            cold = super()._run(path, radius)
            return replace(cold, products=cold.products + iterations + 1)
        return Step(p, p_norm, -model, hits_boundary, iterations, iterations + 1, reason)
