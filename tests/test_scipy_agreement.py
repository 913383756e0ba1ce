"""Both solvers reach scipy's final cost on every problem of the registry.

scipy's trf with an exact Jacobian (`tests/scipy_oracle.py`) is the oracle:
trustls' final cost must agree with it to rtol 1e-6, and for zero-residual
problems be below 1e-14·(1 + initial cost).
"""

import pytest
import torch

from scipy_oracle import scipy_least_squares
from trustls import GaussNewtonModel, TrustRegion
from trustls.problems import registry

PROBLEMS = registry.problems()

# CG works on JᵀJ, whose condition number is cond(J)²: for Lanczos3
# (cond(J) ≈ 10⁸ at the solution) the CG residual cannot reach the forcing
# tolerance in float64, the steps stay inexact and gtol stops the solve above
# the minimum (0.1 % above it from start 1; from start 2 the quadratic forcing
# min(η_max, ‖g‖) of `SteihaugCG` now reaches it). "lstsq" factors J itself
# and succeeds.
CG_ILL_CONDITIONED = {"lanczos3_start1"}


def cases():
    for solver in ("cg", "lstsq"):
        for problem in PROBLEMS:
            marks = []
            if solver == "cg" and problem.name in CG_ILL_CONDITIONED:
                marks = [pytest.mark.xfail(strict=True, reason="cond(JᵀJ) ≈ 1e16: CG cannot resolve the step")]
            yield pytest.param(problem, solver, id=f"{problem.name}-{solver}", marks=marks)


def test_registry_is_large_enough():
    assert len(PROBLEMS) - len(CG_ILL_CONDITIONED) >= 20


@pytest.fixture(scope="module")
def scipy_results():
    return {problem.name: scipy_least_squares(problem.residual, problem.x0) for problem in PROBLEMS}


@pytest.mark.parametrize("problem, solver", list(cases()))
def test_final_cost_matches_scipy(problem, solver, scipy_results):
    reference = scipy_results[problem.name]
    result = TrustRegion(GaussNewtonModel(), solver=solver).solve(problem.residual, problem.x0)
    if problem.zero_residual:
        initial_cost = 0.5 * float(torch.sum(problem.residual(problem.x0) ** 2))
        assert result.cost <= 1e-14 * (1 + initial_cost)
    else:
        assert result.cost == pytest.approx(reference.cost, rel=1e-6)
