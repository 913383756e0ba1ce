"""`trustls.least_squares` as a drop-in for scipy's: one test per row of issue 13's feature table, then its
loss acceptance (an exponential fit with outliers agrees with scipy for every loss, both solvers) and bounds
with a robust loss on n = 10⁴ with the matrix-free solver.

scipy is given the exact Jacobian (`tests/scipy_oracle.py`), so that the two agree to the solvers' tolerances,
not to a finite difference's error. `tests/test_scipy_least_squares.py` is scipy's own test module, ported.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import torch
from scipy.optimize import Bounds
from scipy_oracle import scipy_least_squares

import trustls
from trustls import IterationInfo, Status, least_squares
from trustls._scipy_inputs import UserJacobian, as_pattern, residual_function, scipy_callback
from trustls.operators import DenseOperator, LinearOperator, SparseOperator

F64 = torch.float64
TIGHT = {"ftol": 1e-12, "xtol": 1e-12, "gtol": 1e-12}


def rosenbrock(x):
    return torch.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])


def rosenbrock_jacobian(x):
    return torch.stack([torch.stack([-20 * x[0], torch.full_like(x[0], 10.0)]),
                        torch.stack([torch.full_like(x[0], -1.0), torch.zeros_like(x[0])])])


@pytest.fixture(scope="module")
def outliers():
    """y = 2.5·exp(−1.3t) + 0.5 with noise 0.05 and six outliers of +0.5 to +1.5 (a seeded generator)."""
    rng = np.random.default_rng(20240611)
    t = np.linspace(0, 4, 40)
    y = 2.5 * np.exp(-1.3 * t) + 0.5 + 0.05 * rng.standard_normal(40)
    y[rng.choice(40, 6, replace=False)] += rng.uniform(0.5, 1.5, 6)
    t, y = torch.from_numpy(t), torch.from_numpy(y)

    def residual(b):
        return b[0] * torch.exp(-b[1] * t) + b[2] - y

    return residual


def cubic_soft_l1(z):
    """scipy's test loss ρ(z) = 3((1 + z)^⅓ − 1), written for numpy: ``asarray`` makes it serve both libraries."""
    t = 1 + np.asarray(z)
    return np.stack([3 * (t ** (1 / 3) - 1), t ** (-2 / 3), -2 / 3 * t ** (-5 / 3)])


# -- the feature table -----------------------------------------------------------------


@pytest.mark.parametrize("solver", ["exact", "lsmr"])
def test_bounds(solver):
    # scipy's documented example: x₁ ≥ 1.5 is active at the solution.
    x0 = torch.tensor([2.0, 2.0], dtype=F64)
    bounds = ([-math.inf, 1.5], math.inf)
    reference = scipy_least_squares(rosenbrock, x0, bounds=bounds, tr_solver=solver)
    res = least_squares(rosenbrock, x0, bounds=bounds, tr_solver=solver)
    torch.testing.assert_close(res.x, torch.from_numpy(reference.x), rtol=1e-10, atol=1e-12)
    assert res.active_mask.tolist() == reference.active_mask.tolist() == [0, -1]
    # A scipy Bounds object, tensors, and arrays mean the same box.
    for box in (Bounds([-np.inf, 1.5], np.inf), (torch.tensor([-math.inf, 1.5]), math.inf)):
        torch.testing.assert_close(least_squares(rosenbrock, x0, bounds=box, tr_solver=solver).x, res.x)


@pytest.mark.parametrize("loss", ["soft_l1", "huber", "cauchy", "arctan", cubic_soft_l1],
                         ids=["soft_l1", "huber", "cauchy", "arctan", "callable"])
@pytest.mark.parametrize("f_scale", [0.1, 1.0])
def test_loss_with_f_scale(outliers, loss, f_scale):
    x0 = torch.ones(3, dtype=F64)
    reference = scipy_least_squares(outliers, x0, loss=loss, f_scale=f_scale, **TIGHT)
    res = least_squares(outliers, x0, loss=loss, f_scale=f_scale, **TIGHT)
    torch.testing.assert_close(res.x, torch.from_numpy(reference.x), rtol=1e-6, atol=0)
    assert res.cost == pytest.approx(reference.cost, rel=1e-6)
    torch.testing.assert_close(res.fun, torch.from_numpy(reference.fun), rtol=1e-5, atol=1e-7)  # r, not ρ


