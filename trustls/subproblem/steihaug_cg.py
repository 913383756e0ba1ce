"""Steihaug-Toint truncated conjugate gradients for the trust-region subproblem.

Conjugate gradients applied to Bp = −g from p₀ = 0 produces iterates whose
norms increase monotonically while the curvature along every search direction
is positive (Steihaug 1983, Thm 2.1). Truncating CG therefore yields a
trust-region step with three exits (Steihaug 1983; Toint 1981; Nocedal &
Wright 2006, Alg. 7.2):

* the next iterate would leave the region: step to the boundary along the
  current direction;
* the direction has curvature dᵀBd ≤ 0: step to the boundary along it;
* the residual ‖Bp + g‖ falls below η‖g‖.

The first step is the Cauchy point's direction −g, so the model decrease is at
least the Cauchy decrease, the property that gives global convergence
(Nocedal & Wright 2006, Thm 4.5).

**Forcing term.** η = min(η_max, max(ρ, ε/ρ)) with ρ = ‖g‖/‖g‖_ref, ‖g‖_ref
the largest ‖g‖ met so far in the solve (the solver's state, carried from
point to point by the controller) and ε the dtype's machine epsilon. Any
η = O(‖g‖) keeps an inexact Newton iteration quadratically convergent (Dembo,
Eisenstat & Steihaug 1982; Nocedal & Wright 2006, Thm 7.2; their eq. 7.3 takes
√‖g‖, superlinear only, which leaves the last steps of zero-residual problems
η-limited); for Gauss-Newton it keeps the Gauss-Newton rate. Measuring ‖g‖
against ‖g‖_ref rather than absolutely (Nocedal & Wright's min(½, ‖g‖)) makes
η unit-free: under r → c·r the Jacobi-scaled gradient scales by c and its
ratio to the reference does not (Eisenstat & Walker 1996 make their forcing
terms unit-free by ratios for the same reason), so with ``x_scale="jac"`` and
Δ₀ = ‖T⁻¹x₀‖ the whole solve is the same in any units but for ``gtol``. The
floor ε/ρ keeps the target ‖g⁺‖ ≈ ρ‖g‖ from asking for a gradient below
ε‖g‖_ref, the rounding level of gradients whose residuals combine terms of the
size of the initial ones; since max(ρ, ε/ρ) ≥ √ε, a float32 solve keeps
η ≥ 3.4·10⁻⁴. A reference that is not finite is not kept. η_max defaults to
10⁻³, not Nocedal & Wright's ½, which stops CG after one or two iterations and
costs full-batch solves several times the evaluations; for mini-batch training
cap CG with ``max_iter`` instead.

**Iteration cap.** 2n, not n: in floating point the residuals lose their
orthogonality and CG behaves like exact CG on a larger matrix whose
eigenvalues cluster around those of B, so convergence is delayed rather than
lost (Greenbaum 1989; Meurant & Strakoš 2006, §5), most where B is
ill-conditioned (NIST's Lanczos3).

**Near-exact solves for small n.** Up to ``exact_up_to`` variables (default
32) η_max is eps^(3/4) (1.8·10⁻¹² in float64: far above rounding, far below
any truncation): the near-exact step costs at most 2n products, about what J
costs by n JVPs, and a truncated step can decide the wrong basin (NIST's MGH10
from start 1, whose scaled J has singular values 1.7, 1.3·10⁻³ and 3.1·10⁻⁷).

By default `TrustRegion` pairs this solver with ``x_scale="jac"``: CG in the
variables scaled by J's column norms is CG with the Jacobi preconditioner
diag(JᵀJ) and the trust region in the matching norm (Steihaug 1983, §3;
Ceres' default Jacobi scaling).

The model value is tracked along the path: over a segment p + τd,
m(p + τd) = m(p) + τ rᵀd + ½τ² dᵀBd with r = Bp + g the CG residual, so the
predicted reduction costs no product.

Each iteration reduces dᵀBd, ‖r‖² and the true ‖p‖² and reads the three in
one host synchronization (the first iteration also ‖g‖² and ‖g‖∞): the step
lengths α and β act on the vectors as 0-d tensors, so the device never waits
for the host inside an iteration, and the exit tests run on the values read.
The boundary test and the reported ‖p‖ use the true norm, so ‖p‖ ≤ Δ holds to
rounding; the Steihaug-Toint and GLTR recurrences for ‖p‖² (Conn, Gould &
Toint 2000, §7.5.1) would save the dot but drift as the residuals lose
orthogonality, and a dot is cheap beside a product.

**Range.** CG's iterates are homogeneous of degree one in (g, Δ): on c·g
in the sphere of radius c·Δ, p, r, s and Bs scale by c, the scalars ‖r‖²,
‖p‖², Δ² and κ = sᵀBs by c², and the step lengths α, β and τ not at all;
for a power of two c the scaling is exact. CG's scalars are squared norms,
which leave float32's range once the gradient's entries pass about 2³¹ (or
fall below 2⁻³¹). Such a g is first multiplied by the c that brings ‖c·g‖∞
into [½, 1), with the radius scaled alike, and the step is scaled back
(`normalizing_factor`), so that ordinary solves are unchanged bit for bit.
With Jacobi scaling B has a unit diagonal and the iterates are then of
moderate size. Without it (``x_scale=1.0`` on a badly scaled problem, J with
columns near 10¹⁰⁰ in float64 or 10¹² in float32) κ or Bs may overflow while
‖r‖² does not, and α = ‖r‖²/κ would be 0: a zero step, which the controller
would take for convergence. CG then restarts at `smallest_factor`, the
smallest c that keeps Δ² and ‖r‖² (down to ε‖g‖) normal, where κ has the
most room; so does a ‖g‖² that overflows where no normalization fits the
radius. If ‖g‖² or κ still overflows there, it overflows at every factor
that keeps Δ² and ‖r‖² normal (as for ‖g‖ far beyond Δ while B is large
along g): no factor fits, the step is then not finite, its trial fails, and
the controller shrinks the radius, to ``RADIUS_COLLAPSED`` if no smaller
region fits either. At the smallest factor an interior step far inside the
sphere may have a subnormal ‖c·p‖²; its norm is then taken again, in its own
units. A restart costs the products of the abandoned run, counted with the
step, and no read: its need is in the values each iteration reads.

A κ that underflows to 0 takes the negative-curvature exit, as a κ of exactly
0 (B vanishing along s) does in Nocedal & Wright's Alg. 7.2 (dᵀBd ≤ 0), and
as the boundary test would for the infinite α: the true κ is below half the
smallest subnormal, so the minimizer along s lies at α = ‖r‖²/κ >
2^(E+p−2)·‖r‖² (E, p: the dtype's largest binary exponent and mantissa
digits; 2¹⁰⁷⁵‖r‖² in float64), and the step along s meets the sphere, at
τ ≤ 2Δ/‖s‖, first whenever ‖r‖²‖s‖ ≥ 2^(3−E−p)·Δ: for every radius whose
square is finite once ‖r‖²‖s‖ ≥ 2^(3−p−E/2) (10⁻¹⁶⁹ in float64).

Because the iterates do not depend on the radius until they reach the
boundary, `SteihaugCG` answers a smaller radius after a rejected step from
the stored path, with no new product, while it fits in ``path_memory``
elements (`trustls.subproblem.cg_path`, which also says why the default
keeps the path only for matrix-free operators).

The measurements behind these choices are in the CHANGELOG and
``docs/benchmarks.md``.

References:
    R. S. Dembo, S. C. Eisenstat and T. Steihaug, "Inexact Newton methods",
    SIAM J. Numer. Anal. 19(2), 1982, pp. 400-408.
    M. R. Hestenes and E. Stiefel, "Methods of conjugate gradients for solving
    linear systems", J. Res. Nat. Bur. Standards 49(6), 1952, pp. 409-436.
    S. C. Eisenstat and H. F. Walker, "Choosing the forcing terms in an inexact
    Newton method", SIAM J. Sci. Comput. 17(1), 1996, pp. 16-32.
    A. Greenbaum, "Behavior of slightly perturbed Lanczos and conjugate-gradient
    recurrences", Linear Algebra Appl. 113, 1989, pp. 7-63.
    N. I. M. Gould, S. Lucidi, M. Roma and Ph. L. Toint, "Solving the
    trust-region subproblem using the Lanczos method", SIAM J. Optim. 9(2),
    1999, pp. 504-525.
    A. R. Conn, N. I. M. Gould and Ph. L. Toint, "Trust-Region Methods",
    SIAM, 2000.
    G. Meurant and Z. Strakoš, "The Lanczos and conjugate gradient algorithms in
    finite precision arithmetic", Acta Numerica 15, 2006, pp. 471-542.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from trustls.subproblem.base import Step, SubproblemSolver, boundary_step_length
from trustls.subproblem.cg_path import (
    DEFAULT_PATH_MEMORY,
    CGPath,
    normalizing_factor,
    smallest_factor,
    step_from_path,
)

__all__ = ["SteihaugCG", "check_krylov_options", "check_krylov_prepare", "forcing_bound", "forcing_term"]


def check_krylov_options(
    max_iter: object, forcing: object, memory: tuple[str, object], exact_up_to: object
) -> None:
    """The options `SteihaugCG` and `GLTR` share; ``memory`` is its field's name and value."""
    if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1):
        raise ValueError(f"max_iter must be a positive int or None, got {max_iter!r}")
    if isinstance(forcing, bool) or not isinstance(forcing, (int, float)) or not 0 < forcing < 1:
        raise ValueError(f"forcing must be a number in (0, 1), got {forcing!r}")
    name, value = memory
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"{name} must be a non-negative int or None, got {value!r}")
    if isinstance(exact_up_to, bool) or not isinstance(exact_up_to, int) or exact_up_to < 0:
        raise ValueError(f"exact_up_to must be a non-negative int, got {exact_up_to!r}")


