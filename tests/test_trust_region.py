"""The trust-region controller: invariants, special problems, statuses and input errors."""

import math

import numpy as np
import pytest
import torch

import trustls
from trustls import DenseLstsq, GaussNewtonModel, RadiusPolicy, SteihaugCG, Status, TrustRegion

SOLVERS = ["cg", "gltr", "lstsq"]


def rosenbrock(x):
    return torch.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])


def x0_rosenbrock(dtype=torch.float64):
    return torch.tensor([-1.2, 1.0], dtype=dtype)


def solve(fun, x0, solver="cg", **options):
    return TrustRegion(GaussNewtonModel(), solver=solver, **options).solve(fun, x0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_headline_rosenbrock(solver):
    x0 = x0_rosenbrock()
    result = solve(rosenbrock, x0, solver)
    assert result.success
    torch.testing.assert_close(result.x, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-10)
    assert result.cost < 1e-20
    assert result.message == result.status.message
    assert result.optimality == pytest.approx(float(result.grad.abs().max()))
    torch.testing.assert_close(x0, x0_rosenbrock())  # not mutated
    assert result.x.dtype == x0.dtype and result.x.device == x0.device


@pytest.mark.parametrize("solver", SOLVERS)
def test_step_within_radius_and_accepted_cost_monotone(solver):
    infos = []
    result = solve(rosenbrock, x0_rosenbrock(), solver, callback=infos.append)
    assert infos
    for info in infos:
        assert info.step_norm <= info.radius * (1 + 1e-12)
        assert info.predicted_reduction >= 0
    accepted = [info.cost for info in infos if info.accepted]
    assert all(b <= a for a, b in zip(accepted, accepted[1:]))
    # Stop as soon as a test holds: every evaluation after x0 is a trial step.
    assert result.nfev == 1 + len(infos)


@pytest.mark.parametrize("solver", SOLVERS)
def test_linear_problem_ratio_is_one_and_lstsq_takes_one_step(solver):
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(20, 5, generator=generator, dtype=torch.float64)
    b = torch.randn(20, generator=generator, dtype=torch.float64)
    infos = []
    result = solve(lambda x: A @ x - b, torch.zeros(5, dtype=torch.float64), solver,
                   callback=infos.append, initial_radius=1e6)
    for info in infos:
        # The model is exact: actual and predicted reductions agree to the
        # rounding of the cost difference, about eps·cost.
        assert abs(info.actual_reduction - info.predicted_reduction) <= 1e-14 * info.cost
        assert info.ratio == pytest.approx(1.0, abs=1e-14 * info.cost / info.predicted_reduction)
    expected = torch.linalg.lstsq(A, b).solution
    minimum = 0.5 * float(torch.sum((A @ expected - b) ** 2))
    assert result.cost == pytest.approx(minimum, rel=1e-8)  # ftol's promise
    if solver == "lstsq":
        torch.testing.assert_close(result.x, expected, rtol=1e-12, atol=1e-14)
        assert result.nit == 1 and result.nfev == 2


@pytest.mark.parametrize("solver", SOLVERS)
def test_float32_rosenbrock_converges(solver):
    result = solve(rosenbrock, x0_rosenbrock(torch.float32), solver)
    assert result.success
    assert result.x.dtype == torch.float32
    torch.testing.assert_close(result.x, torch.ones(2), rtol=0, atol=1e-3)


@pytest.mark.parametrize("solver", SOLVERS)
def test_nan_outside_region_is_solved(solver):
    # log(x1) is NaN for x1 < 0: the first Gauss-Newton step from x1 = 10
    # (length 43, cut to the radius ‖x0‖ ≈ 10.4) lands there and must be retried.
    def fun(x):
        return torch.stack([x[0] - 3.0, torch.log(x[1]) + 2.0, x[0] * x[1] - 3 * math.exp(-2.0)])

    infos = []
    result = solve(fun, torch.tensor([0.0, 10.0], dtype=torch.float64), solver, callback=infos.append, x_scale=1.0)
    assert result.success
    assert any(math.isinf(info.trial_cost) for info in infos), "the test should exercise a NaN trial"
    torch.testing.assert_close(result.x, torch.tensor([3.0, math.exp(-2.0)], dtype=torch.float64))


def test_max_nfev_status():
    result = solve(rosenbrock, x0_rosenbrock(), "cg", max_nfev=5)
    assert result.status is Status.MAX_NFEV and not result.success
    assert result.nfev == 5


def test_callback_stops():
    result = solve(rosenbrock, x0_rosenbrock(), "cg", callback=lambda info: info.nit >= 2)
    assert result.status is Status.CALLBACK
    assert result.message == "Stopped because `callback` function raised `StopIteration` or returned `True`"


def test_verbose_prints(capsys):
    result = solve(rosenbrock, x0_rosenbrock(), "lstsq", verbose=2)
    out = capsys.readouterr().out
    assert "Total nfev" in out and result.message in out
    assert len(out.splitlines()) == 1 + (result.nfev - 1) + 2  # header, a line per trial, summary


def test_least_squares_equals_trust_region():
    a = trustls.least_squares(rosenbrock, x0_rosenbrock(), solver="lstsq")
    b = solve(rosenbrock, x0_rosenbrock(), "lstsq")
    assert torch.equal(a.x, b.x) and a.nfev == b.nfev


def test_configured_solver_instances_are_accepted():
    controller = TrustRegion(GaussNewtonModel(), solver=SteihaugCG(max_iter=50))
    assert controller.solver == SteihaugCG(max_iter=50)
    assert isinstance(TrustRegion(GaussNewtonModel(), solver="lstsq").solver, DenseLstsq)


def test_result_is_frozen():
    result = solve(rosenbrock, x0_rosenbrock())
    with pytest.raises(AttributeError):
        result.cost = 0.0


# -- bad input ----------------------------------------------------------------


@pytest.mark.parametrize(
    "x0, error, match",
    [
        ("1.0", TypeError, r"x0 must be a tensor, a number or a sequence of numbers, got str"),
        ([[1.0], [2.0, 3.0]], TypeError, r"x0 must be a tensor, a number or a sequence of numbers, got list"),
        (torch.tensor([True, False]), TypeError, r"x0 must have a real dtype, got torch.bool"),
        (torch.ones(2, 2, dtype=torch.float64), ValueError, r"x0 must be a non-empty 1-D tensor, got shape \(2, 2\)"),
        (torch.ones(0, dtype=torch.float64), ValueError, r"x0 must be a non-empty 1-D tensor, got shape \(0,\)"),
        (torch.tensor([math.nan, 1.0], dtype=torch.float64), ValueError, r"x0 must be finite"),
    ],
)
def test_bad_x0(x0, error, match):
    with pytest.raises(error, match=match):
        solve(rosenbrock, x0)


@pytest.mark.parametrize("x0", [[-1.2, 1.0], (-1.2, 1), torch.tensor([-1, 1]), np.array([-1.2, 1.0])])
def test_x0_as_scipy_reads_it(x0):
    # Sequences, numpy arrays and integer tensors become float64, as in scipy.
    result = solve(rosenbrock, x0, "lstsq")
    assert result.success and result.x.dtype == torch.float64


def test_scalar_x0_is_one_variable():
    result = solve(lambda x: x**2 - 4.0, 3.0, "lstsq")
    assert result.x.shape == (1,) and float(result.x[0]) == pytest.approx(2.0)


@pytest.mark.parametrize(
    "fun, error, match",
    [
        (lambda x: (x**2).sum(), ValueError, r"fun must return a 1-D tensor, got shape \(\) \(a 0-d output is rejected"),
        (lambda x: torch.outer(x, x), ValueError, r"fun must return a 1-D tensor, got shape \(2, 2\)"),
        (lambda x: x.tolist(), TypeError, r"fun must return a torch.Tensor computed from x, got list: write fun with torch"),
        (lambda x: x.float(), TypeError, r"fun must return a tensor of x's dtype torch.float64, got torch.float32"),
        (lambda x: x / 0.0, ValueError, r"fun\(x0\) must be finite"),
    ],
)
def test_bad_residual_at_x0(fun, error, match):
    with pytest.raises(error, match=match):
        solve(fun, torch.tensor([1.0, 2.0], dtype=torch.float64))


def test_residual_of_changing_length():
    calls = []

    def fun(x):
        calls.append(None)
        return x if len(calls) == 1 else torch.cat([x, x])

    with pytest.raises(ValueError, match=r"fun must return outputs of constant shape \(2,\), got shape \(4,\)"):
        solve(fun, torch.tensor([1.0, 2.0], dtype=torch.float64))


def test_fun_not_callable():
    with pytest.raises(TypeError, match=r"fun must be callable, got int"):
        solve(3, x0_rosenbrock())


@pytest.mark.parametrize(
    "options, error, match",
    [
        (dict(solver="newton"), ValueError, r"solver must be one of \['cg', 'gltr', 'lstsq', 'schur'\] or a SubproblemSolver, got 'newton'"),
        (dict(solver=3), TypeError, r"solver must be a str \(one of \['cg', 'gltr', 'lstsq', 'schur'\]\) or a SubproblemSolver, got int"),
        (dict(ftol=-1.0), ValueError, r"ftol must be a finite non-negative number or None, got -1.0"),
        (dict(xtol="small"), ValueError, r"xtol must be a finite non-negative number or None, got 'small'"),
        (dict(gtol=math.nan), ValueError, r"gtol must be a finite non-negative number or None, got nan"),
        (dict(ftol=None, xtol=None, gtol=None), ValueError, r"ftol, xtol and gtol must not all be None"),
        (dict(max_nfev=0), ValueError, r"max_nfev must be a positive int or None, got 0"),
        (dict(max_nfev=2.5), ValueError, r"max_nfev must be a positive int or None, got 2.5"),
        (dict(initial_radius=-1.0), ValueError, r"initial_radius must be a positive finite number or None, got -1.0"),
        (dict(x_scale="col"), ValueError, r"x_scale must be 'jac', a positive number, a 1-D sequence of positive numbers, a BlockJacobi or None, got 'col'"),
        (dict(x_scale=0.0), ValueError, r"x_scale must be 'jac', a positive number, a 1-D sequence of positive numbers, a BlockJacobi or None, got 0.0"),
        (dict(x_scale=torch.tensor([1.0, -1.0])), ValueError, r"x_scale must have finite positive entries, got a tensor with entries that are not"),
        (dict(x_scale=[[1.0]]), ValueError, r"x_scale must be 'jac', .* got a tensor of shape \(1, 1\)"),
        (dict(callback=3), TypeError, r"callback must be callable or None, got int"),
        (dict(verbose=3), ValueError, r"verbose must be 0, 1 or 2, got 3"),
        (dict(radius_policy=None), TypeError, r"radius_policy must be a RadiusPolicy, got NoneType"),
    ],
)
def test_bad_options_raise_in_constructor(options, error, match):
    solver = options.pop("solver", "cg")
    with pytest.raises(error, match=match):
        TrustRegion(GaussNewtonModel(), solver=solver, **options)


def test_numpy_scalars_are_numbers_for_the_options():
    # scipy users pass numpy scalars; np.float32 is not a Python float.
    controller = TrustRegion(GaussNewtonModel(), ftol=np.float32(1e-8), xtol=np.float64(1e-8), gtol=np.float32(1e-8),
                             initial_radius=np.float32(0.5))
    assert (controller.ftol, controller.initial_radius) == (pytest.approx(1e-8), 0.5)
    result = controller.solve(lambda x: x**2 - 2, torch.tensor([1.0], dtype=torch.float64))
    assert result.success and float(result.x) == pytest.approx(math.sqrt(2), rel=1e-8)
    robust = trustls.least_squares(lambda x: x - 2.0, [0.0], loss="soft_l1", f_scale=np.float32(0.5))
    assert float(robust.x) == pytest.approx(2.0, rel=1e-8)
    assert trustls.covariance.DenseSVD(rcond=np.float32(1e-10)).rcond == pytest.approx(1e-10)
    with pytest.raises(ValueError, match=r"ftol must be a finite non-negative number or None, got np.True_|"
                                         r"ftol must be a finite non-negative number or None, got True"):
        TrustRegion(GaussNewtonModel(), ftol=np.True_)


def test_bad_model():
    with pytest.raises(TypeError, match=r"model must be a CurvatureModel such as GaussNewtonModel\(\), got str"):
        TrustRegion("gauss-newton")


def test_x_scale_shape_checked_at_solve():
    controller = TrustRegion(GaussNewtonModel(), x_scale=torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x_scale must have x0's shape \(2,\)"):
        controller.solve(rosenbrock, x0_rosenbrock())


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("x_scale", [2.0, "jac"])
def test_x_scale_solves_rosenbrock(solver, x_scale):
    result = solve(rosenbrock, x0_rosenbrock(), solver, x_scale=x_scale)
    assert result.success
    torch.testing.assert_close(result.x, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-8)


@pytest.mark.parametrize("solver", SOLVERS)
def test_residual_nan_everywhere_but_x0_collapses_the_radius(solver):
    def fun(x):
        return (x - 1.0) + torch.where(x == 0.0, 0.0, math.nan)

    result = solve(fun, torch.zeros(1, dtype=torch.float64), solver, x_scale=1.0)
    assert result.status is Status.RADIUS_COLLAPSED and not result.success
    assert result.message.startswith("The trust region shrank below the floating-point resolution")
    assert torch.equal(result.x, torch.zeros(1, dtype=torch.float64))
    assert result.nfev < 40  # a factor 4 per retry from radius 1 down to eps


@pytest.mark.parametrize("solver", SOLVERS)
def test_gradient_nan_everywhere_but_x0_collapses_the_radius(solver):
    # Every trial point decreases the cost, but its gradient is NaN (0·√b at b = 0 with ∂b/∂x = 1):
    # each is a failed trial. When the radius collapses that is not convergence: x never moved and the
    # cost did not decrease (it stopped with "xtol", success, at x0).
    def fun(x):
        b = torch.where(x == 0.0, 1.0 + x, x - x.detach())
        return (x - 1.0) + 0.0 * torch.sqrt(b)

    x0 = torch.zeros(1, dtype=torch.float64)
    with pytest.warns(UserWarning, match="fun's derivative is not finite"):
        result = solve(fun, x0, solver, x_scale=1.0)
    assert result.status is Status.RADIUS_COLLAPSED and not result.success
    assert torch.equal(result.x, x0) and result.cost == 0.5
    assert result.nfev < 60


def test_ratio_with_rounding_noise():
    policy = trustls.RadiusPolicy()
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    # Both reductions far below δ: the shifted ratio is ~1, and no decrease is measurable.
    ratio = policy.ratio(t(-7e-19), t(4.8e-19), noise=5e-17)
    assert float(ratio) == pytest.approx((5e-17 - 7e-19) / (5e-17 + 4.8e-19), rel=1e-12)
    assert bool(policy.at_noise_floor(t(-7e-19), ratio, noise=5e-17))
    assert bool(policy.moves(t(-7e-19), ratio, 5e-17)) and not bool(policy.moves(t(-7e-19), ratio, 5e-17, strict=True))
    # A real increase is neither taken nor noise.
    increase = policy.ratio(t(-1e-10), t(4.8e-19), noise=5e-17)
    assert not bool(policy.at_noise_floor(t(-1e-10), increase, noise=5e-17))
    assert not bool(policy.moves(t(-1e-10), increase, 5e-17))
    assert float(policy.ratio(t(1.0), t(2.0))) == 0.5
    assert float(policy.ratio(t(0.0), t(0.0))) == 1.0 and float(policy.ratio(t(1.0), t(0.0))) == 0.0


@pytest.mark.parametrize("solver", ["lstsq", "cg"])
def test_float32_noise_floor_steps_do_not_cycle(solver):
    # In float32 the Gauss-Newton steps near this minimizer wander in a flat valley: from two
    # points within δ of each other each step led back to the other, every other one uphill,
    # until max_nfev (400 evaluations, success=False). An uphill step at the noise floor is now
    # taken only if it is shorter than the last one, so the solve ends as in float64.
    M = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, -1.0, 2.0]])
    target = torch.tensor([3.0, -1.0])

    def fun(x):
        u = M.to(x.dtype) @ x
        return u**2 - target.to(x.dtype) + 0.1 * u

    x0 = torch.tensor([0.1, 0.2, 0.3, 0.4])
    reference = solve(fun, x0.double(), solver)
    steps: list[tuple[bool, float, float]] = []
    result = TrustRegion(GaussNewtonModel(), solver=solver,
                         callback=lambda info: steps.append((info.accepted, info.previous_cost, info.cost))).solve(fun, x0)
    assert result.success and result.status is not Status.MAX_NFEV and result.nfev <= 60
    assert result.cost == pytest.approx(reference.cost, rel=1e-5)
    assert sum(accepted and cost > previous for accepted, previous, cost in steps) <= 10
    rows = lambda x: (x @ M.T) ** 2 - target + 0.1 * (x @ M.T)  # noqa: E731 - fun of a batch of rows
    batch = TrustRegion(GaussNewtonModel(), solver=solver).solve_batch(rows, x0[None])
    assert bool(batch.success[0]) and int(batch.nfev[0]) <= 60