def test_jac_callable_two_point_and_positional():
    x0 = [-2.0, 1.0]
    automatic = least_squares(rosenbrock, x0, jac="2-point")
    given = least_squares(rosenbrock, x0, jac=rosenbrock_jacobian)
    positional = least_squares(rosenbrock, x0, rosenbrock_jacobian)  # scipy's third positional argument
    for res in (automatic, given, positional):
        torch.testing.assert_close(res.x, torch.ones(2, dtype=F64))
    torch.testing.assert_close(given.x, positional.x, rtol=0, atol=0)
    assert given.nfev == positional.nfev and given.njev == positional.njev


@pytest.mark.parametrize("tr_solver", ["exact", "lsmr"])
def test_method_trf_tr_solver_and_tr_options(tr_solver):
    res = least_squares(rosenbrock, [-2.0, 1.0], method="trf", tr_solver=tr_solver,
                        tr_options={"btol": 1e-10, "maxiter": 10})
    torch.testing.assert_close(res.x, torch.ones(2, dtype=F64))
    assert isinstance(res.jac, torch.Tensor) if tr_solver == "exact" else isinstance(res.jac, LinearOperator)


def test_args_and_kwargs():
    def fun(x, a, *, b):
        return torch.stack([x[0] - a, b * (x[1] - x[0] ** 2)])

    for res in (least_squares(fun, [0.0, 0.0], args=(3.0,), kwargs={"b": 10.0}),
                least_squares(fun, [0.0, 0.0], jac="3-point", args=[3.0], kwargs={"b": 10.0})):
        torch.testing.assert_close(res.x, torch.tensor([3.0, 9.0], dtype=F64))


@pytest.mark.parametrize("x0", [[2.0], np.array([2.0]), 2.0, torch.tensor([2])], ids=["list", "array", "float", "int"])
def test_x0_forms(x0):
    res = least_squares(lambda x: x**2 - 2.0, x0)
    assert res.x.dtype == F64 and res.x.shape == (1,)
    torch.testing.assert_close(res.x, torch.tensor([math.sqrt(2.0)], dtype=F64))


