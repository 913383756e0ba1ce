"""Steihaug-Toint CG, the boundary intersection and solver resolution.

The quadratic model m(p) = gᵀp + ½pᵀBp is evaluated densely in float64 and
CG is checked for the properties the trust-region method relies on (Nocedal &
Wright 2006, ch. 4 and §7.2): the step stays in the region, the model
decrease is at least the Cauchy point's, the predicted reduction is −m(p),
each exit ("boundary", "negative_curvature", "converged", "max_iter",
"zero_gradient") happens when it should, and the stored CG path answers a
smaller radius exactly as a fresh solve would, with no product.
"""

import math
import re
from dataclasses import FrozenInstanceError

import pytest
import torch
from torch import Tensor

import trustls
from trustls import GaussNewtonModel, Status, TrustRegion
from trustls.models import Linearization
from trustls.operators import DenseOperator, LinearOperator, NormalOperator
from trustls.subproblem import (
    SOLVERS,
    GLTR,
    DenseLstsq,
    IterativeSchur,
    SteihaugCG,
    SubproblemSolver,
    boundary_step_length,
    resolve_solver,
)
from trustls.subproblem.cg_path import smallest_factor

# ‖p‖ ≤ Δ holds to the rounding of one boundary intersection.
BOUNDARY_RTOL = 1e-12


class SymmetricMatrix(LinearOperator):
    """A symmetric (possibly indefinite) dense B that counts its products."""

    is_symmetric = True

    def __init__(self, matrix: Tensor):
        super().__init__(tuple(matrix.shape), matrix.dtype, matrix.device)
        self.matrix = matrix
        self.calls = 0

    def matvec(self, v: Tensor) -> Tensor:
        self.calls += 1
        return self.matrix @ v


def quadratic(B: Tensor, g: Tensor) -> Linearization:
    """A linearization carrying what SteihaugCG reads: the gradient and B.

    There is no Jacobian behind an indefinite B, so ``jacobian`` is None.
    """
    return Linearization(
        x=torch.zeros_like(g), residual=g.new_zeros(0), cost=0.0, gradient=g,
        operator=SymmetricMatrix(B), jacobian=None,
    )


def least_squares(J: Tensor, r: Tensor) -> Linearization:
    """The Gauss-Newton linearization of a dense J and residual r."""
    return Linearization(
        x=torch.zeros(J.shape[1], dtype=J.dtype, device=J.device), residual=r,
        cost=0.5 * float(r @ r), gradient=J.T @ r, operator=NormalOperator(J),
        jacobian=DenseOperator(J), jacobian_matrix=J,
    )


def make_matrix(kind: str, generator: torch.Generator, device="cpu") -> tuple[Tensor, Tensor]:
    """(B, g) in float64: SPD, PSD-singular (g in the range of B) or indefinite."""

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device)

    if kind == "spd":
        J, r = randn(9, 6), randn(9)
    elif kind == "psd_wide":  # m < n: rank 3 of 6
        J, r = randn(3, 6), randn(3)
    elif kind == "psd_duplicate_columns":  # rank 4 of 6
        J, r = randn(8, 4), randn(8)
        J = torch.cat([J, J[:, :2]], dim=1)
    elif kind in ("indefinite", "negative_definite"):
        Q, _ = torch.linalg.qr(randn(6, 6))
        eigenvalues = torch.tensor([3.0, 1.5, 0.7, 0.2, -0.4, -1.0], dtype=torch.float64, device=device)
        if kind == "negative_definite":
            eigenvalues = -eigenvalues.abs()
        B = Q @ torch.diag(eigenvalues) @ Q.T
        return 0.5 * (B + B.T), randn(6)
    else:
        raise AssertionError(kind)
    return J.T @ J, J.T @ r


KINDS = ["spd", "psd_wide", "psd_duplicate_columns", "indefinite", "negative_definite"]
RADII = [1e-4, 1e-2, 0.3, 1.0, 3.0, 100.0, 1e6]


def model(B: Tensor, g: Tensor, p: Tensor) -> float:
    return float(g @ p + 0.5 * p @ (B @ p))


def cauchy_point(B: Tensor, g: Tensor, radius: float) -> Tensor:
    """The minimizer of m along −g within the region (Nocedal & Wright 2006, eq. 4.12)."""
    g_norm = float(torch.linalg.vector_norm(g))
    curvature = float(g @ (B @ g))
    tau_max = radius / g_norm
    tau = tau_max if curvature <= 0 else min(g_norm**2 / curvature, tau_max)
    return -tau * g


def run(solver: SubproblemSolver, B: Tensor, g: Tensor, radius: float):
    lin = quadratic(B, g)
    return solver.solve(solver.prepare(lin), radius), lin.operator


# --- invariants over a grid ----------------------------------------------------------


