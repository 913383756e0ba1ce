"""Steihaug-Toint truncated conjugate gradients for the trust-region subproblem.

Conjugate gradients applied to Bp = −g from p₀ = 0 produces iterates whose
norms increase monotonically while the curvature along every search direction
is positive (Steihaug 1983, Thm 2.1). Truncating CG therefore yields a
trust-region step with three exits (Steihaug 1983; Toint 1981; Nocedal &
Wright 2006, Alg. 7.2):

* the next iterate would leave the region: step to the boundary along the
  current direction;
* the direction has curvature dᵀBd ≤ 0: step to the boundary along it;
* the residual ‖Bp + g‖ falls below η‖g‖ with the forcing term
  η = min(η_max, max(ρ, ε/ρ)), where ρ = ‖g‖/‖g‖_ref and ‖g‖_ref is the
  largest ‖g‖ met so far in the solve (`TrustRegion` passes it to
  `SteihaugCG.prepare`). Any η = O(‖g‖) keeps an inexact Newton iteration
  quadratically convergent (Dembo, Eisenstat & Steihaug 1982; Nocedal &
  Wright 2006, Thm 7.2; their eq. 7.3 takes √‖g‖, superlinear only). For
  Gauss-Newton it keeps the Gauss-Newton rate: quadratic on zero-residual
  problems, linear otherwise.

Measuring ‖g‖ against ‖g‖_ref rather than in absolute terms (Nocedal &
Wright's min(½, ‖g‖)) makes the forcing term unit-free: with r → c·r the
Jacobi-scaled gradient scales by c and its ratio to the reference does not
(Eisenstat & Walker 1996 make their forcing terms unit-free by ratios of
successive norms for the same reason). With ``x_scale="jac"`` and the default
Δ₀ = ‖T⁻¹x₀‖ (x₀ ≠ 0) the rest of the iteration scales with c as well, so
the whole solve is the same in any units, except for ``gtol``, an absolute
test. With the
absolute form, Broyden tridiagonal (n = 10⁴, sparse J, ``gtol=None``) took
92, 63 and 47 CG iterations with r in units c = 10⁻³, 1 and 10³, and ended
at cost/c² = 8.6·10⁻³⁰, 6.9·10⁻³⁰ and 4.3·10⁻²³; extended Rosenbrock with
c = 10³ stopped at cost/c² = 4.6·10⁻¹⁵ instead of 0. The relative form takes
59 and 27 iterations in every unit (the test suite checks that the solve is
the same under r → 2²⁰·r). With the default ``gtol`` it also solves the
middle steps of a fast solve more tightly: Broyden tridiagonal (n = 10⁴) then
stops by gtol after 5 evaluations and 41 CG iterations at cost 2.4·10⁻¹⁸,
where the absolute form took 6 and 63 to 6.9·10⁻³⁰ (scipy's trf+lsmr:
4.1·10⁻¹⁸).

The floor ε/ρ (ε the dtype's machine epsilon) keeps the quadratic target
‖g⁺‖ ≈ ρ‖g‖ from asking for a gradient below ε‖g‖_ref, about the rounding
level of gradients whose residuals combine terms of the size of the initial
ones: CG would only oversolve. On Broyden tridiagonal (n = 10⁵) the last step
took 37 CG iterations to cost 2.5·10⁻²⁷ without the floor and 19 to
3.0·10⁻²⁷ with it, both at float64's floor there: rounding x* to float64
moves each residual by about ε|x|·‖J row‖ ≈ 10⁻¹⁶, a cost of order
n·10⁻³² = 10⁻²⁷ (scipy's trf+lsmr ends at 3.7·10⁻²⁷). Since
max(ρ, ε/ρ) ≥ √ε, in float32 (ε = 1.2·10⁻⁷) η stays between
√ε = 3.4·10⁻⁴ and η_max: a float32 gradient cannot be resolved to much
below ε‖g‖_ref, so tighter solves would not be seen. A reference that is not
finite (an overflowed float32 norm) is not kept.

The forcing must go to zero where the cost does: with η = min(η_max,
√‖g‖) the last steps stayed η-limited, reducing ‖r‖ by about 10⁻³ each, and
xtol stopped extended Rosenbrock (n = 10⁵) at cost 4.6·10⁻¹⁴ and Broyden
tridiagonal at 1.6·10⁻²⁰ where scipy's trf reaches 0 and 3.7·10⁻²⁷.

trustls' default η_max is 10⁻³, not ½: on the 35 problems of the test
registry, η_max = ½ stops CG after one or two iterations, the outer iteration
then needs several times scipy's evaluations and ftol stops it early (Misra1a
from start 1: cost 9.76 instead of 0.0623). Products are cheap next to an
outer iteration on full-batch problems; for mini-batch training cap CG with
``max_iter`` instead.

The default cap is 2n iterations, not n. In exact arithmetic CG solves an
n × n system in at most n iterations (Hestenes & Stiefel 1952). In floating
point the residuals lose their orthogonality, and CG then behaves like exact
CG on a larger matrix whose eigenvalues cluster around those of B, so
convergence is delayed rather than lost (Greenbaum 1989; Meurant & Strakoš
2006, §5). The delay is largest where B is most ill-conditioned: on NIST's
Lanczos3 (n = 6, cond(B) ≈ 10⁸ in the Jacobi-scaled variables at the
solution) the self-check's solves (`trustls.validate`) reach 5.5 and 7.7
correct digits in 410 and 312 evaluations from starts 1 and 2 with a cap of
n and η_max = 10⁻³, and 10.0 and 9.0 digits in 200 and 309 with 2n; with the
near-exact solves below, 5.8 and 6.6 digits with n, 8.1 and 6.4 with 2n. On
well-conditioned problems the forcing test stops CG long before either cap.

Up to ``exact_up_to`` variables (default 32) η_max is eps^(3/4) of the dtype
instead (1.8·10⁻¹² in float64: far above rounding, so the test can be met,
and far below any truncation): the near-exact Gauss-Newton trust-region
step costs at most 2n products, about what J itself costs by n JVPs (the
same size below which `GaussNewtonModel` computes exact column norms). A
truncated step saves nothing there and can cost the solve: on NIST's MGH10
from start 1 (n = 3), the first step decides the basin, because the scaled J
at x₀ has singular values 1.7, 1.3·10⁻³ and 3.1·10⁻⁷; η_max = 10⁻³ accepts
nearly a steepest-descent step and the solve runs down an exponential valley
to ``max_nfev`` (3,000 evaluations, 0 correct digits), where the near-exact
step follows `DenseLstsq`'s path to 10.9 digits in 457 evaluations. (With
η_max from 10⁻⁶ to 10⁻¹⁰ the solve stops on the flat region where the model
underflows to 0, at cost 1.9·10⁹; 10⁻¹¹ is the first that succeeds.) Over
the 54 NIST runs the evaluations fall from 8,422 to 3,768
(``python -m trustls.validate --solver cg --threads 1``; scipy's trf: 4,480).

By default `TrustRegion` pairs this solver with ``x_scale="jac"``: CG in the
variables scaled by J's column norms is CG with the Jacobi preconditioner
diag(JᵀJ) and the trust region in the matching norm (Steihaug 1983, §3;
Ceres' default Jacobi scaling). Unscaled CG fails on the NIST problems whose
parameters differ in scale by 10⁶.

The first step is the Cauchy point's direction −g, so the model decrease is at
least the Cauchy decrease, the property that gives global convergence
(Nocedal & Wright 2006, Thm 4.5).

The model value is tracked along the path: over a segment p + τd,
m(p + τd) = m(p) + τ rᵀd + ½τ² dᵀBd with r = Bp + g the CG residual, so the
predicted reduction costs no product.

Each iteration reduces dᵀBd, ‖r‖² and the true ‖p‖² and reads the three in
one host synchronization (the first iteration also ‖g‖² and ‖g‖∞): the
step lengths α and β act on the vectors as 0-d tensors, so the device never
waits for the host inside an iteration, and the exit tests (negative
curvature, boundary, forcing) run on the values read. The boundary test and
the reported ‖p‖ use the true norm, so ‖p‖ ≤ Δ holds to rounding; the
Steihaug-Toint and GLTR recurrences for ‖p‖² (Conn, Gould & Toint 2000,
§7.5.1) would save the dot but drift as the residuals lose orthogonality, and
a dot is cheap beside a product.

CG's scalars are squared norms, which leave float32's range once the
gradient's entries pass about 2³¹ (or fall below 2⁻³¹). Such a g is first
multiplied by a power of two c that brings ‖c·g‖∞ into [½, 1), with the
radius scaled alike, and the step is scaled back (`normalizing_factor`):
exact, so that ordinary solves are unchanged bit for bit. With Jacobi scaling
B has a unit diagonal and the iterates are then of moderate size; without
it, B itself may leave the range, and no single factor helps.

Because the iterates do not depend on the radius until they reach the
boundary, the path computed for radius Δ contains the solution for every
smaller radius: its first crossing of the smaller sphere. After a rejected step
the controller shrinks the radius, and `SteihaugCG` answers from the stored
path with no new product while it fits in ``path_memory`` elements.

The path pays where products are dear. By default it is kept only for
matrix-free operators (`LinearOperator.is_matrix_free`: autodiff products, a
gradient evaluation or more each). For a stored matrix a product costs about
as much memory traffic as keeping an iterate, and the stored iterates are
fresh memory that the allocator maps anew at every linearization, so
rerunning CG after a rejection is as fast (`docs/benchmarks.md` has the
measurements, ``benchmarks/micro.py --only cg``).

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
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from trustls.subproblem.base import Step, SubproblemSolver, boundary_step_length

__all__ = ["SteihaugCG"]

# Elements of the stored CG path for matrix-free operators (32 MiB in float64).
DEFAULT_PATH_MEMORY = 2**22


def normalizing_factor(largest: float, radius: float, dtype: torch.dtype) -> float:
    """A power of two c with ‖c·g‖∞ in [½, 1) when ‖g‖∞ lies outside [2⁻ᵏ, 2ᵏ], else 1.

    k is a quarter of the dtype's largest binary exponent (31 in float32, 255
    in float64), so that ‖g‖² and dᵀBd neither overflow nor underflow. CG's
    iterates scale by c as well and stay within c·Δ, so c is taken only if
    c·Δ also lies in [2⁻ᵏ, 2ᵏ] (or Δ = ∞): with Jacobi scaling (B of unit
    diagonal) the iterates are then of the size of c·g. Scaling by a power of two is exact:
    CG in the normalized units computes the same iterates, times c, bit for bit.

    Args:
        largest: ‖g‖∞.
        radius: Δ.
        dtype: g's dtype.

    Examples:
        >>> normalizing_factor(1e19, 1.0, torch.float32), normalizing_factor(1e19, 1.0, torch.float64)
        (1.0, 1.0)
        >>> normalizing_factor(1e19, 1e19, torch.float32) == 2.0**-64
        True
    """
    limit = 2.0 ** (math.frexp(torch.finfo(dtype).max)[1] // 4)
    if largest == 0.0 or not math.isfinite(largest) or 1.0 / limit <= largest <= limit:
        return 1.0
    factor = 2.0 ** -math.frexp(largest)[1]
    return factor if math.isinf(radius) or 1.0 / limit <= factor * radius <= limit else 1.0


@dataclass
class _Path:
    """The CG path at one point: iterates and the model along each segment."""

    linearization: object
    reference: float | None = None  # the forcing term's reference ‖g‖ (the solver's state)
    points: list[Tensor] = field(default_factory=list)  # p_0 = 0, p_1, ..., p_K
    norms: list[float] = field(default_factory=list)
    model_values: list[float] = field(default_factory=list)  # m(p_k)
    slopes: list[float] = field(default_factory=list)  # m'(σ=0) on segment k
    curvatures: list[float] = field(default_factory=list)  # m''(σ) on segment k
    radius: float = 0.0  # the radius the path was computed for
    factor: float = 1.0  # the path is stored in units where g is c·g (`normalizing_factor`)
    complete: bool = False  # the path ends where CG stopped for that radius
    last: Step | None = None


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
        if self.max_iter is not None and (
            isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1
        ):
            raise ValueError(f"max_iter must be a positive int or None, got {self.max_iter!r}")
        if isinstance(self.forcing, bool) or not isinstance(self.forcing, (int, float)) or not 0 < self.forcing < 1:
            raise ValueError(f"forcing must be a number in (0, 1), got {self.forcing!r}")
        if self.path_memory is not None and (
            isinstance(self.path_memory, bool) or not isinstance(self.path_memory, int) or self.path_memory < 0
        ):
            raise ValueError(f"path_memory must be a non-negative int or None, got {self.path_memory!r}")
        if isinstance(self.exact_up_to, bool) or not isinstance(self.exact_up_to, int) or self.exact_up_to < 0:
            raise ValueError(f"exact_up_to must be a non-negative int, got {self.exact_up_to!r}")

    def _path_memory(self, B) -> int:
        """``path_memory``, or its default for ``B`` when it is ``None``."""
        if self.path_memory is not None:
            return self.path_memory
        return DEFAULT_PATH_MEMORY if B.is_matrix_free else 0

    def _forcing_bound(self, g: Tensor) -> float:
        """η_max: ``forcing``, or eps^(3/4) of g's dtype when n ≤ ``exact_up_to``."""
        if g.shape[0] <= self.exact_up_to:
            return min(self.forcing, torch.finfo(g.dtype).eps ** 0.75)
        return self.forcing

    def prepare(self, linearization, state: float | None = None) -> _Path:
        if not linearization.operator.is_symmetric:
            raise ValueError("SteihaugCG needs a symmetric curvature operator")
        if state is not None and (isinstance(state, bool) or not isinstance(state, (int, float))):
            raise TypeError(f"state must be the gradient reference (a float) or None, got {type(state).__name__}")
        return _Path(linearization, None if state is None else float(state))

    def state(self, prepared: _Path) -> float | None:
        return prepared.reference

    def _forcing_term(self, path: _Path, g: Tensor, g_norm: float, power: float = 1.0) -> float:
        """η = min(η_max, max(ρ^power, ε/ρ)) with ρ = ‖g‖/‖g‖_ref ∈ [0, 1] (module docstring).

        Without a finite reference above ‖g‖, ρ = 1; a ρ that underflows to 0
        gives η = η_max, the limit of the floor ε/ρ.
        """
        reference = path.reference
        if reference is None or not math.isfinite(reference) or reference <= g_norm:
            rho = 1.0
        else:
            rho = g_norm / reference
        floor = torch.finfo(g.dtype).eps / rho if rho > 0.0 else math.inf
        return min(self._forcing_bound(g), max(rho**power, floor))

    def _remember(self, path: _Path, g_norm: float) -> None:
        """Raise the reference to this point's ‖g‖; an overflowed norm is not kept."""
        if math.isfinite(g_norm):
            path.reference = g_norm if path.reference is None else max(path.reference, g_norm)

    def solve(self, prepared: _Path, radius: float) -> Step:
        path = prepared
        if path.complete and radius <= path.radius:
            return self._from_path(path, radius)
        return self._run(path, radius)

    def _run(self, path: _Path, radius: float) -> Step:
        step = self._cg(path, radius, factor=1.0)
        if step is None:  # g's squared norms leave the dtype's range: again, normalized
            step = self._cg(path, radius, factor=path.factor)
        path.last = step
        return step

    def _cg(self, path: _Path, radius: float, factor: float) -> Step | None:
        """CG on c·g in the sphere of radius c·Δ (c = ``factor``); ``None`` when it must restart normalized.

        c is a power of two (`normalizing_factor`) that keeps the squared norms
        of a float32 g from overflowing or underflowing; p, ‖p‖ and m are
        scaled back at the end. Its need is read with the first iteration's
        values, so a solve that needs none reads nothing more.
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
                    if path.factor != 1.0 or not math.isfinite(rr):
                        return None if path.factor != 1.0 else self._overflowed(path, g, largest)
                g_norm = math.sqrt(rr)
                if g_norm == 0.0:
                    return Step(torch.zeros_like(g), 0.0, 0.0, False, 0, products, "zero_gradient")
                # ρ compares the true ‖g‖ (before normalization) with the reference.
                self._remember(path, g_norm / factor)
                tolerance = self._forcing_term(path, g, g_norm / factor) * g_norm
            if not kappa > 0.0:  # also NaN: no descent can be trusted along s
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
            p, p_norm, model = p / factor, p_norm / factor, model / (factor * factor)
        return Step(p, p_norm, -model, hits_boundary, iterations, products, reason)

    def _overflowed(self, path: _Path, g: Tensor, largest: float) -> Step:
        """No step for a g whose squared norm leaves the range when no factor can bring it back
        (the radius does not scale with it): a non-finite one, from which the controller shrinks
        the radius. A float32 norm is still kept, taken in float64, as the forcing reference."""
        if g.dtype != torch.float64:
            self._remember(path, float(torch.linalg.vector_norm(g, dtype=torch.float64)))
        nan = torch.full_like(g, math.nan)
        return Step(nan, math.nan, math.nan, True, 1, 1, "overflow")

    def _from_path(self, path: _Path, radius: float) -> Step:
        """The first crossing of the sphere of ``radius`` by the stored path."""
        last = path.last
        if radius >= last.norm:
            return Step(last.step, last.norm, last.predicted_reduction, last.hits_boundary, 0, 0, last.reason)
        factor = path.factor  # the path is stored in the normalized units of `_run`
        sphere = radius * factor
        k = next(i for i in range(len(path.norms) - 1) if path.norms[i + 1] >= sphere)
        start = path.points[k]
        delta = path.points[k + 1] - start
        sigma = float(boundary_step_length(start, delta, sphere))
        model = path.model_values[k] + sigma * path.slopes[k] + 0.5 * sigma * sigma * path.curvatures[k]
        on_last = k == len(path.norms) - 2 and last.reason == "negative_curvature"
        reason = "negative_curvature" if on_last else "boundary"
        step = start + sigma * delta
        if factor != 1.0:
            step, model = step / factor, model / (factor * factor)
        return Step(step, radius, -model, True, 0, 0, reason)
