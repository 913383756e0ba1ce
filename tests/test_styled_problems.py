"""The styled problems: well-formed, and solved by "lstsq" and "cg" without error, to scipy's cost.

scipy's trf gets the exact Jacobian (``torch.func.jacrev``: jacfwd would
raise on the data drawn inside ``fun``) and the same tolerances; where it
converges, trustls must reach the same final cost.
"""

import functools
import math
import warnings

import pytest
import torch

from scipy_oracle import scipy_least_squares
from trustls import GaussNewtonModel, Status, TrustRegion
from trustls.problems import styled

NAMES = styled.names()
TOL = 1e-10


def test_collection():
    problems = styled.problems()
    assert len(problems) >= 40 and len(set(NAMES)) == len(NAMES)
    assert {p.family for p in problems} == {"mgh", "fit"}
    for style in styled.STYLES:
        assert sum(style in p.styles for p in problems) >= 3, style
    with pytest.raises(ValueError, match="^name must be one of the styled problems"):
        styled.get("rosenbrock")


@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_float32(name):
    problem = styled.get(name)
    r = problem.residual(problem.x0)
    assert problem.x0.dtype == torch.float64 and r.shape == (problem.m,) and r.dtype == torch.float64
    assert bool(torch.isfinite(r).all())
    r32 = problem.residual(problem.x0.float())
    assert r32.dtype == torch.float32
    torch.testing.assert_close(r32.double(), r, rtol=1e-4, atol=1e-4 * float(r.abs().max()))


@functools.cache
def scipy_reference(name):
    problem = styled.get(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow in rejected trials
        return scipy_least_squares(problem.residual, problem.x0, jacobian="jacrev", ftol=TOL, xtol=TOL, gtol=TOL)


@pytest.mark.parametrize("solver", ["lstsq", "cg"])
@pytest.mark.parametrize("name", NAMES)
def test_solves_agree_with_scipy(name, solver):
    problem = styled.get(name)
    # cg is capped for the time budget: it needs about 180 evaluations on Meyer and 370 on
    # Brown-Dennis; those two capped solves are checked for running without error only.
    controller = TrustRegion(GaussNewtonModel(), solver=solver, ftol=TOL, xtol=TOL, gtol=TOL,
                             max_nfev=100 if solver == "cg" else None)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback needed for any of them
        result = controller.solve(problem.residual, problem.x0)
    reference = scipy_reference(name)
    assert math.isfinite(result.cost)
    if reference.status > 0 and result.status is not Status.MAX_NFEV:
        initial = 0.5 * float(problem.residual(problem.x0).square().sum())
        assert result.cost == pytest.approx(reference.cost, rel=1e-6, abs=1e-14 * initial)


# The MGH spellings against the registry's vectorized formulas (trustls.problems.mgh).
SAME_FORMULA = {
    "rosenbrock_stack": "rosenbrock", "freudenstein_roth_stack": "freudenstein_roth",
    "powell_badly_scaled_stack": "powell_badly_scaled", "brown_badly_scaled_stack": "brown_badly_scaled",
    "beale_loop": "beale", "jennrich_sampson_loop": "jennrich_sampson", "helical_valley_where": "helical_valley",
    "helical_valley_item": "helical_valley", "bard_loop": "bard", "gaussian_loop": "gaussian", "meyer": "meyer",
    "box_3d_loop": "box_3d", "powell_singular_stack": "powell_singular", "wood_stack": "wood",
    "kowalik_osborne_table": "kowalik_osborne", "brown_dennis_loop": "brown_dennis", "osborne_1_loop": "osborne_1",
    "biggs_exp6_loop": "biggs_exp6", "osborne_2_loop": "osborne_2", "watson_9": "watson",
    "extended_rosenbrock_loop": "extended_rosenbrock", "extended_powell_gather": "extended_powell_singular",
    "penalty_1_4": "penalty_1", "penalty_2_4": "penalty_2", "variably_dimensioned_6": "variably_dimensioned",
    "trigonometric_5": "trigonometric", "brown_almost_linear_5": "brown_almost_linear",
    "discrete_boundary_value_8": "discrete_boundary_value",
    "discrete_integral_equation_6": "discrete_integral_equation",
    "broyden_tridiagonal_8": "broyden_tridiagonal", "broyden_banded_8": "broyden_banded",
    "linear_full_rank_8x4": "linear_full_rank", "linear_rank_1_8x4": "linear_rank_1", "chebyquad_trig": "chebyquad",
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(SAME_FORMULA))
def test_mgh_spellings_equal_the_registry_formulas(name, generator):
    from trustls.problems import mgh

    problem = styled.get(name)
    formula = getattr(mgh, SAME_FORMULA[name])
    if SAME_FORMULA[name] in ("linear_full_rank", "linear_rank_1", "chebyquad"):
        formula = functools.partial(formula, m=problem.m)
    x = problem.x0 + 0.01 * torch.rand(problem.n, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(problem.residual(x), formula(x), rtol=1e-12, atol=1e-12)


def test_every_mgh_spelling_is_checked():
    assert {p.name for p in styled.problems() if p.family == "mgh"} == set(SAME_FORMULA)