def test_x0_integer_tensor_and_float32():
    res = least_squares(rosenbrock, torch.tensor([-2, 1]))
    assert res.x.dtype == F64
    torch.testing.assert_close(res.x, torch.ones(2, dtype=F64))
    res = least_squares(rosenbrock, torch.tensor([-2.0, 1.0]))  # float32 stays float32
    assert res.x.dtype == torch.float32 and res.success
    torch.testing.assert_close(res.x, torch.ones(2), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("x_scale", [np.array([1.0, 0.2]), [1.0, 0.2], torch.tensor([1.0, 0.2])],
                         ids=["array", "list", "tensor"])
def test_x_scale_sequence(x_scale):
    x0 = torch.tensor([-2.0, 1.0], dtype=F64)
    reference = scipy_least_squares(rosenbrock, x0, x_scale=np.array([1.0, 0.2]))
    res = least_squares(rosenbrock, x0, x_scale=x_scale)
    torch.testing.assert_close(res.x, torch.from_numpy(reference.x), rtol=1e-8, atol=1e-10)
    assert res.nfev == reference.nfev


def test_status_compares_as_an_int():
    res = least_squares(rosenbrock, [-2.0, 1.0], ftol=None, xtol=None)
    assert res.status > 0 and res.status == 1 and res.status is Status.GTOL and res.success
    assert least_squares(rosenbrock, [-2.0, 1.0], max_nfev=3).status == 0


def test_result_mapping_jac_and_active_mask():
    res = least_squares(rosenbrock, [2.0, 2.0], bounds=([-math.inf, 1.5], math.inf))
    assert res["x"] is res.x and res["status"] == res.status and res["message"] == res.message
    assert "jac" in res and "active_mask" in res
    torch.testing.assert_close(res.jac, rosenbrock_jacobian(res.x))
    assert res.active_mask.dtype == torch.int64 and res.active_mask.tolist() == [0, -1]
    with pytest.raises(KeyError):
        res["nothing"]


def test_callback_intermediate_result_and_stop_iteration():
    seen = []

    def callback(intermediate_result):
        seen.append(intermediate_result)
        if intermediate_result.nfev >= 3:
            raise StopIteration

    res = least_squares(rosenbrock, [-2.0, 1.0], callback=callback)
    assert res.status == -2 and not res.success and res.nfev == 3
    assert all(isinstance(info, IterationInfo) for info in seen)
    last = seen[-1]
    assert {"x", "fun", "cost", "nit", "nfev"} <= set(last.keys())
    torch.testing.assert_close(last["fun"], rosenbrock(last["x"]))
    assert last.cost == pytest.approx(0.5 * float(rosenbrock(last.x).square().sum()))


def test_callback_of_x_gets_a_copy_and_true_stops():
    points = []

    def callback(x):  # scipy's other convention: any name but intermediate_result
        points.append(x)
        return len(points) == 2

    res = least_squares(rosenbrock, [-2.0, 1.0], callback=callback)
    assert res.status == Status.CALLBACK and len(points) == 2
    assert all(isinstance(x, torch.Tensor) and x.shape == (2,) for x in points)
    points[-1].add_(1.0)  # a copy: modifying it leaves the result alone
    assert not torch.equal(points[-1], res.x)


# -- the loss acceptance of issue 13 ------------------------------------------------------


@pytest.mark.parametrize("solver", ["lstsq", "cg"])
@pytest.mark.parametrize("loss", ["linear", "soft_l1", "huber", "cauchy", "arctan", cubic_soft_l1],
                         ids=["linear", "soft_l1", "huber", "cauchy", "arctan", "callable"])
@pytest.mark.parametrize("bounded", [False, True], ids=["free", "bounded"])
def test_exponential_fit_with_outliers_agrees_with_scipy(outliers, loss, solver, bounded):
    # Tight tolerances on both sides: the test compares minimizers, not where two stopping rules fire
    # (with scipy's defaults the CG solves stop within 1e-6 of the minimizer, the exact ones within 1e-10).
    options = dict(loss=loss, f_scale=0.1, **TIGHT)
    x0 = torch.tensor([1.0, 1.0, 1.0], dtype=F64)
    if bounded:  # b ≥ 1.3 is active at the robust minimizers
        options["bounds"] = ([0.0, 1.3, 0.0], [3.0, 3.0, 1.0])
        x0 = torch.tensor([1.0, 1.5, 0.5], dtype=F64)
    reference = scipy_least_squares(outliers, x0, **options)
    res = least_squares(outliers, x0, solver=solver, **options)
    assert res.success
    torch.testing.assert_close(res.x, torch.from_numpy(reference.x), rtol=1e-6, atol=0)
    assert res.cost == pytest.approx(reference.cost, rel=1e-6)
    assert res.active_mask.tolist() == reference.active_mask.tolist()


def test_bounded_robust_extended_rosenbrock_with_cg_at_n_10000():
    """n = 10⁴, soft_l1, bounds cutting off the minimizer, solver="cg".

    The cost is a sum over independent pairs (x₂ᵢ, x₂ᵢ₊₁), so each pair's minimizer is that of the
    2-variable problem with the pair's bounds: scipy solves those four distinct small problems, and
    every pair of the large solve must agree with its small problem's minimizer.
    """
    n, kinds = 10_000, 4
    kind = torch.arange(n // 2) % kinds
    lb = torch.full((n,), -math.inf, dtype=F64)
    ub = torch.full((n,), math.inf, dtype=F64)
    ub[0::2] = torch.tensor([0.5, 0.8, 2.0, 0.9], dtype=F64)[kind]
    lb[1::2] = torch.tensor([-1.0, 0.7, 1.2, -1.0], dtype=F64)[kind]
    x0 = torch.tensor([-1.2, 1.5], dtype=F64).repeat(n // 2)

    def residual(x):
        first, second = x[0::2], x[1::2]
        return torch.stack([10 * (second - first**2), 1 - first], dim=1).reshape(-1)

    res = least_squares(residual, x0, bounds=(lb, ub), loss="soft_l1", f_scale=0.5, solver="cg")
    assert res.success and res.optimality < 1e-8
    assert isinstance(res.jac, LinearOperator)
    assert bool(((res.x >= lb) & (res.x <= ub)).all())
    pairs, masks = res.x.reshape(-1, 2), res.active_mask.reshape(-1, 2)
    for k in range(kinds):
        box = (lb[2 * k : 2 * k + 2].numpy(), ub[2 * k : 2 * k + 2].numpy())
        reference = scipy_least_squares(residual, x0[:2], bounds=box, loss="soft_l1", f_scale=0.5, **TIGHT)
        torch.testing.assert_close(pairs[kind == k], torch.from_numpy(reference.x).expand(n // 2 // kinds, 2),
                                   rtol=1e-8, atol=1e-10)
        assert (masks[kind == k] == torch.from_numpy(reference.active_mask)).all()


# -- the scipy readings (trustls._scipy_inputs) --------------------------------------------


def test_residual_function_reads_a_scalar_as_one_residual():
    residual = residual_function(lambda x, a: (x * a).sum(), (2.0,), {})
    assert residual(torch.ones(3)).shape == (1,)
    tupled = residual_function(lambda x: (x, x), (), {})
    assert isinstance(tupled(torch.ones(2)), tuple)  # (outputs, targets) passes through


def test_user_jacobian_conversions():
    x = torch.tensor([1.0, 2.0], dtype=F64)
    convert = UserJacobian.convert
    assert convert(torch.tensor([3.0, 4.0], dtype=F64), x).shape == (1, 2)  # a 1-D J is one row
    assert convert(np.array(5.0), x).shape == (1, 1)
    with pytest.raises(ValueError, match=r"jac must return an array of at most 2 dimensions, got shape \(1, 1, 2\)"):
        convert(np.ones((1, 1, 2)), x)
    with pytest.raises(TypeError, match="jac must return a tensor, a LinearOperator, an array or a sparse matrix"):
        convert("J", x)
    operator = DenseOperator(torch.eye(2, dtype=F64))
    assert convert(operator, x) is operator
    import scipy.sparse
    from scipy.sparse.linalg import aslinearoperator

    sparse = convert(scipy.sparse.csr_array(np.array([[1.0, 0.0], [2.0, 3.0]])), x)
    assert sparse.layout == torch.sparse_coo and sparse.to_dense().tolist() == [[1.0, 0.0], [2.0, 3.0]]
    host = convert(aslinearoperator(np.array([[1.0, 0.0], [2.0, 3.0]])), x)
    assert isinstance(host, LinearOperator) and host.shape == (2, 2)
    assert host.matvec(x).tolist() == [1.0, 8.0] and host.rmatvec(x).tolist() == [5.0, 6.0]
    assert host.matvec(x).dtype == F64


def test_user_jacobian_serves_its_probe_once():
    calls = []

    def jac(x):
        calls.append(x.clone())
        return torch.eye(2, dtype=x.dtype)

    jacobian = UserJacobian(jac, (), {})
    x0 = torch.tensor([1.0, 2.0], dtype=F64)
    J0 = jacobian.probe(x0)
    assert jacobian(x0.clone()) is J0 and len(calls) == 1  # the solve's first call at x0
    jacobian(x0)
    assert len(calls) == 2  # served once only
    jacobian.probe(x0)
    jacobian(x0 + 1)  # the solve moved x0 (inside bounds, say): jac is called there
    assert len(calls) == 4 and torch.equal(calls[-1], x0 + 1)


def test_sparse_or_operator_jac_selects_lsmr_and_the_probe_costs_no_call():
    calls = []

    def jac(x):
        calls.append(1)
        return SparseOperator.from_tensor(torch.diag(2 * x).to_sparse())

    res = least_squares(lambda x: x**2 - 4.0, torch.ones(3, dtype=F64), jac)
    assert isinstance(res.jac, SparseOperator)  # "lsmr": J is not densified
    assert len(calls) == res.njev  # the probe at x0 served the first linearization
    torch.testing.assert_close(res.x, torch.full((3,), 2.0, dtype=F64))


def test_as_pattern():
    assert as_pattern([1]).shape == (1, 1) and as_pattern([[1, 0], [0, 1]]).shape == (2, 2)
    pattern = np.eye(2)
    assert as_pattern(pattern) is pattern


def test_scipy_callback_rule():
    info = least_squares(rosenbrock, [-2.0, 1.0], max_nfev=2, callback=lambda intermediate_result: None)
    assert info.nfev == 2
    received = []
    scipy_callback(lambda intermediate_result: received.append(intermediate_result))("info")
    assert received == ["info"]
    with pytest.raises(TypeError, match="callback must be callable or None, got int"):
        scipy_callback(1)
    assert scipy_callback(None) is None


def test_lm_ignores_tr_solver_and_tr_options_as_scipy():
    reference = least_squares(rosenbrock, [-2.0, 1.0], method="lm")
    res = least_squares(rosenbrock, [-2.0, 1.0], method="lm", tr_solver="lsmr", tr_options={"tol": 1})
    torch.testing.assert_close(res.x, reference.x, rtol=0, atol=0)
    assert isinstance(res.jac, torch.Tensor)


def test_errors_name_the_argument():
    with pytest.raises(TypeError, match=r"tr_options got an unexpected option 'tol' for tr_solver='lsmr'"):
        least_squares(rosenbrock, [-2.0, 1.0], tr_solver="lsmr", tr_options={"tol": 1e-10})
    with pytest.raises(ValueError, match="pass at most one of solver and tr_solver"):
        least_squares(rosenbrock, [-2.0, 1.0], tr_solver="lsmr", solver="cg")
    with pytest.raises(ValueError, match="method must be 'trf', 'lm' or 'dogbox', got 'newton'"):
        least_squares(rosenbrock, [-2.0, 1.0], method="newton")
    with pytest.raises(TypeError, match="kwargs must be a mapping or None, got list"):
        least_squares(rosenbrock, [-2.0, 1.0], kwargs=[1])
    with pytest.raises(TypeError, match="jac must be a callable or one of"):
        least_squares(rosenbrock, [-2.0, 1.0], jac=1)


def test_trustls_solver_keyword_and_lm_defaults():
    res = least_squares(rosenbrock, [-2.0, 1.0], solver="cg", initial_radius=0.5)
    assert res.success and isinstance(res.jac, LinearOperator)
    assert trustls.least_squares(rosenbrock, [-2.0, 1.0], method="lm").success


def test_lm_takes_bounds_that_bound_nothing():
    # scipy's rule: "lm" refuses bounds unless every lb is -inf and every ub +inf, in any form.
    reference = least_squares(rosenbrock, [-2.0, 1.0], method="lm")
    for free in (Bounds(np.full(2, -np.inf), np.full(2, np.inf)), (np.full(2, -np.inf), np.inf), None):
        torch.testing.assert_close(least_squares(rosenbrock, [-2.0, 1.0], method="lm", bounds=free).x, reference.x,
                                   rtol=0, atol=0)
    with pytest.raises(ValueError, match="Method 'lm' doesn't support bounds."):
        least_squares(rosenbrock, [-2.0, 1.0], method="lm", bounds=Bounds(ub=[np.inf, 5.0]))


@pytest.mark.cuda
def test_scipy_inputs_on_the_device(device):
    # Bounds, a loss, and Jacobians from numpy and scipy.sparse (host values moved to x's device).
    import scipy.sparse

    t = torch.linspace(0, 1, 30, dtype=F64)

    def fun(b):
        return b[0] * torch.exp(-b[1] * t.to(b.device)) - 2.0 * torch.exp(-1.5 * t.to(b.device))

    def jac_numpy(b):
        e = np.exp(-float(b[1]) * t.numpy())
        return np.stack([e, -float(b[0]) * t.numpy() * e], axis=1)

    x0 = torch.tensor([1.0, 1.0], dtype=F64, device=device)
    reference = least_squares(fun, x0.cpu(), bounds=([0, 0], [5, 1.4]), loss="soft_l1")
    for jac in ("2-point", jac_numpy, lambda b: scipy.sparse.csr_array(jac_numpy(b))):
        res = least_squares(fun, x0, jac, bounds=([0, 0], [5, 1.4]), loss="soft_l1")
        assert res.x.device == device and res.active_mask.tolist() == [0, 1]
        torch.testing.assert_close(res.x.cpu(), reference.x, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(res.standard_errors().cpu(), reference.standard_errors(), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(ftol=-1.0), r"ftol must be a finite non-negative number or None, got -1.0"),
        (dict(x_scale=0.0), r"x_scale must be 'jac', a positive number, .* or None, got 0.0"),
        (dict(max_nfev=0), r"max_nfev must be a positive int or None, got 0"),
        (dict(verbose=3), r"verbose must be 0, 1 or 2, got 3"),
    ],
)
def test_bad_options_are_refused_before_jac_is_called(options, match):
    # The probe that chooses tr_solver by J's kind calls jac at x0: only once every argument is checked.
    calls = []

    def jac(x):
        calls.append(1)
        return torch.eye(2, dtype=x.dtype)

    with pytest.raises(ValueError, match=match):
        least_squares(lambda x: x - 1.0, torch.zeros(2, dtype=F64), jac, **options)
    assert calls == []


def test_solver_by_name_is_the_solver_by_instance():
    # solver="schur" keeps IterativeSchur's own x_scale (Jacobi), as solver=IterativeSchur() does; the name
    # used to fall under scipy's default x_scale=1.
    from trustls.subproblem import IterativeSchur

    cameras, points = 2, 4  # camera k: (a_k, b_k), x[2k:2k+2]; point j: x[4 + j]
    a, b, p = torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), torch.arange(1.0, 5.0, dtype=F64)
    y = a[:, None] * p[None, :] + b[:, None]

    def fun(x):
        observed = x[0:4:2, None] * x[None, 4:] + x[1:4:2, None] - y
        return torch.cat([observed.reshape(-1), x[4:] - p])

    pattern = np.zeros((cameras * points + points, 2 * cameras + points))
    for k in range(cameras):
        for j in range(points):
            pattern[k * points + j, [2 * k, 2 * k + 1, 4 + j]] = 1
    pattern[cameras * points + np.arange(points), 4 + np.arange(points)] = 1
    x0 = torch.tensor([1.5, 0.2, 3.0, 0.5, 1.2, 1.8, 3.3, 3.6], dtype=F64)
    by_name = least_squares(fun, x0, jac_sparsity=pattern, solver="schur")
    by_instance = least_squares(fun, x0, jac_sparsity=pattern, solver=IterativeSchur())
    assert by_name.success and by_instance.success
    assert torch.equal(by_name.x, by_instance.x) and by_name.nfev == by_instance.nfev
    assert by_name.radius == by_instance.radius


# -- scipy users' code, found by a bug hunt ----------------------------------------------------

T20 = torch.linspace(0.0, 1.0, 20, dtype=F64)
Y20 = 2.0 * torch.exp(-1.5 * T20) + 0.3
DECAY_X0 = torch.tensor([1.0, 1.0, 0.0], dtype=F64)
DECAY_SOLUTION = torch.tensor([2.0, 1.5, 0.3], dtype=F64)


def decay(x):
    return x[0] * torch.exp(-x[1] * T20) + x[2] - Y20


def jacobian_by_functional(x):  # torch.autograd.functional differentiates fun: it needs grad mode
    return torch.autograd.functional.jacobian(decay, x)


def jacobian_by_rows(x):  # the hand-rolled form: one torch.autograd.grad per residual
    x = x.detach().requires_grad_()
    r = decay(x)
    return torch.stack([torch.autograd.grad(r[i], x, retain_graph=True)[0] for i in range(r.numel())])


@pytest.mark.parametrize("jac", [jacobian_by_functional, jacobian_by_rows], ids=["functional", "rows"])
def test_a_jac_that_differentiates_fun_with_autograd_works(jac):
    # It ran under no_grad and failed ("element 0 of tensors does not require grad").
    res = least_squares(decay, DECAY_X0, jac=jac, **TIGHT)
    assert res.success and not res.jac.requires_grad
    torch.testing.assert_close(res.x, DECAY_SOLUTION, rtol=0, atol=1e-10)
    model = trustls.GaussNewtonModel(jacobian=jac)
    res = trustls.TrustRegion(model, solver="lstsq", **TIGHT).solve(decay, DECAY_X0)
    torch.testing.assert_close(res.x, DECAY_SOLUTION, rtol=0, atol=1e-10)


def test_a_numpy_fun_with_a_jac_is_read_as_scipy_reads_it():
    t, y = T20.numpy(), Y20.numpy()

    def fun(x):  # np.asarray: the same code serves scipy, which passes an ndarray
        x = np.asarray(x)
        return x[0] * np.exp(-x[1] * t) + x[2] - y

    def jac(x):
        x = np.asarray(x)
        e = np.exp(-x[1] * t)
        return np.stack([e, -x[0] * t * e, np.ones_like(e)], axis=1)

    res = least_squares(fun, DECAY_X0, jac=jac, **TIGHT)
    reference = scipy.optimize.least_squares(fun, DECAY_X0.numpy(), jac=jac, **TIGHT)
    assert isinstance(res.fun, torch.Tensor) and res.fun.dtype == F64
    torch.testing.assert_close(res.x, torch.as_tensor(reference.x), rtol=0, atol=1e-10)


def test_numpy_integers_and_verbose_true_are_taken_as_scipy_takes_them(capsys):
    # max_nfev = 100 * arr.size is an np.int64; verbose=True is 1 for scipy's `in (0, 1, 2)`.
    res = least_squares(decay, DECAY_X0, max_nfev=np.int64(3), verbose=True)
    assert res.status == Status.MAX_NFEV and res.nfev == 3
    assert "The maximum number of function evaluations is exceeded." in capsys.readouterr().out
    res = least_squares(decay, DECAY_X0, max_nfev=np.int32(50), verbose=np.int64(0))
    assert res.success and capsys.readouterr().out == ""
    # A whole float is a count, as scipy takes it; a fraction or a bool is not.
    assert least_squares(decay, DECAY_X0, max_nfev=np.float64(3.0)).nfev == 3
    for bad in (np.float64(3.5), True):
        with pytest.raises(ValueError, match=r"max_nfev must be a positive int or None"):
            least_squares(decay, DECAY_X0, max_nfev=bad)


def test_a_one_dimensional_array_pattern_is_one_residual_row():
    # np.atleast_2d, as scipy reads jac_sparsity: a 1-D array is the row of a single residual.
    def fun(x):
        return torch.exp(x[0]) + 2.0 * x[1] - 3.0

    for pattern in (np.array([1, 1]), torch.tensor([True, True])):
        assert as_pattern(pattern).shape == (1, 2)
        res = least_squares(fun, torch.tensor([3.0, 3.0], dtype=F64), jac_sparsity=pattern)
        assert res.success and res.fun.shape == (1,) and res.cost < 1e-20


def test_scipy_valid_tr_options_values_and_sparse_results():
    """Found by a bug hunt: np.int64 and float maxiter, a 0 maxiter and a numpy float atol were refused
    naming SteihaugCG's arguments; a Result with a SparseOperator J could not be deep-copied; a 1-D
    sparse J gave an internal unpacking error."""
    import copy

    import scipy.sparse

    A = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 4.0]], dtype=F64)
    b = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    fun = lambda x: A @ x - b  # noqa: E731
    for options in ({"maxiter": np.int64(5)}, {"maxiter": 5.0}, {"maxiter": 0}, {"atol": np.float32(1e-3)}):
        res = least_squares(fun, torch.zeros(2, dtype=F64), jac=lambda x: scipy.sparse.csr_matrix(A.numpy()),
                            tr_solver="lsmr", tr_options=options)
        assert res.success
    with pytest.raises(ValueError, match=r"tr_options\['maxiter'\] must be a whole number or None, got 2\.5"):
        least_squares(fun, torch.zeros(2, dtype=F64), tr_solver="lsmr", tr_options={"maxiter": 2.5})
    res = least_squares(fun, torch.zeros(2, dtype=F64), jac_sparsity=np.ones((3, 2)))
    copied = copy.deepcopy(res)
    torch.testing.assert_close(copied.jac.matvec(torch.ones(2, dtype=F64)), res.jac.matvec(torch.ones(2, dtype=F64)))
    with pytest.raises(ValueError, match=r"jac must return a sparse tensor of 2 dimensions \(m, n\), got shape \(2,\)"):
        least_squares(lambda x: (x[0] + x[1] - 1).reshape(1), torch.zeros(2, dtype=F64),
                      jac=lambda x: torch.ones(2, dtype=F64).to_sparse())


