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
along the path; the power-of-two normalization of a gradient outside
[2⁻ᵏ, 2ᵏ]; and the restart at `smallest_factor` of a problem whose sᵀBs
(or ‖g‖²) leaves the range, with a NaN step where no factor fits
(`SteihaugCG`'s module docstring, "Range"). The pending restarts are read with
the running problems, in the iteration's one read. A rejected radius reruns
CG (the stored path of `SteihaugCG` would hold one (n, K) iterate per
iteration; for the small problems of a batch a rerun costs less than the
bookkeeping): its first crossing of the smaller
sphere is the stored path's answer, to rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from trustls.batched.fields import BatchFields, BatchStep, dot, norm
from trustls.subproblem.cg_path import range_exponents
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


def _smallest_factors(largest: Tensor, radius: Tensor, dtype: torch.dtype) -> Tensor:
    """`smallest_factor` per problem: the power of two that CG restarts with when sᵀBs overflows."""
    half, digits = range_exponents(dtype)
    one = torch.ones_like(largest)
    factor = torch.ldexp(one, digits + 1 - half - torch.frexp(largest).exponent)
    by_radius = torch.ldexp(one, 2 - half - torch.frexp(torch.where(torch.isinf(radius), 1.0, radius)).exponent)
    factor = torch.where(torch.isinf(radius), factor, torch.maximum(factor, by_radius))
    return torch.clamp(factor, min=torch.finfo(dtype).tiny)


def cg_step(
    solver: SteihaugCG, factors: CGFactors, gradient: Tensor, scale: Tensor, radius: Tensor
) -> tuple[BatchStep, Tensor]:
    """Steihaug-Toint steps for K problems: the steps, and the updated references ``(K,)``.

    A problem whose curvature sᵀBs (or product Bs) is not finite restarts, in
    the same loop, at its `smallest_factor`, and one for which no factor fits
    gets a NaN step, as `SteihaugCG` does (its module docstring, "Range").

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

    unscaled = gradient * scale
    radius = radius.double()
    largest = unscaled.abs().amax(0).double()
    smallest = _smallest_factors(largest, radius, dtype)
    factor = _normalizing_factors(largest, radius, dtype)
    g = unscaled * factor.to(dtype)
    rr_t = dot(g, g)
    # ‖g‖² overflows where no normalization fits the radius: the smallest factor may.
    refit = ~torch.isfinite(rr_t) & (smallest < factor)
    factor = torch.where(refit, smallest, factor)
    g = torch.where(refit, unscaled * factor.to(dtype), g)
    rr_t = torch.where(refit, dot(g, g), rr_t)
    rr = rr_t.double()
    g_norm = torch.sqrt(rr)
    # ρ compares the true ‖g‖ (before normalization) with the reference.
    true_norm = g_norm / factor
    true_norm = torch.where(torch.isinf(true_norm), norm(unscaled.double()), true_norm)
    reference = torch.where(torch.isfinite(true_norm), torch.maximum(factors.reference, true_norm), factors.reference)
    rho = torch.where(reference > true_norm, true_norm / reference, 1.0)
    floor = torch.where(rho > 0, eps / rho, math.inf)
    eta = torch.clamp(torch.maximum(rho, floor), max=eta_max)
    tolerance = eta * g_norm
    scaled_radius = radius * factor

    p, r, s = torch.zeros_like(g), g, g  # s = −d
    model = torch.zeros_like(rr)
    overflowed = ~torch.isfinite(rr)  # at every factor: no step
    running = (g_norm != 0) & ~overflowed
    hits = torch.zeros_like(running)
    iterations = torch.zeros(K, dtype=torch.int64, device=g.device)
    products = torch.zeros_like(iterations)
    radius_t = scaled_radius.to(dtype)
    pending = torch.zeros_like(running)  # to restart at their smallest factor
    # A problem restarts at most once, the pass after its κ overflowed: 2·max_iter + 1 passes hold any.
    for _ in range(2 * max_iter + 1):
        any_running, any_pending = torch.stack([running.any(), pending.any()]).tolist()  # the iteration's one read
        if any_pending:  # CG from p = 0 on c·g in the sphere of radius c·Δ, c the smallest factor
            ratio = torch.where(pending, smallest / factor, 1.0)
            factor = torch.where(pending, smallest, factor)
            g = torch.where(pending, unscaled * factor.to(dtype), g)
            p, model = torch.where(pending, 0.0, p), torch.where(pending, 0.0, model)
            r, s = torch.where(pending, g, r), torch.where(pending, g, s)
            rr_t = torch.where(pending, dot(g, g), rr_t)
            rr = torch.where(pending, rr_t.double(), rr)
            tolerance, scaled_radius = tolerance * ratio, scaled_radius * ratio
            radius_t = scaled_radius.to(dtype)
            iterations = torch.where(pending, 0, iterations)
            running, pending = running | pending, torch.zeros_like(pending)
        elif not any_running:
            break
        iterations = torch.where(running, iterations + 1, iterations)
        products = torch.where(running, products + 1, products)
        Bs = curvature(s)
        kappa_t = dot(s, Bs)
        alpha_t = rr_t / kappa_t
        p_next = p - alpha_t * s
        r_next = r - alpha_t * Bs
        rr_next_t = dot(r_next, r_next)
        kappa, rr_next = kappa_t.double(), rr_next_t.double()
        # κ, or Bs (whose inf entries make it inf or NaN), overflowed: α = ‖r‖²/κ would give a
        # zero step. Restart at the smallest factor, or, where that is no smaller, no step.
        blown = running & ~torch.isfinite(kappa)
        pending = blown & (smallest < factor)
        overflowed |= blown & ~pending
        running = running & ~blown
        negative = ~(kappa > 0)  # also a κ that underflows to 0 (SteihaugCG's module docstring)
        alpha = rr / kappa
        # The boundary test on the true norm, as SteihaugCG's.
        hit = running & (negative | (dot(p_next, p_next).double() >= scaled_radius * scaled_radius))
        tau = torch.where(hit, boundary_lengths(p, -s, radius_t).double(), alpha)
        p_hit = p - tau.to(dtype) * s
        model_next = model + (-tau * rr + 0.5 * tau * tau * kappa)
        p = torch.where(hit, p_hit, torch.where(running, p_next, p))
        model = torch.where(running, model_next, model)
        hits |= hit
        going = running & ~hit
        converged = going & (torch.sqrt(rr_next) <= tolerance)
        running = going & ~converged & (iterations < max_iter)
        r = torch.where(going, r_next, r)
        beta = rr_next / rr
        s = torch.where(running, r + beta.to(dtype) * s, s)
        rr_t = torch.where(running, rr_next_t, rr_t)
        rr = torch.where(running, rr_next, rr)
    # The norm of the step in its own units: far inside a sphere put at the bottom of the
    # range, ‖c·p‖² may be subnormal (exact otherwise: c is a power of two).
    p, model = p / factor.to(dtype), model / (factor * factor)
    p_norm = torch.where(hits, scaled_radius / factor, norm(p).double())
    # A problem that overflowed at every factor: a NaN step, whose trial fails (the radius shrinks).
    p = torch.where(overflowed, math.nan, p)
    p_norm, model = torch.where(overflowed, math.nan, p_norm), torch.where(overflowed, math.nan, model)
    hits = hits | overflowed
    return BatchStep(p, p_norm, -model, hits, iterations, products), reference