def check_krylov_prepare(solver: str, linearization, state: object) -> float | None:
    """What `SteihaugCG.prepare` and `GLTR.prepare` check: a symmetric operator, a float state or None."""
    if not linearization.operator.is_symmetric:
        raise ValueError(f"{solver} needs a symmetric curvature operator")
    if state is not None and (isinstance(state, bool) or not isinstance(state, (int, float))):
        raise TypeError(f"state must be the gradient reference (a float) or None, got {type(state).__name__}")
    return None if state is None else float(state)


def forcing_bound(forcing: float, exact_up_to: int, g: Tensor) -> float:
    """η_max: ``forcing``, or eps^(3/4) of g's dtype when n ≤ ``exact_up_to`` (module docstring)."""
    if g.shape[0] <= exact_up_to:
        return min(forcing, torch.finfo(g.dtype).eps ** 0.75)
    return forcing


def forcing_term(reference: float | None, g_norm: float, eta_max: float, eps: float, power: float = 1.0) -> float:
    """η = min(η_max, max(ρ^power, ε/ρ)) with ρ = ‖g‖/‖g‖_ref ∈ [0, 1] (module docstring).

    Without a finite reference above ‖g‖, ρ = 1; a ρ that underflows to 0
    gives η = η_max, the limit of the floor ε/ρ.

    Examples:
        >>> forcing_term(None, 1.0, 1e-3, 2.0**-52), forcing_term(1.0, 1e-6, 1e-3, 2.0**-52)
        (0.001, 1e-06)
    """
    if reference is None or not math.isfinite(reference) or reference <= g_norm:
        rho = 1.0
    else:
        rho = g_norm / reference
    floor = eps / rho if rho > 0.0 else math.inf
    return min(eta_max, max(rho**power, floor))


