"""Box bounds (Coleman-Li scaling, reflective steps) against scipy's trf with the same bounds."""

import math

import numpy as np
import pytest
import torch

from scipy_oracle import scipy_least_squares
from trustls import BlockJacobi, GaussNewtonModel, TrustRegion
from trustls.bounds import Bounds, as_bounds
from trustls.problems import registry

F64 = torch.float64


def rosenbrock(x):
    return torch.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])


@pytest.mark.parametrize("solver", ["lstsq", "cg"])
def test_rosenbrock_with_an_active_bound_matches_scipy(solver):
    # scipy's documented example: the bound x₁ ≥ 1.5 is active at the solution.
    x0 = torch.tensor([2.0, 2.0], dtype=F64)
    bounds = ([-math.inf, 1.5], math.inf)
    reference = scipy_least_squares(rosenbrock, x0, bounds=bounds)
    infos = []
    result = TrustRegion(GaussNewtonModel(), solver=solver, x_scale=1.0, bounds=bounds,
                         callback=infos.append).solve(rosenbrock, x0)
    torch.testing.assert_close(result.x, torch.from_numpy(reference.x), rtol=1e-10, atol=1e-12)
    assert result.cost == pytest.approx(reference.cost, rel=1e-12)
    assert result.nfev == reference.nfev and result.status == reference.status
    assert result.active_mask.tolist() == reference.active_mask.tolist() == [0, -1]
    assert result.optimality == pytest.approx(reference.optimality, rel=1e-6)
    # Iterates stay strictly inside the box.
    assert all(float(info.x[1]) > 1.5 for info in infos)


def _bounds_cutting_off_the_minimizer(problem, minimizer):
    """A bound on the variable that moves most, 60% of the way from x0 to the unbounded minimizer."""
    x0 = problem.x0.numpy()
    lower, upper = np.full_like(x0, -np.inf), np.full_like(x0, np.inf)
    i = int(np.argmax(np.abs(minimizer - x0) / (1 + np.abs(minimizer))))
    if minimizer[i] > x0[i]:
        upper[i] = x0[i] + 0.6 * (minimizer[i] - x0[i])
    else:
        lower[i] = x0[i] - 0.6 * (x0[i] - minimizer[i])
    return lower, upper


# Registry problems where scipy's trf with exact and lsmr steps agree on the bounded minimum (the others have
# several local minima in the box, or scipy's lsmr stalls: bard, discrete_boundary_value, underdetermined_3x6,
# chwirut2_start2, gauss1_start1, lanczos3, kirby2) and stops at a stationary point (misra1a_start1: scipy's xtol
# stops it with optimality 711, away from the bound).
BOUNDED = [
    "rosenbrock", "powell_badly_scaled", "brown_badly_scaled", "beale", "jennrich_sampson", "helical_valley",
    "gaussian", "powell_singular", "wood", "kowalik_osborne", "brown_dennis", "extended_rosenbrock", "penalty_1",
    "variably_dimensioned", "broyden_tridiagonal", "exponential_fit", "linear_20x5", "misra1a_start2", "chwirut2_start1", "danwood_start1", "danwood_start2", "gauss1_start2",
]


@pytest.mark.parametrize("name", BOUNDED)
@pytest.mark.parametrize("solver", ["lstsq", "cg"])
def test_bounded_registry_problems_reach_scipys_cost(name, solver):
    problem = registry.get(name)
    minimizer = scipy_least_squares(problem.residual, problem.x0).x
    lower, upper = _bounds_cutting_off_the_minimizer(problem, minimizer)
    reference = scipy_least_squares(problem.residual, problem.x0, bounds=(lower, upper))
    assert np.any(reference.active_mask != 0) or name == "gaussian"  # the bound binds (gaussian: barely)
    result = TrustRegion(GaussNewtonModel(), solver=solver, bounds=(lower, upper)).solve(problem.residual, problem.x0)
    x = result.x.numpy()
    assert np.all((x >= lower) & (x <= upper))
    if solver == "lstsq":  # the same method as scipy's exact trf: the same minimum
        assert result.cost == pytest.approx(reference.cost, rel=1e-5)
    else:  # Jacobi-scaled CG may end in a lower point of a flat valley, never a higher one
        assert result.cost <= reference.cost * (1 + 1e-5) + 1e-14