BOX3D_T = 0.1 * torch.arange(1, 11, dtype=torch.float64)


def box3d(x):
    """MGH Box 3-D, zero residual at (1, 10, 1): from (0, 10, 20) the trust region collapses at cost ~1e-32."""
    t = BOX3D_T
    return torch.exp(-t * x[0]) - torch.exp(-t * x[1]) - x[2] * (torch.exp(-t) - torch.exp(-10 * t))


@pytest.mark.parametrize("tr_solver", ["exact", "lsmr"])
def test_a_collapsed_radius_never_names_a_disabled_xtol(tr_solver):
    """Found by a differential hunt: with xtol=None the collapse below x's rounding reported XTOL."""
    x0 = torch.tensor([0.0, 10.0, 20.0], dtype=torch.float64)
    disabled = least_squares(box3d, x0, xtol=None, gtol=None, tr_solver=tr_solver)
    assert disabled.status is Status.NOISE_FLOOR and disabled.success and disabled.cost < 1e-28
    enabled = least_squares(box3d, x0, gtol=None, tr_solver=tr_solver)
    assert enabled.status is Status.XTOL and enabled.cost < 1e-28


def test_a_collapsed_radius_never_names_a_disabled_xtol_in_a_batch():
    x0 = torch.tensor([[0.0, 10.0, 20.0], [0.0, 10.0, 20.0]], dtype=torch.float64)
    fit = trustls.TrustRegion(trustls.GaussNewtonModel(), solver="lstsq", xtol=None, gtol=None).solve_batch(
        torch.vmap(box3d), x0)
    assert fit.status.tolist() == [Status.NOISE_FLOOR.code] * 2 and bool(fit.success.all())


