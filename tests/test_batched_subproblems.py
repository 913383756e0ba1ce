"""The batched subproblem solvers against DenseLstsq and SteihaugCG, one problem at a time.

Each of K random least-squares models (J_b, f_b) is solved by the
single-problem solver at several radii, from the Gauss-Newton step inside
the region to steps on a small sphere, and by the batched solver for all K at
once from the factors of trustls.batched.factorization; steps, norms and
predicted reductions agree to rounding.
"""

import math

import pytest
import torch

from trustls.batched.cg import CGFactors, boundary_lengths, cg_step
from trustls.batched.factorization import triangular_factor
from trustls.batched.lstsq import exact_factors, exact_step, secular_roots
from trustls.models import Linearization
from trustls.operators import DenseOperator, NormalOperator
from trustls.subproblem import DenseLstsq, SteihaugCG, boundary_step_length
from trustls.subproblem.dense_lstsq import secular_step

FRACTIONS = [4.0, 0.9, 0.3, 1e-3]  # radius over ‖Gauss-Newton step‖


def models(generator, K=6, m=12, n=4):
    """K models J_b p + f_b, two of them rank deficient, and a scale T per problem."""
    J = torch.randn(K, m, n, generator=generator, dtype=torch.float64)
    J[0, :, -1] = J[0, :, 0]  # duplicate column
    J[1] *= torch.logspace(0, -6, n, dtype=torch.float64)  # ill-conditioned columns
    f = torch.randn(K, m, generator=generator, dtype=torch.float64)
    scale = torch.rand(n, K, generator=generator, dtype=torch.float64) + 0.5
    return J, f, scale


def single_linearization(J, f, scale):
    Jz = J * scale  # J̃T
    operator = DenseOperator(Jz)
    return Linearization(
        x=torch.zeros(J.shape[1], dtype=J.dtype),
        residual=f,
        cost=0.5 * f @ f,
        gradient=Jz.T @ f,
        operator=NormalOperator(operator),
        jacobian=operator,
        jacobian_matrix=Jz,
        whitened_residual=f,
    )


def gauss_newton_norms(J, f, scale):
    return torch.stack(
        [torch.linalg.lstsq(J[b] * scale[:, b], -f[b], driver="gelsd").solution.norm() for b in range(J.shape[0])]
    )


def test_exact_steps_match_dense_lstsq(generator):
    J, f, scale = models(generator)
    K = J.shape[0]
    R, h = triangular_factor(J.transpose(1, 2), f)
    gradient = torch.einsum("bmn,bm->nb", J, f)
    factors = exact_factors(R, h, gradient, scale, J.shape[1])
    solver = DenseLstsq()
    prepared = [solver.prepare(single_linearization(J[b], f[b], scale[:, b])) for b in range(K)]
    norms = gauss_newton_norms(J, f, scale)
    for fraction in FRACTIONS:  # decreasing radii: the roots warm-start the next, as in a solve
        radius = fraction * norms
        step, roots = exact_step(factors, radius, rtol=solver.rtol, max_iter=solver.max_iter)
        factors.alpha.copy_(roots)
        for b in range(K):
            single = solver.solve(prepared[b], float(radius[b]))
            torch.testing.assert_close(step.step[:, b], single.step, rtol=1e-9, atol=1e-12 * float(single.step.norm()))
            assert float(step.norm[b]) == pytest.approx(float(single.norm), rel=1e-9)
            assert float(step.predicted_reduction[b]) == pytest.approx(float(single.predicted_reduction), rel=1e-9)
            assert bool(step.hits_boundary[b]) == single.hits_boundary
            assert int(step.iterations[b]) == single.iterations