def test_large_bounded_problem_with_matrix_free_cg():
    # Extended Rosenbrock, n = 10⁴, with every even variable capped below its
    # unbounded optimum 1: the caps bind, and the cost matches scipy's trf+lsmr.
    from trustls.problems.structured import extended_rosenbrock

    problem = extended_rosenbrock(10_000)
    n = problem.x0.shape[0]
    lower = torch.full((n,), -math.inf, dtype=F64)
    upper = torch.full((n,), math.inf, dtype=F64)
    upper[1::2] = 0.5
    x0 = problem.x0.clone()
    x0[1::2] = torch.clamp(x0[1::2], max=0.4)
    result = TrustRegion(GaussNewtonModel(), solver="cg", bounds=(lower, upper), x_scale=1.0, ftol=1e-10,
                         xtol=1e-10, gtol=1e-10).solve(problem.residual, x0)
    assert result.success and int((result.active_mask == 1).sum()) == n // 2
    assert result.cost == pytest.approx(213.40127754181154, rel=1e-10)  # scipy trf+lsmr, sparse J
    assert bool((result.x <= upper).all())


def test_half_open_and_scalar_bounds_and_numpy_inputs():
    fun = lambda x: x - torch.tensor([2.0, -3.0], dtype=F64)  # noqa: E731
    result = TrustRegion(GaussNewtonModel(), solver="lstsq", bounds=(0.0, np.array([1.0, np.inf]))).solve(
        fun, torch.tensor([0.5, 0.5], dtype=F64))
    torch.testing.assert_close(result.x, torch.tensor([1.0, 0.0], dtype=F64), rtol=0, atol=1e-7)
    assert result.active_mask.tolist() == [1, -1]


def test_scipy_bounds_object_is_accepted():
    from scipy.optimize import Bounds as ScipyBounds

    box = as_bounds(ScipyBounds([0.0, 0.0], [1.0, 2.0]), torch.tensor([0.5, 0.5], dtype=F64))
    torch.testing.assert_close(box.upper, torch.tensor([1.0, 2.0], dtype=F64))


def test_strictly_feasible_and_active():
    box = Bounds(torch.tensor([0.0, -1.0, -math.inf], dtype=F64), torch.tensor([1.0, 1.0, 0.0], dtype=F64))
    x = torch.tensor([0.0, 1.0, -5.0], dtype=F64)
    assert box.active(x, 1e-10).tolist() == [-1, 1, 0]
    inside = box.strictly_feasible(x, rstep=0.0)
    assert float(inside[0]) > 0.0 and float(inside[1]) < 1.0 and float(inside[2]) == -5.0
    assert box.active(inside, 0.0).tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    "bounds, error, match",
    [
        (([0.0, 0.0], [1.0]), ValueError, r"bounds must be scalars or have x0's shape \(2,\), got ub of shape \(1,\)"),
        ((1.0, 0.0), ValueError, r"bounds must have lb < ub in every variable, got lb\[0\] = 1.0 >= ub\[0\] = 0.0"),
        ((0.0, 1.0), ValueError, r"x0 must lie within the bounds \(x0 is infeasible\), got x0\[0\] = 2.0 outside \[0.0, 1.0\]"),
        ((0.0, 1.0, 2.0), ValueError, r"bounds must be a pair \(lb, ub\), got tuple of length 3"),
        (("a", 1.0), TypeError, r"bounds must be a pair \(lb, ub\) of numbers or 1-D sequences, got lb of type str"),
        ((math.nan, 1.0), ValueError, r"bounds must not be NaN, got NaN in lb"),
    ],
)
def test_bad_bounds(bounds, error, match):
    with pytest.raises(error, match=match):
        TrustRegion(GaussNewtonModel(), bounds=bounds).solve(rosenbrock, torch.tensor([2.0, 0.5], dtype=F64))