@pytest.mark.parametrize("exact_up_to", [32, 0], ids=["near-exact", "truncated"])
@pytest.mark.parametrize("radius", RADII)
@pytest.mark.parametrize("kind", KINDS)
def test_step_within_region_with_cauchy_decrease_and_exact_prediction(kind, radius, exact_up_to, generator, device):
    # n = 6: near-exact by default; exact_up_to=0 exercises the truncated path (forcing 1e-3).
    B, g = make_matrix(kind, generator, device)
    step, operator = run(SteihaugCG(exact_up_to=exact_up_to), B, g, radius)
    p = step.step
    p_norm = float(torch.linalg.vector_norm(p))
    assert p.shape == g.shape and p.dtype == g.dtype and p.device == g.device
    assert p_norm <= radius * (1 + BOUNDARY_RTOL)
    assert float(step.norm) == pytest.approx(p_norm, rel=1e-12)
    if step.hits_boundary:
        assert step.reason in ("boundary", "negative_curvature")
        assert p_norm == pytest.approx(radius, rel=BOUNDARY_RTOL)
    else:
        assert step.reason in ("converged", "max_iter")
    # predicted_reduction is −m(p), tracked along the path without a product.
    scale = float(torch.linalg.vector_norm(g)) * p_norm
    assert float(step.predicted_reduction) == pytest.approx(-model(B, g, p), rel=1e-10, abs=1e-13 * scale)
    # At least the Cauchy decrease (Nocedal & Wright 2006, Thm 4.5 and §7.2).
    cauchy = -model(B, g, cauchy_point(B, g, radius))
    assert step.predicted_reduction >= cauchy * (1 - 1e-12) > 0
    # One product per iteration, all of them counted.
    assert step.products == step.iterations == operator.calls >= 1


@pytest.mark.parametrize("radius", [1e-2, 1.0, 100.0])
@pytest.mark.parametrize("kind", ["spd", "psd_wide"])
def test_least_squares_linearization_gives_same_step(kind, radius, generator):
    # NormalOperator(J) and the dense B = JᵀJ are the same curvature.
    J = torch.randn(9 if kind == "spd" else 3, 6, generator=generator, dtype=torch.float64)
    r = torch.randn(J.shape[0], generator=generator, dtype=torch.float64)
    solver = SteihaugCG()
    from_normal = solver.solve(solver.prepare(least_squares(J, r)), radius)
    from_dense, _ = run(solver, J.T @ J, J.T @ r, radius)
    torch.testing.assert_close(from_normal.step, from_dense.step, rtol=1e-10, atol=1e-12 * radius)
    assert from_normal.reason == from_dense.reason


@pytest.mark.parametrize("kind", ["spd", "psd_wide", "psd_duplicate_columns"])
def test_large_radius_gives_the_minimum_norm_newton_step(kind, generator):
    # From p₀ = 0 the CG iterates stay in the Krylov space of g ⊂ range(B), so
    # for PSD B and g in range(B) CG converges to the minimum-norm solution.
    B, g = make_matrix(kind, generator)
    n = g.shape[0]
    step, _ = run(SteihaugCG(forcing=1e-10, max_iter=n), B, g, 1e6)
    expected = torch.linalg.lstsq(B, -g, driver="gelsd").solution
    assert step.reason == "converged" and not step.hits_boundary
    torch.testing.assert_close(step.step, expected, rtol=1e-8, atol=1e-10 * float(expected.norm()))
    assert step.iterations <= n


def test_large_radius_spd_step_equals_solve(generator):
    B, g = make_matrix("spd", generator)
    step, _ = run(SteihaugCG(forcing=1e-10, max_iter=g.shape[0]), B, g, 1e6)
    torch.testing.assert_close(step.step, torch.linalg.solve(B, -g), rtol=1e-9, atol=0)


@pytest.mark.parametrize("forcing, reference", [(0.5, None), (0.1, None), (0.5, 1e4), (0.5, 1e14)])
def test_converged_residual_meets_forcing_tolerance(forcing, reference, generator):
    # tolerance = min(forcing, max(ρ, ε/ρ))·‖g‖ with ρ = ‖g‖/reference, the
    # reference the controller passes (none: ‖g‖ itself). 10⁴ exercises the
    # relative-gradient branch, 10¹⁴ the rounding floor ε/ρ = 0.022.
    # exact_up_to=0: the forcing applies at this small n.
    B, g = make_matrix("spd", generator)
    g_norm = float(g.norm())
    solver = SteihaugCG(forcing=forcing, exact_up_to=0)
    reference = None if reference is None else reference * g_norm
    step = solver.solve(solver.prepare(quadratic(B, g), reference), 1e6)
    assert step.reason == "converged"
    residual = float(torch.linalg.vector_norm(B @ step.step + g))
    rho = 1.0 if reference is None else g_norm / reference
    eta = min(forcing, max(rho, torch.finfo(g.dtype).eps / rho))
    assert residual <= eta * g_norm * (1 + 1e-8)
    if reference is None:  # truncated by the forcing: a near-exact solve would be far below
        assert residual > 1e-6 * g_norm


