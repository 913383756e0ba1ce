"""GLTR: the trust-region step solved exactly in the Lanczos basis of the Krylov space.

Checked against a dense float64 ground truth: the step stays in the region,
its predicted reduction is −m(p), its model decrease is at least the Cauchy
point's and at least Steihaug-Toint CG's (whose path lies in the same Krylov
space), it equals the exact trust-region solution (eigendecomposition of B and
a bisection on λ) where the tolerance asks for a near-exact solve, smaller
radii after a rejection reuse the basis with no product, and on a solve with
a robust loss, where Steihaug's steps crawl at a fixed radius, GLTR converges
in few evaluations.
"""

import math
import re
from dataclasses import FrozenInstanceError

import numpy as np
import pytest
import torch
from test_steihaug_cg import KINDS, RADII, cauchy_point, make_matrix, model, quadratic

import trustls
from trustls import GaussNewtonModel, TrustRegion
from trustls.subproblem import GLTR, SteihaugCG, resolve_solver
from trustls.subproblem.lanczos import tridiagonal_step


def run(solver, B, g, radius):
    lin = quadratic(B, g)
    return solver.solve(solver.prepare(lin), radius), lin.operator


def exact_step(B: torch.Tensor, g: torch.Tensor, radius: float) -> torch.Tensor:
    """The exact trust-region solution by B's eigendecomposition and bisection on λ (no hard case)."""
    theta, V = torch.linalg.eigh(B)
    c = V.T @ g
    # A PSD B with g in its range: the null space's components of g vanish (to rounding),
    # and the interior solution is the minimum-norm one.
    kept = theta.abs() > 1e-12 * float(theta.abs().max())
    theta, V, c = theta[kept], V[:, kept], c[kept]

    def norm(lam):
        return float(torch.linalg.vector_norm(c / (theta + lam)))

    if theta[0] > 0 and norm(0.0) <= radius:
        return -(V @ (c / theta))
    low = max(0.0, -float(theta[0]))
    high = low + float(torch.linalg.vector_norm(g)) / radius + 1.0
    for _ in range(200):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if norm(middle) > radius else (low, middle)
    return -(V @ (c / (theta + high)))


@pytest.mark.parametrize("exact_up_to", [32, 0], ids=["near-exact", "truncated"])
@pytest.mark.parametrize("radius", RADII)
@pytest.mark.parametrize("kind", KINDS)
def test_step_within_region_with_cauchy_and_steihaug_decrease(kind, radius, exact_up_to, generator, device):
    B, g = make_matrix(kind, generator, device)
    step, operator = run(GLTR(exact_up_to=exact_up_to), B, g, radius)
    p = step.step
    p_norm = float(torch.linalg.vector_norm(p))
    assert p.shape == g.shape and p.dtype == g.dtype and p.device == g.device
    assert p_norm <= radius * (1 + 1e-12)
    assert float(step.norm) == pytest.approx(p_norm, rel=1e-10)
    if step.hits_boundary:
        assert step.reason == "boundary" and p_norm == pytest.approx(radius, rel=1e-10)
    else:
        assert step.reason in ("converged", "max_iter")
    scale = float(torch.linalg.vector_norm(g)) * p_norm
    assert float(step.predicted_reduction) == pytest.approx(-model(B, g, p), rel=1e-9, abs=1e-12 * scale)
    assert step.predicted_reduction >= -model(B, g, cauchy_point(B, g, radius)) * (1 - 1e-12) > 0
    steihaug, _ = run(SteihaugCG(exact_up_to=exact_up_to), B, g, radius)
    assert step.predicted_reduction >= float(steihaug.predicted_reduction) * (1 - 1e-9)
    assert step.products == step.iterations == operator.calls >= 1


@pytest.mark.parametrize("radius", RADII)
@pytest.mark.parametrize("kind", KINDS)
def test_near_exact_solve_is_the_exact_trust_region_step(kind, radius, generator):
    # n = 6 ≤ exact_up_to: the residual of (B + λI)p = −g is driven to eps^(3/4)·‖g‖.
    B, g = make_matrix(kind, generator)
    step, _ = run(GLTR(), B, g, radius)
    expected = exact_step(B, g, radius)
    torch.testing.assert_close(step.step, expected, rtol=1e-7, atol=1e-9 * max(1.0, float(expected.norm())))


def test_one_vector_of_memory_gives_the_cauchy_point(generator):
    # K_1 = span(g): the exact step in it is the Cauchy point.
    B, g = make_matrix("spd", generator)
    for radius in (1e-3, 1.0, 1e3):
        step, operator = run(GLTR(memory=0), B, g, radius)
        torch.testing.assert_close(step.step, cauchy_point(B, g, radius), rtol=1e-12, atol=1e-15)
        assert operator.calls == 1 and step.reason in ("max_iter", "boundary", "converged")