@pytest.mark.parametrize("name", ["jennrich_sampson", "brown_dennis", "penalty_1"])
def test_float32_registry_problems_converge_without_cycling(name):
    from trustls.problems import registry

    problem = registry.get(name)
    result = solve(problem.residual, problem.x0.float(), "lstsq")
    assert result.success and result.status is not Status.MAX_NFEV and result.nfev <= 80
    assert result.cost == pytest.approx(problem.reference_cost, rel=1e-5)


def test_steps_within_rounding_are_taken_until_they_vanish():
    # Start at the minimizer of a nonzero-residual problem, nudged by 1e-9: the
    # predicted decreases (~1e-18 and below) are below eps·cost, so the cost
    # changes are noise; the Gauss-Newton steps are taken all the same (they
    # shrink 1e-9, 5e-12, 2e-14, 2e-16) until one is below eps relative to x.
    t = torch.linspace(0, 1, 20, dtype=torch.float64)
    y = torch.exp(-t) + 0.1 * torch.sin(7 * t)
    fun = lambda b: b[0] * torch.exp(-b[1] * t) - y  # noqa: E731
    first = solve(fun, torch.tensor([1.0, 1.0], dtype=torch.float64), "lstsq", ftol=None, xtol=0.0, gtol=None,
                  max_nfev=60)
    infos = []
    result = solve(fun, first.x + 1e-9, "lstsq", ftol=None, xtol=0.0, gtol=None, max_nfev=60, callback=infos.append)
    assert result.status in (Status.NOISE_FLOOR, Status.XTOL) and result.success
    assert any(info.accepted and info.actual_reduction <= 0 for info in infos)  # a noise-floor step was taken
    assert result.cost <= first.cost * (1 + 1e-12)