@pytest.mark.parametrize(("dtype", "rho"), [(torch.float64, 1e-14), (torch.float32, 1e-6)])
def test_forcing_stops_at_the_rounding_level_of_the_reference_gradient(dtype, rho):
    # ρ = ‖g‖/‖g‖_ref: the quadratic target ρ‖g‖ lies below ε‖g‖_ref, where the
    # floor η = ε/ρ (0.022 in float64, 0.119 in float32) stops CG instead, as
    # forcing=ε/ρ would.
    B = torch.diag(torch.logspace(0, 2, 50, dtype=dtype))
    g = torch.ones(50, dtype=dtype)
    eta = torch.finfo(dtype).eps / rho
    solver = SteihaugCG(forcing=0.5, exact_up_to=0)
    floored = solver.solve(solver.prepare(quadratic(B, g), float(g.norm()) / rho), 1e6)
    capped = run(SteihaugCG(forcing=eta, exact_up_to=0), B, g, 1e6)[0]
    tight = run(SteihaugCG(forcing=1e-13, exact_up_to=0), B, g, 1e6)[0]
    assert floored.iterations == capped.iterations < tight.iterations
    torch.testing.assert_close(floored.step, capped.step, rtol=0, atol=0)


@pytest.mark.parametrize("reference", [math.inf, 1e300])
def test_forcing_with_an_infinite_or_overwhelming_reference(reference):
    # A non-finite reference is ignored (ρ = 1); ρ = 10⁻³⁰⁰/10³⁰⁰ underflows to
    # 0, where the floor ε/ρ is infinite: η = forcing either way, no error.
    B = torch.diag(torch.logspace(0, 2, 50, dtype=torch.float64))
    g = torch.full((50,), 1e-300 / math.sqrt(50), dtype=torch.float64)
    solver = SteihaugCG(forcing=0.5, exact_up_to=0)
    step = solver.solve(solver.prepare(quadratic(B, g), reference), 1e6)
    plain = run(SteihaugCG(forcing=0.5, exact_up_to=0), B, g, 1e6)[0]
    assert step.iterations == plain.iterations


def test_normalized_gradient_keeps_the_forcing_and_scales_the_step_back():
    # float32 g with entries near 10¹⁹: CG runs on 2⁻⁶⁴·g. The forcing term
    # still compares the true ‖g‖ with the reference (ρ = 10⁻² → η = 10⁻²), and
    # the step, its norm and the model come back in the original units, equal
    # to the solve of the exactly scaled-down problem, scaled up.
    B = torch.diag(torch.logspace(0, 2, 50, dtype=torch.float32))
    small = torch.linspace(0.5, 0.99, 50, dtype=torch.float32)
    g = small * 2.0**64
    solver = SteihaugCG(forcing=0.5, exact_up_to=0)
    step = solver.solve(solver.prepare(quadratic(B, g), 1e2 * float(g.double().norm())), 1e20)
    want = run(SteihaugCG(forcing=1e-2, exact_up_to=0), B, small, 1e20 / 2.0**64)[0]
    assert step.iterations == want.iterations and step.reason == "converged"
    torch.testing.assert_close(step.step, want.step * 2.0**64, rtol=0, atol=0)
    assert step.norm == want.norm * 2.0**64
    assert float(step.predicted_reduction) == pytest.approx(want.predicted_reduction * 2.0**128, rel=1e-12)


def test_forcing_reference_below_the_gradient_is_the_gradient(generator):
    # A reference below ‖g‖ (the gradient grew) measures ‖g‖ against itself: η = forcing.
    B, g = make_matrix("spd", generator)
    solver = SteihaugCG(forcing=0.5, exact_up_to=0)
    below = solver.solve(solver.prepare(quadratic(B, g), 1e-3 * float(g.norm())), 1e6)
    none = solver.solve(solver.prepare(quadratic(B, g)), 1e6)
    assert below.iterations == none.iterations
    torch.testing.assert_close(below.step, none.step, rtol=0, atol=0)


@pytest.mark.parametrize("exact_up_to, near_exact", [(32, True), (6, True), (5, False), (0, False)])
def test_small_dimensions_solve_near_exactly(exact_up_to, near_exact, generator):
    # n = 6: up to exact_up_to variables η_max = eps^(3/4) replaces forcing=0.5.
    B, g = make_matrix("spd", generator)
    step, _ = run(SteihaugCG(forcing=0.5, exact_up_to=exact_up_to), B, g, 1e6)
    relative = float(torch.linalg.vector_norm(B @ step.step + g) / g.norm())
    assert step.reason == "converged"
    eta = torch.finfo(torch.float64).eps ** 0.75
    assert (relative <= eta) == near_exact, relative


# --- the exits --------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.999, 0.5, 0.1, 1e-3])
def test_boundary_exit(fraction, generator):
    B, g = make_matrix("spd", generator)
    radius = fraction * float(torch.linalg.solve(B, g).norm())
    step, _ = run(SteihaugCG(forcing=1e-10), B, g, radius)
    assert step.reason == "boundary" and step.hits_boundary
    assert step.norm == radius
    assert float(step.step.norm()) == pytest.approx(radius, rel=BOUNDARY_RTOL)


