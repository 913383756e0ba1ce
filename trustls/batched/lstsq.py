"""Exact trust-region steps for a batch: `DenseLstsq` with the secular equation vectorized.

Each problem's step is `DenseLstsq`'s (Moré 1978; Moré & Sorensen 1983):
with the SVD J̃T = U diag(s) Vᵀ of the scaled effective Jacobian and
sf_i = s_i u_iᵀf̃ the gradient's coordinates,

    p(α) = V c(α),   c_i(α) = −sf_i / (s_i² + α),

the Gauss-Newton step p(0) when ‖c(0)‖ ≤ Δ, else p(α*) with ‖c(α*)‖ = Δ.
The SVD comes from the QR of J̃ and a Jacobi SVD of R T
(`trustls.batched.factorization`): J̃T = Q (R T) because T is diagonal.

The secular equation is solved for all problems at once by Moré's
safeguarded Newton iteration on φ(α) = 1/‖c(α)‖ − 1/Δ, in the form of
`trustls.subproblem.dense_lstsq.secular_step`: every problem keeps its own
bracket [l, u], its own α and its own stopping test |‖c‖ − Δ| ≤ rtol·Δ; a
problem that has stopped keeps its α while the others iterate, and the loop
ends when all have stopped (one read per iteration). Singular values below
the rank cutoff max(m, n)·eps·s_max are masked rather than dropped, so that
all problems share one shape: a masked entry contributes 0 to every sum.
Where one falls below it, the rank is decided again on J̃T with unit
columns, as `DenseLstsq` decides it (`_unit_rank`): a singular value small
only by the variables' units is kept.

For a loss without a whitened residual (scipy's robust losses) the
coordinates are sf = Vᵀg, and a gradient with a part g⊥ outside range(Vₖ)
gets the extra direction g⊥/‖g⊥‖ with singular value 0, as in `DenseLstsq`.

The arithmetic of the secular equation runs in float64, where `DenseLstsq`
keeps α and its bracket as Python floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from trustls.batched.factorization import jacobi_svd
from trustls.batched.fields import BatchFields, BatchStep, dot, norm
from trustls.subproblem.dense_lstsq import unit_columns

__all__ = ["ExactFactors", "exact_factors", "exact_step", "secular_roots"]


@dataclass
class ExactFactors(BatchFields):
    """The SVD of J̃T at the current points of K problems (batch-last; w = n, or n + 1 with g⊥).

    Attributes:
        V: ``(n, w, K)`` right singular vectors as columns.
        s: ``(w, K)`` singular values, 0 where masked.
        sf: ``(w, K)`` the gradient's coordinates, 0 where masked.
        kept: ``(w, K)`` bool, the entries above the rank cutoff.
        full_rank: ``(K,)`` bool.
        gauss_newton_norm: ``(K,)`` float64, ‖c(0)‖ (inf with a g⊥ direction).
        alpha: ``(K,)`` float64, the last root, warm start for the next radius.
    """

    V: Tensor
    s: Tensor
    sf: Tensor
    kept: Tensor
    full_rank: Tensor
    gauss_newton_norm: Tensor
    alpha: Tensor


def exact_factors(R: Tensor, h: Tensor | None, gradient: Tensor, scale: Tensor, m: int) -> ExactFactors:
    """The factors at K points from R ``(k, n, K)`` of J̃, h = Qₖᵀf̃ ``(k, K)`` (or ``None``),
    the gradient ``(n, K)`` and the scale T ``(n, K)``."""
    n, K = gradient.shape
    eps = torch.finfo(R.dtype).eps
    sigma, V, W = jacobi_svd(R * scale)
    cutoff = max(m, n) * eps
    kept = sigma > cutoff * sigma[:1]
    k = R.shape[0]  # min(m, n): the singular values beyond it are zero by shape, not by rank
    low = ~kept[:k].all(0) & (sigma > 0).any(0)
    if bool(low.any()):  # one more read, and an SVD of the problems of low numerical rank only
        rows = torch.nonzero(low).squeeze(1)
        rank = torch.minimum(_unit_rank((R * scale).index_select(2, rows), cutoff), (sigma[:, rows] > 0).sum(0))
        raised = torch.arange(n, device=R.device)[:, None] < rank
        kept = kept.index_copy(1, rows, kept[:, rows] | raised)
    s = torch.where(kept, sigma, 0.0)
    full_rank = kept.all(0)
    if h is not None:
        # s_i u_iᵀ h = (W e_i)ᵀ h: no division by a small singular value.
        sf = torch.where(kept, (W * h[:, None, :]).sum(0), 0.0)
        return ExactFactors(
            V, s, sf, kept, full_rank, _gauss_newton_norm(s, sf, kept), gradient.new_zeros(K, dtype=torch.float64)
        )
    g = gradient * scale
    sf = torch.where(kept, (V * g[:, None, :]).sum(0), 0.0)
    outside = g - (V * sf[None]).sum(1)
    outside_norm, g_norm = norm(outside), norm(g)
    augment = outside_norm > math.sqrt(eps) * g_norm
    direction = torch.where(augment, outside / torch.where(augment, outside_norm, 1.0), 0.0)
    V = torch.cat([V, direction[:, None, :]], dim=1)
    s = torch.cat([s, s.new_zeros(1, K)])
    sf = torch.cat([sf, torch.where(augment, outside_norm, 0.0)[None]])
    kept = torch.cat([kept, augment[None]])
    gauss_newton = torch.where(augment, torch.inf, _gauss_newton_norm(s, sf, kept & (s > 0)))
    return ExactFactors(V, s, sf, kept, full_rank & ~augment, gauss_newton, gradient.new_zeros(K, dtype=torch.float64))


def _unit_rank(A: Tensor, cutoff: float) -> Tensor:
    """The numerical rank of each of the ``(k, n, K)`` matrices with its columns scaled to unit norm,
    ``(K,)``: the rank that the variables' units leave unchanged (`DenseLstsq`'s `_rank_in_unit_columns`)."""
    sigma, _, _ = jacobi_svd(unit_columns(A))
    return (sigma > cutoff * sigma[:1]).sum(0)


def _gauss_newton_norm(s: Tensor, sf: Tensor, kept: Tensor) -> Tensor:
    return norm(torch.where(kept, sf / torch.where(kept, s * s, 1.0), 0.0)).double()


def secular_roots(
    s: Tensor,
    sf: Tensor,
    kept: Tensor,
    radius: Tensor,
    full_rank: Tensor,
    alpha: Tensor,
    solve: Tensor,
    *,
    rtol: float = 1e-3,
    max_iter: int = 30,
) -> tuple[Tensor, Tensor]:
    """Roots α > 0 of ‖c(α)‖ = Δ per problem (`secular_step`, vectorized), for the problems ``solve``.

    Args:
        s, sf, kept: ``(w, K)`` singular values, coordinates and mask.
        radius: ``(K,)`` Δ.
        full_rank: ``(K,)`` bool: the lower bound −φ(0)/φ′(0) applies.
        alpha: ``(K,)`` warm starts.
        solve: ``(K,)`` bool, the problems to solve; the others return ``alpha``.

    Returns:
        ``(alpha, iterations)``, float64 and int64 ``(K,)``.

    Examples:
        >>> s, sf = torch.tensor([[2.0], [1.0]]), torch.tensor([[4.0], [1.0]])
        >>> one, yes = torch.ones(1, dtype=torch.bool), torch.ones(2, 1, dtype=torch.bool)
        >>> alpha, _ = secular_roots(s, sf, yes, torch.tensor([0.5]), one, torch.zeros(1), one)
        >>> round(float(torch.linalg.vector_norm(sf[:, 0] / (s[:, 0] ** 2 + alpha))), 3)
        0.5
    """
    radius = radius.double()
    # Units where s_max is about 1 (a power of two, exact): sf² cannot overflow.
    sigma = torch.ldexp(torch.ones_like(radius), torch.frexp(s[0].double()).exponent)
    s64, sf64 = s.double() / sigma, sf.double() / (sigma * sigma)
    alpha = alpha.double() / (sigma * sigma)
    s2, sf2 = s64 * s64, sf64 * sf64
    upper = torch.sqrt(sf2.sum(0)) / radius
    safe = torch.where(kept, s2, 1.0)
    norm0 = torch.sqrt(torch.where(kept, sf2 / (safe * safe), 0.0).sum(0))
    derivative0 = torch.where(kept, sf2 / (safe * safe * safe), 0.0).sum(0)
    usable = (derivative0 > 0) & (derivative0 < math.inf)
    lower = torch.where(usable, (norm0 - radius) * norm0**2 / (radius * torch.where(usable, derivative0, 1.0)), 0.0)
    lower = torch.where(full_rank, torch.minimum(lower.clamp_min(0.0), upper), 0.0)
    restart = torch.maximum(0.001 * upper, torch.sqrt(lower * upper))
    alpha = torch.where((lower < alpha) & (alpha < upper), alpha, restart)
    done = ~solve
    iterations = torch.zeros_like(radius, dtype=torch.int64)
    for iteration in range(1, max_iter + 1):
        if bool(done.all()):  # the one read of the iteration
            break
        denominator = torch.where(kept, s2 + alpha, 1.0)
        norm2 = torch.where(kept, sf2 / denominator**2, 0.0).sum(0)
        slope = torch.where(kept, sf2 / denominator**3, 0.0).sum(0)
        length = torch.sqrt(norm2)
        # Converged, or α so large (radius near underflow) that no Newton step is defined.
        stop = ((length - radius).abs() <= rtol * radius) | ~((slope > 0) & (slope < math.inf))
        iterations = torch.where(done, iterations, iteration)
        done = done | stop
        inside = length < radius
        upper = torch.where(~done & inside, alpha, upper)
        lower = torch.where(~done & ~inside, alpha, lower)
        newton = alpha + (length - radius) / radius * norm2 / slope
        # Newton left the bracket: restart from its geometric mean (Moré 1978).
        newton = torch.where(
            (lower <= newton) & (newton <= upper), newton, torch.maximum(0.001 * upper, torch.sqrt(lower * upper))
        )
        alpha = torch.where(done, alpha, newton)
    iterations = torch.where(done, iterations, max_iter)
    return alpha * sigma * sigma, iterations


def exact_step(factors: ExactFactors, radius: Tensor, *, rtol: float, max_iter: int) -> tuple[BatchStep, Tensor]:
    """The exact steps for radii ``(K,)``, and the roots to keep as the next warm starts."""
    s, sf, kept = factors.s, factors.sf, factors.kept
    radius = radius.double()
    zero = ~kept.any(0) | ~(sf != 0).any(0)
    solve = ~zero & ~(factors.gauss_newton_norm <= radius)
    root, iterations = secular_roots(
        s, sf, kept, radius, factors.full_rank, factors.alpha, solve, rtol=rtol, max_iter=max_iter
    )
    alpha = torch.where(solve, root, 0.0)
    c = torch.where(kept, -sf / torch.where(kept, s * s + alpha.to(s.dtype), 1.0), 0.0)
    step = (factors.V * c[None]).sum(1)
    length = norm(c).double()
    # The secular tolerance allows ‖p‖ up to (1 + rtol)Δ; pull the step back to keep ‖p‖ ≤ Δ.
    over = length > radius
    shrink = torch.where(over, radius / length, 1.0).to(c.dtype)
    c, step, length = c * shrink, step * shrink, torch.where(over, radius, length)
    model = (dot(sf, c) + 0.5 * dot(s * c, s * c)).double()
    step = torch.where(zero, 0.0, step)
    length, model = torch.where(zero, 0.0, length), torch.where(zero, 0.0, model)
    iterations = torch.where(solve, iterations, 0)
    result = BatchStep(step, length, -model, alpha > 0, iterations, torch.zeros_like(iterations))
    return result, torch.where(solve, root, factors.alpha)
