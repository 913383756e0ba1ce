r"""Levenberg-Marquardt steps by Schur-complement elimination (Ceres' ITERATIVE_SCHUR).

The subproblem. At a point with Jacobian J (in the trust region's variables),
gradient g = Jᵀr and B = JᵀJ, the controller asks for a step with ‖p‖ ≤ Δ that
decreases the Gauss-Newton model m(p) = gᵀp + ½‖Jp‖² (`SubproblemSolver`).
Every solution of the trust-region subproblem is a damped step

    p(λ) = −(B + λI)⁻¹ g,   λ ≥ 0,

with λ = 0 or ‖p(λ)‖ = Δ (Moré 1978; Moré & Sorensen 1983; Nocedal & Wright
2006, Thm 4.1), and each p(λ), λ > 0, is the exact solution for the radius
‖p(λ)‖. This solver computes damped steps, Levenberg-Marquardt steps, and
chooses λ from Δ so that ‖p(λ)‖ ≤ Δ.

Elimination. Each damped step solves the Schur complement of the eliminated
blocks E (the points of bundle adjustment) in the free blocks F (the
cameras) by preconditioned conjugate gradients, and back-substitutes p_E
(Agarwal, Snavely, Seitz & Szeliski 2010; `trustls.subproblem.schur_reduced`,
on the blocks of `trustls.subproblem.schur_structure`).

A diagonal term. When the curvature is B = JᵀJ + diag(c) with c ⪰ 0 (a
`ShiftedOperator`: the Coleman-Li subproblem of box bounds, `trustls.bounds`),
c joins the diagonal blocks of C and of J_FᵀJ_F, the products with S add
c_F ⊙ v, and the model below gains ½pᵀdiag(c)p; everything else is unchanged,
since diag(c) does not couple blocks.

Damping from the radius. For B ⪰ 0, λ‖p(λ)‖ = ‖λ(B + λI)⁻¹g‖ increases with
λ (each eigencomponent of g is multiplied by λ/(b + λ)) towards ‖g‖. Two
bounds follow:

* λ₀ = ‖g‖/Δ gives ‖p(λ₀)‖ ≤ ‖g‖/λ₀ = Δ, Moré's upper bound on the secular
  root λ* (Moré 1978, §5). λ₀ ∝ ‖g‖ at a fixed radius is the choice of
  Levenberg-Marquardt methods with λ = μ‖g‖ (Fan & Yuan 2005 take
  μ‖F‖^δ; Yamashita & Fukushima 2001, ‖F‖²), whose steps stay local
  where the gradient vanishes;
* after one solve, λ₁ = λ₀‖p(λ₀)‖/Δ still gives ‖p(λ₁)‖ ≤ λ₀‖p(λ₀)‖/λ₁ = Δ,
  and λ* ≤ λ₁ ≤ λ₀. Iterating is a monotone fixed-point iteration towards λ*
  that never leaves the region; it converges to λ* from above, linearly.

``secular_steps`` (default 1) such corrections are taken while
‖p‖ < ½Δ; the reduced solves whose λ may still be corrected run only to
η = ½, and the last one is resumed to ``forcing``. When λ₀ lies far below
the curvature of B along g (gᵀBg/‖g‖² ≫ λ₀), p(λ₀) is close to the
Gauss-Newton step and much shorter than Δ = ‖g‖/λ₀; on BAL problem-49 with
Jacobi scaling one correction lengthened the steps about thirtyfold (median
‖p‖/Δ), and without it the solve took three times the evaluations to reach
scipy's final cost (`docs/schur.md`). A correction that lengthens p by less than
10 % means p(λ) has reached the Gauss-Newton step: the radius no longer
binds, and the step is reported interior (``hits_boundary=False``); otherwise
λ > 0 constrains it and it is reported on the boundary, so that the ratio
test doubles Δ, halving λ, after a very successful step, and shrinks Δ to
¼‖p‖ after a poor one. Reporting every damped step as on the boundary
instead lets Δ grow far beyond the steps while they are Gauss-Newton
limited, and a failure then multiplies λ by 4Δ/‖p‖ at once.

Ceres' Levenberg-Marquardt strategy solves (B + D/Δ)p = −g with D the
diagonal of B, i.e. μ = 1/Δ in Jacobi-scaled variables, and updates Δ by its
own rule (Nielsen 1999); here the controller's ratio test updates Δ and λ
follows it, with the factor ‖g‖.

Guarantees. The predicted reduction is the undamped model's
−(gᵀp + ½‖Jp‖²), computed exactly from p (two sparse products). An exact
damped step with λ = ‖g‖/Δ decreases m by at least 4/9 of the Cauchy decrease
for Δ: −m(p(λ)) ≥ ½gᵀ(B + λI)⁻¹g ≥ ½‖g‖²/(ρ + λ) with ρ = gᵀBg/‖g‖² (since
(B + λI)⁻¹B(B + λI)⁻¹ ⪯ (B + λI)⁻¹ and by Cauchy-Schwarz), against a Cauchy
decrease of at most ‖g‖²(1/λ)(1 − ρ/(2λ)) for ρ ≤ λ and ‖g‖²/(2ρ) for ρ > λ,
a ratio of at least 1/((1 + s)(2 − s)) ≥ 4/9 with s = ρ/λ, or s/(1 + s) ≥ ½;
corrected steps solve the problem for a larger radius and decrease m more.
So the global convergence of trust-region methods holds (Nocedal & Wright
2006, Thm 4.5-4.6). An inexact reduced solve that would fall short of ¼ of
the Cauchy decrease is replaced by the Cauchy point (one product with J per
point buys ‖Jg‖²); an inexact step longer than Δ is pulled back along its
ray, where m(tp) ≤ t·m(p) for t ∈ [0, 1] by convexity. A singular eliminated
block (a point seen once, a variable no residual depends on) is factored with
a jitter when λ = 0 (`regularized_cholesky`); a step that is not finite is
returned with ``norm=inf``, from which the controller shrinks the radius.

Inner tolerance. η = ``forcing`` (default 0.1, Ceres' default ``eta``) is fixed
rather than `SteihaugCG`'s η = min(η_max, ‖g‖/‖g‖_ref): on BAL problem-49
with Jacobi scaling and one to three corrections, the relative rule took
five to twelve times the PCG iterations of η = 0.1 for no fewer evaluations
(`docs/schur.md`). Gauss-Newton converges linearly on such large-residual
problems, so tighter inner solves are not seen (Dembo, Eisenstat & Steihaug
1982). The residual is measured against the reduced right-hand side, not
‖g‖: at the first BAL iterate the points alone already reduce the residual
of the whole system below 0.1‖g‖, and a test against ‖g‖ accepted a step
that moved the points only. On zero-residual problems a fixed η makes the
final convergence linear, at a rate about η; lower ``forcing`` there.

References:
    S. Agarwal, N. Snavely, S. M. Seitz and R. Szeliski, "Bundle adjustment in
    the large", ECCV 2010, pp. 29-42.
    S. Agarwal, K. Mierle et al., Ceres Solver documentation: "Solving
    non-linear least squares" (ITERATIVE_SCHUR, SCHUR_JACOBI,
    LEVENBERG_MARQUARDT), http://ceres-solver.org.
    R. S. Dembo, S. C. Eisenstat and T. Steihaug, "Inexact Newton methods",
    SIAM J. Numer. Anal. 19(2), 1982, pp. 400-408.
    J. Fan and Y. Yuan, "On the quadratic convergence of the
    Levenberg-Marquardt method without nonsingularity assumption",
    Computing 74(1), 2005, pp. 23-39.
    J. J. Moré, "The Levenberg-Marquardt algorithm: implementation and
    theory", Numerical Analysis, LNM 630, Springer, 1978, pp. 105-116.
    J. J. Moré and D. C. Sorensen, "Computing a trust region step", SIAM J.
    Sci. Stat. Comput. 4(3), 1983, pp. 553-572.
    H. B. Nielsen, "Damping parameter in Marquardt's method", IMM-REP-1999-05,
    Technical University of Denmark, 1999.
    J. Nocedal and S. J. Wright, "Numerical Optimization", 2nd ed., Springer,
    2006, ch. 4.
    N. Yamashita and M. Fukushima, "On the rate of convergence of the
    Levenberg-Marquardt method", Computing Suppl. 15, 2001, pp. 239-249.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from trustls.operators.base import ScaledOperator
from trustls.operators.diagonal import ShiftedOperator
from trustls.operators.sparse import SparseOperator
from trustls.scaling import JacobiScale
from trustls.sparsity.blocks import BlockPartition, pattern_blocks
from trustls.subproblem.base import Step, SubproblemSolver
from trustls.subproblem.schur_reduced import Prepared, ReducedSolve
from trustls.subproblem.schur_structure import schur_blocks, shifted_blocks

__all__ = ["PRECONDITIONERS", "IterativeSchur"]

PRECONDITIONERS = ("schur_jacobi", "block_jacobi")
"""The preconditioners of the reduced system: the diagonal blocks of S, or of J_FᵀJ_F + λI."""

# A step whose model decrease is below this fraction of the Cauchy point's is
# replaced by the Cauchy point. The exact damped step always achieves 4/9 of
# it (module docstring), so only an inaccurate reduced solve triggers it.
_CAUCHY_FRACTION = 0.25

# λ is corrected while ‖p‖ is below this fraction of Δ, and a correction that
# lengthens p by less than this factor marks the Gauss-Newton step (module docstring).
_SECULAR_TARGET = 0.5
_SATURATION = 1.1
# The relative tolerance of the reduced solves whose λ may still be corrected.
_PROBE_FORCING = 0.5


@dataclass(frozen=True)
class IterativeSchur(SubproblemSolver):
    """Levenberg-Marquardt steps from an implicit Schur complement and preconditioned CG.

    See the module docstring for the method. The Jacobian must be a
    `SparseOperator` (``GaussNewtonModel(jac_sparsity=...)`` gives one from
    the colored products, ``GaussNewtonModel(jacobian=...)`` may return one),
    possibly scaled by ``x_scale`` (diagonal or block diagonal). A `Step`'s
    ``iterations`` counts the PCG iterations of all its reduced solves, and
    ``products`` the products with S plus one per right-hand side and one per
    back-substitution (each about one product with JᵀJ).

    Args:
        partition: the column blocks of J and which groups to eliminate (their
            blocks must share no row of J): for bundle adjustment, the camera
            blocks and the point blocks, the points eliminated.
        forcing: η, the relative tolerance of the reduced solve ‖S p_F + ĝ_F‖ ≤ η‖ĝ_F‖.
        max_iter: cap on PCG iterations per reduced solve (``None``: twice the
            number of free variables).
        preconditioner: ``"schur_jacobi"`` (the diagonal blocks of S) or
            ``"block_jacobi"`` (those of J_FᵀJ_F + λI).
        secular_steps: corrections λ ← λ‖p‖/Δ while ‖p‖ < Δ/2 (each one more
            reduced solve); 0 keeps λ = ‖g‖/Δ.

    Examples:
        >>> import torch
        >>> from trustls import TrustRegion, GaussNewtonModel
        >>> from trustls.operators import SparseOperator
        >>> from trustls.sparsity import BlockPartition
        >>> # Two "cameras" (x0, x1) and two "points" (x2, x3): each residual meets one of each.
        >>> rows, cols = torch.tensor([0, 0, 1, 1, 2, 2]), torch.tensor([0, 2, 0, 3, 1, 3])
        >>> def fun(x):
        ...     return torch.stack([x[0] * x[2] - 1, x[0] + x[3] - 2, x[1] * x[3] - 3])
        >>> def jacobian(x):
        ...     one = torch.ones((), dtype=x.dtype)
        ...     values = torch.stack([x[2], x[0], one, one, x[3], x[1]])
        ...     return SparseOperator(rows, cols, values, (3, 4))
        >>> partition = BlockPartition(4, (torch.tensor([[0], [1]]), torch.tensor([[2], [3]])), eliminated=(1,))
        >>> solver = IterativeSchur(partition)  # or IterativeSchur(): the blocks found in J's pattern
        >>> result = TrustRegion(GaussNewtonModel(jacobian=jacobian), solver=solver).solve(
        ...     fun, torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
        >>> result.cost < 1e-15
        True
    """

    partition: BlockPartition | None = None
    forcing: float = 0.1
    max_iter: int | None = None
    preconditioner: str = "schur_jacobi"
    secular_steps: int = 1

    # Diagonal Jacobi scaling: block-Jacobi made the solve on BAL take 34 evaluations instead of 19.
    default_x_scale: ClassVar[JacobiScale] = JacobiScale(blocks=False)

    def __post_init__(self):
        if self.partition is not None and not isinstance(self.partition, BlockPartition):
            raise TypeError(f"partition must be a BlockPartition or None, got {type(self.partition).__name__}")
        if not isinstance(self.forcing, (int, float)) or isinstance(self.forcing, bool) or not 0 < self.forcing < 1:
            raise ValueError(f"forcing must be a number in (0, 1), got {self.forcing!r}")
        if self.max_iter is not None and (
            isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1
        ):
            raise ValueError(f"max_iter must be a positive int or None, got {self.max_iter!r}")
        if self.preconditioner not in PRECONDITIONERS:
            raise ValueError(f"preconditioner must be one of {list(PRECONDITIONERS)}, got {self.preconditioner!r}")
        if (
            isinstance(self.secular_steps, bool)
            or not isinstance(self.secular_steps, int)
            or self.secular_steps < 0
        ):
            raise ValueError(f"secular_steps must be a non-negative int, got {self.secular_steps!r}")

    def prepare(self, linearization, state=None) -> Prepared:
        # The tolerance is relative to the reduced right-hand side, so no state is
        # carried from point to point (module docstring, inner tolerance).
        J = linearization.jacobian
        sparse = J.operator if isinstance(J, ScaledOperator) else J
        operator = linearization.operator
        shift = operator.diagonal if isinstance(operator, ShiftedOperator) else None
        if not isinstance(sparse, SparseOperator):
            raise TypeError(
                "IterativeSchur needs a sparse Jacobian (jac_sparsity=, or a jacobian returning a sparse tensor), "
                f"got {J!r}"
            )
        partition = self.partition if self.partition is not None else pattern_blocks(sparse)
        if self.partition is None and not partition.eliminated:
            raise ValueError(
                "IterativeSchur needs column blocks that no row shares (the points of bundle adjustment) beside "
                "others (the cameras); the Jacobian's pattern has no such split: use solver='cg'"
            )
        if self.partition is None and len(partition.eliminated) == len(partition.groups):
            raise ValueError(
                "IterativeSchur needs column blocks that no row shares beside others that rows share; in the "
                "Jacobian's pattern no row shares any two blocks (independent problems), so nothing is left to "
                "reduce: use solver='cg' with x_scale='jac', whose block-Jacobi scaling inverts each block"
            )
        blocks = schur_blocks(J, partition, couplings=self.preconditioner == "schur_jacobi")
        plan = blocks.plan
        g = linearization.gradient
        free_gradient = g.index_select(0, plan.free_columns)
        eliminated_gradient = g.index_select(0, plan.eliminated_columns)
        Jg = blocks.free_jacobian.matvec(free_gradient) + blocks.eliminated_jacobian.matvec(eliminated_gradient)
        curvature = torch.dot(Jg, Jg)
        free_shift = None
        if shift is not None:
            blocks = shifted_blocks(blocks, partition, shift)
            free_shift = shift.index_select(0, plan.free_columns)
            curvature = curvature + torch.dot(g, shift * g)
        return Prepared(
            blocks=blocks,
            gradient=g,
            gradient_norm=float(torch.linalg.vector_norm(g)),
            free_gradient=free_gradient,
            eliminated_gradient=eliminated_gradient,
            cauchy_curvature=float(curvature),
            shift=shift,
            free_shift=free_shift,
        )

    def solve(self, prepared: Prepared, radius: float) -> Step:
        prep = prepared
        g, g_norm = prep.gradient, prep.gradient_norm
        if g_norm == 0.0:
            return Step(torch.zeros_like(g), 0.0, 0.0, False, 0, 0, "zero_gradient")
        damping = g_norm / radius if math.isfinite(radius) else 0.0
        # While a correction of λ may follow, the reduced systems are solved
        # only to the probe tolerance: the norm of the step is all they decide.
        probe = max(self.forcing, _PROBE_FORCING) if self.secular_steps else self.forcing
        solves = [self._reduced(prep, damping)]
        solves[-1].run(probe)
        trial = solves[-1].step()
        bounded = damping > 0.0
        for _ in range(self.secular_steps):
            if not (math.isfinite(trial.norm) and 0.0 < trial.norm < _SECULAR_TARGET * radius and bounded):
                break
            damping *= trial.norm / radius  # ‖p(λ)‖ ≤ Δ still (module docstring)
            solves.append(self._reduced(prep, damping))
            solves[-1].run(probe)
            corrected = solves[-1].step()
            if not math.isfinite(corrected.norm):
                solves.pop()
                break
            bounded = corrected.norm > _SATURATION * trial.norm
            trial = corrected
        final = solves[-1]
        if probe > self.forcing:
            before = final.iterations
            final.run(self.forcing)
            if final.iterations != before:  # else the probe already met the forcing: same step
                trial = final.step()
        iterations = sum(s.iterations for s in solves)
        products = sum(s.products for s in solves)
        reason = final.reason
        p, Jp, p_norm = trial.step, trial.jacobian_step, trial.norm
        if not math.isfinite(p_norm):
            return Step(p, math.inf, 0.0, False, iterations, products, "non_finite")
        if p_norm > radius:
            # An inexact reduced solve may overshoot the bound Δ: pull back along
            # the ray, where m(tp) ≤ t·m(p) by convexity.
            t = radius / p_norm
            p, Jp, p_norm, reason, bounded = p * t, Jp * t, radius, "boundary", True
        quadratic = torch.dot(Jp, Jp) if prep.shift is None else torch.dot(Jp, Jp) + torch.dot(p, prep.shift * p)
        predicted = -float(torch.dot(g, p) + 0.5 * quadratic)
        tau = radius / g_norm
        if prep.cauchy_curvature > 0.0:
            tau = min(tau, g_norm * g_norm / prep.cauchy_curvature)
        cauchy = tau * g_norm * g_norm - 0.5 * tau * tau * prep.cauchy_curvature
        if not predicted >= _CAUCHY_FRACTION * cauchy:
            p, p_norm, predicted, reason = -tau * g, tau * g_norm, cauchy, "cauchy"
            bounded = tau * g_norm >= radius
        return Step(p, p_norm, predicted, bounded, iterations, products, reason)

    def _reduced(self, prep: Prepared, damping: float) -> ReducedSolve:
        return ReducedSolve(prep, damping, self.preconditioner == "schur_jacobi", self.max_iter)