def test_negative_curvature_exit_hand_computed():
    # B = diag(-1, 2), g = (1, 1): d₀ = −g has curvature 1 > 0, so p₁ = −2g and
    # r₁ = (3, −3); d₁ = −r₁ + 9d₀ = (−12, −6) has curvature −144 + 72 < 0.
    B = torch.diag(torch.tensor([-1.0, 2.0], dtype=torch.float64))
    g = torch.tensor([1.0, 1.0], dtype=torch.float64)
    radius = 100.0
    step, operator = run(SteihaugCG(), B, g, radius)
    p1 = torch.tensor([-2.0, -2.0], dtype=torch.float64)
    d1 = torch.tensor([-12.0, -6.0], dtype=torch.float64)
    # ‖p₁ + τd₁‖ = Δ: 180τ² + 72τ + 8 − Δ² = 0.
    tau = (-72 + math.sqrt(72**2 - 4 * 180 * (8 - radius**2))) / (2 * 180)
    assert step.reason == "negative_curvature" and step.hits_boundary
    assert step.iterations == step.products == operator.calls == 2
    torch.testing.assert_close(step.step, p1 + tau * d1, rtol=1e-14, atol=0)
    assert step.norm == radius
    assert float(step.predicted_reduction) == pytest.approx(-model(B, g, step.step), rel=1e-12)


@pytest.mark.parametrize("kind", ["indefinite", "negative_definite"])
def test_negative_curvature_exit_on_boundary(kind, generator):
    B, g = make_matrix(kind, generator)
    radius = 1e6  # far beyond any positive-curvature CG iterate
    step, _ = run(SteihaugCG(), B, g, radius)
    assert step.reason == "negative_curvature" and step.hits_boundary
    assert float(step.step.norm()) == pytest.approx(radius, rel=BOUNDARY_RTOL)
    if kind == "negative_definite":
        # The first direction −g already has negative curvature: a boundary step along −g.
        assert step.iterations == 1
        torch.testing.assert_close(step.step, -radius * g / g.norm(), rtol=1e-14, atol=0)


@pytest.mark.parametrize("max_iter", [1, 2, 3])
def test_max_iter_exit(max_iter, generator):
    B, g = make_matrix("spd", generator)
    step, operator = run(SteihaugCG(max_iter=max_iter, forcing=1e-10), B, g, 1e6)
    assert step.reason == "max_iter" and not step.hits_boundary
    assert step.iterations == step.products == operator.calls == max_iter
    if max_iter == 1:
        # One CG step from 0 is the unconstrained Cauchy point.
        torch.testing.assert_close(step.step, cauchy_point(B, g, 1e6), rtol=1e-14, atol=0)


def test_max_iter_defaults_to_twice_the_dimension():
    # forcing = 1e-15 asks for a residual below what float64 CG reaches on
    # cond(B) = 1e10, so CG runs until the default cap 2n = 12.
    eigenvalues = torch.logspace(0, 10, 6, dtype=torch.float64)
    g = torch.ones(6, dtype=torch.float64)
    step, _ = run(SteihaugCG(forcing=1e-15), torch.diag(eigenvalues), g, 1e6)
    assert step.reason == "max_iter" and step.iterations == 12
    expected = -g / eigenvalues
    assert float((step.step - expected).norm()) <= 1e-12 * float(expected.norm())


def test_rounding_delays_convergence_past_n_iterations():
    # n steps solve the system in exact arithmetic; in float64 the residuals
    # lose orthogonality and CG needs more (the reason the default cap is 2n).
    eigenvalues = torch.logspace(0, 3, 6, dtype=torch.float64)
    g = torch.ones(6, dtype=torch.float64)
    capped, _ = run(SteihaugCG(forcing=1e-15, max_iter=6), torch.diag(eigenvalues), g, 1e6)
    default, _ = run(SteihaugCG(forcing=1e-15), torch.diag(eigenvalues), g, 1e6)
    assert capped.reason == "max_iter"
    assert default.reason == "converged" and 6 < default.iterations < 12


@pytest.mark.parametrize("kind", ["spd", "indefinite"])
def test_zero_gradient(kind, generator):
    B, g = make_matrix(kind, generator)
    step, operator = run(SteihaugCG(), B, torch.zeros_like(g), 1.0)
    assert step.reason == "zero_gradient"
    assert torch.equal(step.step, torch.zeros_like(g))
    assert step.norm == 0.0 and step.predicted_reduction == 0.0 and not step.hits_boundary
    # ‖g‖ is read with the first iteration's values, so one product is spent finding g = 0.
    assert step.iterations == 0 and step.products == operator.calls == 1


# --- the stored path ------------------------------------------------------------------


def _assert_same_step(actual, expected, radius):
    torch.testing.assert_close(actual.step, expected.step, rtol=1e-12, atol=1e-13 * radius)
    assert float(actual.norm) == pytest.approx(float(expected.norm), rel=1e-12)
    assert float(actual.predicted_reduction) == pytest.approx(float(expected.predicted_reduction), rel=1e-10)
    assert actual.hits_boundary == expected.hits_boundary