@dataclass(frozen=True)
class SteihaugCG(SubproblemSolver):
    """Steihaug-Toint truncated CG on the curvature operator.

    Args:
        max_iter: cap on CG iterations (``None``: 2n, twice the dimension;
            see the module docstring).
        forcing: η_max: the relative tolerance is ``min(forcing, max(ρ, ε/ρ))``
            with ρ = ‖g‖/‖g‖_ref, ‖g‖_ref the largest gradient norm of the
            solve (Nocedal & Wright use 0.5; see the module docstring for 10⁻³).
        path_memory: largest number of tensor elements kept to answer smaller
            radii from the stored CG path; 0 disables the path (every rejected
            radius then reruns CG, which stops earlier at the smaller sphere).
            ``None`` (default): 2²² for matrix-free operators, 0 for stored
            matrices (see the module docstring).
        exact_up_to: up to this many variables CG solves near-exactly, with
            η_max = eps^(3/4) of the dtype (1.8·10⁻¹² in float64) instead of
            ``forcing``; 0 turns this off (see the module docstring).

    The solver's state (`SubproblemSolver.state`) is ‖g‖_ref, a float.

    Examples:
        >>> import torch
        >>> from trustls import TrustRegion, GaussNewtonModel
        >>> solver = SteihaugCG(max_iter=50)
        >>> TrustRegion(GaussNewtonModel(), solver=solver).solver.max_iter
        50
    """

    max_iter: int | None = None
    forcing: float = 1e-3
    path_memory: int | None = None
    exact_up_to: int = 32

    default_x_scale: ClassVar[str] = "jac"

    def __post_init__(self):
        check_krylov_options(self.max_iter, self.forcing, ("path_memory", self.path_memory), self.exact_up_to)

    def _path_memory(self, B) -> int:
        """``path_memory``, or its default for ``B`` when it is ``None``."""
        if self.path_memory is not None:
            return self.path_memory
        return DEFAULT_PATH_MEMORY if B.is_matrix_free else 0

    def prepare(self, linearization, state: float | None = None) -> CGPath:
        return CGPath(linearization, check_krylov_prepare("SteihaugCG", linearization, state))

    def state(self, prepared: CGPath) -> float | None:
        return prepared.reference

    def _forcing_term(self, path: CGPath, g: Tensor, g_norm: float, power: float = 1.0) -> float:
        """`forcing_term` at this point, η_max from ``forcing`` and ``exact_up_to``."""
        return forcing_term(path.reference, g_norm, forcing_bound(self.forcing, self.exact_up_to, g),
                            torch.finfo(g.dtype).eps, power)

    def _remember(self, path: CGPath, g_norm: float) -> None:
        """Raise the reference to this point's ‖g‖; an overflowed norm is not kept."""
        if math.isfinite(g_norm):
            path.reference = g_norm if path.reference is None else max(path.reference, g_norm)

    def solve(self, prepared: CGPath, radius: float) -> Step:
        path = prepared
        if path.complete and radius <= path.radius and (step := step_from_path(path, radius)) is not None:
            return step
        return self._run(path, radius)

    def _run(self, path: CGPath, radius: float) -> Step:
        # At most three runs: unscaled, normalized (g's squared norms leave the
        # range), then at `smallest_factor` (a curvature leaves it); the products
        # of an abandoned run are counted with the step.
        factor, spent = 1.0, 0
        while not isinstance(step := self._cg(path, radius, factor), Step):
            factor, spent = path.factor, spent + step
        if spent:
            step = replace(step, products=step.products + spent)
        path.last = step
        return step

    def _cg(self, path: CGPath, radius: float, factor: float) -> Step | int:
        """CG on c·g in the sphere of radius c·Δ (c = ``factor``), or, when it must restart at the
        factor it leaves in ``path.factor``, the number of products it spent.

        c is a power of two: `normalizing_factor` keeps the squared norms of a
        float32 g from overflowing or underflowing, and `smallest_factor`
        brings back a curvature sᵀBs or a product Bs that overflowed; p, ‖p‖
        and m are scaled back at the end. The need for either is read with an
        iteration's values, so a solve that needs none reads nothing more.
        """
        lin = path.linearization
        g = lin.gradient
        B = lin.operator
        n = g.shape[0]
        # 2n rather than n: rounding delays CG's finite termination on
        # ill-conditioned B (module docstring).
        max_iter = 2 * n if self.max_iter is None else self.max_iter
        path_memory = self._path_memory(B)
        keep = path_memory > 0
        path.points.clear(), path.norms.clear(), path.model_values.clear()
        path.slopes.clear(), path.curvatures.clear()
        path.complete = False
        path.radius = radius
        path.factor = factor
        if factor != 1.0:
            g, radius = g * factor, radius * factor

        # p₀ = 0 as a broadcast scalar, and r₀ = g and s₀ = g as aliases: length-n
        # vectors less at the peak of the first product. s = −d is the negated
        # direction, so that d = −r + βd is the single in-place s ← r + βs. r and
        # s are updated in place from their second update on (the first one
        # allocates them, leaving g alone): the stored path keeps only the p.
        p = g.new_zeros(()).expand_as(g)
        r = s = g
        rr_t = torch.dot(g, g)
        rr = tolerance = None
        model = 0.0
        if keep:
            path.points.append(p), path.norms.append(0.0), path.model_values.append(0.0)
        reason = "max_iter"
        hits_boundary = False
        iterations = products = 0
        p_norm = 0.0
        for iterations in range(1, max_iter + 1):
            products = iterations
            Bs = B.matvec(s)
            kappa_t = torch.dot(s, Bs)
            alpha_t = rr_t / kappa_t
            p_next = torch.addcmul(p, alpha_t, s, value=-1.0)
            r_next = torch.addcmul(g, alpha_t, Bs, value=-1.0) if r is g else r.addcmul_(alpha_t, Bs, value=-1.0)
            rr_next_t = torch.dot(r_next, r_next)
            values = [kappa_t, rr_next_t, torch.dot(p_next, p_next)]
            if rr is None:  # the first iteration also reads ‖g‖² and ‖g‖∞
                values += [rr_t, g.abs().max()]
            values = torch.stack(values).tolist()  # the one read of the iteration
            kappa, rr_next, pp_next = values[:3]
            if rr is None:
                rr, largest = values[3:]
                if factor == 1.0:
                    path.factor = normalizing_factor(largest, radius, g.dtype)
                    if path.factor != 1.0:
                        return products
                if not math.isfinite(rr):  # no normalization fits Δ: the smallest factor may
                    return self._rescale(path, largest / factor, factor, iterations, products)
                g_norm = math.sqrt(rr)
                if g_norm == 0.0:
                    return Step(torch.zeros_like(g), 0.0, 0.0, False, 0, products, "zero_gradient")
                # ρ compares the true ‖g‖ (before normalization) with the reference.
                self._remember(path, g_norm / factor)
                tolerance = self._forcing_term(path, g, g_norm / factor) * g_norm
            if not math.isfinite(kappa):
                # sᵀBs, or Bs (whose inf entries make it inf or NaN), overflowed: its sign is
                # unknown and α = ‖r‖²/κ would be 0, a zero step. Restart smaller, or report.
                return self._rescale(path, largest / factor, factor, iterations, products)
            if not kappa > 0.0:
                # Also a κ that underflows to 0: α = ‖r‖²/κ lies past the sphere (module docstring).
                reason, hits_boundary = "negative_curvature", True
            elif pp_next >= radius * radius:
                reason, hits_boundary = "boundary", True
            if hits_boundary:
                # τ from the true p and d, so that ‖p + τd‖ = Δ to rounding; it stays on the
                # device, and with it the model's last segment (no read at the exit).
                tau = boundary_step_length(p, -s, radius)
                p, p_norm = torch.addcmul(p, tau, s, value=-1.0), radius
            else:
                tau = rr / kappa
                p, p_norm = p_next, math.sqrt(pp_next)
            # rᵀd = −‖r‖² (r_k ⊥ d_{k−1}), so m along the segment costs no dot.
            slope, curvature = -tau * rr, tau * tau * kappa
            model += slope + 0.5 * curvature
            if keep:
                if path.model_values and (len(path.points) + 1) * n <= path_memory:
                    path.slopes.append(slope), path.curvatures.append(curvature)
                    path.points.append(p), path.model_values.append(model), path.norms.append(p_norm)
                else:
                    keep = False
                    path.points.clear()
            if hits_boundary:
                break
            r = r_next
            del Bs  # free it before the next product: one length-n vector less at the peak
            if math.sqrt(rr_next) <= tolerance:
                reason = "converged"
                break
            beta = rr_next / rr
            s = torch.add(r, s, alpha=beta) if s is g else s.mul_(beta).add_(r)
            rr, rr_t = rr_next, rr_next_t
        # A path that overflowed (non-finite norms) answers no smaller radius.
        path.complete = keep and math.isfinite(p_norm)
        if factor != 1.0:
            p, model = p / factor, model / (factor * factor)
            if not hits_boundary and p_norm * p_norm < torch.finfo(g.dtype).tiny:
                # Far inside a sphere put at the bottom of the range (`smallest_factor`), ‖c·p‖²
                # is subnormal: the norm is taken again, in the step's own units (off the common path).
                p_norm = float(torch.linalg.vector_norm(p))
            else:
                p_norm = p_norm / factor
        return Step(p, p_norm, -model, hits_boundary, iterations, products, reason)

    def _rescale(self, path: CGPath, largest: float, factor: float, iterations: int, products: int) -> Step | int:
        """Restart at `smallest_factor` (the products spent) if it lies below ``factor``, else no step.

        ``largest`` is the true ‖g‖∞. At the smallest factor the quantities that
        shrink with c are at the bottom of the range, so a curvature that
        overflows there overflows at every admissible factor.
        """
        smallest = smallest_factor(largest, path.radius, path.linearization.gradient.dtype)
        if smallest < factor:
            path.factor = smallest
            return products
        path.factor = 1.0
        return self._overflowed(path, path.linearization.gradient, iterations, products)

    def _overflowed(self, path: CGPath, g: Tensor, iterations: int = 1, products: int = 1) -> Step:
        """No step when no factor brings CG's scalars within range (‖g‖² or sᵀBs overflows at
        every power of two that keeps Δ² and ‖r‖² normal): a non-finite one, from which the
        controller shrinks the radius, and whose trial (NaN cost) is a failure, never a
        convergence. A float32 norm is still kept, taken in float64, as the forcing reference."""
        if g.dtype != torch.float64:
            self._remember(path, float(torch.linalg.vector_norm(g, dtype=torch.float64)))
        nan = torch.full_like(g, math.nan)
        return Step(nan, math.nan, math.nan, True, iterations, products, "overflow")
