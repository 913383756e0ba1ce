"""The exact trust-region step from one SVD (`DenseLstsq`, `secular_step`).

The oracle is independent of the SVD: for α > 0 the step p(α) solves the
damped least-squares problem min ‖[J; √α I]p + [r; 0]‖, i.e.
(JᵀJ + αI)p = −Jᵀr without forming JᵀJ, and ‖p(α)‖ decreases in α, so the
root α* of ‖p(α)‖ = Δ is found by bisection to machine precision. The
solver's ‖p‖ = Δ only to ``rtol``; since p(α) turns as α moves, a relative
error rtol in ‖p‖ can move p by a small multiple of rtol·Δ, hence the factor
in `STEP_FACTOR`.
"""

import math
import re

import pytest
import torch
from torch import Tensor

from trustls import GaussNewtonModel, TrustRegion
from trustls.models import Linearization
from trustls.operators import DenseOperator, NormalOperator
from trustls.subproblem import DenseLstsq, SteihaugCG, secular_step

# ‖p − p(α*)‖ ≤ STEP_FACTOR·rtol·Δ when |‖p‖ − Δ| ≤ rtol·Δ, for the
# moderately conditioned problems below (condition number ≤ 1e2).
STEP_FACTOR = 10.0


def least_squares(J: Tensor, r: Tensor, *, dense: bool = True) -> Linearization:
    """The Gauss-Newton linearization of a dense J and residual r."""
    return Linearization(
        x=torch.zeros(J.shape[1], dtype=J.dtype, device=J.device), residual=r,
        cost=0.5 * float(r.double() @ r.double()), gradient=J.T @ r, operator=NormalOperator(J),
        jacobian=DenseOperator(J), jacobian_matrix=J if dense else None, whitened_residual=r,
    )


def make_problem(kind: str, generator: torch.Generator, device="cpu") -> tuple[Tensor, Tensor]:
    """(J, r) in float64."""

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device)

    if kind == "tall":
        return randn(10, 4), randn(10)
    if kind == "tall_graded":  # columns scaled over two decades
        scale = torch.logspace(0, -2, 4, dtype=torch.float64, device=device)
        return randn(10, 4) * scale, randn(10)
    if kind == "wide":  # m < n: underdetermined
        return randn(3, 6), randn(3)
    if kind == "duplicate_columns":  # rank 3 of 5
        J = randn(8, 3)
        return torch.cat([J, J[:, :1], J[:, 2:]], dim=1), randn(8)
    if kind == "square":
        return randn(5, 5) + 3 * torch.eye(5, dtype=torch.float64, device=device), randn(5)
    raise AssertionError(kind)


KINDS = ["tall", "tall_graded", "wide", "duplicate_columns", "square"]


def minimum_norm_step(J: Tensor, r: Tensor) -> Tensor:
    """The Gauss-Newton step −J⁺r (LAPACK gelsd, numpy's default rank cutoff)."""
    return torch.linalg.lstsq(J.cpu(), -r.cpu(), driver="gelsd").solution.to(J.device)


def damped_step(J: Tensor, r: Tensor, alpha: float) -> Tensor:
    """p(α) from the augmented least-squares problem (JᵀJ is never formed)."""
    n = J.shape[1]
    A = torch.cat([J, math.sqrt(alpha) * torch.eye(n, dtype=J.dtype, device=J.device)])
    b = torch.cat([-r, torch.zeros(n, dtype=J.dtype, device=J.device)])
    return torch.linalg.lstsq(A.cpu(), b.cpu()).solution.to(J.device)


def bisect_alpha(J: Tensor, r: Tensor, radius: float) -> float:
    """The root α* of ‖p(α)‖ = Δ by bisection on [0, ‖Jᵀr‖/Δ], to relative width 1e-15."""
    lower, upper = 0.0, float(torch.linalg.vector_norm(J.T @ r)) / radius
    while upper - lower > 1e-15 * upper:
        middle = 0.5 * (lower + upper)
        if float(torch.linalg.vector_norm(damped_step(J, r, middle))) > radius:
            lower = middle
        else:
            upper = middle
    return 0.5 * (lower + upper)


def solve(solver: DenseLstsq, J: Tensor, r: Tensor, radius: float):
    return solver.solve(solver.prepare(least_squares(J, r)), radius)


# --- boundary steps against the secular-equation oracle --------------------------------


