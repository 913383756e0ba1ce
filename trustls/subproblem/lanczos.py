"""The generalized Lanczos trust-region method (GLTR): the exact step within a Krylov space.

Steihaug-Toint CG (`trustls.subproblem.steihaug_cg`) stops where its path
first meets the sphere ‖p‖ = Δ. When that happens in the first iteration or
two, the step is (nearly) the steepest-descent step cut at the boundary,
however much better a step the same Krylov space holds. On curved valleys
the ratio test then keeps Δ where it is (ρ between ¼ and ¾) and a solve
crawls along the valley in thousands of such steps, where the exact
trust-region step (`DenseLstsq`) takes dozens.

GLTR (Gould, Lucidi, Roma & Toint 1999; Conn, Gould & Toint 2000, §7.5.4)
solves the trust-region subproblem exactly in the Krylov space
K_k = span{g, Bg, …, B^(k−1)g}. The Lanczos process builds an orthonormal
basis Q_k = [q_1 … q_k] of K_k, q_1 = g/‖g‖, in which B is tridiagonal:

    B Q_k = Q_k T_k + β_{k+1} q_{k+1} e_kᵀ,    T_k = Q_kᵀ B Q_k.

With p = Q_k h the subproblem becomes

    min_h  ‖g‖ e_1ᵀh + ½ hᵀT_k h   subject to  ‖h‖ ≤ Δ,

k unknowns, solved exactly (`tridiagonal_step`): h(λ) solves
(T_k + λI)h = −‖g‖e_1, with λ = 0 if T_k is positive definite and
‖h(0)‖ ≤ Δ, otherwise the root λ > max(0, −θ_min) of ‖h(λ)‖ = Δ, found by
Moré & Sorensen's (1983) Newton iteration on 1/‖h‖ − 1/Δ with the LDLᵀ
factors of the tridiagonal T_k + λI: O(k) work per iteration, no
eigendecomposition. The first components of the eigenvectors of an
unreduced tridiagonal matrix are nonzero, so in exact arithmetic the "hard
case" (no root above −θ_min) does not arise (Gould et al. 1999, §5); in
floating point g can be orthogonal to θ_min's eigenvector to rounding, and
there T_k's eigendecomposition completes the step to the sphere along that
eigenvector (Moré & Sorensen 1983). By the
relation above the residual of the optimality condition
(B + λI)p + g = 0 is β_{k+1}|e_kᵀh| q_{k+1}: a number, known without a
product. The iteration stops when it falls below η‖g‖, η the forcing term of
`SteihaugCG` (the same reference and the same ``exact_up_to``).

Because K_k contains g, the step's model decrease is at least the Cauchy
decrease, and at least that of the Steihaug point, which lies in the same
space (Gould et al. 1999, Thm 5.1); interior solutions are CG's
(the Galerkin condition in K_k). Inside the sphere λ = 0 and the iteration
is CG's in Lanczos form, with the same products and the same stopping rule.

**Basis and rejected radii.** The basis is kept (``memory`` elements, at
least two vectors), so that a smaller radius after a rejected step solves the
k-dimensional problem again, with no product unless its residual asks for
more vectors, and the step is Q_k h. Each new vector is orthogonalized
against all the kept ones (full reorthogonalization, one classical
Gram-Schmidt pass after the three-term recurrence): without it, the Lanczos
vectors lose their orthogonality as Ritz values converge (Paige 1976), T_k
stops representing B and the small problem's solution is no longer the step's
(Meurant & Strakoš 2006). A pass costs 4kn flops, little beside a product
by automatic differentiation, though comparable to a product of a stored
sparse J at k in the tens. With orthonormal Q_k the step's norm and its
model value are those of h, computed on the host. Below float64 the basis
is orthonormal only to the dtype's rounding and T_k drifts from B on an
ill-conditioned B, so the model value comes from the step itself, by one
product more. When the basis is full the step is the exact one in the space
it spans.

**Breakdown and overflow.** β_{k+1} ≤ ε·‖T_k‖ (K_k invariant under B) ends
the iteration with the exact step in K_k. Norms are taken in float64, in
units of the largest entry where their squares overflow, so only a product
that is itself not finite ends the iteration: with the step in the space
built so far, or, before any, with a non-finite step that the controller
refuses. Lanczos vectors have unit norm, so such a product means B itself
leaves the dtype's range, and a smaller radius cannot help (unlike
`SteihaugCG`, whose products scale with g).

Every iteration reads δ_k and β_{k+1} in one host synchronization; the
k-dimensional problem is solved on the host in float64 and the step is one
matrix-vector product with the basis on the operator's device.

References:
    N. I. M. Gould, S. Lucidi, M. Roma and Ph. L. Toint, "Solving the
    trust-region subproblem using the Lanczos method", SIAM J. Optim. 9(2),
    1999, pp. 504-525.
    A. R. Conn, N. I. M. Gould and Ph. L. Toint, "Trust-Region Methods",
    SIAM, 2000.
    J. J. Moré and D. C. Sorensen, "Computing a trust region step", SIAM J.
    Sci. Stat. Comput. 4(3), 1983, pp. 553-572.
    C. C. Paige, "Error analysis of the Lanczos algorithm for tridiagonalizing
    a symmetric matrix", J. Inst. Math. Appl. 18, 1976, pp. 341-349.
    G. Meurant and Z. Strakoš, "The Lanczos and conjugate gradient algorithms in
    finite precision arithmetic", Acta Numerica 15, 2006, pp. 471-542.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from trustls.subproblem.base import Step, SubproblemSolver
from trustls.subproblem.dense_lstsq import secular_step
from trustls.subproblem.steihaug_cg import (
    check_krylov_options,
    check_krylov_prepare,
    forcing_bound,
    forcing_term,
)

__all__ = ["GLTR", "tridiagonal_step"]

DEFAULT_MEMORY = 2**22  # elements of the kept basis (32 MiB in float64)


def tridiagonal_step(
    diagonal: list[float], offdiagonal: list[float], g_norm: float, radius: float
) -> tuple[list[float], float, float]:
    """The exact solution of min ‖g‖e₁ᵀh + ½hᵀTh, ‖h‖ ≤ Δ, T tridiagonal (host floats).

    h(λ) solves (T + λI)h = −‖g‖e₁. Inside the sphere (T positive definite and
    ‖h(0)‖ ≤ Δ) λ = 0; otherwise λ is the root of 1/‖h(λ)‖ = 1/Δ above
    max(0, −θ_min), found by Moré & Sorensen's (1983) Newton iteration on the
    LDLᵀ factors of T + λI: O(k) per iteration, a factorization that fails
    (a pivot ≤ 0) raising the bracket's lower end. Where the bracket closes
    without a root (the hard case: g orthogonal, to rounding, to the
    eigenvector of θ_min) or the iteration does not converge, the
    eigendecomposition of T gives the step (`_eigen_step`).

    Args:
        diagonal: T's k diagonal entries.
        offdiagonal: its k − 1 off-diagonal entries.
        g_norm: ‖g‖.
        radius: Δ.

    Returns:
        ``(h, lam, model)``: the solution, its multiplier λ (0 inside the
        sphere) and the model value ‖g‖h₁ + ½hᵀTh.

    Examples:
        >>> h, lam, model = tridiagonal_step([2.0], [], 1.0, 10.0)  # interior: h = −‖g‖/2
        >>> h, lam, model
        ([-0.5], 0.0, -0.25)
        >>> h, lam, _ = tridiagonal_step([2.0], [], 1.0, 0.25)  # on the sphere: 1/(2 + λ) = ¼
        >>> round(h[0], 12), round(lam, 9)
        (-0.25, 2.0)
    """
    d, e = diagonal, offdiagonal
    pivots = _pivots(d, e, 0.0)
    if pivots is not None:
        h = _solve(pivots, e, g_norm)
        if _norm(h) <= radius:
            return h, 0.0, _model(d, e, g_norm, h)
    # θ_min ≥ min over rows of dᵢ − |eᵢ₋₁| − |eᵢ| (Gershgorin), so λ* ≤ ‖g‖/Δ − that bound.
    gershgorin = min(d[i] - (abs(e[i - 1]) if i > 0 else 0.0) - (abs(e[i]) if i < len(e) else 0.0)
                     for i in range(len(d)))
    low = max(0.0, -min(d))
    high = max(low, g_norm / radius + max(0.0, -gershgorin))
    lam = low
    for _ in range(200):
        pivots = _pivots(d, e, lam)
        if pivots is None:  # T + λI is not positive definite: λ* lies above λ
            low = lam
        else:
            h = _solve(pivots, e, g_norm)
            norm = _norm(h)
            if abs(norm - radius) <= 1e-10 * radius:
                return _on_sphere(d, e, g_norm, h, norm, radius, lam)
            if norm > radius:
                low = lam
            else:
                high = lam
            # Newton on 1/‖h‖ − 1/Δ: d‖h‖/dλ = −hᵀ(T + λI)⁻¹h/‖h‖, with (T + λI)⁻¹ = L⁻ᵀD⁻¹L⁻¹.
            # ‖h‖²/hᵀ(T + λI)⁻¹h from h/‖h‖, whose squares neither overflow nor underflow.
            curvature = _inverse_quadratic(pivots, e, [v / norm for v in h]) if 0.0 < norm < math.inf else 0.0
            step = (norm - radius) / radius / curvature if curvature > 0.0 else math.inf
            if low < lam + step < high:
                lam += step
                continue
        if not high - low > 1e-15 * max(1.0, abs(low), abs(high)):
            break  # the bracket closed without a root: the hard case
        lam = math.sqrt(low) * math.sqrt(high) if low > 0.0 else 0.5 * low + 0.5 * high
    return _eigen_step(d, e, g_norm, radius)


def _pivots(d: list[float], e: list[float], lam: float) -> list[float] | None:
    """The pivots of T + λI = LDLᵀ, or ``None`` when one is not positive (not positive definite)."""
    pivots = []
    previous = None
    for i, diagonal in enumerate(d):
        pivot = diagonal + lam if previous is None else diagonal + lam - e[i - 1] * e[i - 1] / previous
        if not pivot > 0.0:
            return None
        pivots.append(pivot)
        previous = pivot
    return pivots


def _solve(pivots: list[float], e: list[float], g_norm: float) -> list[float]:
    """h with LDLᵀh = −‖g‖e₁ (L unit lower bidiagonal, lᵢ = eᵢ/dᵢ)."""
    k = len(pivots)
    y = [0.0] * k
    y[0] = -g_norm
    for i in range(1, k):  # L y = −‖g‖e₁
        y[i] = -e[i - 1] / pivots[i - 1] * y[i - 1]
    h = [0.0] * k
    h[-1] = y[-1] / pivots[-1]
    for i in range(k - 2, -1, -1):  # D Lᵀ h = y
        h[i] = y[i] / pivots[i] - e[i] / pivots[i] * h[i + 1]
    return h


def _inverse_quadratic(pivots: list[float], e: list[float], h: list[float]) -> float:
    """hᵀ(T + λI)⁻¹h = Σ vᵢ²/dᵢ with L v = h."""
    total, previous = 0.0, 0.0
    for i, pivot in enumerate(pivots):
        v = h[i] - (e[i - 1] / pivots[i - 1] * previous if i > 0 else 0.0)
        total += v * v / pivot
        previous = v
    return total


def _norm(h: list[float]) -> float:
    return math.hypot(*h)  # scaled: no overflow or underflow of the squares


def _model(d: list[float], e: list[float], g_norm: float, h: list[float]) -> float:
    """‖g‖h₁ + ½hᵀTh."""
    # (dᵢhᵢ)hᵢ rather than dᵢhᵢ²: a huge hᵢ beside a tiny dᵢ keeps its finite product.
    diagonal = sum((d[i] * h[i]) * h[i] for i in range(len(d)))
    quadratic = diagonal + 2.0 * sum((e[i] * h[i]) * h[i + 1] for i in range(len(e)))
    return g_norm * h[0] + 0.5 * quadratic


def _on_sphere(d, e, g_norm, h, norm, radius, lam) -> tuple[list[float], float, float]:
    """h scaled onto the sphere, past the root's tolerance: along h the model still decreases at
    ‖h‖ = Δ (its slope there is −λ‖h‖², from (T + λI)h = −‖g‖e₁)."""
    if not 0.0 < norm < math.inf:  # λ beyond the range (‖g‖/Δ overflowed): the step along −g
        h = [-radius] + [0.0] * (len(h) - 1)
    else:
        h = [v * (radius / norm) for v in h]
    return h, lam, _model(d, e, g_norm, h)


def _eigen_step(d: list[float], e: list[float], g_norm: float, radius: float) -> tuple[list[float], float, float]:
    """The boundary solution from T = V diag(θ) Vᵀ: λ > −θ_min from the secular equation in the shifted
    eigenvalues θ − θ_min ≥ 0 (root α = λ + θ_min), and in the hard case (‖h‖ < Δ as λ → −θ_min) h
    completed to the sphere along θ_min's eigenvector (Moré & Sorensen 1983)."""
    k = len(d)
    T = torch.zeros(k, k, dtype=torch.float64)
    T.diagonal().copy_(torch.tensor(d, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(e, dtype=torch.float64)
        T.diagonal(1).copy_(off), T.diagonal(-1).copy_(off)
    theta, V = torch.linalg.eigh(T)
    c = g_norm * V[0]
    smallest = min(float(theta[0]), 0.0)
    shifted = (theta - smallest).clamp(min=0.0)
    alpha = secular_step(shifted.sqrt(), c, radius, full_rank=bool(shifted[0] > 0), rtol=1e-10, max_iter=100)[0]
    denominator = shifted + alpha
    y = torch.where(denominator > 0, -c / torch.where(denominator > 0, denominator, 1.0), 0.0)
    norm = float(torch.linalg.vector_norm(y))
    if norm < (1.0 - 1e-8) * radius and float(shifted[0]) == 0.0:  # the hard case: no root above −θ_min
        rest = norm * norm - float(y[0]) ** 2
        y[0] = -math.copysign(math.sqrt(max(radius * radius - rest, 0.0)), float(c[0]))
    h = (V @ y).tolist()
    return _on_sphere(d, e, g_norm, h, _norm(h), radius, alpha - smallest)


@dataclass
class LanczosBasis:
    """The Lanczos basis at one point, grown across the trial radii of an iteration."""

    linearization: object
    reference: float | None = None  # the forcing term's reference ‖g‖ (the solver's state)
    vectors: Tensor | None = None  # (capacity, n): q_1 … q_{k+1}
    diagonal: list[float] = field(default_factory=list)  # δ_1 … δ_k
    offdiagonal: list[float] = field(default_factory=list)  # β_2 … β_{k+1}
    g_norm: float | None = None
    tolerance: float = 0.0
    ended: bool = False  # breakdown or overflow: K_k is the whole space the solver will see
    early: Step | None = None  # the step for every radius when g = 0 or ‖g‖ overflows


@dataclass(frozen=True)
class GLTR(SubproblemSolver):
    """The trust-region step solved exactly in the Krylov space that Lanczos builds (GLTR).

    Args:
        max_iter: cap on Lanczos iterations (``None``: n, where a full
            orthogonal basis spans the space).
        forcing: η_max, as `SteihaugCG`'s: the iteration stops when the
            residual of (B + λI)p = −g is below ``min(forcing, max(ρ, ε/ρ))``·‖g‖.
        memory: elements of the kept basis (``None``: 2²², 32 MiB in
            float64); at least two vectors are kept, and a full basis ends the
            iteration with the exact step in the space it spans.
        exact_up_to: up to this many variables the forcing term is eps^(3/4),
            as `SteihaugCG`'s.

    Examples:
        >>> import torch
        >>> from trustls import TrustRegion, GaussNewtonModel
        >>> TrustRegion(GaussNewtonModel(), solver="gltr").solver
        GLTR(max_iter=None, forcing=0.001, memory=None, exact_up_to=32)
    """

    max_iter: int | None = None
    forcing: float = 1e-3
    memory: int | None = None
    exact_up_to: int = 32

    default_x_scale: ClassVar[str] = "jac"

    def __post_init__(self):
        check_krylov_options(self.max_iter, self.forcing, ("memory", self.memory), self.exact_up_to)

    def prepare(self, linearization, state: float | None = None) -> LanczosBasis:
        return LanczosBasis(linearization, check_krylov_prepare("GLTR", linearization, state))

    def state(self, prepared: LanczosBasis) -> float | None:
        return prepared.reference

    def _capacity(self, n: int) -> int:
        """Vectors kept: q_1 … q_{k+1} for k ≤ max_iter, within ``memory`` (two at least)."""
        iterations = n if self.max_iter is None else self.max_iter
        memory = DEFAULT_MEMORY if self.memory is None else self.memory
        return max(2, min(iterations + 1, memory // max(n, 1)))

    def _start(self, basis: LanczosBasis) -> None:
        """q_1 = g/‖g‖ and the tolerance; for g = 0 a zero step, for ‖g‖ = ∞ a non-finite one (``early``)."""
        g = basis.linearization.gradient
        g_norm = _vector_norm(g)
        basis.g_norm = g_norm
        if g_norm == 0.0:
            basis.early = Step(torch.zeros_like(g), 0.0, 0.0, False, 0, 0, "zero_gradient")
            return
        if not math.isfinite(g_norm):
            basis.early = _overflow(g, 0)
            return
        basis.reference = g_norm if basis.reference is None else max(basis.reference, g_norm)
        eta_max = forcing_bound(self.forcing, self.exact_up_to, g)
        basis.tolerance = forcing_term(basis.reference, g_norm, eta_max, torch.finfo(g.dtype).eps) * g_norm
        basis.vectors = g.new_empty(self._capacity(g.shape[0]), g.shape[0])
        basis.vectors[0] = g / g_norm

    def solve(self, prepared: LanczosBasis, radius: float) -> Step:
        basis = prepared
        if basis.g_norm is None:
            self._start(basis)
        if basis.early is not None:
            return basis.early
        B = basis.linearization.operator
        Q = basis.vectors
        capacity = Q.shape[0]
        eps = torch.finfo(Q.dtype).eps
        products = iterations = 0
        while True:
            k = len(basis.diagonal)
            if k > 0:
                h, lam, model = tridiagonal_step(basis.diagonal, basis.offdiagonal[: k - 1], basis.g_norm, radius)
                residual = 0.0 if basis.ended else basis.offdiagonal[k - 1] * abs(h[-1])
                if residual <= basis.tolerance or basis.ended or k + 1 >= capacity:
                    break
            elif basis.ended:  # the first product overflowed
                return _overflow(Q[0], products)
            # One Lanczos step: δ_k = q_kᵀBq_k, then q_{k+1} from the three-term recurrence,
            # orthogonalized against every kept vector.
            w = B.matvec(Q[k])
            products, iterations = products + 1, iterations + 1
            delta_t = torch.dot(Q[k], w)
            w = w - delta_t * Q[k]
            if k > 0:
                w = w - basis.offdiagonal[k - 1] * Q[k - 1]
            w = w - (Q[: k + 1] @ w) @ Q[: k + 1]
            delta, beta = torch.stack([delta_t.double(), torch.linalg.vector_norm(w, dtype=torch.float64)]).tolist()
            if beta == math.inf:  # ‖w‖² overflowed, perhaps not w: its norm in units of its largest entry
                beta = _vector_norm(w)
            if not (math.isfinite(delta) and math.isfinite(beta)):
                basis.ended = True  # the step in the space built so far, if any
                continue
            basis.diagonal.append(delta)
            basis.offdiagonal.append(beta)
            scale = max(abs(v) for v in basis.diagonal + basis.offdiagonal)
            if beta <= eps * scale:
                basis.ended = True  # K_k is invariant under B: the step in it is exact
            else:
                Q[k + 1] = w / beta
        coefficients = torch.tensor(h, dtype=Q.dtype, device=Q.device)
        step = coefficients @ Q[:k]
        norm = _norm(h)
        if Q.dtype != torch.float64:
            # Below float64 the basis is orthonormal only to the dtype's rounding, and T_k's model of an
            # ill-conditioned B drifts from B's: the model value comes from the step, by one product more.
            g = basis.linearization.gradient
            Bp = B.matvec(step)
            products += 1
            norm = _vector_norm(step)
            values = torch.stack([torch.dot(g.double(), step.double()), torch.dot(step.double(), Bp.double()),
                                  torch.linalg.vector_norm(Bp.double())]).tolist()
            if all(math.isfinite(v) for v in values):  # else (Bp overflowed) T_k's model stands
                model = values[0] + 0.5 * values[1]
        on_boundary = lam > 0.0
        if residual > basis.tolerance:
            reason = "max_iter"
        else:
            reason = "boundary" if on_boundary else "converged"
        return Step(step, norm, -model, on_boundary, iterations, products, reason)


def _vector_norm(v: Tensor) -> float:
    """‖v‖ in float64, scaled by its largest entry where the squares overflow (inf only for a non-finite v)."""
    norm = float(torch.linalg.vector_norm(v, dtype=torch.float64))
    if norm == math.inf:
        largest = float(v.abs().max())
        if math.isfinite(largest):
            norm = largest * float(torch.linalg.vector_norm(v / largest, dtype=torch.float64))
    return norm


def _overflow(like: Tensor, products: int) -> Step:
    """No step: a non-finite one, which the controller refuses, shrinking the radius."""
    return Step(torch.full_like(like, math.nan), math.nan, math.nan, True, 0, products, "overflow")