@pytest.mark.parametrize("kind", KINDS)
def test_stored_path_answers_smaller_radii_without_products(kind, generator):
    B, g = make_matrix(kind, generator)
    solver = SteihaugCG()
    lin = quadratic(B, g)
    prepared = solver.prepare(lin)
    first = solver.solve(prepared, 10.0)
    calls = lin.operator.calls
    assert first.products == calls > 0
    for radius in [10.0, 3.0, 1.0, 0.25, 0.01, 1e-5]:
        stored = solver.solve(prepared, radius)
        fresh, _ = run(SteihaugCG(), B, g, radius)
        assert stored.products == stored.iterations == 0
        assert lin.operator.calls == calls
        _assert_same_step(stored, fresh, radius)
        assert float(stored.step.norm()) <= radius * (1 + BOUNDARY_RTOL)


@pytest.mark.parametrize("kind", ["spd", "psd_wide"])
def test_stored_path_reason_matches_fresh_solve(kind, generator):
    B, g = make_matrix(kind, generator)
    newton_norm = float(torch.linalg.lstsq(B, g, driver="gelsd").solution.norm())
    solver = SteihaugCG()
    prepared = solver.prepare(quadratic(B, g))
    solver.solve(prepared, 10 * newton_norm)
    for radius in [0.5 * newton_norm, 0.01 * newton_norm]:
        assert solver.solve(prepared, radius).reason == run(SteihaugCG(), B, g, radius)[0].reason == "boundary"


def test_stored_path_reason_on_negative_curvature_segment():
    # The hand-computed case above: the second segment is the negative-curvature one.
    B = torch.diag(torch.tensor([-1.0, 2.0], dtype=torch.float64))
    g = torch.tensor([1.0, 1.0], dtype=torch.float64)
    solver = SteihaugCG()
    prepared = solver.prepare(quadratic(B, g))
    assert solver.solve(prepared, 100.0).reason == "negative_curvature"
    radius = 50.0  # beyond p₁ (‖p₁‖ = 2.8), so the crossing is on the last segment
    fresh, _ = run(SteihaugCG(), B, g, radius)
    assert fresh.reason == "negative_curvature"
    assert solver.solve(prepared, radius).reason == fresh.reason


def test_stored_converged_step_answers_radius_beyond_it(generator):
    B, g = make_matrix("spd", generator)
    solver = SteihaugCG()
    prepared = solver.prepare(quadratic(B, g))
    first = solver.solve(prepared, 1e6)
    assert first.reason == "converged"
    again = solver.solve(prepared, 2 * first.norm)
    assert again.products == 0 and again.reason == "converged"
    assert torch.equal(again.step, first.step)


def test_larger_radius_reruns_cg(generator):
    B, g = make_matrix("spd", generator)
    solver = SteihaugCG()
    lin = quadratic(B, g)
    prepared = solver.prepare(lin)
    solver.solve(prepared, 0.01)
    larger = solver.solve(prepared, 1.0)
    assert larger.products > 0
    _assert_same_step(larger, run(SteihaugCG(), B, g, 1.0)[0], 1.0)


@pytest.mark.parametrize("path_memory", [0, 6])  # n = 6: not even two points fit
def test_path_memory_too_small_reruns_cg(path_memory, generator):
    B, g = make_matrix("spd", generator)
    solver = SteihaugCG(path_memory=path_memory)
    lin = quadratic(B, g)
    prepared = solver.prepare(lin)
    solver.solve(prepared, 10.0)
    calls = lin.operator.calls
    second = solver.solve(prepared, 0.01)
    assert second.products > 0 and lin.operator.calls == calls + second.products
    _assert_same_step(second, run(SteihaugCG(), B, g, 0.01)[0], 0.01)


def test_stored_matrices_rerun_cg_by_default(generator):
    # NormalOperator of a dense J stores its entries: no path is kept by
    # default, and a smaller radius reruns CG (module docstring).
    J = torch.randn(9, 6, generator=generator, dtype=torch.float64)
    r = torch.randn(9, generator=generator, dtype=torch.float64)
    lin = least_squares(J, r)
    assert not lin.operator.is_matrix_free
    solver = SteihaugCG()
    prepared = solver.prepare(lin)
    solver.solve(prepared, 10.0)
    second = solver.solve(prepared, 0.01)
    assert second.products > 0
    kept = SteihaugCG(path_memory=2**22)
    prepared = kept.prepare(lin)
    kept.solve(prepared, 10.0)
    assert kept.solve(prepared, 0.01).products == 0


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_is_left_unchanged(kind, generator):
    # r₀ and s₀ alias g and are then updated in place: the first update must copy.
    B, g = make_matrix(kind, generator)
    before = g.clone()
    for radius in (1e-2, 1e6):
        run(SteihaugCG(forcing=1e-10, exact_up_to=0), B, g, radius)
    assert torch.equal(g, before)


# --- the range: curvatures that overflow or underflow ------------------------------------------


