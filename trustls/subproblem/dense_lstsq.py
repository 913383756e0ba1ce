"""The exact trust-region step from one SVD of the Jacobian.

With the thin SVD J = U diag(s) Vᵀ and f = Uᵀr, the solutions of
(JᵀJ + αI)p = −Jᵀr are

    p(α) = −V c(α),   c_i(α) = s_i f_i / (s_i² + α),

and the exact solution of the trust-region subproblem (Moré 1978; Moré &
Sorensen 1983; Nocedal & Wright 2006, §4.3) is

* the Gauss-Newton step p(0) (minimum-norm, singular values below
  ``max(m, n)·eps·s_max`` dropped, as ``numpy.linalg.lstsq``) when it lies
  inside the region, and otherwise
* p(α*) with α* > 0 the root of the secular equation ‖p(α)‖ = Δ.

Because B = JᵀJ is positive semidefinite and g = Jᵀr lies in the range of
Jᵀ, ‖p(α)‖ decreases from ‖p(0⁺)‖ to 0 and the "hard case" cannot occur.
The root is found with Moré's (1978) Newton iteration on
φ(α) = 1/‖p(α)‖ − 1/Δ, which is nearly linear in α, safeguarded in a
bracket [l, u] with u = ‖Jᵀr‖/Δ and, for full column rank, l = −φ₀/φ₀'
(Moré 1978, §5; scipy's ``solve_lsq_trust_region``).

J is factored once per accepted point and the factors serve every rejected
radius; α from the previous radius warm-starts the next root search. The
normal equations are never formed, so the condition number of J, not its
square, governs the accuracy. The predicted reduction comes from the
coefficients: gᵀp = Σ s_i f_i c_i... with signs, ‖Jp‖² = Σ (s_i c_i)².
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from trustls.subproblem.base import Step, SubproblemSolver

__all__ = ["DenseLstsq", "secular_step"]


@dataclass
class _Factorization:
    """The SVD of J at one point, what the secular equation needs of it, and its last root."""

    V: Tensor
    s: Tensor  # singular values kept (above the rank cutoff)
    sf: Tensor  # s_i f_i, the gradient's coordinates in the basis V
    full_rank: bool
    gauss_newton_norm: float
    moments: tuple[float, float, float, float] | None = None  # `secular_step`'s radius-free sums
    alpha: float = 0.0


def _coefficients(factors: _Factorization, alpha: float) -> Tensor:
    return -factors.sf / (factors.s**2 + alpha)


def secular_moments(s: Tensor, sf: Tensor) -> Tensor:
    """The radius-free sums `secular_step` starts from, unread: σ (a power of two near s_max, as a
    float64 tensor), ‖sf/σ²‖², and ‖c(0)‖² = Σ sf²/s⁴ and Σ sf²/s⁶ in units of σ (module docstring)."""
    sigma = torch.exp2(torch.frexp(s[0].double())[1].double())
    s, sf = s.double() / sigma, sf.double() / (sigma * sigma)
    s2, sf2 = s * s, sf * sf
    return torch.stack([sigma, sf2.sum(), (sf2 / (s2 * s2)).sum(), (sf2 / (s2 * s2 * s2)).sum()])


def secular_step(
    s: Tensor,
    sf: Tensor,
    radius: float,
    *,
    full_rank: bool,
    alpha: float = 0.0,
    rtol: float = 1e-3,
    max_iter: int = 30,
    moments: tuple[float, float, float, float] | None = None,
) -> tuple[float, int]:
    """Root α > 0 of ‖c(α)‖ = radius, c_i(α) = −sf_i / (s_i² + α).

    Moré's iteration: Newton's method on φ(α) = 1/‖c(α)‖ − 1/Δ, whose update
    is α ← α + (‖c‖/Δ − 1)·‖c‖²/‖c‖'² with ‖c‖'² = Σ sf²/(s²+α)³ (Moré 1978,
    eq. 5.5), kept in a bracket [l, u]. Stops when |‖c‖ − Δ| ≤ rtol·Δ.

    The iteration runs in units where the largest singular value is about 1:
    with σ a power of two near s_max, c is unchanged under s → s/σ,
    sf → sf/σ², α → α/σ², and the squares of sf cannot overflow even when J's
    entries are near the dtype's range (scaling by a power of two is exact).
    The radius-free sums it starts from (``moments``, `secular_moments`) are
    read once per point by `DenseLstsq.prepare`; each iteration reads one pair.

    Returns:
        ``(alpha, iterations)``.

    Examples:
        >>> import torch
        >>> s, sf = torch.tensor([2.0, 1.0]), torch.tensor([4.0, 1.0])
        >>> alpha, _ = secular_step(s, sf, 0.5, full_rank=True)
        >>> float(torch.linalg.vector_norm(sf / (s**2 + alpha)))  # doctest: +ELLIPSIS
        0.5...
    """
    if moments is None:
        moments = secular_moments(s, sf).tolist()
    sigma, sf_norm2, norm0, derivative0 = moments
    s = s / sigma
    sf = sf / (sigma * sigma)
    alpha = alpha / (sigma * sigma)
    s2 = s * s
    sf2 = sf * sf
    upper = math.sqrt(sf_norm2) / radius
    if full_rank:
        # φ(0) / φ'(0) for the lower bound: ‖c(0)‖ and Σ sf²/s⁶.
        norm0 = math.sqrt(norm0)
        lower = (norm0 - radius) * norm0**2 / (radius * derivative0) if 0 < derivative0 < math.inf else 0.0
        lower = min(max(lower, 0.0), upper)
    else:
        lower = 0.0
    if not lower < alpha < upper:
        alpha = max(0.001 * upper, math.sqrt(lower * upper))
    iterations = 0
    for iterations in range(1, max_iter + 1):
        denominator = s2 + alpha
        norm2, slope = torch.stack([(sf2 / denominator**2).sum(), (sf2 / denominator**3).sum()]).tolist()
        norm = math.sqrt(norm2)
        if abs(norm - radius) <= rtol * radius or not 0.0 < slope < math.inf:
            break  # converged, or α so large (radius near underflow) that no Newton step is defined
        if norm < radius:
            upper = alpha
        else:
            lower = alpha
        # Newton on 1/‖c‖ − 1/Δ: d‖c‖/dα = −slope/‖c‖.
        alpha += (norm - radius) / radius * norm2 / slope
        if not lower <= alpha <= upper:
            # Newton left the bracket: restart from its geometric mean (Moré 1978).
            alpha = max(0.001 * upper, math.sqrt(lower * upper))
    return alpha * sigma * sigma, iterations


@dataclass(frozen=True)
class DenseLstsq(SubproblemSolver):
    """Exact trust-region steps from one SVD of J per accepted point.

    Args:
        rtol: relative accuracy of ‖p‖ = Δ for boundary steps.
        max_iter: cap on secular-equation iterations per radius.

    Examples:
        >>> from trustls import TrustRegion, GaussNewtonModel
        >>> TrustRegion(GaussNewtonModel(), solver="lstsq").solver
        DenseLstsq(rtol=0.001, max_iter=30)
    """

    requires_jacobian = True
    rtol: float = 1e-3
    max_iter: int = 30

    def __post_init__(self):
        if not isinstance(self.rtol, (int, float)) or not 0 < self.rtol < 1:
            raise ValueError(f"rtol must be a number in (0, 1), got {self.rtol!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive int, got {self.max_iter!r}")

    def prepare(self, linearization, state=None) -> _Factorization:
        # Exact solves carry no state from point to point.
        J = linearization.jacobian_matrix
        if J is None:
            raise ValueError("DenseLstsq needs the dense Jacobian; the model did not provide jacobian_matrix")
        m, n = J.shape
        U, s, Vh = torch.linalg.svd(J, full_matrices=False)
        if s.numel() == 0:
            return _Factorization(Vh.T, s, s, False, 0.0)
        keep = s > max(m, n) * torch.finfo(J.dtype).eps * s[0]
        f = linearization.whitened_residual
        g = linearization.gradient
        if f is not None:
            # sf = s·(Uᵀf): its error in the direction of a small singular value s_i
            # is of order eps·s_i‖f‖, where Vᵀg's is eps·s_max‖f‖.
            sf = s * (U.T @ f)
            outside_norm = torch.zeros((), dtype=s.dtype, device=s.device)
        else:
            # Vᵀg = S Uᵀf for the f that the model does not form. Unlike Jᵀr, the gradient of a
            # loss may leave the range of J̃ᵀ (a logit whose probability underflows moves the
            # loss but not J̃): that part, g⊥ = g − VVᵀg, is a direction of zero curvature,
            # kept as a zero singular value, along which the model only falls.
            sf = torch.where(keep, Vh @ g, 0.0)
            outside_norm = torch.linalg.vector_norm(g - Vh.T @ sf)
        sf = torch.where(keep, sf, 0.0)
        safe = torch.where(keep, s, 1.0)
        # The point's one read: the rank, ‖p(0)‖ and the secular equation's sums.
        rank, gauss_newton_norm, outside, g_norm, *moments = torch.cat([
            torch.stack([keep.sum().to(s.dtype), torch.linalg.vector_norm(sf / (safe * safe)), outside_norm,
                         torch.linalg.vector_norm(g)]).double(),
            secular_moments(safe, sf),
        ]).tolist()
        rank = int(rank)
        s, V, sf = s[:rank], Vh[:rank].T, sf[:rank]
        if f is not None or outside <= math.sqrt(torch.finfo(g.dtype).eps) * g_norm:
            return _Factorization(V, s, sf, rank == n, gauss_newton_norm if rank else 0.0, tuple(moments))
        V = torch.cat([V, ((g - V @ sf) / outside)[:, None]], dim=1)
        s = torch.cat([s, s.new_zeros(1)])
        sf = torch.cat([sf, sf.new_full((1,), outside)])
        return _Factorization(V, s, sf, False, math.inf)

    def solve(self, prepared: _Factorization, radius: float) -> Step:
        factors = prepared
        if factors.gauss_newton_norm == 0.0:  # no gradient in the range of J̃ᵀ, nor outside it
            zero = torch.zeros(factors.V.shape[0], dtype=factors.V.dtype, device=factors.V.device)
            return Step(zero, 0.0, 0.0, False, 0, 0, "zero_gradient")
        if factors.gauss_newton_norm <= radius:
            alpha, iterations, reason = 0.0, 0, "gauss_newton"
        else:
            alpha, iterations = secular_step(
                factors.s, factors.sf, radius, full_rank=factors.full_rank,
                alpha=factors.alpha, rtol=self.rtol, max_iter=self.max_iter, moments=factors.moments,
            )
            factors.alpha = alpha
            reason = "secular"
        c = _coefficients(factors, alpha)
        norm = torch.linalg.vector_norm(c)
        if alpha > 0:
            # The secular tolerance leaves ‖p‖ within rtol·Δ of Δ; a boundary step is put on
            # the boundary exactly, as scipy's solve_lsq_trust_region does (p *= Δ/‖p‖), so
            # that ‖p‖ ≤ Δ holds and a step along one coordinate with Δ = ‖x‖ reaches 0.
            c = c * (radius / norm)
            norm = torch.full_like(norm, radius)
        # m(p) = gᵀp + ½‖Jp‖² with gᵀp = Σ sf_i c_i and ‖Jp‖² = Σ (s_i c_i)².
        model = torch.dot(factors.sf, c) + 0.5 * torch.dot(factors.s * c, factors.s * c)
        return Step(factors.V @ c, norm, -model, alpha > 0, iterations, 0, reason)