@pytest.mark.parametrize("rtol", [1e-3, 1e-8])
@pytest.mark.parametrize("fraction", [0.99, 0.5, 0.1, 1e-3])
@pytest.mark.parametrize("kind", KINDS)
def test_boundary_step_matches_bisection(kind, fraction, rtol, generator, device):
    J, r = make_problem(kind, generator, device)
    radius = fraction * float(minimum_norm_step(J, r).norm())
    step = solve(DenseLstsq(rtol=rtol), J, r, radius)
    expected = damped_step(J, r, bisect_alpha(J, r, radius))
    assert step.reason == "secular" and step.hits_boundary
    assert step.products == 0 and 1 <= step.iterations <= 30
    assert step.step.device == J.device and step.step.dtype == J.dtype
    p_norm = float(torch.linalg.vector_norm(step.step))
    assert radius * (1 - rtol) <= p_norm <= radius * (1 + 1e-12)
    assert float(torch.linalg.vector_norm(step.step - expected)) <= STEP_FACTOR * rtol * radius


@pytest.mark.parametrize("factor", [1 + 1e-9, 2.0, 1e6])
@pytest.mark.parametrize("kind", KINDS)
def test_gauss_newton_step_inside_region_is_minimum_norm_lstsq(kind, factor, generator):
    J, r = make_problem(kind, generator)
    expected = minimum_norm_step(J, r)
    radius = factor * float(expected.norm())
    step = solve(DenseLstsq(), J, r, radius)
    assert step.reason == "gauss_newton" and not step.hits_boundary
    assert step.iterations == step.products == 0
    torch.testing.assert_close(step.step, expected, rtol=1e-10, atol=1e-12 * float(expected.norm()))
    assert float(step.norm) == pytest.approx(float(expected.norm()), rel=1e-12)


