"""The exact trust-region step from one SVD of the Jacobian.

With the thin SVD J = U diag(s) Vᵀ and f = Uᵀr, the solutions of
(JᵀJ + αI)p = −Jᵀr are

    p(α) = −V c(α),   c_i(α) = s_i f_i / (s_i² + α),

and the exact solution of the trust-region subproblem (Moré 1978; Moré &
Sorensen 1983; Nocedal & Wright 2006, §4.3) is

* the Gauss-Newton step p(0) (minimum-norm, singular values below
  ``max(m, n)·eps·s_max`` dropped, as ``numpy.linalg.lstsq``, unless J with
  unit columns keeps them: `_rank_in_unit_columns`) when it lies inside the
  region, and otherwise
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
coefficients: gᵀp = Σ sf_i c_i and ‖Jp‖² = Σ (s_i c_i)².

Only the SVD and the step p = V c run on J's device. The rank, the singular
values and the gradient's coordinates sf (k = min(m, n) numbers) are read
once per point; the secular equation, the step's length and the model value
are computed on the host in float64, whatever J's dtype; on an accelerator
the coefficients c(α) of the step are computed on the device from the same
α (a copy from the host would wait for the device). No read per secular
iteration, and none of the dozens of 0-d tensor operations whose dispatch
would outweigh the arithmetic on a few numbers (the SVD of J costs far more
than O(k) host work per iteration at any size). The host arithmetic is
written so that it never raises: squares by multiplication, sums by ``sum``,
a division by zero by its IEEE value (`_divide`). Overflow gives inf and a
non-finite step, which the controller rejects, as it rejected the tensors'
inf and NaN before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from trustls.subproblem.base import Step, SubproblemSolver

__all__ = ["DenseLstsq", "secular_step"]

_SMALLEST_NORMAL = 2.0**-1022


@dataclass
class _Factorization:
    """The SVD of J at one point as the secular equation needs it, and its last root.

    Singular values and gradient coordinates are kept in units of σ, a power
    of two near s_max: s/σ and sf/σ², on the host (for the secular equation)
    and, on an accelerator, on J's device (for the coefficients of the step);
    c(α) is unchanged under s → s/σ, sf → sf/σ², α → α/σ² (`secular_step`).
    """

    V: Tensor
    s: list[float]  # singular values kept (above the rank cutoff), over σ
    sf: list[float]  # s_i f_i, the gradient's coordinates in the basis V, over σ²
    s_device: Tensor | None  # the same two, float64, on an accelerator (None on the CPU)
    sf_device: Tensor | None
    sigma: float
    full_rank: bool
    gauss_newton_norm: float  # ‖c(0)‖
    alpha: float = 0.0  # the last root, over σ²


def _coefficients_on_device(device: torch.device) -> bool:
    """Whether the step's coefficients are computed on J's device (an accelerator) or copied from the host."""
    return device.type != "cpu"


def _unit_of(largest: float) -> float:
    """σ, a power of two with ``largest``/σ in [1, 2); 1 when ``largest`` is not a normal positive finite float.

    2^(e−1) rather than 2^e (frexp's exponent) so that σ stays finite for
    s_max up to float64's largest; 1/σ is finite down to its smallest normal.
    """
    if not _SMALLEST_NORMAL <= largest < math.inf:
        return 1.0
    return math.ldexp(1.0, math.frexp(largest)[1] - 1)


def _rank_in_unit_columns(J: Tensor, cutoff: float) -> int:
    """The numerical rank of J with its columns scaled to unit norm: singular values above ``cutoff``·s_max.

    The rank cutoff relative to s_max is right for singular values whose
    smallness is J's, not its units': a variable measured in units 10⁶ times too
    small makes J's column and one singular value 10⁶ times smaller, and in
    float32 (eps·max(m, n) ≈ 10⁻⁶) that singular value fell below the cutoff
    although it was computed to full accuracy (NIST Misra1a: s = 7.6·10⁵ and
    1.3·10⁻³; the step then never moved b₁ and stopped with ``xtol``). The rank
    is invariant under a change of units of the variables in exact arithmetic,
    so it is decided where all columns have unit norm (van der Sluis 1969);
    the step itself still uses J's singular values, which the ratio test
    checks.
    """
    values = torch.linalg.svdvals(unit_columns(J))
    return int((values > cutoff * values[0]).sum()) if values.numel() else 0


def unit_columns(A: Tensor) -> Tensor:
    """``A`` with each column (along dim 0; any trailing batch dimensions) divided by its norm; a zero
    column stays zero. A division by the norm, not a product with 1/norm, which overflows if it is subnormal.

    Examples:
        >>> unit_columns(torch.tensor([[3.0, 0.0], [4.0, 0.0]]))
        tensor([[0.6000, 0.0000],
                [0.8000, 0.0000]])
    """
    norms = torch.linalg.vector_norm(A, dim=0, keepdim=True)
    return torch.where(norms > 0, A / torch.where(norms > 0, norms, 1.0), 0.0)


def _rank(singular_values: list[float], J: Tensor, cutoff: float) -> int:
    """The rank of the step: the singular values above ``cutoff``·s_max, or, when one falls below it, the
    rank in unit columns (`_rank_in_unit_columns`), at most the count of nonzero ones."""
    rank = sum(1 for v in singular_values if v > cutoff * singular_values[0])
    if rank < len(singular_values):  # numerically zero, or small by J's units only?
        nonzero = sum(1 for v in singular_values if v > 0.0)
        rank = max(rank, min(_rank_in_unit_columns(J, cutoff), nonzero))
    return rank


def _divide(a: float, b: float) -> float:
    """a/b with IEEE semantics for b = 0 (±inf, or NaN for 0/0), as a tensor division gives."""
    if b != 0.0:
        return a / b
    return math.copysign(math.inf, a) * math.copysign(1.0, b) if a != 0.0 and a == a else math.nan


def _norm_of_c(s2: Sequence[float], sf: Sequence[float], alpha: float) -> tuple[float, float]:
    """‖c(α)‖² and Σ sf²/(s² + α)³ (the derivative's sum)."""
    norm2 = slope = 0.0
    for a, b in zip(s2, sf):
        q = _divide(b, a + alpha)
        norm2 += q * q
        slope += _divide(q * q, a + alpha)
    return norm2, slope


def secular_step(
    s: Sequence[float] | Tensor,
    sf: Sequence[float] | Tensor,
    radius: float,
    *,
    full_rank: bool,
    alpha: float = 0.0,
    rtol: float = 1e-3,
    max_iter: int = 30,
) -> tuple[float, int]:
    """Root α > 0 of ‖c(α)‖ = radius, c_i(α) = −sf_i / (s_i² + α), in host floats.

    Moré's iteration: Newton's method on φ(α) = 1/‖c(α)‖ − 1/Δ, whose update
    is α ← α + (‖c‖/Δ − 1)·‖c‖²/‖c‖'² with ‖c‖'² = Σ sf²/(s²+α)³ (Moré 1978,
    eq. 5.5), kept in a bracket [l, u] with u = ‖sf‖/Δ and, for full column
    rank, l = −φ(0)/φ'(0). Stops when |‖c‖ − Δ| ≤ rtol·Δ.

    The iteration runs in units where the largest singular value is about 1:
    with σ a power of two near s_max, c is unchanged under s → s/σ,
    sf → sf/σ², α → α/σ², and the squares of sf cannot overflow even when J's
    entries are near the dtype's range (scaling by a power of two is exact).

    Returns:
        ``(alpha, iterations)``.

    Examples:
        >>> alpha, _ = secular_step([2.0, 1.0], [4.0, 1.0], 0.5, full_rank=True)
        >>> round(math.hypot(4.0 / (4.0 + alpha), 1.0 / (1.0 + alpha)), 3)
        0.5
    """
    s = s.tolist() if isinstance(s, Tensor) else [float(v) for v in s]
    sf = sf.tolist() if isinstance(sf, Tensor) else [float(v) for v in sf]
    largest = max(s, default=0.0)
    sigma = _unit_of(largest)
    inverse = 1.0 / sigma
    s2 = [(v * inverse) * (v * inverse) for v in s]
    sf = [v * inverse * inverse for v in sf]
    alpha, iterations = _secular_root(s2, sf, radius, full_rank, alpha * inverse * inverse, rtol, max_iter)
    return sigma * (sigma * alpha), iterations


def _secular_root(
    s2: list[float], sf: list[float], radius: float, full_rank: bool, alpha: float, rtol: float, max_iter: int
) -> tuple[float, int]:
    """`secular_step` in units of σ: ``s2`` the squared singular values over σ², ``sf`` over σ².

    c(α) is linear in sf, so sf and Δ are first divided by τ, a power of two
    near max |sf|: the squares of the sums then neither underflow nor overflow,
    and the root α is the same.
    """
    inverse = 1.0 / _unit_of(max((abs(v) for v in sf), default=0.0))
    sf, radius = [v * inverse for v in sf], radius * inverse
    upper = _divide(math.hypot(*sf), radius)
    if full_rank:
        # φ(0)/φ'(0) for the lower bound: ‖c(0)‖ and Σ sf²/s⁶.
        norm2_0, derivative0 = _norm_of_c(s2, sf, 0.0)
        norm0 = math.sqrt(norm2_0)
        lower = _divide((norm0 - radius) * norm2_0, radius * derivative0) if 0 < derivative0 < math.inf else 0.0
        lower = min(max(lower, 0.0), upper) if lower == lower else 0.0
    else:
        lower = 0.0
    if not lower < alpha < upper:
        alpha = max(0.001 * upper, math.sqrt(lower) * math.sqrt(upper))
    iterations = 0
    for iterations in range(1, max_iter + 1):
        norm2, slope = _norm_of_c(s2, sf, alpha)
        norm = math.sqrt(norm2)
        if abs(norm - radius) <= rtol * radius or not 0.0 < slope < math.inf:
            break  # converged, or α so large (radius near underflow) that no Newton step is defined
        if norm < radius:
            upper = alpha
        else:
            lower = alpha
        # Newton on 1/‖c‖ − 1/Δ: d‖c‖/dα = −slope/‖c‖.
        alpha += _divide(norm - radius, radius) * norm2 / slope
        if not lower <= alpha <= upper:
            # Newton left the bracket: restart from its geometric mean (Moré 1978).
            alpha = max(0.001 * upper, math.sqrt(lower) * math.sqrt(upper))
    return alpha, iterations


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
        f = linearization.whitened_residual
        g = linearization.gradient
        cutoff = max(m, n) * torch.finfo(J.dtype).eps  # numpy.linalg.lstsq's, relative to s_max
        if f is not None:
            # sf = s·(Uᵀf): its error in the direction of a small singular value s_i
            # is of order eps·s_i‖f‖, where Vᵀg's is eps·s_max‖f‖.
            sf = s.double() * (U.T @ f).double()
            # The point's one read: s and sf. The singular values kept are a prefix of s.
            values = torch.cat([s.double(), sf]).tolist()
            k = s.numel()
            rank = _rank(values[:k], J, cutoff)
            outside = g_norm = 0.0
        else:
            # Vᵀg = S Uᵀf for the f that the model does not form. Unlike Jᵀr, the gradient of a
            # loss may leave the range of J̃ᵀ (a logit whose probability underflows moves the
            # loss but not J̃): that part, g⊥ = g − V_r V_rᵀg for the rank r, is a direction of
            # zero curvature, kept as a zero singular value, along which the model only falls.
            # With c = Vᵀg over all k columns, ‖g⊥‖² = ‖g − Vc‖² + Σ_{i≥r} c_i² (orthogonal
            # parts), so one read serves every r, and the rank is decided on the host.
            c = Vh @ g
            extra = torch.stack([torch.linalg.vector_norm(g - Vh.T @ c), torch.linalg.vector_norm(g)]).double()
            # The point's one read: s, c, ‖g − Vc‖ and ‖g‖.
            values = torch.cat([s.double(), c.double(), extra]).tolist()
            k = s.numel()
            rank = _rank(values[:k], J, cutoff)
            perpendicular, g_norm = values[2 * k], values[2 * k + 1]
            outside = math.hypot(perpendicular, *values[k + rank : 2 * k])  # without overflow
            sf = c.double()  # only its first `rank` entries are used
        if rank and not values[0] >= _SMALLEST_NORMAL:  # s_max subnormal: J is 0 to float64
            rank, outside = 0, g_norm  # and on the loss path all of g lies outside its range
        appended = f is None and outside > math.sqrt(torch.finfo(g.dtype).eps) * g_norm
        # σ near s_max, or near √‖g⊥‖ if larger: the appended direction's sf/σ² = ‖g⊥‖/σ² stays finite.
        largest = max(values[0] if rank else 0.0, math.sqrt(outside) if appended else 0.0)
        sigma = _unit_of(largest)
        inverse = 1.0 / sigma
        s_host = [v * inverse for v in values[:rank]]
        sf_host = [v * inverse * inverse for v in values[k : k + rank]]
        V = Vh[:rank].T
        # An accelerator computes c from the same α on the device (a copy from the host would wait
        # for the device); the CPU copies the host's c.
        on_device = _coefficients_on_device(J.device)
        s_device = s[:rank].double() * inverse if on_device else None
        sf_device = sf[:rank] * inverse * inverse if on_device else None  # σ⁻² could overflow
        if not appended:
            gauss_newton_norm = math.hypot(*(_divide(b, a * a) for a, b in zip(s_host, sf_host)))  # ‖c(0)‖
            return _Factorization(V, s_host, sf_host, s_device, sf_device, sigma, rank == n, gauss_newton_norm)
        V = torch.cat([V, ((g - V @ sf[:rank].to(V.dtype)) / outside)[:, None]], dim=1)
        along = outside * inverse * inverse
        if on_device:
            s_device = torch.cat([s_device, s_device.new_zeros(1)])
            sf_device = torch.cat([sf_device, sf_device.new_full((1,), along)])
        return _Factorization(V, s_host + [0.0], sf_host + [along], s_device, sf_device, sigma, False, math.inf)

    def solve(self, prepared: _Factorization, radius: float) -> Step:
        factors = prepared
        if factors.gauss_newton_norm == 0.0:  # no gradient in the range of J̃ᵀ, nor outside it
            zero = torch.zeros(factors.V.shape[0], dtype=factors.V.dtype, device=factors.V.device)
            return Step(zero, 0.0, 0.0, False, 0, 0, "zero_gradient")
        s2 = [v * v for v in factors.s]
        if factors.gauss_newton_norm <= radius:
            alpha, iterations, reason = 0.0, 0, "gauss_newton"
        else:
            alpha, iterations = _secular_root(
                s2, factors.sf, radius, factors.full_rank, factors.alpha, self.rtol, self.max_iter
            )
            factors.alpha = alpha
            reason = "secular"
        c = [-_divide(b, a + alpha) for a, b in zip(s2, factors.sf)]
        norm = math.hypot(*c)
        shrink = 1.0
        if alpha > 0:
            # The secular tolerance leaves ‖p‖ within rtol·Δ of Δ; a boundary step is put on
            # the boundary exactly, as scipy's solve_lsq_trust_region does (p *= Δ/‖p‖), so
            # that ‖p‖ ≤ Δ holds and a step along one coordinate with Δ = ‖x‖ reaches 0.
            shrink = _divide(radius, norm)
            c, norm = [v * shrink for v in c], radius
        # m(p) = gᵀp + ½‖Jp‖² with gᵀp = Σ sf_i c_i and ‖Jp‖² = Σ (s_i c_i)², each term formed
        # from the scaled s/σ and sf/σ² as (σ·sf/σ²)(σ·c) and (σ·(s/σ)·c)²: finite where the term is.
        sigma = factors.sigma
        model = sum((sigma * b) * (sigma * v) + 0.5 * (sigma * (a * v)) * (sigma * (a * v))
                    for a, b, v in zip(factors.s, factors.sf, c))
        V = factors.V
        if factors.s_device is None:
            c_step = torch.tensor(c, dtype=V.dtype)
        else:  # the same coefficients on the device, from the same α (no copy from the host)
            c_step = (-factors.sf_device / (factors.s_device * factors.s_device + alpha) * shrink).to(V.dtype)
        return Step(V @ c_step, norm, -model, alpha > 0, iterations, 0, reason)