@pytest.mark.parametrize("kind", KINDS)
def test_smaller_radii_reuse_the_basis_without_products(kind, generator):
    B, g = make_matrix(kind, generator)
    solver = GLTR(exact_up_to=0)
    basis = solver.prepare(quadratic(B, g))
    first = solver.solve(basis, 3.0)
    calls = basis.linearization.operator.calls
    assert first.products == calls
    for radius in (1.0, 0.3, 1e-2):
        again = solver.solve(basis, radius)
        fresh, _ = run(GLTR(exact_up_to=0), B, g, radius)
        assert again.products == 0 and basis.linearization.operator.calls == calls
        assert float(again.norm) <= radius * (1 + 1e-12)
        assert again.predicted_reduction >= float(fresh.predicted_reduction) * (1 - 1e-9)


def test_a_larger_radius_extends_the_basis(generator):
    B, g = make_matrix("spd", generator)
    solver = GLTR()
    basis = solver.prepare(quadratic(B, g))
    small = solver.solve(basis, 1e-3)
    large = solver.solve(basis, 1e6)
    fresh, _ = run(GLTR(), B, g, 1e6)
    assert large.products > 0 and small.products + large.products == fresh.products
    torch.testing.assert_close(large.step, fresh.step, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(large.step, torch.linalg.solve(B, -g), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("max_iter", [1, 2, 3])
def test_max_iter_caps_the_products(max_iter, generator):
    B, g = make_matrix("spd", generator)
    step, operator = run(GLTR(max_iter=max_iter), B, g, 1e6)
    assert operator.calls == step.products == max_iter and step.reason == "max_iter"


def test_zero_gradient_gives_a_zero_step_without_products(generator):
    B, _ = make_matrix("spd", generator)
    step, operator = run(GLTR(), B, torch.zeros(6, dtype=torch.float64), 1.0)
    assert step.reason == "zero_gradient" and operator.calls == 0
    assert torch.equal(step.step, torch.zeros(6, dtype=torch.float64)) and step.predicted_reduction == 0.0


def test_an_overflowing_product_gives_no_step():
    B = torch.full((3, 3), 1e308, dtype=torch.float64)
    step, _ = run(GLTR(), B, torch.full((3,), 1e10, dtype=torch.float64), 1.0)
    assert step.reason == "overflow" and torch.isnan(step.step).all() and math.isnan(step.predicted_reduction)


def test_gradient_and_operator_are_left_unchanged(generator):
    B, g = make_matrix("spd", generator)
    g_before, B_before = g.clone(), B.clone()
    run(GLTR(), B, g, 0.1)
    assert torch.equal(g, g_before) and torch.equal(B, B_before)


def test_float32_smoke(generator):
    B, g = make_matrix("spd", generator)
    step, _ = run(GLTR(), B.float(), g.float(), 1.0)
    assert step.step.dtype == torch.float32
    assert float(step.step.double().norm()) <= 1.0 * (1 + 1e-6)
    assert float(step.predicted_reduction) == pytest.approx(-model(B, g, step.step.double()), rel=1e-4)


@pytest.mark.parametrize(
    "diagonal, offdiagonal, g_norm, radius",
    [([2.0, 1.0], [0.5], 1.0, 10.0), ([2.0, 1.0], [0.5], 1.0, 0.1), ([-1.0, 2.0, 3.0], [1.0, 0.5], 2.0, 0.7)],
)
def test_tridiagonal_step_is_the_exact_solution(diagonal, offdiagonal, g_norm, radius):
    k = len(diagonal)
    T = torch.diag(torch.tensor(diagonal, dtype=torch.float64))
    T += torch.diag(torch.tensor(offdiagonal, dtype=torch.float64), 1) + torch.diag(torch.tensor(offdiagonal, dtype=torch.float64), -1)
    e1 = torch.zeros(k, dtype=torch.float64)
    e1[0] = g_norm
    h, lam, value = tridiagonal_step(diagonal, offdiagonal, g_norm, radius)
    h = torch.tensor(h, dtype=torch.float64)
    torch.testing.assert_close(h, exact_step(T, e1, radius), rtol=1e-9, atol=1e-12)
    assert value == pytest.approx(float(e1 @ h + 0.5 * h @ T @ h), rel=1e-12)
    assert (lam > 0) == (float(h.norm()) == pytest.approx(radius, rel=1e-9))


def chained_rosenbrock(x):
    return torch.cat([10 * (x[1:] - x[:-1] ** 2), 1 - x[:-1]])


@pytest.mark.parametrize("x_scale", [1.0, None])
def test_robust_loss_on_a_curved_valley_converges_in_few_evaluations(x_scale):
    # Steihaug's steps leave the region in CG's first iteration here, ρ stays in [¼, ¾) and the
    # radius never grows: thousands of evaluations. The exact step in the Krylov space does not.
    x0 = torch.tensor(np.tile([-1.2, 1.0], 100))
    model_ = GaussNewtonModel(loss="soft_l1", f_scale=0.1)
    costs = []
    result = TrustRegion(model_, solver="gltr", x_scale=x_scale, ftol=1e-10, xtol=1e-10, gtol=1e-10,
                         callback=lambda info: costs.append(info.cost) and None).solve(chained_rosenbrock, x0)
    assert result.success and result.nfev <= 100
    assert float(result.cost) <= 1e-20 or float(result.cost) == pytest.approx(0.19023322260526265, rel=1e-8)
    assert all(b <= a for a, b in zip(costs, costs[1:]))


def test_least_squares_takes_the_solver_by_name():
    x0 = torch.tensor(np.tile([-1.2, 1.0], 10))
    result = trustls.least_squares(chained_rosenbrock, x0, solver="gltr", loss="cauchy")
    assert result.success and float(result.cost) < 1e-20


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_iter": 0}, "max_iter must be a positive int or None, got 0"),
        ({"max_iter": True}, "max_iter must be a positive int or None, got True"),
        ({"forcing": 1}, "forcing must be a number in (0, 1), got 1"),
        ({"forcing": math.nan}, "forcing must be a number in (0, 1), got nan"),
        ({"memory": -1}, "memory must be a non-negative int or None, got -1"),
        ({"memory": 1.5}, "memory must be a non-negative int or None, got 1.5"),
        ({"exact_up_to": -1}, "exact_up_to must be a non-negative int, got -1"),
    ],
)
def test_constructor_validation(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        GLTR(**kwargs)


def test_solver_is_a_frozen_value_resolved_by_name():
    assert resolve_solver("gltr") == GLTR()
    assert repr(GLTR(max_iter=5)) == "GLTR(max_iter=5, forcing=0.001, memory=None, exact_up_to=32)"
    assert not GLTR.requires_jacobian and GLTR.default_x_scale == "jac"
    with pytest.raises(FrozenInstanceError, match="cannot assign to field 'forcing'"):
        GLTR().forcing = 0.5



@pytest.mark.parametrize(
    "loss, n, expected",
    [("soft_l1", 10, GLTR), ("cauchy", 2**17, GLTR), ("linear", 10, SteihaugCG), ("huber", 2**17 + 1, SteihaugCG)],
)
def test_lsmr_is_gltr_with_a_robust_loss_while_its_basis_fits(loss, n, expected):
    from trustls.api import _solver

    chosen = _solver("trf", "lsmr", {"maxiter": 7, "atol": 1e-6}, None, n, True, GaussNewtonModel(loss=loss))
    assert type(chosen) is expected and chosen.max_iter == 7 and chosen.forcing == 1e-6


# scipy 1.17's least_squares(..., jac_sparsity=P, tr_solver="lsmr") on this call, tolerances 1e-10:
# soft_l1 stops at the local minimum with x₁ ≈ −1 (cost 0.19023…) after 1,113 evaluations, huber
# runs out of its 40,000 at cost 32.76, cauchy stops at cost 0.80445 after 12,050.
SCIPY_LSMR_COSTS = {"soft_l1": 0.1902332397593978, "huber": 32.764340393474285, "cauchy": 0.8044521008113047}


@pytest.mark.parametrize("loss, f_scale", [("soft_l1", 0.1), ("huber", 0.1), ("cauchy", 1.0)])
def test_scipy_call_with_a_robust_loss_and_a_pattern_converges_in_few_evaluations(loss, f_scale):
    # Steihaug's CG took thousands of evaluations here (benchmarks/krylov_steps.py at n = 1,000).
    import scipy.sparse

    n = 400
    i = np.arange(n - 1)
    rows, cols = np.concatenate([i, i, n - 1 + i]), np.concatenate([i, i + 1, i])
    pattern = scipy.sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(2 * (n - 1), n))
    x0 = torch.tensor(np.tile([-1.2, 1.0], n // 2))
    result = trustls.least_squares(chained_rosenbrock, x0, jac_sparsity=pattern, loss=loss, f_scale=f_scale,
                                   ftol=1e-10, xtol=1e-10, gtol=1e-10)
    assert result.success and result.nfev <= 150 and result.optimality < 1e-8
    assert float(result.cost) <= SCIPY_LSMR_COSTS[loss] * (1 + 1e-8)


def test_tridiagonal_step_without_an_eigendecomposition_outside_the_hard_case(generator, monkeypatch):
    # Moré-Sorensen on the LDLᵀ factors costs O(k) per iteration; eigh only serves the hard case.
    def refuse(*args, **kwargs):
        raise AssertionError("eigh called")

    monkeypatch.setattr(torch.linalg, "eigh", refuse)
    for kind in ("spd", "psd_wide"):
        B, g = make_matrix(kind, generator)
        for radius in RADII:
            step, _ = run(GLTR(), B, g, radius)
            assert float(step.norm) <= radius * (1 + 1e-12)


def test_tridiagonal_step_in_the_hard_case():
    # T = diag(2, −1) and g along e₁ only: no root above λ = 1; h is completed along e₂ to the sphere.
    h, lam, value = tridiagonal_step([2.0, -1.0], [0.0], 1.0, 10.0)
    assert lam == pytest.approx(1.0) and h[0] == pytest.approx(-1 / 3) and abs(h[1]) == pytest.approx(math.sqrt(100 - 1 / 9))
    assert value == pytest.approx(-903 / 18)


@pytest.mark.parametrize(
    "diagonal, g_norm, radius, expected",
    [([-5.0], 1.0, 1e17, -1e17),  # λ = 5 + 10⁻¹⁷: λ + θ_min is lost to rounding
     ([1.0], 1.4, 1e-310, -1e-310), ([1.0], 1.4e160, 1e-160, -1e-160)],  # ‖g‖/Δ overflows
)
def test_tridiagonal_step_at_the_ends_of_the_range(diagonal, g_norm, radius, expected):
    h, lam, value = tridiagonal_step(diagonal, [], g_norm, radius)
    assert h == [pytest.approx(expected, rel=1e-12)] and lam > 0 and math.isfinite(value) and value < 0


def test_indefinite_operator_with_a_gradient_nearly_orthogonal_to_its_negative_curvature():
    B = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    g = torch.tensor([1.0, 1e-12], dtype=torch.float64)
    step, _ = run(GLTR(), B, g, 1e4)
    steihaug, _ = run(SteihaugCG(), B, g, 1e4)
    assert torch.isfinite(step.step).all() and float(step.norm) == pytest.approx(1e4, rel=1e-12)
    assert step.predicted_reduction == pytest.approx(-model(B, g, step.step), rel=1e-9)
    assert step.predicted_reduction >= float(steihaug.predicted_reduction) * (1 - 1e-9)


@pytest.mark.parametrize("g_scale", [1e160, 1e-3])
def test_norms_whose_squares_overflow(g_scale):
    # float64 ‖g‖ near 10¹⁶⁰; float32 products with entries near 10²⁰ (their squares overflow float32).
    if g_scale > 1:
        B, g = torch.eye(2, dtype=torch.float64), torch.full((2,), g_scale, dtype=torch.float64)
    else:
        J = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        J = J * torch.tensor([1e10, 1e10, 1.0], dtype=torch.float64)
        B, g = (J.T @ J).float(), (J.T @ torch.ones(6, dtype=torch.float64)).float()
    step, _ = run(GLTR(), B, g, 1.0)
    assert step.reason != "overflow" and torch.isfinite(step.step).all()
    assert float(step.step.double().norm()) <= 1.0 * (1 + 1e-6)
    assert step.predicted_reduction == pytest.approx(-model(B.double(), g.double(), step.step.double()), rel=1e-3)


@pytest.mark.parametrize(
    "diagonal, offdiagonal, g_norm, radius, expected_h, interior",
    [
        ([1e-200], [], 1.0, 1e300, [-1e200], True),  # ‖h‖ = 10²⁰⁰: its square overflows
        ([1.0, 1.0], [0.5], 1e-170, 1e-170, None, False),  # ‖h(0)‖ = 1.15·10⁻¹⁷⁰: its square underflows
        ([1e-130, -1e-129], [0.0], 1e200, 1.0, [-1.0, 0.0], False),  # √(low·high) overflows
    ],
)
def test_tridiagonal_step_where_squares_leave_the_range(diagonal, offdiagonal, g_norm, radius, expected_h, interior):
    """Found by a review: unscaled squares in the norm and the Newton step gave steps 1.5× outside the
    sphere, an interior step on the sphere with an infinite model, and a step orthogonal to g."""
    h, lam, value = tridiagonal_step(diagonal, offdiagonal, g_norm, radius)
    norm = math.hypot(*h)
    assert norm <= radius * (1 + 1e-12) and math.isfinite(value) and value <= 0
    assert (lam == 0) == interior and (interior or norm == pytest.approx(radius, rel=1e-10))
    if expected_h is not None:
        assert h == pytest.approx(expected_h, rel=1e-9, abs=1e-12 * radius)