def badly_scaled(dtype: torch.dtype, big: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(J, r): a seeded 9×6 Gauss-Newton problem whose first two columns are multiplied by ``big``."""
    J = torch.randn(9, 6, generator=generator, dtype=torch.float64)
    J[:, :2] *= big
    return J.to(dtype), torch.randn(9, generator=generator, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("radius", [1e-3, 1.0, 1e3])
@pytest.mark.parametrize(("dtype", "big"), [(torch.float64, 1e100), (torch.float32, 1e11)])
def test_overflowing_curvature_restarts_at_the_smallest_factor(dtype, big, radius, generator):
    # sᵀBs = ‖Jg‖² ≈ big⁴ overflows at c = 1 (it gave α = 0: a zero step, taken for
    # convergence). CG restarts on c·g in the sphere c·Δ at c = smallest_factor, which
    # is exact: the step is that of the scaled-down problem, scaled back, bit for bit.
    J, r = badly_scaled(dtype, big, generator)
    lin = least_squares(J, r)
    g = lin.gradient
    assert math.isinf(float(torch.dot(J @ g, J @ g)))
    c = smallest_factor(float(g.abs().max()), radius, dtype)
    solver = SteihaugCG(path_memory=0)
    step = solver.solve(solver.prepare(lin), radius)
    scaled = solver.solve(solver.prepare(least_squares(J, r * c)), radius * c)  # g·c: J is linear in r
    assert step.reason == scaled.reason != "overflow" and step.iterations == scaled.iterations
    torch.testing.assert_close(step.step * c, scaled.step, rtol=0, atol=0)
    assert step.norm * c == pytest.approx(scaled.norm, rel=1e-6) and step.norm > 0
    assert float(step.predicted_reduction) * c * c == pytest.approx(float(scaled.predicted_reduction), rel=1e-12)
    assert step.products > step.iterations  # the abandoned run's products are counted
    # The invariants, in the scaled units (m(c·p; c·g) = c²·m(p; g)), with B = JᵀJ in float64.
    B, gc, p = (J.T @ J).double(), (g * c).double(), scaled.step.double()
    assert float(torch.linalg.vector_norm(p)) <= radius * c * (1 + BOUNDARY_RTOL)
    cauchy = cauchy_point(B, gc, radius * c)
    assert model(B, gc, p) <= model(B, gc, cauchy) * (1 - 1e-6) + 0.0


@pytest.mark.parametrize(("dtype", "big"), [(torch.float64, 1e160), (torch.float32, 1e20)])
def test_curvature_beyond_every_factor_gives_no_step(dtype, big):
    # B = diag(big², 1) and g = (big·r₀, 1) far beyond Δ = 1: at the smallest factor, which
    # the radius sets, c²·gᵀBg still overflows: a NaN step, whose trial fails (before: a
    # zero or NaN-model step, and a false XTOL convergence).
    J = torch.diag(torch.tensor([big, 1.0], dtype=dtype))
    lin = least_squares(J, torch.tensor([1e-10 if dtype == torch.float64 else 1.0, 1.0], dtype=dtype))
    solver = SteihaugCG()
    step = solver.solve(solver.prepare(lin), 1.0)
    assert step.reason == "overflow" and step.hits_boundary
    assert bool(torch.isnan(step.step).all()) and math.isnan(step.norm) and math.isnan(step.predicted_reduction)
    assert step.products == 2  # one product in each of the two runs


def test_smallest_factor_is_the_smallest_that_keeps_the_squares_normal():
    for dtype in (torch.float64, torch.float32):
        finfo = torch.finfo(dtype)
        tiny, eps = finfo.tiny, finfo.eps
        for largest, radius in [(1.0, 1.0), (1e30, 1.5), (1e-30, 1e3), (3.0, math.inf), (1e-20, 1e-20)]:
            c = smallest_factor(largest, radius, dtype)
            assert math.frexp(c)[0] == 0.5  # a power of two
            # (c·Δ)² and (ε·c·‖g‖∞)² are normal; at c/2 one of them is not (or c is the smallest normal).
            fits = lambda f: (f * radius) ** 2 >= tiny and (eps * f * largest) ** 2 >= tiny  # noqa: E731
            assert fits(c) and (not fits(c / 2) or c == tiny)


def test_underflowing_curvature_steps_to_the_boundary():
    # B = 10⁻³¹⁰·I and ‖g‖ = 3·10⁻¹⁰: gᵀBg = 9·10⁻³³⁰ underflows to 0, so κ = 0 takes the
    # negative-curvature exit. Right: the minimizer along −g lies at α = ‖g‖²/gᵀBg = 10³¹⁰,
    # far past the sphere, and the step to the boundary along −g is the Cauchy point.
    g = 1e-10 * torch.tensor([1.0, -2.0, 2.0], dtype=torch.float64)
    B = 1e-310 * torch.eye(3, dtype=torch.float64)
    assert float(g @ (B @ g)) == 0.0
    solver = SteihaugCG()
    step = solver.solve(solver.prepare(quadratic(B, g)), 1.0)
    assert step.reason == "negative_curvature" and step.hits_boundary and step.norm == 1.0
    torch.testing.assert_close(step.step, -g / torch.linalg.vector_norm(g), rtol=1e-15, atol=0)
    assert float(step.predicted_reduction) == pytest.approx(float(torch.linalg.vector_norm(g)), rel=1e-15)


def _columns_residual(big: float):
    """Zero residual at (1, 2, 3, 4); the columns of x₀ and x₃ in J are ``big``."""

    def fun(x):
        return torch.stack([big * (x[0] - 1), x[1] * x[2] - 6, x[2] - 3, big * (x[3] - 4)])

    return fun


@pytest.mark.parametrize(("dtype", "big"), [(torch.float64, 1e100), (torch.float64, 1.0), (torch.float32, 1e12)])
@pytest.mark.parametrize("entry", ["TrustRegion", "least_squares"])
def test_unscaled_solves_of_badly_scaled_problems_reach_the_minimizer(entry, dtype, big):
    # x_scale=1.0: sᵀBs overflows at the start (RADIUS_COLLAPSED before, x unmoved).
    # big = 1 is the well-scaled problem: the same minimizer.
    fun = _columns_residual(big)
    x0 = torch.tensor([1.5, 1.0, 1.0, 3.0], dtype=dtype)
    if entry == "TrustRegion":
        result = TrustRegion(GaussNewtonModel(), solver="cg", x_scale=1.0).solve(fun, x0)
    else:
        result = trustls.least_squares(fun, x0, tr_solver="lsmr", x_scale=1.0)
    assert result.success, result.message
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(result.x, torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=dtype), rtol=tol, atol=tol)


@pytest.mark.parametrize("entry", ["TrustRegion", "least_squares"])
@pytest.mark.parametrize("x_scale", [1.0, None])
def test_no_factor_fits_ends_in_radius_collapse_not_false_convergence(entry, x_scale):
    # J = diag(10¹⁶⁰, 1): with x_scale=1.0 no factor fits; the solve used to end with
    # XTOL (success) at x0 after steps whose model was NaN. With Jacobi scaling (TrustRegion's
    # default) it converges; least_squares' default x_scale is 1.0, as scipy's.
    fun = lambda x: torch.stack([1e160 * x[0], x[1] - 2])  # noqa: E731
    x0 = torch.tensor([1e-170, 5.0], dtype=torch.float64)
    kwargs = {} if x_scale is None else {"x_scale": x_scale}
    if entry == "TrustRegion":
        result = TrustRegion(GaussNewtonModel(), solver="cg", **kwargs).solve(fun, x0)
    else:
        result = trustls.least_squares(fun, x0, tr_solver="lsmr", **kwargs)
    if x_scale is None and entry == "TrustRegion":
        assert result.success and float(result.x[1]) == pytest.approx(2.0, rel=1e-12)
    else:
        assert result.status == Status.RADIUS_COLLAPSED and not result.success
        assert torch.equal(result.x, x0)


# --- float32, arguments, structure -------------------------------------------------------


@pytest.mark.parametrize("kind", ["spd", "indefinite"])
def test_float32_smoke(kind, generator):
    B, g = make_matrix(kind, generator)
    step, _ = run(SteihaugCG(), B.float(), g.float(), 1.0)
    assert step.step.dtype == torch.float32
    assert float(step.step.double().norm()) <= 1.0 * (1 + 1e-6)
    assert float(step.predicted_reduction) == pytest.approx(-model(B, g, step.step.double()), rel=1e-4)


@pytest.mark.parametrize("solver", [SteihaugCG, GLTR], ids=["cg", "gltr"])
def test_prepare_rejects_non_symmetric_operator(solver):
    J = torch.ones(3, 3, dtype=torch.float64)
    lin = Linearization(torch.zeros(3), torch.zeros(3), 0.0, torch.ones(3), DenseOperator(J), DenseOperator(J))
    with pytest.raises(ValueError, match=f"^{solver.__name__} needs a symmetric curvature operator$"):
        solver().prepare(lin)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_iter": 0}, "max_iter must be a positive int or None, got 0"),
        ({"max_iter": -3}, "max_iter must be a positive int or None, got -3"),
        ({"max_iter": 2.0}, "max_iter must be a positive int or None, got 2.0"),
        ({"max_iter": True}, "max_iter must be a positive int or None, got True"),
        ({"forcing": 0.0}, "forcing must be a number in (0, 1), got 0.0"),
        ({"forcing": 1}, "forcing must be a number in (0, 1), got 1"),
        ({"forcing": -0.5}, "forcing must be a number in (0, 1), got -0.5"),
        ({"forcing": "0.5"}, "forcing must be a number in (0, 1), got '0.5'"),
        ({"forcing": math.nan}, "forcing must be a number in (0, 1), got nan"),
        ({"path_memory": -1}, "path_memory must be a non-negative int or None, got -1"),
        ({"path_memory": 1.5}, "path_memory must be a non-negative int or None, got 1.5"),
        ({"path_memory": False}, "path_memory must be a non-negative int or None, got False"),
        ({"exact_up_to": -1}, "exact_up_to must be a non-negative int, got -1"),
        ({"exact_up_to": 3.0}, "exact_up_to must be a non-negative int, got 3.0"),
    ],
)
def test_constructor_validation(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        SteihaugCG(**kwargs)


def test_solver_is_a_frozen_value():
    solver = SteihaugCG(max_iter=5, forcing=0.25, path_memory=0)
    assert solver == SteihaugCG(max_iter=5, forcing=0.25, path_memory=0)
    assert repr(solver) == "SteihaugCG(max_iter=5, forcing=0.25, path_memory=0, exact_up_to=32)"
    assert not SteihaugCG.requires_jacobian
    with pytest.raises(FrozenInstanceError, match="cannot assign to field 'forcing'"):
        solver.forcing = 0.5


# --- boundary_step_length (subproblem/base.py) ---------------------------------------------


@pytest.mark.parametrize(
    "p, d, radius",
    [
        ([0.0, 0.0], [3.0, 4.0], 10.0),  # from the centre: τ = Δ/‖d‖
        ([0.5, 0.0], [1.0, 0.0], 2.0),  # pᵀd > 0
        ([0.5, 0.0], [-1.0, 0.0], 2.0),  # pᵀd < 0
        ([0.3, -0.4], [0.1, 0.2], 1.0),  # pᵀd < 0, oblique
        ([0.6, 0.8], [1.0, 1.0], 1.0),  # on the boundary, pointing out: τ = 0
        ([0.6, 0.8], [-1.0, -1.0], 1.0),  # on the boundary, pointing in: the far crossing
        ([0.0, 0.0, 0.0], [1e-8, 0.0, 0.0], 1e3),  # tiny direction
    ],
)
def test_boundary_step_length(p, d, radius):
    p = torch.tensor(p, dtype=torch.float64)
    d = torch.tensor(d, dtype=torch.float64)
    tau = boundary_step_length(p, d, radius)
    assert isinstance(tau, Tensor) and tau.ndim == 0 and tau.dtype == torch.float64
    # The non-negative root of ‖d‖²τ² + 2pᵀdτ + ‖p‖² − Δ² = 0, textbook formula.
    a, b, c = float(d @ d), 2 * float(p @ d), float(p @ p) - radius**2
    expected = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    assert float(tau) >= 0
    assert float(tau) == pytest.approx(expected, rel=1e-14, abs=1e-15)
    assert float(torch.linalg.vector_norm(p + tau * d)) == pytest.approx(radius, rel=1e-14)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_boundary_step_length_avoids_cancellation(sign):
    # p just inside the unit sphere, inputs exact in float32: c = 1 − ‖p‖² is
    # exact, so only the root formula can lose accuracy. With pᵀd > 0 the root
    # is τ ≈ 2⁻¹² and −pᵀd + √(...) would cancel to ~2e-4 relative in float32;
    # the stable formula c / (pᵀd + √(...)) keeps a few ulps.
    p = torch.tensor([1.0 - 2.0**-12, 0.0])
    d = torch.tensor([sign, 2.0**-6])
    tau = boundary_step_length(p, d, 1.0)
    assert tau.dtype == torch.float32
    p64, d64 = p.double(), d.double()
    a, half_b, c = float(d64 @ d64), float(p64 @ d64), 1.0 - float(p64 @ p64)
    root = math.sqrt(half_b**2 + a * c)
    expected = c / (half_b + root) if half_b >= 0 else (root - half_b) / a
    assert float(tau) == pytest.approx(expected, rel=1e-6)


# --- resolve_solver (subproblem/__init__.py) ------------------------------------------------


def test_resolve_solver():
    assert resolve_solver("cg") == SteihaugCG()
    assert resolve_solver("lstsq") == DenseLstsq()
    custom = SteihaugCG(max_iter=3)
    assert resolve_solver(custom) is custom
    assert sorted(SOLVERS) == ["cg", "gltr", "lstsq", "schur"]
    assert resolve_solver("schur") == IterativeSchur()
    with pytest.raises(ValueError, match=re.escape("solver must be one of ['cg', 'gltr', 'lstsq', 'schur'] or a SubproblemSolver, got 'CG'")):
        resolve_solver("CG")
    wrong_type = "solver must be a str (one of ['cg', 'gltr', 'lstsq', 'schur']) or a SubproblemSolver, got"
    with pytest.raises(TypeError, match=re.escape(f"{wrong_type} int")):
        resolve_solver(1)
    with pytest.raises(TypeError, match=re.escape(f"{wrong_type} NoneType")):
        resolve_solver(None)


def test_stored_path_that_rounding_leaves_below_a_tiny_sphere_reruns_cg():
    """Found by a review: float32 B with entries near 10²⁰, then a radius of 10⁻¹²: no stored norm
    reached the sphere and the path lookup raised StopIteration."""
    J = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    J = J * torch.tensor([1e10, 1e10, 1.0], dtype=torch.float64)
    r = torch.randn(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    B, g = (J.T @ J).float(), (J.T @ r).float()
    solver = SteihaugCG()
    path = solver.prepare(quadratic(B, g))
    for radius in (1.0, 1e-3, 1e-6, 1e-9, 1e-12):
        step = solver.solve(path, radius)
        assert float(step.step.double().norm()) <= radius * (1 + 1e-6)