def test_complex_numpy_starts_are_refused():
    """Found by a differential hunt: numpy's complex arrays were cast to real with only a warning."""
    with pytest.raises(TypeError, match=r"x0 must be real, got complex128"):
        least_squares(box3d, np.array([1 + 2j, 10.0, 1.0]))
    with pytest.raises(TypeError, match=r"p0 must be real, got complex128"):
        trustls.curve_fit(lambda x, a, b: a * x + b, [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], p0=np.array([1 + 1j, 1.0]))
    with pytest.raises(TypeError, match=r"x0 must be real, got a sequence of complex numbers"):
        least_squares(box3d, [np.complex128(1 + 2j), 10.0, 1.0])
    with pytest.raises(TypeError, match=r"ydata must be real, got a sequence of complex numbers"):
        trustls.curve_fit(lambda x, a, b: a * x + b, [1.0, 2.0, 3.0], [np.complex128(1j), 2.0, 3.0])
    with pytest.raises(TypeError, match=r"ydata must be real, got torch.complex64"):
        trustls.curve_fit(lambda x, a, b: a * x + b, [1.0, 2.0, 3.0], torch.tensor([1j, 2.0, 3.0]))
    for _ in range(2):  # torch warns once per process for arrays: the refusal must not depend on it
        with pytest.raises(TypeError, match=r"x0 must be real, got complex128"):
            least_squares(box3d, np.array([1 + 2j, 10.0, 1.0]))


def test_tolerances_and_max_nfev_as_scipy_takes_them():
    """Found by a differential hunt: 0-d arrays as tolerances and a whole float max_nfev, which scipy takes."""
    x0 = torch.tensor([0.0, 10.0, 20.0], dtype=torch.float64)
    reference = least_squares(box3d, x0, ftol=1e-8, xtol=1e-8, gtol=1e-6, max_nfev=50)
    result = least_squares(box3d, x0, ftol=np.array(1e-8), xtol=torch.tensor(1e-8), gtol=np.float32(1e-6).reshape(()),
                           max_nfev=50.0)
    assert torch.equal(result.x, reference.x) and result.nfev == reference.nfev
    with pytest.raises(ValueError, match=r"max_nfev must be a positive int or None, got 50.5"):
        least_squares(box3d, x0, max_nfev=50.5)
    with pytest.raises(ValueError, match=r"ftol must be a finite non-negative number or None, got array\(\[1.e-08, 1.e-08\]\)"):
        least_squares(box3d, x0, ftol=np.array([1e-8, 1e-8]))