def test_model_given_the_jacobian_evaluates_the_residual_once_per_trial():
    # The accepted trial's residual is reused for the linearization, as in
    # scipy: with J given, the residual function runs exactly nfev times.
    from trustls.problems.structured import broyden_tridiagonal

    problem = broyden_tridiagonal(20)
    calls = []

    def fun(x):
        calls.append(None)
        return problem.residual(x)

    def jacobian(x):
        rows, cols, values = problem.jacobian_coo(x)
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (20, 20), check_invariants=True)

    result = TrustRegion(GaussNewtonModel(jacobian=jacobian), solver="cg").solve(fun, problem.x0)
    assert result.success and result.njev > 2
    assert len(calls) == result.nfev


def test_cg_solve_is_invariant_to_the_units_of_the_residual():
    # r → c·r (c a power of two, so every product scales exactly) leaves the
    # Jacobi-scaled subproblems' solutions scaled by c and the ratio, ftol and
    # xtol tests unchanged; the forcing term ‖g‖/‖g‖_ref is unit-free,
    # so the whole solve is the same. (An absolute forcing min(η_max, ‖g‖) took
    # different CG iterations here.) gtol is absolute, hence off.
    from trustls.operators import SparseOperator
    from trustls.problems.structured import broyden_tridiagonal

    problem = broyden_tridiagonal(200)
    shape = (problem.m, problem.n)
    runs = []
    for c in (2.0**-20, 1.0, 2.0**20):
        def jacobian(x, c=c):
            rows, cols, values = problem.jacobian_coo(x)
            return SparseOperator(rows, cols, c * values, shape)

        model = GaussNewtonModel(jacobian=jacobian)
        runs.append(TrustRegion(model, solver="cg", gtol=None).solve(lambda x, c=c: c * problem.residual(x), problem.x0))
    for result in runs:
        assert result.success and result.inner_iterations == runs[1].inner_iterations
        assert result.nfev == runs[1].nfev
        torch.testing.assert_close(result.x, runs[1].x, rtol=0, atol=0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_solve_on_device(solver, device):
    # Extended Rosenbrock (n = 10): matrix-free products and the exact Jacobi
    # column norms (cg) or the dense J (lstsq), all on the device.
    from trustls.problems import registry

    problem = registry.get("extended_rosenbrock")
    result = TrustRegion(GaussNewtonModel(), solver=solver).solve(problem.residual, problem.x0.to(device))
    assert result.success and result.x.device.type == device.type
    assert result.cost < 1e-20
    torch.testing.assert_close(result.x.cpu(), torch.ones(10, dtype=torch.float64), rtol=0, atol=1e-9)


def test_sparse_jacobian_solve_on_device(device):
    from trustls.operators import SparseOperator
    from trustls.problems.structured import broyden_tridiagonal

    problem = broyden_tridiagonal(500)
    shape = (problem.m, problem.n)
    x0 = problem.x0.to(device)
    model = GaussNewtonModel(jacobian=lambda x: SparseOperator(*problem.jacobian_coo(x), shape))
    result = TrustRegion(model, solver="cg").solve(problem.residual, x0)
    assert result.success and result.x.device.type == device.type
    assert result.status.name == "GTOL" and result.optimality < 1e-8 and result.cost < 1e-16


def test_an_overflowed_gradient_norm_is_not_kept_as_the_forcing_reference():
    # Unscaled float64 with every entry of g = Jᵀr at 10¹⁶⁰ (finite): ‖g‖²
    # overflows float64, but CG takes ‖g‖ at a smaller power-of-two scale
    # (`smallest_factor`). An infinite norm, kept as the maximum, would pin ρ
    # to 0 for the rest of the solve (and in a TrustRegionOptimizer checkpoint).
    fun = lambda x: 1e80 * (x - 0.5)  # noqa: E731
    method = TrustRegion(GaussNewtonModel(), solver="cg", x_scale=1.0)
    state = method.init(fun, torch.full((16,), 1.5, dtype=torch.float64))
    assert bool(torch.isfinite(state.linearization.gradient).all())
    assert math.isinf(float(torch.linalg.vector_norm(state.linearization.gradient)))
    state = method.step(fun, state)
    assert state.solver_state == pytest.approx(4e160, rel=1e-12)


@pytest.mark.parametrize("initial_radius", [None, 1e19])
def test_a_float32_gradient_norm_is_taken_in_float64(initial_radius):
    # ‖g‖ = 4·10³⁸ overflows float32 but not the reference, a Python float:
    # from CG's normalized g when the radius allows it, else in float64.
    fun = lambda x: 1e19 * (x - 0.5)  # noqa: E731
    method = TrustRegion(GaussNewtonModel(), solver="cg", x_scale=1.0, initial_radius=initial_radius)
    state = method.init(fun, torch.full((16,), 1.5, dtype=torch.float32))
    state = method.step(fun, state)
    assert state.solver_state == pytest.approx(4e38, rel=1e-6)


def test_cg_overflow_in_float32_is_reported_not_looped():
    # Unscaled, B = JᵀJ = 10³⁸·I overflows float32 products, so CG's step is
    # not finite at any radius. The radius shrinks from its own length (the
    # step has none) and a stored path that overflowed answers no smaller
    # radius: the solve stops with RADIUS_COLLAPSED after a few trials, x
    # unchanged (it looped to max_nfev, 1,600 evaluations, or raised
    # StopIteration before).
    fun = lambda x: 1e19 * (x - 0.5)  # noqa: E731
    x0 = torch.full((16,), 1.5, dtype=torch.float32)
    result = TrustRegion(GaussNewtonModel(), solver="cg", x_scale=1.0).solve(fun, x0)
    assert result.status == Status.RADIUS_COLLAPSED and result.nfev < 30
    assert torch.equal(result.x, x0)


def test_cg_normalizes_a_float32_gradient_beyond_the_range_of_its_square():
    # Jacobi-scaled, B = I but every entry of the gradient is about 10¹⁹, so
    # ‖g‖² overflows float32: CG works on 2⁻⁶³·g instead, exactly, and the
    # linear problem is solved in one step.
    fun = lambda x: 1e19 * (x - 0.5)  # noqa: E731
    x0 = torch.full((16,), 1.5, dtype=torch.float32)
    result = TrustRegion(GaussNewtonModel(), solver="cg", gtol=None).solve(fun, x0)
    assert result.success
    torch.testing.assert_close(result.x, torch.full((16,), 0.5), rtol=0, atol=1e-6)


def test_relinearized_checks_the_shape_after_a_step_without_relinearization():
    # After step(relinearize=False) the state holds no linearization; the point's shape is still the state's x's.
    method = TrustRegion(GaussNewtonModel(), solver="cg")
    state = method.step(rosenbrock, method.init(rosenbrock, x0_rosenbrock()), relinearize=False)
    assert state.linearization is None
    other = GaussNewtonModel().linearize(lambda x: x - 1.0, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"linearization must be at a point of the state's shape \(2,\), got \(3,\)"):
        method.relinearized(state, other)
    good = GaussNewtonModel().linearize(rosenbrock, state.x)
    assert method.relinearized(state, good).linearization is good


@pytest.mark.parametrize("max_nfev", [3, 5, 8])
def test_nit_counts_only_iterations_that_ran_a_trial(max_nfev):
    # When the budget leaves no call for a trial and the linearization after it (a torch.func
    # evaluation keeps no graph: the dense J costs one more call), the step that finds it out
    # is no iteration.
    infos = []
    model = GaussNewtonModel(products="vjp+double-backward")
    result = TrustRegion(model, solver="lstsq", max_nfev=max_nfev, callback=infos.append).solve(
        lambda x: torch.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]]), torch.tensor([-1.2, 1.0], dtype=torch.float64)
    )
    assert result.status == Status.MAX_NFEV and result.nfev <= max_nfev
    assert result.nit == max((info.nit for info in infos), default=0)