@pytest.mark.parametrize("full_rank", [True, False])
def test_secular_roots_match_secular_step(full_rank, generator):
    K, w = 5, 4
    s = torch.sort(torch.rand(w, K, generator=generator, dtype=torch.float64) * 10, dim=0, descending=True).values
    sf = torch.randn(w, K, generator=generator, dtype=torch.float64)
    kept = torch.ones(w, K, dtype=torch.bool)
    norm0 = torch.sqrt(((sf / s**2) ** 2).sum(0))
    radius = 0.2 * norm0
    alpha, iterations = secular_roots(
        s,
        sf,
        kept,
        radius,
        torch.full((K,), full_rank),
        torch.zeros(K, dtype=torch.float64),
        torch.ones(K, dtype=torch.bool),
    )
    for b in range(K):
        expected, count = secular_step(s[:, b], sf[:, b], float(radius[b]), full_rank=full_rank)
        assert float(alpha[b]) == pytest.approx(expected, rel=1e-12) and int(iterations[b]) == count
        c = sf[:, b] / (s[:, b] ** 2 + alpha[b])
        assert float(c.norm()) == pytest.approx(float(radius[b]), rel=1e-3)


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_cg_steps_match_steihaug_cg(fraction, generator):
    J, f, scale = models(generator)
    K = J.shape[0]
    R, _ = triangular_factor(J.transpose(1, 2))
    gradient = torch.einsum("bmn,bm->nb", J, f)
    radius = fraction * gauss_newton_norms(J, f, scale)
    reference = torch.zeros(K, dtype=torch.float64)
    solver = SteihaugCG()
    step, references = cg_step(solver, CGFactors(R, reference), gradient, scale, radius)
    for b in range(K):
        prepared = solver.prepare(single_linearization(J[b], f[b], scale[:, b]))
        single = solver.solve(prepared, float(radius[b]))
        # CG's iterates carry the rounding of the products (here through R, there through J)
        # amplified by cond(B): 10¹² for problem 1.
        tolerance = 1e-6 if b == 1 else 1e-10
        assert float((step.step[:, b] - single.step).norm()) <= tolerance * float(single.step.norm())
        assert float(step.norm[b]) == pytest.approx(float(single.norm), rel=1e-9)
        assert float(step.predicted_reduction[b]) == pytest.approx(float(single.predicted_reduction), rel=1e-8)
        assert bool(step.hits_boundary[b]) == single.hits_boundary
        assert int(step.iterations[b]) == single.iterations
        assert float(references[b]) == pytest.approx(solver.state(prepared), rel=1e-12)


def test_cg_zero_gradient_and_normalized_gradient():
    R = torch.eye(2, dtype=torch.float64)[:, :, None].expand(2, 2, 2).clone()
    gradient = torch.tensor([[0.0, 1e20], [0.0, 2e20]]).float()  # float32: ‖g‖² overflows without normalization
    R = R.float()
    step, _ = cg_step(
        SteihaugCG(),
        CGFactors(R, torch.zeros(2, dtype=torch.float64)),
        gradient,
        torch.ones(2, 2),
        torch.tensor([1.0, math.inf], dtype=torch.float64),
    )
    assert float(step.norm[0]) == 0.0 and not bool(step.hits_boundary[0]) and int(step.iterations[0]) == 0
    # B = I: the Newton step −g, found by CG in normalized units and scaled back without overflow.
    torch.testing.assert_close(step.step[:, 1], -gradient[:, 1], rtol=1e-6, atol=0)
    assert torch.isfinite(step.predicted_reduction).all()


