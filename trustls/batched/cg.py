"""Steihaug-Toint truncated CG for a batch: `SteihaugCG` with per-problem exits.

Each problem runs `SteihaugCG`'s iteration (Steihaug 1983; Toint 1981;
Nocedal & Wright 2006, Alg. 7.2) on its own B = (RT)ᵀ(RT), the Gauss-Newton
curvature J̃ᵀJ̃ in the scaled variables written with the triangular factor
of J̃ = QR (`trustls.batched.factorization`): B v = Tᵀ Rᵀ R T v costs
O(n²) per problem instead of O(mn), and the normal equations are still not
formed. All problems iterate together; each leaves the iteration at its own
exit (negative curvature, the boundary, the forcing test, or the cap of 2n
iterations) and keeps its step while the others go on. The loop ends when
no problem is left (one read per iteration).

The scalars follow `SteihaugCG` exactly, with a (K,) tensor where it keeps a
Python float: the forcing term η = min(η_max, max(ρ, ε/ρ)) with
ρ = ‖g‖/‖g‖_ref against the largest gradient norm of each problem's solve
(its state from point to point), η_max = eps^(3/4) up to ``exact_up_to``
variables; the true ‖p‖² at every iteration for the boundary test (the
vectors are small); the boundary step from the true p and d; the model value
along the path; and the power-of-two normalization of a gradient outside
[2⁻ᵏ, 2ᵏ]. A rejected radius reruns CG (the stored path of `SteihaugCG` would
hold one (n, K) iterate per iteration; for the small problems of a batch a
rerun costs less than the bookkeeping): its first crossing of the smaller
sphere is the stored path's answer, to rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from trustls.batched.fields import BatchFields, BatchStep, dot, norm
from trustls.subproblem.steihaug_cg import SteihaugCG

__all__ = ["CGFactors", "boundary_lengths", "cg_step"]


@dataclass
class CGFactors(BatchFields):
    """What CG needs at the current points of K problems (batch-last).

    Attributes:
        R: ``(k, n, K)``, J̃ = QR.
        reference: ``(K,)`` float64, ‖g‖_ref, the largest gradient norm of the
            solve (0 before the first; `SteihaugCG`'s state).
    """

    R: Tensor
    reference: Tensor


def boundary_lengths(p: Tensor, d: Tensor, radius: Tensor) -> Tensor:
    """τ ≥ 0 with ‖p + τd‖ = Δ per problem (`boundary_step_length`, batch-last ``(n, K)``)."""
    dd, pd = dot(d, d), dot(p, d)
    c = torch.clamp(radius * radius - dot(p, p), min=0.0)
    root = torch.sqrt(pd * pd + dd * c)
    return torch.where(pd >= 0, c / torch.where(pd + root > 0, pd + root, 1.0), (root - pd) / dd)


def _normalizing_factors(largest: Tensor, radius: Tensor, dtype: torch.dtype) -> Tensor:
    """`normalizing_factor` per problem: a power of two that brings ‖g‖∞ into [½, 1) when needed."""
    limit = 2.0 ** (math.frexp(torch.finfo(dtype).max)[1] // 4)
    outside = (largest != 0) & torch.isfinite(largest) & ((largest < 1.0 / limit) | (largest > limit))
    factor = torch.ldexp(torch.ones_like(largest), -torch.frexp(largest).exponent)
    scaled = factor * radius
    fits = torch.isinf(radius) | ((scaled >= 1.0 / limit) & (scaled <= limit))
    return torch.where(outside & fits, factor, 1.0)


def cg_step(
    solver: SteihaugCG, factors: CGFactors, gradient: Tensor, scale: Tensor, radius: Tensor
) -> tuple[BatchStep, Tensor]:
    """Steihaug-Toint steps for K problems: the steps, and the updated references ``(K,)``.

    Args:
        solver: the configuration (``max_iter``, ``forcing``, ``exact_up_to``).
        factors: R and the references.
        gradient: ``(n, K)`` g, unscaled.
        scale: ``(n, K)`` T.
        radius: ``(K,)`` Δ.
    """
    R = factors.R * scale
    dtype = R.dtype
    eps = torch.finfo(dtype).eps
    n, K = gradient.shape
    max_iter = 2 * n if solver.max_iter is None else solver.max_iter
    eta_max = min(solver.forcing, eps**0.75) if n <= solver.exact_up_to else solver.forcing

    def curvature(v: Tensor) -> Tensor:  # Tᵀ Rᵀ R T v, without JᵀJ
        return (R * (R * v[None]).sum(1, keepdim=True)).sum(0)

    g = gradient * scale
    radius = radius.double()
    largest = g.abs().amax(0).double()
    factor = _normalizing_factors(largest, radius, dtype)
    g, radius = g * factor.to(dtype), radius * factor
    rr_t = dot(g, g)
    rr = rr_t.double()
    g_norm = torch.sqrt(rr)
    # ρ compares the true ‖g‖ (before normalization) with the reference.
    true_norm = g_norm / factor
    true_norm = torch.where(torch.isinf(true_norm), norm(g.double()) / factor, true_norm)
    reference = torch.where(torch.isfinite(true_norm), torch.maximum(factors.reference, true_norm), factors.reference)
    rho = torch.where(reference > true_norm, true_norm / reference, 1.0)
    floor = torch.where(rho > 0, eps / rho, math.inf)
    tolerance = torch.clamp(torch.maximum(rho, floor), max=eta_max) * g_norm

    p, r, s = torch.zeros_like(g), g, g  # s = −d
    model = torch.zeros_like(rr)
    running = g_norm != 0
    hits = torch.zeros_like(running)
    iterations = torch.zeros(K, dtype=torch.int64, device=g.device)
    radius_t = radius.to(dtype)
    for iteration in range(1, max_iter + 1):
        if not bool(running.any()):  # the one read of the iteration
            break
        iterations = torch.where(running, iteration, iterations)
        Bs = curvature(s)
        kappa_t = dot(s, Bs)
        alpha_t = rr_t / kappa_t
        p_next = p - alpha_t * s
        r_next = r - alpha_t * Bs
        rr_next_t = dot(r_next, r_next)
        kappa, rr_next = kappa_t.double(), rr_next_t.double()
        negative = ~(kappa > 0)  # also NaN: no descent can be trusted along s
        alpha = rr / kappa
        # The boundary test on the true norm, as SteihaugCG's.
        hit = running & (negative | (dot(p_next, p_next).double() >= radius * radius))
        tau = torch.where(hit, boundary_lengths(p, -s, radius_t).double(), alpha)
        p_hit = p - tau.to(dtype) * s
        model_next = model + (-tau * rr + 0.5 * tau * tau * kappa)
        p = torch.where(hit, p_hit, torch.where(running, p_next, p))
        model = torch.where(running, model_next, model)
        hits |= hit
        going = running & ~hit
        converged = going & (torch.sqrt(rr_next) <= tolerance)
        running = going & ~converged
        r = torch.where(going, r_next, r)
        beta = rr_next / rr
        s = torch.where(running, r + beta.to(dtype) * s, s)
        rr_t = torch.where(running, rr_next_t, rr_t)
        rr = torch.where(running, rr_next, rr)
    p_norm = torch.where(hits, radius, norm(p).double())
    p, p_norm, model = p / factor.to(dtype), p_norm / factor, model / (factor * factor)
    return BatchStep(p, p_norm, -model, hits, iterations, iterations), reference  # one product per iteration