def test_duplicate_columns_step_splits_evenly(generator):
    # With columns j and k equal, the minimum-norm solution has p_j = p_k.
    J, r = make_problem("duplicate_columns", generator)
    for radius in [1e6, 0.1]:
        p = solve(DenseLstsq(), J, r, radius).step
        torch.testing.assert_close(p[0], p[3], rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(p[2], p[4], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind", ["wide", "duplicate_columns"])
def test_rank_deficient_step_lies_in_row_space(kind, generator):
    # Every p(α) = −V c(α) lies in range(Jᵀ): no component in the null space of J.
    J, r = make_problem(kind, generator)
    null_space = torch.linalg.svd(J).Vh[torch.linalg.matrix_rank(J):]
    for radius in [1e6, 0.5, 0.01]:
        p = solve(DenseLstsq(), J, r, radius).step
        assert float((null_space @ p).norm()) <= 1e-12 * float(p.norm())


def test_gauss_newton_step_accuracy_follows_cond_of_J_not_its_square():
    # cond(J) = 1e7: the SVD recovers an exact solution to ~cond·eps = 2e-9,
    # while the normal equations (cond² = 1e14) would lose ~1e-2.
    generator = torch.Generator().manual_seed(7)
    U, _ = torch.linalg.qr(torch.randn(12, 4, generator=generator, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(4, 4, generator=generator, dtype=torch.float64))
    J = U @ torch.diag(torch.logspace(0, -7, 4, dtype=torch.float64)) @ V.T
    p_true = torch.randn(4, generator=generator, dtype=torch.float64)
    r = -J @ p_true  # consistent: the Gauss-Newton step is p_true
    step = solve(DenseLstsq(), J, r, 1e9)
    assert step.reason == "gauss_newton"
    assert float((step.step - p_true).norm()) <= 1e-7 * float(p_true.norm())


# --- invariants ------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [1e-6, 1e-2, 0.3, 1.0, 10.0, 1e4])
@pytest.mark.parametrize("kind", KINDS)
def test_within_radius_and_predicted_reduction_is_dense_model(kind, radius, generator):
    J, r = make_problem(kind, generator)
    step = solve(DenseLstsq(), J, r, radius)
    p = step.step
    p_norm = float(torch.linalg.vector_norm(p))
    assert p_norm <= radius * (1 + 1e-12)
    assert float(step.norm) == pytest.approx(p_norm, rel=1e-12)
    g = J.T @ r
    Jp = J @ p
    dense_model = float(g @ p + 0.5 * Jp @ Jp)
    scale = float(g.norm()) * p_norm
    assert float(step.predicted_reduction) == pytest.approx(-dense_model, rel=1e-10, abs=1e-14 * scale)
    assert float(step.predicted_reduction) > 0


@pytest.mark.parametrize("rtol", [1e-3, 1e-10])
@pytest.mark.parametrize("kind", KINDS)
def test_warm_start_across_decreasing_radii_matches_cold_start(kind, rtol, generator):
    J, r = make_problem(kind, generator)
    solver = DenseLstsq(rtol=rtol)
    prepared = solver.prepare(least_squares(J, r))
    newton_norm = float(minimum_norm_step(J, r).norm())
    for fraction in [2.0, 0.9, 0.5, 0.25, 0.05, 1e-3]:
        radius = fraction * newton_norm
        warm = solver.solve(prepared, radius)
        cold = solve(solver, J, r, radius)
        assert warm.reason == cold.reason
        # Both roots satisfy |‖p‖ − Δ| ≤ rtol·Δ; they need not be the same iterate.
        assert float((warm.step - cold.step).norm()) <= 2 * STEP_FACTOR * rtol * radius
        assert float(warm.predicted_reduction) == pytest.approx(float(cold.predicted_reduction), rel=2 * STEP_FACTOR * rtol)


@pytest.mark.parametrize("kind", ["zero_residual", "zero_jacobian"])
def test_zero_gradient(kind, generator):
    # Exact zeros only: a gradient of rounding size (r ⟂ range(J) in floating
    # point) is a tiny but genuine Gauss-Newton step.
    J = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    r = torch.randn(6, generator=generator, dtype=torch.float64)
    if kind == "zero_residual":
        r = torch.zeros_like(r)
    else:  # rank 0: no singular value survives the cutoff
        J = torch.zeros_like(J)
    step = solve(DenseLstsq(), J, r, 1.0)
    assert step.reason == "zero_gradient"
    assert torch.equal(step.step, torch.zeros(3, dtype=torch.float64))
    assert step.norm == 0.0 and step.predicted_reduction == 0.0 and not step.hits_boundary


def test_float32_smoke(generator):
    J, r = make_problem("tall", generator)
    radius = 0.3 * float(minimum_norm_step(J, r).norm())
    step = solve(DenseLstsq(), J.float(), r.float(), radius)
    assert step.step.dtype == torch.float32
    assert float(step.step.double().norm()) <= radius * (1 + 1e-6)
    expected = damped_step(J, r, bisect_alpha(J, r, radius))
    assert float((step.step.double() - expected).norm()) <= STEP_FACTOR * 1e-3 * radius


@pytest.mark.parametrize("scale", [1e-300, 1e-160, 1e160, 1e300])
@pytest.mark.parametrize("fraction", [2.0, 0.3, 1e-6])
@pytest.mark.parametrize("loss_path", [False, True], ids=["residual", "gradient"])
@pytest.mark.parametrize("on_device", [False, True], ids=["host_c", "device_c"])
def test_steps_are_invariant_under_scaling_j(scale, fraction, loss_path, on_device, generator, monkeypatch):
    # J → κJ with Δ → Δ/κ: p → p/κ and the same predicted reduction, at every κ whose J
    # float64 holds (the host arithmetic scales by powers of two: no square leaves the range),
    # with the step's coefficients from the host (CPU) or computed on the device (accelerators).
    from trustls.subproblem import dense_lstsq

    monkeypatch.setattr(dense_lstsq, "_coefficients_on_device", lambda device: on_device)
    J, r = make_problem("tall_graded", generator)
    radius = fraction * float(minimum_norm_step(J, r).norm())

    def step_of(J, radius):
        lin = least_squares(J, r)
        if loss_path:  # the coordinates from g = Jᵀr, as for a loss without a residual
            lin = Linearization(**{**lin.__dict__, "whitened_residual": None})
        return DenseLstsq(rtol=1e-12).solve(DenseLstsq(rtol=1e-12).prepare(lin), radius)

    reference, step = step_of(J, radius), step_of(scale * J, radius / scale)
    assert step.reason == reference.reason
    torch.testing.assert_close(step.step * scale, reference.step, rtol=1e-9, atol=0)
    assert step.norm == pytest.approx(reference.norm / scale, rel=1e-9)
    assert step.predicted_reduction == pytest.approx(reference.predicted_reduction, rel=1e-9)


@pytest.mark.parametrize("loss_path", [False, True], ids=["residual", "gradient"])
def test_coefficients_on_the_device_give_the_hosts_step(loss_path, generator, monkeypatch):
    # An accelerator computes c(α) on the device from the host's α; the CPU copies the host's c.
    # Both routes run here on the CPU: the same steps to rounding, radius by radius.
    from trustls.subproblem import dense_lstsq

    J, r = make_problem("duplicate_columns" if loss_path else "tall_graded", generator)
    lin = least_squares(J, r)
    if loss_path:  # a gradient with a part outside the range of Jᵀ (columns 0 and 3 are equal)
        outside = torch.tensor([0.3, 0.0, 0.0, -0.3, 0.0], dtype=torch.float64)
        lin = Linearization(**{**lin.__dict__, "whitened_residual": None, "gradient": lin.gradient + outside})
    radii = [10.0, 0.5, 0.05, 1e-4]
    host = DenseLstsq().prepare(lin)
    monkeypatch.setattr(dense_lstsq, "_coefficients_on_device", lambda device: True)
    device = DenseLstsq().prepare(lin)
    assert host.s_device is None and device.s_device is not None
    assert len(host.s) == 4  # rank 4; or rank 3 and the zero singular value of g's outside part
    assert host.s[-1] == (0.0 if loss_path else host.s[-1])
    for radius in radii:
        a, b = DenseLstsq().solve(host, radius), DenseLstsq().solve(device, radius)
        torch.testing.assert_close(b.step, a.step, rtol=1e-13, atol=1e-15)
        assert (a.norm, a.predicted_reduction, a.reason) == (b.norm, b.predicted_reduction, b.reason)


@pytest.mark.parametrize("tiny", [1e-310, 1e-155])
def test_a_tiny_j_with_a_gradient_outside_its_range(tiny):
    # A loss path whose J is tiny: with s_max subnormal J is 0 to float64 and all of g is the
    # appended zero-curvature direction, a unit vector; with s_max ~ 1e-155 and ‖g⊥‖ ~ 1 the
    # appended coordinate ‖g⊥‖/σ² must not overflow. Either way the step runs down −g to the
    # boundary, and the model's decrease is −gᵀp (the curvature term is below rounding).
    J = tiny * torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    g = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)  # outside the row space of J
    lin = Linearization(
        x=torch.zeros(3, dtype=torch.float64), residual=torch.zeros(2, dtype=torch.float64), cost=1.0,
        gradient=g, operator=NormalOperator(J), jacobian=DenseOperator(J), jacobian_matrix=J,
        whitened_residual=None,
    )
    step = DenseLstsq().solve(DenseLstsq().prepare(lin), 0.5)
    torch.testing.assert_close(step.step, torch.tensor([0.0, 0.0, -0.5], dtype=torch.float64))
    assert step.norm == 0.5 and step.hits_boundary
    assert step.predicted_reduction == pytest.approx(0.5, rel=1e-12)


def test_secular_step_at_radius_zero_does_not_raise():
    alpha, _ = secular_step([2.0, 1.0], [4.0, 1.0], 0.0, full_rank=True)
    assert alpha == math.inf or alpha != alpha or alpha > 1e300


# --- secular_step ------------------------------------------------------------------------


SECULAR_CASES = {
    "spread": ([3.0, 1.0, 0.2], [1.0, -2.0, 0.5]),
    "equal": ([1.0, 1.0], [1.0, 1.0]),
    "tiny_singular_value": ([1.0, 1e-3], [1.0, 1e-3]),
}


@pytest.mark.parametrize("full_rank", [True, False])
@pytest.mark.parametrize("fraction", [0.9, 0.1, 1e-4])
@pytest.mark.parametrize("case", list(SECULAR_CASES))
def test_secular_step_finds_the_root(case, fraction, full_rank):
    s, sf = (torch.tensor(v, dtype=torch.float64) for v in SECULAR_CASES[case])
    radius = fraction * float((sf / s**2).norm())
    alpha, iterations = secular_step(s, sf, radius, full_rank=full_rank, rtol=1e-12, max_iter=50)
    assert alpha > 0 and 1 <= iterations <= 50
    assert float((sf / (s**2 + alpha)).norm()) == pytest.approx(radius, rel=1e-12)
    # The same root from a warm start inside the bracket.
    warm, _ = secular_step(s, sf, radius, full_rank=full_rank, alpha=0.5 * alpha, rtol=1e-12, max_iter=50)
    assert warm == pytest.approx(alpha, rel=1e-9)


def test_secular_step_single_term_is_closed_form():
    # One term: ‖c(α)‖ = |sf|/(s² + α), so α* = |sf|/Δ − s².
    s, sf = torch.tensor([2.0], dtype=torch.float64), torch.tensor([-3.0], dtype=torch.float64)
    alpha, _ = secular_step(s, sf, 0.25, full_rank=True, rtol=1e-14)
    assert alpha == pytest.approx(3.0 / 0.25 - 4.0, rel=1e-13)


def test_secular_step_respects_max_iter():
    s, sf = (torch.tensor(v, dtype=torch.float64) for v in SECULAR_CASES["spread"])
    radius = 1e-4 * float((sf / s**2).norm())
    _, iterations = secular_step(s, sf, radius, full_rank=True, rtol=1e-15, max_iter=2)
    assert iterations == 2


# s = (1, 0.01), sf = (1, 0.01): ‖c(0)‖ = ‖(1, 100)‖ ≈ 100, and from the first
# iterate Newton's update overshoots below −s₂² = −1e-4.
CAPPED_S = [1.0, 0.01]
CAPPED_SF = [1.0, 0.01]


def test_secular_step_exhausted_alpha_stays_in_bracket():
    s, sf = torch.tensor(CAPPED_S, dtype=torch.float64), torch.tensor(CAPPED_SF, dtype=torch.float64)
    radius = 10.0
    alpha, iterations = secular_step(s, sf, radius, full_rank=True, max_iter=1)
    assert iterations == 1
    assert 0 < alpha <= float(sf.norm()) / radius


def test_capped_iterations_still_give_a_damped_step():
    # J = diag(s), r = sf / s: g = sf, and p(α)_i = −g_i/(s_i² + α) opposes g_i for any α ≥ 0.
    s, sf = torch.tensor(CAPPED_S, dtype=torch.float64), torch.tensor(CAPPED_SF, dtype=torch.float64)
    J, r = torch.diag(s), sf / s
    radius = 10.0
    step = solve(DenseLstsq(max_iter=1), J, r, radius)
    assert step.reason == "secular"
    assert bool((step.step * (J.T @ r) <= 0).all())


# --- arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rtol": 0.0}, "rtol must be a number in (0, 1), got 0.0"),
        ({"rtol": 1}, "rtol must be a number in (0, 1), got 1"),
        ({"rtol": -1e-3}, "rtol must be a number in (0, 1), got -0.001"),
        ({"rtol": "1e-3"}, "rtol must be a number in (0, 1), got '1e-3'"),
        ({"rtol": math.nan}, "rtol must be a number in (0, 1), got nan"),
        ({"max_iter": 0}, "max_iter must be a positive int, got 0"),
        ({"max_iter": 2.5}, "max_iter must be a positive int, got 2.5"),
        ({"max_iter": True}, "max_iter must be a positive int, got True"),
        ({"max_iter": None}, "max_iter must be a positive int, got None"),
    ],
)
def test_constructor_validation(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        DenseLstsq(**kwargs)


def test_prepare_without_jacobian_matrix(generator):
    J, r = make_problem("tall", generator)
    message = "DenseLstsq needs the dense Jacobian; the model did not provide jacobian_matrix"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        DenseLstsq().prepare(least_squares(J, r, dense=False))


def test_solver_declares_it_needs_the_jacobian():
    assert DenseLstsq.requires_jacobian and not SteihaugCG.requires_jacobian
    assert DenseLstsq() == DenseLstsq(rtol=1e-3, max_iter=30)
    assert repr(DenseLstsq(rtol=0.01, max_iter=5)) == "DenseLstsq(rtol=0.01, max_iter=5)"


@pytest.mark.parametrize("name", ["misra1a_start1", "kirby2_start1"])
def test_float32_rank_is_decided_in_unit_columns(name):
    """Found by a bug hunt: in float32 the rank cutoff max(m, n)·eps·s_max dropped a singular value
    that was small only by the variables' units (Misra1a: 1.3e-3 against 7.6e5), so b₁ never moved
    and the solve stopped with xtol at cost 9.76 (Kirby2: 15.2). Decided where J's columns have unit
    norm, the rank is the problem's, and both reach the certified cost to float32's noise floor."""
    from trustls.problems import registry

    problem = registry.get(name)
    result = TrustRegion(GaussNewtonModel(), "lstsq").solve(problem.residual, problem.x0.float())
    assert result.x.dtype == torch.float32
    assert math.isclose(result.cost, problem.reference_cost, rel_tol=1e-4)