@pytest.mark.parametrize(("dtype", "big", "tolerance"), [(torch.float64, 1e100, 1e-9), (torch.float32, 1e11, 1e-4)])
def test_cg_overflowing_curvature_restarts_as_steihaug_cg(dtype, big, tolerance, generator):
    """Unscaled (T = 1) with two columns of J near ``big``: sᵀBs overflows at c = 1 (α = 0 gave a
    zero step). Problem 0 restarts at its smallest factor, in the same loop, and agrees with
    `SteihaugCG`; problem 1 (B = diag(big², 1, 1, 1), ‖g‖ ≫ Δ = 1) overflows at every factor: a NaN step, as
    `SteihaugCG`'s; problem 2, well scaled, is the step of a batch without the others."""
    J = torch.randn(3, 9, 4, generator=generator, dtype=torch.float64)
    f = torch.randn(3, 9, generator=generator, dtype=torch.float64)
    J[0, :, :2] *= big
    J[1] = torch.zeros(9, 4, dtype=torch.float64)
    J[1, 0, 0], J[1, 1, 1], J[1, 2, 2], J[1, 3, 3] = big, 1.0, 1.0, 1.0
    f[1] = 0.0
    f[1, 0], f[1, 1] = 1e110 if dtype == torch.float64 else 1e17, 1.0  # κ ≈ big²·‖c·g‖² beyond the range
    J, f = J.to(dtype), f.to(dtype)
    scale = torch.ones(4, 3, dtype=dtype)
    R, _ = triangular_factor(J.transpose(1, 2))
    gradient = torch.einsum("bmn,bm->nb", J, f)
    radius = torch.tensor([1.0, 1.0, 0.5], dtype=torch.float64)
    solver = SteihaugCG()
    step, _ = cg_step(solver, CGFactors(R, torch.zeros(3, dtype=torch.float64)), gradient, scale, radius)
    alone, _ = cg_step(solver, CGFactors(R[..., 2:], torch.zeros(1, dtype=torch.float64)), gradient[:, 2:],
                       scale[:, 2:], radius[2:])
    for b in range(2):
        single = solver.solve(solver.prepare(single_linearization(J[b], f[b], scale[:, b])), float(radius[b]))
        if b == 0:
            assert single.reason != "overflow" and bool(torch.isfinite(step.step[:, 0]).all())
            assert float((step.step[:, 0] - single.step).norm()) <= tolerance * float(single.step.norm())
            assert float(step.norm[0]) == pytest.approx(float(single.norm), rel=tolerance)
            assert float(step.predicted_reduction[0]) == pytest.approx(float(single.predicted_reduction), rel=tolerance)
            assert int(step.products[0]) > int(step.iterations[0]) == single.iterations
        else:
            assert single.reason == "overflow" and bool(torch.isnan(step.step[:, 1]).all())
            assert math.isnan(float(step.norm[1])) and math.isnan(float(step.predicted_reduction[1]))
    torch.testing.assert_close(step.step[:, 2:], alone.step, rtol=0, atol=0)
    assert torch.equal(step.iterations[2:], alone.iterations) and torch.equal(step.products[2:], alone.iterations)


def test_boundary_lengths_match_single(generator):
    p = torch.randn(3, 5, generator=generator, dtype=torch.float64) * 0.1
    d = torch.randn(3, 5, generator=generator, dtype=torch.float64)
    radius = torch.rand(5, generator=generator, dtype=torch.float64) + 1
    tau = boundary_lengths(p, d, radius)
    for b in range(5):
        assert float(tau[b]) == pytest.approx(
            float(boundary_step_length(p[:, b], d[:, b], float(radius[b]))), rel=1e-14
        )


def test_exact_steps_with_a_gradient_outside_the_range_match_dense_lstsq(generator):
    """Robust losses: no whitened residual, sf = Vᵀg, and a g⊥ direction of zero curvature where needed."""
    J, f, scale = models(generator)
    K = J.shape[0]
    gradient = torch.einsum("bmn,bm->nb", J, f)
    gradient[:, 0] += torch.tensor(
        [1.0, 0.0, 0.0, -1.0], dtype=torch.float64
    )  # leaves range(Jᵀ): J[0] has equal columns 0, 3
    R, _ = triangular_factor(J.transpose(1, 2))
    factors = exact_factors(R, None, gradient, scale, J.shape[1])
    assert bool(factors.kept[-1, 0]) and not bool(factors.kept[-1, 2:].any())  # only problem 0 gets g⊥
    solver = DenseLstsq()
    singles = []
    for b in range(K):
        lin = single_linearization(J[b], f[b], scale[:, b])
        lin = Linearization(
            lin.x,
            lin.residual,
            lin.cost,
            gradient[:, b] * scale[:, b],
            lin.operator,
            lin.jacobian,
            lin.jacobian_matrix,
            None,
        )
        singles.append(solver.prepare(lin))
    for radius in [10.0, 1.0, 0.1]:
        step, roots = exact_step(
            factors, torch.full((K,), radius, dtype=torch.float64), rtol=solver.rtol, max_iter=solver.max_iter
        )
        factors.alpha.copy_(roots)
        for b in range(K):
            single = solver.solve(singles[b], radius)
            torch.testing.assert_close(step.step[:, b], single.step, rtol=1e-9, atol=1e-11 * float(single.step.norm()))
            assert float(step.predicted_reduction[b]) == pytest.approx(float(single.predicted_reduction), rel=1e-9)