def test_bounds_need_a_diagonal_scale():
    with pytest.raises(ValueError, match=r"bounds need a diagonal x_scale \(a number, a sequence or 'jac'\)"):
        TrustRegion(GaussNewtonModel(), x_scale=BlockJacobi(((1, 2),)), bounds=(0.0, 1.0))


def _rosenbrock_beside_a_bound(x):
    # x[0] is pulled below its lower bound 1 (g₀ > 0 there, so v₀ = x₀ − 1); x[1:] is Rosenbrock,
    # whose Gauss-Newton step from (-1.2, 1) is rejected.
    return torch.stack([x[0] - 0.5, 10 * (x[2] - x[1] ** 2), 1 - x[1]])


@pytest.mark.parametrize("dtype, rtol, atol", [(torch.float32, 1e-5, 1e-3), (torch.float16, 1e-2, 1e-2)])
@pytest.mark.parametrize("solver", ["lstsq", "cg"])
def test_reduced_precision_start_on_a_bound_moves_inside_and_converges(solver, dtype, rtol, atol):
    # Below float64 scipy's offset 1e-10·max(1, |lb|) rounds back onto a bound of 1: x0 stayed on it,
    # v₀ = 0 made ‖x/d‖ and the initial radius inf, and the first rejected step stopped the solve
    # with "xtol" (success) at x0, cost 12.2. The offset is now at least one ulp of x0's dtype.
    bounds = ([1.0, -math.inf, -math.inf], math.inf)
    x0 = [1.0, -1.2, 1.0]
    reference = TrustRegion(GaussNewtonModel(), solver=solver, bounds=bounds).solve(
        _rosenbrock_beside_a_bound, torch.tensor(x0, dtype=F64))
    infos = []
    result = TrustRegion(GaussNewtonModel(), solver=solver, bounds=bounds, callback=infos.append).solve(
        _rosenbrock_beside_a_bound, torch.tensor(x0, dtype=dtype))
    assert reference.success and reference.cost == pytest.approx(0.125, rel=1e-10)
    assert result.success and result.nit > 2 and result.x.dtype == dtype
    assert result.cost == pytest.approx(0.125, rel=rtol)
    torch.testing.assert_close(result.x.double(), reference.x, rtol=0, atol=atol)
    assert all(float(info.x[0]) > 1.0 for info in infos)  # strictly inside, from the start


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rstep", [1e-10, 0.0])
def test_strictly_feasible_moves_off_the_bound_in_the_working_dtype(dtype, rstep):
    # One ulp at least, in the dtype the values must hold: a half-precision solve iterates in float32 on
    # float16 values, where the next float32 above a bound rounds back onto it.
    box = Bounds(torch.tensor([1.0, -math.inf, 0.0], dtype=dtype), torch.tensor([2.0, 3.0, math.inf], dtype=dtype))
    x = torch.tensor([1.0, 3.0, 0.0], dtype=dtype)
    inside = box.strictly_feasible(x.float(), rstep, dtype=dtype)
    assert inside.dtype == torch.float32 and torch.equal(inside.to(dtype).float(), inside)
    assert box.active(inside.to(dtype), 0.0).tolist() == [0, 0, 0]
    assert bool((inside.to(dtype) > box.lower).all() & (inside.to(dtype) < box.upper).all())
    same = box.strictly_feasible(x, rstep)
    assert box.active(same, 0.0).tolist() == [0, 0, 0]


def test_jacobi_scale_keeps_its_options_with_bounds():
    from trustls.scaling import JacobiScale

    controller = TrustRegion(GaussNewtonModel(), x_scale=JacobiScale(uniform_spread=1.0), bounds=(0.0, 1.0))
    assert controller.scale_policy == JacobiScale(blocks=False, uniform_spread=1.0)
