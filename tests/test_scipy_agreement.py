"""The solvers reach scipy's final cost on every problem of the registry.

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

def cases():
    for solver in ("cg", "gltr", "lstsq"):
        for problem in PROBLEMS:
            yield pytest.param(problem, solver, id=f"{problem.name}-{solver}")


def test_registry_is_large_enough():
    assert len(PROBLEMS) >= 20


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