def test_initial_factor_and_the_cosine_gradient_test():
    """MINPACK's Δ₀ = factor·‖D x0‖ and its gradient test, which `least_squares(method="lm")` uses."""
    fun = lambda x: 1e-10 * torch.stack([x[0] - 2.0, 10 * (x[1] - x[0] ** 2)])  # noqa: E731
    x0 = torch.tensor([1.0, 1.0], dtype=torch.float64)
    plain = TrustRegion(GaussNewtonModel(), "lstsq", x_scale=2.0)
    wide = TrustRegion(GaussNewtonModel(), "lstsq", x_scale=2.0, radius_policy=RadiusPolicy(initial_factor=100.0))
    assert plain.init(fun, x0).radius == pytest.approx(math.sqrt(0.5))
    assert wide.init(fun, x0).radius == pytest.approx(100 * math.sqrt(0.5))
    # ‖g‖∞ ≈ 1e-20 < gtol at x0 whatever the fit; the cosines are not small there.
    assert plain.init(fun, x0).status is Status.GTOL
    cosine = TrustRegion(GaussNewtonModel(), "lstsq", gtol_test="cosine")
    result = cosine.solve(fun, x0)
    assert result.success and result.cost < 1e-40
    with pytest.raises(ValueError, match=r"initial_factor must be a finite positive number, got 0"):
        RadiusPolicy(initial_factor=0)
    with pytest.raises(ValueError, match=r"gtol_test must be 'max' or 'cosine', got 'l2'"):
        TrustRegion(GaussNewtonModel(), gtol_test="l2")
    with pytest.raises(ValueError, match=r"gtol_test='cosine' \(MINPACK's, for unbounded problems\) does not take bounds"):
        TrustRegion(GaussNewtonModel(), gtol_test="cosine", bounds=(0.0, 1.0))


@pytest.mark.parametrize("scale", [1e-25, 1e-12, 1e15])
def test_the_cosine_test_in_float32_reads_r_in_float64(scale):
    """Review: ‖r‖ from the float32 squares underflowed (or overflowed), the cosine came out 0 and a
    float32 line fit of data of size 1e-25 stopped at x0 with GTOL success; Jᵀr itself underflows
    there, so the cosines come from the stored J and r in float64."""
    t = torch.linspace(0, 1, 10, dtype=torch.float32)
    fun = lambda x: scale * (x[0] * t + x[1] - (2 * t + 1))  # noqa: E731
    method = TrustRegion(GaussNewtonModel(), "lstsq", gtol_test="cosine", x_scale="jac")
    state = method.init(fun, torch.zeros(2, dtype=torch.float32))
    assert state.status is None  # not converged at x0: r is parallel to J's columns there


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("initial_radius", [1e-8, 1e-12])
def test_a_small_initial_radius_is_not_taken_for_convergence(solver, initial_radius):
    """Found by a bug hunt: the first step, as long as the radius and predicted well, passed xtol and
    stopped at x0 with success (cost 12.1, optimality 108). A boundary step that the ratio test is
    about to expand is the radius's, not convergence: MINPACK tests xtol on the updated radius."""
    fun = lambda x: torch.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])  # noqa: E731
    x0 = torch.tensor([-1.2, 1.0], dtype=torch.float64)
    result = TrustRegion(GaussNewtonModel(), solver, initial_radius=initial_radius).solve(fun, x0)
    assert result.success and result.cost < 1e-20


def test_a_small_initial_radius_in_solve_batch_too():
    fun = lambda X: torch.stack([10 * (X[:, 1] - X[:, 0] ** 2), 1 - X[:, 0]], 1)  # noqa: E731
    x0 = torch.tensor([[-1.2, 1.0], [2.0, 2.0]], dtype=torch.float64)
    result = TrustRegion(GaussNewtonModel(), "lstsq", initial_radius=1e-8).solve_batch(fun, x0)
    assert bool(result.success.all()) and float(result.cost.max()) < 1e-20
