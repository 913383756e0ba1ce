"""scipy's own tests of ``least_squares``, ported to torch residuals and `trustls.least_squares`.

The source is ``scipy/optimize/tests/test_least_squares.py`` (scipy 1.17):
`BaseMixin`, `BoundsMixin`, `SparseMixin` and `LossFunctionMixin` as run by
``TestTRF``, then ``TestLM`` and the module-level tests, in scipy's order and
with scipy's names. The residual functions are the same functions written with
torch; the loops of scipy's tests over ``jac``, ``x_scale`` and ``tr_solver``
are pytest parameters here, so that each combination passes or fails alone.

Where trustls differs from scipy by design (docs/coming-from-scipy.md), the
test asserts trustls' behaviour instead and says why:

* ``jac="2-point"``, ``"3-point"``, ``"cs"`` all mean the exact Jacobian by
  automatic differentiation, so tests that compare them with a callable
  ``jac`` hold to rounding, not to a finite difference's error;
* ``method="dogbox"`` is a clear ``ValueError`` (``TestDogbox`` is not ported;
  `test_dogbox_is_a_clear_error` checks the error);
* ``nfev`` counts every call of ``fun``; ``njev`` counts linearizations, also
  for ``method="lm"`` (scipy: ``None``);
* ``method="lm"`` is Moré's trust-region Levenberg-Marquardt run by trustls'
  exact solver: it takes what that solver takes (fewer residuals than
  variables, sparse and operator Jacobians, robust losses, callbacks), where
  MINPACK refuses them; bounds are refused, as in scipy;
* ``tr_solver="exact"`` factors a sparse or operator Jacobian densely, where
  scipy refuses; ``x_scale="jac"`` works for an operator Jacobian (its column
  norms come from products), where scipy refuses;
* a residual function must return a tensor of ``x0``'s dtype (torch does not
  compute a float64 solve on float32 residuals silently).

scipy's solver and helpers are called only through `tests/scipy_oracle.py`; its types
(``Bounds``, sparse arrays, ``LinearOperator``) appear here as the inputs users pass.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_equal
from scipy.optimize import Bounds
from scipy.sparse import lil_array
from scipy.sparse.linalg import aslinearoperator
from scipy_oracle import scipy_cl_scaling_vector, scipy_make_strictly_feasible

from trustls import IterationInfo, Status, least_squares
from trustls.operators import SparseOperator

F64 = torch.float64
EPS = np.finfo(float).eps  # scipy's optimize._lsq.common.EPS


def a(t):
    """A tensor (or anything else) as a numpy array, for numpy.testing's assertions."""
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


# -- scipy's test functions, in torch ----------------------------------------------


def fun_trivial(x, a=0):
    return (x - a) ** 2 + 5.0


def jac_trivial(x, a=0.0):
    return 2 * (x - a)  # 1-D for the one residual: scipy reads it as a (1, n) row


def fun_2d_trivial(x):
    return torch.stack([x[0], x[1]])


def jac_2d_trivial(x):
    return torch.eye(2, dtype=F64)


def fun_rosenbrock(x):
    return torch.stack([10 * (x[1] - x[0] ** 2), (1 - x[0])])


class Fun_Rosenbrock:
    def __init__(self):
        self.nfev = 0

    def __call__(self, x, a=0):
        self.nfev += 1
        return fun_rosenbrock(x)


def jac_rosenbrock(x):
    return torch.stack([torch.stack([-20 * x[0], torch.full_like(x[0], 10.0)]),
                        torch.stack([torch.full_like(x[0], -1.0), torch.zeros_like(x[0])])])


def jac_rosenbrock_bad_dim(x):
    return torch.cat([jac_rosenbrock(x), torch.zeros(1, 2, dtype=x.dtype)])


def fun_rosenbrock_cropped(x):
    return fun_rosenbrock(x)[0]  # 0-d: scipy reads a scalar residual as one residual


def jac_rosenbrock_cropped(x):
    return jac_rosenbrock(x)[0]


# When x is 1-D array, return is 2-D array.
def fun_wrong_dimensions(x):
    return torch.stack([x, x**2, x**3])


def jac_wrong_dimensions(x, a=0.0):
    return jac_trivial(x, a=a)[:, None, None]  # numpy's atleast_3d of a 1-D array


def fun_bvp(x):
    n = math.isqrt(x.shape[0])
    u = torch.nn.functional.pad(x.reshape(n, n), (1, 1, 1, 1))
    x = x.reshape((n, n))
    y = u[:-2, 1:-1] + u[2:, 1:-1] + u[1:-1, :-2] + u[1:-1, 2:] - 4 * x + x**3
    return y.ravel()


class BroydenTridiagonal:
    """scipy's problem and data (the same numpy generator); ``fun`` in torch, ``jac`` in numpy and scipy.sparse."""

    def __init__(self, n=100, mode="sparse"):
        rng = np.random.default_rng(123440)

        self.n = n

        self.x0 = -np.ones(n)
        self.lb = np.linspace(-2, -1.5, n)
        self.ub = np.linspace(-0.8, 0.0, n)

        self.lb += 0.1 * rng.standard_normal(n)
        self.ub += 0.1 * rng.standard_normal(n)

        self.x0 += 0.1 * rng.standard_normal(n)
        self.x0 = scipy_make_strictly_feasible(self.x0, self.lb, self.ub)

        if mode == "sparse":
            self.sparsity = lil_array((n, n), dtype=int)
            i = np.arange(n)
            self.sparsity[i, i] = 1
            i = np.arange(1, n)
            self.sparsity[i, i - 1] = 1
            i = np.arange(n - 1)
            self.sparsity[i, i + 1] = 1

            self.jac = self._jac
        elif mode == "operator":
            self.jac = lambda x: aslinearoperator(self._jac(x))
        elif mode == "dense":
            self.sparsity = None
            self.jac = lambda x: self._jac(x).toarray()
        else:
            raise AssertionError(mode)

    def fun(self, x):
        f = (3 - x) * x + 1
        f[1:] -= x[:-1]  # in place on f, a new tensor: allowed (x itself must not be modified)
        f[:-1] -= 2 * x[1:]
        return f

    def _jac(self, x):
        x = np.asarray(x)
        J = lil_array((self.n, self.n))
        i = np.arange(self.n)
        J[i, i] = 3 - 2 * x
        i = np.arange(1, self.n)
        J[i, i - 1] = -1
        i = np.arange(self.n - 1)
        J[i, i + 1] = -2
        return J


class ExponentialFittingProblem:
    """Provide data and function for exponential fitting in the form
    y = a + exp(b * x) + noise."""

    def __init__(self, a, b, noise, n_outliers=1, x_range=(-1, 1), n_points=11, rng=None):
        rng = np.random.default_rng(rng)
        self.m = n_points
        self.n = 2

        self.p0 = np.zeros(2)
        self.x = np.linspace(x_range[0], x_range[1], n_points)

        self.y = a + np.exp(b * self.x)
        self.y += noise * rng.standard_normal(self.m)

        outliers = rng.integers(0, self.m, n_outliers)
        self.y[outliers] += 50 * noise * rng.random(n_outliers)

        self.p_opt = np.array([a, b])
        self.xt, self.yt = torch.from_numpy(self.x), torch.from_numpy(self.y)

    def fun(self, p):
        return p[0] + torch.exp(p[1] * self.xt) - self.yt

    def jac(self, p):
        return torch.stack([torch.ones_like(self.xt), self.xt * torch.exp(p[1] * self.xt)], dim=1)


def cubic_soft_l1(z):
    t = 1 + z
    return torch.stack([3 * (t ** (1 / 3) - 1), t ** (-2 / 3), -2 / 3 * t ** (-5 / 3)])


IMPLEMENTED_LOSSES = ["linear", "huber", "soft_l1", "cauchy", "arctan"]
LOSSES = IMPLEMENTED_LOSSES + [cubic_soft_l1]
LOSS_IDS = IMPLEMENTED_LOSSES + ["cubic_soft_l1"]
FD_JACS = ["2-point", "3-point", "cs"]


def jacs(callable_jac):
    return pytest.mark.parametrize("jac", FD_JACS + [callable_jac], ids=FD_JACS + [callable_jac.__name__])


X_SCALES = pytest.mark.parametrize("x_scale", [1.0, np.array([1.0, 0.2]), "jac"], ids=["1", "array", "jac"])
TR_SOLVERS = pytest.mark.parametrize("tr_solver", ["exact", "lsmr"])


class BaseMixin:
    def test_basic(self):
        # Test that the basic calling sequence works.
        res = least_squares(fun_trivial, 2.0, method=self.method)
        assert_allclose(a(res.x), 0, atol=1e-4)
        assert_allclose(a(res.fun), a(fun_trivial(res.x)))

    @jacs(jac_trivial)
    def test_args_kwargs(self, jac):
        # Test that args and kwargs are passed correctly to the functions.
        a_ = 3.0
        res = least_squares(fun_trivial, 2.0, jac, args=(a_,), method=self.method)
        res1 = least_squares(fun_trivial, 2.0, jac, kwargs={"a": a_}, method=self.method)

        assert_allclose(a(res.x), a_, rtol=1e-4)
        assert_allclose(a(res1.x), a_, rtol=1e-4)

        with pytest.raises(TypeError, match="positional argument"):
            least_squares(fun_trivial, 2.0, args=(3, 4), method=self.method)
        with pytest.raises(TypeError, match="unexpected keyword argument 'kaboom'"):
            least_squares(fun_trivial, 2.0, kwargs={"kaboom": 3}, method=self.method)

    @jacs(jac_trivial)
    def test_jac_options(self, jac):
        res = least_squares(fun_trivial, 2.0, jac, method=self.method)
        assert_allclose(a(res.x), 0, atol=1e-4)

        with pytest.raises(ValueError, match=r"jac must be a callable or one of \['2-point', '3-point', 'cs'\], got 'oops'"):
            least_squares(fun_trivial, 2.0, jac="oops", method=self.method)

    @pytest.mark.parametrize("max_nfev", [None, 20])
    def test_nfev_options(self, max_nfev):
        res = least_squares(fun_trivial, 2.0, max_nfev=max_nfev, method=self.method)
        assert_allclose(a(res.x), 0, atol=1e-4)

    @pytest.mark.parametrize("x_scale", [1.0, np.array([0.5]), "jac"], ids=["1", "array", "jac"])
    def test_x_scale_options(self, x_scale):
        res = least_squares(fun_trivial, 2.0, x_scale=x_scale)
        # scipy's atol is 1e-7 (assert_allclose's default rtol against 0): the minimum of x² + 5.
        assert_allclose(a(res.x), 0, atol=1e-7)
        with pytest.raises(ValueError, match="x_scale must be 'jac', a positive number"):
            least_squares(fun_trivial, 2.0, x_scale="auto", method=self.method)
        with pytest.raises(ValueError, match="x_scale must be 'jac', a positive number"):
            least_squares(fun_trivial, 2.0, x_scale=-1.0, method=self.method)
        with pytest.raises(ValueError, match="x_scale must be 'jac', a positive number"):
            least_squares(fun_trivial, 2.0, x_scale=1.0 + 2.0j, method=self.method)

    def test_diff_step(self):
        # diff_step is accepted and unused: the Jacobian is exact.
        res1 = least_squares(fun_trivial, 2.0, diff_step=1e-1, method=self.method)
        res3 = least_squares(fun_trivial, 2.0, diff_step=None, method=self.method)
        assert_allclose(a(res1.x), 0, atol=1e-4)
        assert_allclose(a(res3.x), 0, atol=1e-4)
        assert_equal(a(res1.x), a(res3.x))

    def test_incorrect_options_usage(self):
        with pytest.raises(TypeError, match="unexpected keyword argument 'options'"):
            least_squares(fun_trivial, 2.0, method=self.method, options={"no_such_option": 100})
        with pytest.raises(TypeError, match="unexpected keyword argument 'options'"):
            least_squares(fun_trivial, 2.0, method=self.method, options={"max_nfev": 100})

    def test_full_result(self):
        # MINPACK doesn't work very well with factor=100 on this problem,
        # thus using low 'atol'.
        res = least_squares(fun_trivial, 2.0, method=self.method)
        assert_allclose(a(res.x), 0, atol=1e-4)
        assert_allclose(res.cost, 12.5)
        assert_allclose(a(res.fun), 5)
        assert_allclose(a(res.jac), 0, atol=1e-4)
        assert_allclose(a(res.grad), 0, atol=1e-2)
        assert_allclose(res.optimality, 0, atol=1e-2)
        assert_equal(a(res.active_mask), 0)
        # scipy's bounds: nfev < 25 for "lm" (MINPACK's factor=100 overshoots here), < 10 otherwise.
        # scipy's "lm" reports njev=None; trustls counts linearizations for every method.
        assert res.nfev < (25 if self.method == "lm" else 10)
        assert res.njev < (25 if self.method == "lm" else 10)
        assert res.status > 0
        assert res.success

    def test_full_result_single_fev(self):
        # trustls runs "lm" by its own controller, so max_nfev=1 means the same for every method.
        res = least_squares(fun_trivial, 2.0, method=self.method, max_nfev=1)
        assert_equal(a(res.x), np.array([2]))
        assert_equal(res.cost, 40.5)
        assert_equal(a(res.fun), np.array([9]))
        assert_equal(a(res.jac), np.array([[4]]))
        assert_equal(a(res.grad), np.array([36]))
        assert_equal(res.optimality, 36)
        assert_equal(a(res.active_mask), np.array([0]))
        assert_equal(res.nfev, 1)
        assert_equal(res.njev, 1)
        assert_equal(res.status, 0)
        assert_equal(res.success, 0)

    @pytest.mark.parametrize("max_nfev", [1, 2])
    def test_nfev(self, max_nfev):
        # checks that the true number of nfev are being consumed
        rng = np.random.default_rng(128908)
        x0 = rng.uniform(size=2) * 10
        ftrivial = Fun_Rosenbrock()
        res = least_squares(ftrivial, x0, jac=jac_rosenbrock, method=self.method, max_nfev=max_nfev)
        assert res.nfev == ftrivial.nfev

    @jacs(jac_rosenbrock)
    @X_SCALES
    @TR_SOLVERS
    def test_rosenbrock(self, jac, x_scale, tr_solver):
        x0 = [-2, 1]
        x_opt = [1, 1]
        res = least_squares(fun_rosenbrock, x0, jac, x_scale=x_scale, tr_solver=tr_solver, method=self.method)
        assert_allclose(a(res.x), x_opt)

    @jacs(jac_rosenbrock_cropped)
    @X_SCALES
    @TR_SOLVERS
    def test_rosenbrock_cropped(self, jac, x_scale, tr_solver):
        # scipy's "lm" raises here (MINPACK needs m >= n); trustls' "lm" is its exact
        # trust-region solver, which takes m < n, so every method must reach a zero cost.
        x0 = [-2, 1]
        res = least_squares(fun_rosenbrock_cropped, x0, jac, x_scale=x_scale, tr_solver=tr_solver, method=self.method)
        assert_allclose(res.cost, 0, atol=1e-14)

    def test_fun_wrong_dimensions(self):
        with pytest.raises(ValueError, match=r"fun must return a 1-D tensor, got shape \(3, 1\)"):
            least_squares(fun_wrong_dimensions, 2.0, method=self.method)

    def test_jac_wrong_dimensions(self):
        with pytest.raises(ValueError, match=r"jac must return an array of at most 2 dimensions, got shape \(1, 1, 1\)"):
            least_squares(fun_trivial, 2.0, jac_wrong_dimensions, method=self.method)

    def test_fun_and_jac_inconsistent_dimensions(self):
        x0 = [1, 2]
        with pytest.raises(ValueError, match=r"jacobian must return shape \(2, 2\), got \(3, 2\)"):
            least_squares(fun_rosenbrock, x0, jac_rosenbrock_bad_dim, method=self.method)

    def test_x0_multidimensional(self):
        x0 = np.ones(4).reshape(2, 2)
        with pytest.raises(ValueError, match=r"x0 must be a non-empty 1-D tensor, got shape \(2, 2\)"):
            least_squares(fun_trivial, x0, method=self.method)

    def test_x0_complex_scalar(self):
        # A complex x0 is a TypeError in trustls (a wrong type; STYLE.md), a ValueError in scipy.
        x0 = 2.0 + 0.0 * 1j
        with pytest.raises(TypeError, match="x0 must be"):
            least_squares(fun_trivial, x0, method=self.method)

    def test_x0_complex_array(self):
        x0 = [1.0, 2.0 + 0.0 * 1j]
        with pytest.raises(TypeError, match="x0 must be"):
            least_squares(fun_trivial, x0, method=self.method)

    def test_bvp(self):
        # This test was introduced with fix #5556. It turned out that
        # dogbox solver had a bug with trust-region radius update, which
        # could block its progress and create an infinite loop. And this
        # discrete boundary value problem is the one which triggers it.
        n = 10
        x0 = np.ones(n**2)
        # scipy's "lm" needs 5000 to pay for its finite differences; trustls' Jacobian costs no call of fun.
        max_nfev = 100
        res = least_squares(fun_bvp, x0, ftol=1e-2, method=self.method, max_nfev=max_nfev)

        assert res.nfev < max_nfev
        assert res.cost < 0.5

    def test_error_raised_when_all_tolerances_below_eps(self):
        # Test that all 0 tolerances are not allowed.
        with pytest.raises(ValueError, match="ftol, xtol and gtol must not all be None"):
            least_squares(fun_trivial, 2.0, method=self.method, ftol=None, xtol=None, gtol=None)

    @pytest.mark.parametrize("ftol, xtol, gtol", [(1e-8, None, None), (None, 1e-8, None), (None, None, 1e-8)])
    def test_convergence_with_only_one_tolerance_enabled(self, ftol, xtol, gtol):
        # scipy skips "lm" (MINPACK needs all three); trustls' controller runs any one of them for every method.
        x0 = [-2, 1]
        x_opt = [1, 1]
        res = least_squares(fun_rosenbrock, x0, jac=jac_rosenbrock, ftol=ftol, gtol=gtol, xtol=xtol,
                            method=self.method)
        assert_allclose(a(res.x), x_opt)

    def test_workers(self):
        # workers is accepted and unused (no finite differences to spread). scipy also passes a
        # multiprocessing Pool's map; the builtin map is the same kind of callable without the processes.
        serial = least_squares(fun_trivial, 2.0, method=self.method)

        reses = []
        for workers in [None, 2, map]:
            res = least_squares(fun_trivial, 2.0, method=self.method, workers=workers)
            reses.append(res)
        for res in reses:
            assert res.success
            assert_equal(a(res.x), a(serial.x))
            assert_equal(res.nfev, serial.nfev)
            assert_equal(res.njev, serial.njev)


class BoundsMixin:
    def test_inconsistent(self):
        with pytest.raises(ValueError, match="bounds must have lb < ub"):
            least_squares(fun_trivial, 2.0, bounds=(10.0, 0.0), method=self.method)

    def test_infeasible(self):
        with pytest.raises(ValueError, match="x0 must lie within the bounds"):
            least_squares(fun_trivial, 2.0, bounds=(3.0, 4), method=self.method)

    def test_wrong_number(self):
        with pytest.raises(ValueError, match=r"bounds must be a pair \(lb, ub\), got tuple of length 3"):
            least_squares(fun_trivial, 2.0, bounds=(1.0, 2, 3), method=self.method)

    def test_inconsistent_shape(self):
        with pytest.raises(ValueError, match=r"bounds must be scalars or have x0's shape \(1,\), got ub of shape \(2,\)"):
            least_squares(fun_trivial, 2.0, bounds=(1.0, [2.0, 3.0]), method=self.method)
        # 1-D array won't be broadcast
        with pytest.raises(ValueError, match=r"bounds must be scalars or have x0's shape \(2,\), got lb of shape \(1,\)"):
            least_squares(fun_rosenbrock, [1.0, 2.0], bounds=([0.0], [3.0, 4.0]), method=self.method)

    @jacs(jac_trivial)
    def test_in_bounds(self, jac):
        res = least_squares(fun_trivial, 2.0, jac=jac, bounds=(-1.0, 3.0), method=self.method)
        assert_allclose(a(res.x), 0.0, atol=1e-4)
        assert_equal(a(res.active_mask), [0])
        assert -1 <= res.x <= 3
        res = least_squares(fun_trivial, 2.0, jac=jac, bounds=(0.5, 3.0), method=self.method)
        assert_allclose(a(res.x), 0.5, atol=1e-4)
        assert_equal(a(res.active_mask), [-1])
        assert 0.5 <= res.x <= 3

    @jacs(jac_2d_trivial)
    @pytest.mark.parametrize("bounds_func", [lambda lb, ub: (lb, ub), Bounds], ids=["direct", "instances"])
    def test_bounds_shape(self, jac, bounds_func):
        x0 = [1.0, 1.0]
        res = least_squares(fun_2d_trivial, x0, jac=jac)
        assert_allclose(a(res.x), [0.0, 0.0])
        res = least_squares(fun_2d_trivial, x0, jac=jac, bounds=bounds_func(0.5, [2.0, 2.0]), method=self.method)
        assert_allclose(a(res.x), [0.5, 0.5])
        res = least_squares(fun_2d_trivial, x0, jac=jac, bounds=bounds_func([0.3, 0.2], 3.0), method=self.method)
        assert_allclose(a(res.x), [0.3, 0.2])
        res = least_squares(fun_2d_trivial, x0, jac=jac, bounds=bounds_func([-1, 0.5], [1.0, 3.0]),
                            method=self.method)
        assert_allclose(a(res.x), [0.0, 0.5], atol=1e-5)

    def test_bounds_instances(self):
        res = least_squares(fun_trivial, 0.5, bounds=Bounds())
        assert_allclose(a(res.x), 0.0, atol=1e-4)

        res = least_squares(fun_trivial, 3.0, bounds=Bounds(lb=1.0))
        assert_allclose(a(res.x), 1.0, atol=1e-4)

        res = least_squares(fun_trivial, 0.5, bounds=Bounds(lb=-1.0, ub=1.0))
        assert_allclose(a(res.x), 0.0, atol=1e-4)

        res = least_squares(fun_trivial, -3.0, bounds=Bounds(ub=-1.0))
        assert_allclose(a(res.x), -1.0, atol=1e-4)

        res = least_squares(fun_2d_trivial, [0.5, 0.5], bounds=Bounds(lb=[-1.0, -1.0], ub=1.0))
        assert_allclose(a(res.x), [0.0, 0.0], atol=1e-5)

        res = least_squares(fun_2d_trivial, [0.5, 0.5], bounds=Bounds(lb=[0.1, 0.1]))
        assert_allclose(a(res.x), [0.1, 0.1], atol=1e-5)

    ROSENBROCK_BOUNDED = (
        (np.array([-2.0, 1.0]), ([-np.inf, -1.5], np.inf)),
        (np.array([2.0, 2.0]), ([-np.inf, 1.5], np.inf)),
        (np.array([-2.0, 2.0]), ([-np.inf, 1.5], np.inf)),
        (np.array([0.0, 2.0]), ([-np.inf, 1.5], [1.0, np.inf])),
        (np.array([2.0, 2.0]), ([1.0, 1.5], [3.0, 3.0])),
        (np.array([-1.2, 1.0]), ([-50.0, 0.0], [0.5, 100])),
    )

    @pytest.mark.parametrize("problem", range(6))
    @pytest.mark.parametrize("x_scale", [1.0, [1.0, 0.5], "jac"], ids=["1", "list", "jac"])
    @TR_SOLVERS
    def test_rosenbrock_bounds(self, problem, x_scale, tr_solver):
        x0, bounds = self.ROSENBROCK_BOUNDED[problem]
        for jac in FD_JACS + [jac_rosenbrock]:
            res = least_squares(fun_rosenbrock, x0, jac, bounds, x_scale=x_scale, tr_solver=tr_solver,
                                method=self.method)
            assert_allclose(res.optimality, 0.0, atol=1e-5)


class SparseMixin:
    def test_exact_tr_solver(self):
        # scipy refuses tr_solver="exact" with a sparse J; trustls factors J.to_dense() (it is what
        # "exact" asks for), so the solve must succeed instead.
        p = BroydenTridiagonal()
        res = least_squares(p.fun, p.x0, p.jac, tr_solver="exact", method=self.method)
        assert_allclose(res.cost, 0, atol=1e-20)
        assert isinstance(res.jac, torch.Tensor) and res.jac.layout == torch.strided
        res = least_squares(p.fun, p.x0, tr_solver="exact", jac_sparsity=p.sparsity, method=self.method)
        assert_allclose(res.cost, 0, atol=1e-20)

    def test_equivalence(self):
        sparse = BroydenTridiagonal(mode="sparse")
        dense = BroydenTridiagonal(mode="dense")
        res_sparse = least_squares(sparse.fun, sparse.x0, jac=sparse.jac, method=self.method)
        res_dense = least_squares(dense.fun, dense.x0, jac=sparse.jac, method=self.method)
        assert_equal(res_sparse.nfev, res_dense.nfev)
        assert_allclose(a(res_sparse.x), a(res_dense.x), atol=1e-20)
        assert_allclose(res_sparse.cost, 0, atol=1e-20)
        assert_allclose(res_dense.cost, 0, atol=1e-20)

    def test_tr_options(self):
        p = BroydenTridiagonal()
        res = least_squares(p.fun, p.x0, p.jac, method=self.method, tr_options={"btol": 1e-10})
        assert_allclose(res.cost, 0, atol=1e-20)

    def test_wrong_parameters(self):
        p = BroydenTridiagonal()
        with pytest.raises(ValueError, match="tr_solver must be None, 'exact' or 'lsmr', got 'best'"):
            least_squares(p.fun, p.x0, p.jac, tr_solver="best", method=self.method)
        with pytest.raises(TypeError, match="tr_options got an unexpected option 'tol'"):
            least_squares(p.fun, p.x0, p.jac, tr_solver="lsmr", tr_options={"tol": 1e-10})

    def test_solver_selection(self):
        sparse = BroydenTridiagonal(mode="sparse")
        dense = BroydenTridiagonal(mode="dense")
        res_sparse = least_squares(sparse.fun, sparse.x0, jac=sparse.jac, method=self.method)
        res_dense = least_squares(dense.fun, dense.x0, jac=dense.jac, method=self.method)
        assert_allclose(res_sparse.cost, 0, atol=1e-20)
        assert_allclose(res_dense.cost, 0, atol=1e-20)
        # scipy: a scipy.sparse matrix and an ndarray; trustls: a SparseOperator and a dense tensor.
        assert isinstance(res_sparse.jac, SparseOperator)
        assert isinstance(res_dense.jac, torch.Tensor)

    @pytest.mark.parametrize("jac", FD_JACS)
    def test_numerical_jac(self, jac):
        p = BroydenTridiagonal()
        res_dense = least_squares(p.fun, p.x0, jac, method=self.method)
        res_sparse = least_squares(p.fun, p.x0, jac, method=self.method, jac_sparsity=p.sparsity)
        assert_equal(res_dense.nfev, res_sparse.nfev)
        assert_allclose(a(res_dense.x), a(res_sparse.x), atol=1e-20)
        assert_allclose(res_dense.cost, 0, atol=1e-20)
        assert_allclose(res_sparse.cost, 0, atol=1e-20)

    @pytest.mark.parametrize("jac", ["sparse"] + FD_JACS)
    @pytest.mark.parametrize("with_sparsity", [False, True], ids=["no_sparsity", "jac_sparsity"])
    def test_with_bounds(self, jac, with_sparsity):
        p = BroydenTridiagonal()
        jac = p.jac if jac == "sparse" else jac
        # scipy ignores jac_sparsity beside a callable jac; trustls refuses the pair (below).
        jac_sparsity = p.sparsity if with_sparsity and not callable(jac) else None
        res_1 = least_squares(p.fun, p.x0, jac, bounds=(p.lb, np.inf), method=self.method, jac_sparsity=jac_sparsity)
        res_2 = least_squares(p.fun, p.x0, jac, bounds=(-np.inf, p.ub), method=self.method, jac_sparsity=jac_sparsity)
        res_3 = least_squares(p.fun, p.x0, jac, bounds=(p.lb, p.ub), method=self.method, jac_sparsity=jac_sparsity)
        assert_allclose(res_1.optimality, 0, atol=1e-10)
        assert_allclose(res_2.optimality, 0, atol=1e-10)
        assert_allclose(res_3.optimality, 0, atol=1e-10)
        if with_sparsity and callable(jac):
            with pytest.raises(ValueError, match="pass at most one of a callable jac and jac_sparsity"):
                least_squares(p.fun, p.x0, jac, method=self.method, jac_sparsity=p.sparsity)

    def test_wrong_jac_sparsity(self):
        p = BroydenTridiagonal()
        sparsity = p.sparsity[:-1]
        with pytest.raises(ValueError, match=r"jac_sparsity must have shape \(100, 100\)"):
            least_squares(p.fun, p.x0, jac_sparsity=sparsity, method=self.method)

    def test_linear_operator(self):
        p = BroydenTridiagonal(mode="operator")
        res = least_squares(p.fun, p.x0, p.jac, method=self.method)
        assert_allclose(res.cost, 0.0, atol=1e-20)
        # scipy refuses tr_solver="exact" with an operator; trustls densifies it by n products.
        res = least_squares(p.fun, p.x0, p.jac, method=self.method, tr_solver="exact")
        assert_allclose(res.cost, 0.0, atol=1e-20)

    def test_x_scale_jac_scale(self):
        p = BroydenTridiagonal()
        res = least_squares(p.fun, p.x0, p.jac, method=self.method, x_scale="jac")
        assert_allclose(res.cost, 0.0, atol=1e-20)

        # scipy refuses x_scale="jac" with an operator; trustls takes its column norms from products.
        p = BroydenTridiagonal(mode="operator")
        res = least_squares(p.fun, p.x0, p.jac, method=self.method, x_scale="jac")
        assert_allclose(res.cost, 0.0, atol=1e-20)


# Like scipy's, trustls' exact solver puts a boundary step on the boundary (``p *= Delta /
# norm(p)``): on x² + 5 from x0 = 2 (Δ = |x0|) the first step lands on 0 exactly.
LOSS_PARAMS = [pytest.param(loss, id=name) for loss, name in zip(LOSSES, LOSS_IDS)]


class LossFunctionMixin:
    @pytest.mark.parametrize("loss", ["soft_l1", "huber", "cauchy", "arctan", lambda z: torch.stack([z, 1 + 0 * z, 0 * z])])
    def test_fun_wrong_dimensions_with_a_robust_loss(self, loss):
        # Found by a hunt: with a robust loss a (3, 1) residual was flattened silently (scipy refuses it).
        with pytest.raises(ValueError, match=r"fun must return a 1-D tensor, got shape \(3, 1\)"):
            least_squares(fun_wrong_dimensions, 2.0, method=self.method, loss=loss)

    @pytest.mark.parametrize("loss", LOSS_PARAMS)
    def test_options(self, loss):
        res = least_squares(fun_trivial, 2.0, loss=loss, method=self.method)
        assert_allclose(a(res.x), 0, atol=1e-15)

        with pytest.raises(ValueError, match="hinge"):
            least_squares(fun_trivial, 2.0, loss="hinge", method=self.method)

    @pytest.mark.parametrize("loss", LOSSES, ids=LOSS_IDS)
    def test_fun(self, loss):
        # Test that res.fun is actual residuals, and not modified by loss
        # function stuff.
        res = least_squares(fun_trivial, 2.0, loss=loss, method=self.method)
        assert_equal(a(res.fun), a(fun_trivial(res.x)))

    def test_grad(self):
        # Test that res.grad is true gradient of loss function at the
        # solution. Use max_nfev = 1, to avoid reaching minimum.
        x = np.array([2.0])  # res.x will be this.

        res = least_squares(fun_trivial, x, jac_trivial, loss="linear", max_nfev=1, method=self.method)
        assert_equal(a(res.grad), 2 * x * (x**2 + 5))

        res = least_squares(fun_trivial, x, jac_trivial, loss="huber", max_nfev=1, method=self.method)
        assert_equal(a(res.grad), 2 * x)

        res = least_squares(fun_trivial, x, jac_trivial, loss="soft_l1", max_nfev=1, method=self.method)
        assert_allclose(a(res.grad), 2 * x * (x**2 + 5) / (1 + (x**2 + 5) ** 2) ** 0.5)

        res = least_squares(fun_trivial, x, jac_trivial, loss="cauchy", max_nfev=1, method=self.method)
        assert_allclose(a(res.grad), 2 * x * (x**2 + 5) / (1 + (x**2 + 5) ** 2))

        res = least_squares(fun_trivial, x, jac_trivial, loss="arctan", max_nfev=1, method=self.method)
        assert_allclose(a(res.grad), 2 * x * (x**2 + 5) / (1 + (x**2 + 5) ** 4))

        res = least_squares(fun_trivial, x, jac_trivial, loss=cubic_soft_l1, max_nfev=1, method=self.method)
        assert_allclose(a(res.grad), 2 * x * (x**2 + 5) / (1 + (x**2 + 5) ** 2) ** (2 / 3))

    def test_jac(self):
        # Test that res.jac.T.dot(res.jac) gives Gauss-Newton approximation
        # of Hessian. This approximation is computed by doubly differentiating
        # the cost function and dropping the part containing second derivative
        # of f. For a scalar function it is computed as
        # H = (rho' + 2 * rho'' * f**2) * f'**2, if the expression inside the
        # brackets is less than EPS it is replaced by EPS. Here, we check
        # against the root of H.

        x = 2.0  # res.x will be this.
        f = x**2 + 5  # res.fun will be this.

        res = least_squares(fun_trivial, x, jac_trivial, loss="linear", max_nfev=1, method=self.method)
        assert_equal(a(res.jac), 2 * x)

        # For `huber` loss the Jacobian correction is identically zero
        # in outlier region, in such cases it is modified to be equal EPS**0.5.
        res = least_squares(fun_trivial, x, jac_trivial, loss="huber", max_nfev=1, method=self.method)
        assert_equal(a(res.jac), 2 * x * EPS**0.5)

        # Now, let's apply `loss_scale` to turn the residual into an inlier.
        # The loss function becomes linear.
        res = least_squares(fun_trivial, x, jac_trivial, loss="huber", f_scale=10, max_nfev=1)
        assert_equal(a(res.jac), 2 * x)

        # 'soft_l1' always gives a positive scaling.
        res = least_squares(fun_trivial, x, jac_trivial, loss="soft_l1", max_nfev=1, method=self.method)
        assert_allclose(a(res.jac), 2 * x * (1 + f**2) ** -0.75)

        # For 'cauchy' the correction term turns out to be negative, and it
        # replaced by EPS**0.5.
        res = least_squares(fun_trivial, x, jac_trivial, loss="cauchy", max_nfev=1, method=self.method)
        assert_allclose(a(res.jac), 2 * x * EPS**0.5)

        # Now use scaling to turn the residual to inlier.
        res = least_squares(fun_trivial, x, jac_trivial, loss="cauchy", f_scale=10, max_nfev=1, method=self.method)
        fs = f / 10
        assert_allclose(a(res.jac), 2 * x * (1 - fs**2) ** 0.5 / (1 + fs**2))

        # 'arctan' gives an outlier.
        res = least_squares(fun_trivial, x, jac_trivial, loss="arctan", max_nfev=1, method=self.method)
        assert_allclose(a(res.jac), 2 * x * EPS**0.5)

        # Turn to inlier.
        res = least_squares(fun_trivial, x, jac_trivial, loss="arctan", f_scale=20.0, max_nfev=1, method=self.method)
        fs = f / 20
        assert_allclose(a(res.jac), 2 * x * (1 - 3 * fs**4) ** 0.5 / (1 + fs**4))

        # cubic_soft_l1 will give an outlier.
        res = least_squares(fun_trivial, x, jac_trivial, loss=cubic_soft_l1, max_nfev=1)
        assert_allclose(a(res.jac), 2 * x * EPS**0.5)

        # Turn to inlier.
        res = least_squares(fun_trivial, x, jac_trivial, loss=cubic_soft_l1, f_scale=6, max_nfev=1)
        fs = f / 6
        assert_allclose(a(res.jac), 2 * x * (1 - fs**2 / 3) ** 0.5 * (1 + fs**2) ** (-5 / 6))

    @pytest.mark.parametrize("noise", [0.1, 1.0])
    @pytest.mark.parametrize("jac", FD_JACS + ["callable"])
    def test_robustness(self, noise, jac):
        p = ExponentialFittingProblem(1, 0.1, noise, rng=12220903)
        jac = p.jac if jac == "callable" else jac
        res_lsq = least_squares(p.fun, p.p0, jac=jac, method=self.method)
        assert_allclose(res_lsq.optimality, 0, atol=1e-2)
        for loss in LOSSES:
            if loss == "linear":
                continue
            res_robust = least_squares(p.fun, p.p0, jac=jac, loss=loss, f_scale=noise, method=self.method)
            assert_allclose(res_robust.optimality, 0, atol=1e-2)
            assert np.linalg.norm(a(res_robust.x) - p.p_opt) < np.linalg.norm(a(res_lsq.x) - p.p_opt)


def test_dogbox_is_a_clear_error():
    # scipy's TestDogbox runs the mixins with method="dogbox"; trustls does not offer it.
    with pytest.raises(ValueError, match="method='dogbox' is not supported: use method='trf'"):
        least_squares(fun_trivial, 2.0, method="dogbox")


class TestTRF(BaseMixin, BoundsMixin, SparseMixin, LossFunctionMixin):
    method = "trf"

    @pytest.mark.parametrize("regularize", [True, False])
    def test_lsmr_regularization(self, regularize):
        p = BroydenTridiagonal()
        res = least_squares(p.fun, p.x0, p.jac, method="trf", tr_options={"regularize": regularize})
        assert_allclose(res.cost, 0, atol=1e-20)


class TestLM(BaseMixin):
    method = "lm"

    def test_bounds_not_supported(self):
        with pytest.raises(ValueError, match="Method 'lm' doesn't support bounds."):
            least_squares(fun_trivial, 2.0, bounds=(-3.0, 3.0), method="lm")

    def test_m_less_n_not_supported(self):
        # MINPACK needs m >= n; trustls' "lm" (the exact trust-region solver) does not.
        x0 = [-2, 1]
        res = least_squares(fun_rosenbrock_cropped, x0, method="lm")
        assert_allclose(res.cost, 0, atol=1e-14)

    def test_sparse_not_supported(self):
        # MINPACK takes dense Jacobians only; trustls' "lm" densifies a sparse one.
        p = BroydenTridiagonal()
        res = least_squares(p.fun, p.x0, p.jac, method="lm")
        assert_allclose(res.cost, 0, atol=1e-20)

    def test_jac_sparsity_not_supported(self):
        # MINPACK takes no pattern; trustls' "lm" colors it and densifies J. [1] reads as scipy's trf
        # reads it (numpy's atleast_2d: the 1 × 1 pattern); a pattern of the wrong shape is refused.
        res = least_squares(fun_trivial, 2.0, jac_sparsity=[1], method="lm")
        assert_allclose(a(res.x), 0.0, atol=1e-4)
        with pytest.raises(ValueError, match=r"jac_sparsity must have shape \(1, 1\)"):
            least_squares(fun_trivial, 2.0, jac_sparsity=[1, 1], method="lm")

    def test_LinearOperator_not_supported(self):
        p = BroydenTridiagonal(mode="operator")
        res = least_squares(p.fun, p.x0, p.jac, method="lm")
        assert_allclose(res.cost, 0, atol=1e-20)

    def test_loss(self):
        res = least_squares(fun_trivial, 2.0, loss="linear", method="lm")
        assert_allclose(a(res.x), 0.0, atol=1e-4)

        # MINPACK has no robust losses; trustls' "lm" takes them like "trf".
        res = least_squares(fun_trivial, 2.0, method="lm", loss="huber")
        assert_allclose(a(res.x), 0.0, atol=1e-4)

    def test_callback_with_lm_method(self):
        # scipy warns and never calls the callback with "lm"; trustls calls it, as for "trf".
        infos = []

        def callback(intermediate_result):
            infos.append(intermediate_result)

        # From scipy's x0 = [0], the minimizer, the gradient test stops before any trial.
        res = least_squares(fun_trivial, x0=[0], method="lm", callback=callback)
        assert res.status == Status.GTOL and res.nit == 0 and infos == []
        least_squares(fun_trivial, x0=[2.0], method="lm", callback=callback)
        assert infos and all(isinstance(info, IterationInfo) for info in infos)


def test_basic():
    # test that 'method' arg is really optional
    res = least_squares(fun_trivial, 2.0)
    assert_allclose(a(res.x), 0, atol=1e-10)


def my_callback_optimresult(results):
    def callback(intermediate_result):
        results.append(intermediate_result)

    return callback


def my_callback_x(results):
    def callback(x):
        results.append({"nit": 1, "x": x})
        return False

    return callback


def my_callback_optimresult_stop_exception(results):
    def callback(intermediate_result):
        results.append(intermediate_result)
        raise StopIteration

    return callback


def my_callback_x_stop_exception(results):
    def callback(x):
        results.append({"nit": 1, "x": x})
        raise StopIteration

    return callback


CALLS = {
    "trf": lambda callback: least_squares(fun_trivial, 5.0, method="trf", callback=callback),
    "trf_bounds": lambda callback: least_squares(fun_trivial, 5.0, method="trf", bounds=(-8.0, 8.0),
                                                 callback=callback),
    # scipy's third call is method="dogbox"; trustls' "lm" takes callbacks instead.
    "lm": lambda callback: least_squares(fun_trivial, 5.0, method="lm", callback=callback),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
@pytest.mark.parametrize("make_callback", [my_callback_optimresult, my_callback_x], ids=["optimresult", "x"])
def test_callback(make_callback, call):
    # test that callback function works as expected
    results = []
    res = call(make_callback(results))
    # Check that callback was called
    assert len(results) > 0
    # Check that results data makes sense
    assert results[-1]["nit"] > 0
    # Check that it didn't stop because of the callback
    assert res.status != -2
    # final callback x should be same as final result
    assert_allclose(a(results[-1]["x"]), a(res.x))


# scipy's intermediate result counts the iterations done (1 at the first call); trustls'

@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
@pytest.mark.parametrize("make_callback", [pytest.param(my_callback_optimresult_stop_exception, id="optimresult"),
                                           pytest.param(my_callback_x_stop_exception, id="x")])
def test_callback_stop(make_callback, call):
    results = []
    res = call(make_callback(results))
    # Check that callback was called
    assert len(results) > 0
    # Check that only one iteration was run
    assert results[-1]["nit"] == 1
    # Check that it stopped because of the callback
    assert res.status == -2


@pytest.mark.parametrize("ftol, xtol, gtol", [(None, 1e-13, 1e-13), (1e-13, None, 1e-13), (1e-13, 1e-13, None)])
def test_small_tolerances_for_lm(ftol, xtol, gtol):
    # MINPACK refuses tolerances below EPS and needs all three; trustls raises tolerances below eps
    # to eps and runs with any of them disabled, so the solve must converge.
    res = least_squares(fun_trivial, 2.0, xtol=xtol, ftol=ftol, gtol=gtol, method="lm")
    assert res.success
    assert_allclose(a(res.x), 0, atol=1e-4)


def test_fp32_gh12991():
    # checks that smaller FP sizes can be used in least_squares
    # this is the minimum working example reported for gh12991
    rng = np.random.default_rng(1978)

    x = torch.from_numpy(np.linspace(0, 1, 100, dtype=np.float32))
    y = torch.from_numpy(rng.random(size=100, dtype=np.float32))

    def func(p, x):
        return p[0] + p[1] * x

    def err(p, x, y):
        return func(p, x) - y

    # scipy starts from the list [-1.0, -1.0] (float64) with float32 residuals; trustls solves in
    # x0's dtype and wants fun to return that dtype, so x0 is a float32 tensor here, and the list
    # is a clear error.
    with pytest.raises(TypeError, match="fun must return a tensor of x's dtype torch.float64, got torch.float32"):
        least_squares(err, [-1.0, -1.0], args=(x, y))
    res = least_squares(err, torch.tensor([-1.0, -1.0]), args=(x, y))
    assert res.x.dtype == torch.float32
    # previously the initial jacobian calculated for this would be all 0
    # and the minimize would terminate immediately, with nfev=1, would
    # report a successful minimization (it shouldn't have done), but be
    # unchanged from the initial solution.
    assert res.nfev > 2
    # scipy compares with COBYQA's minimizer of the sum of squares; the problem is linear, so the
    # float64 least-squares solution is the exact reference.
    A = torch.stack([torch.ones_like(x), x], dim=1).double()
    expected = torch.linalg.lstsq(A, y.double()[:, None]).solution[:, 0]
    assert_allclose(a(res.x), a(expected), atol=9e-5)


def test_gh_18793_and_19351():
    answer = 1e-12
    initial_guess = 1.1e-12

    def chi2(x):
        return (x - answer) ** 2

    gtol = 1e-15
    res = least_squares(chi2, x0=initial_guess, gtol=1e-15, bounds=(0, np.inf))
    # Original motivation: gh-18793
    # if we choose an initial condition that is close to the solution
    # we shouldn't return an answer that is further away from the solution

    # Update: gh-19351
    # However this requirement does not go well with 'trf' algorithm logic.
    # Some regressions were reported after the presumed fix.
    # The returned solution is good as long as it satisfies the convergence
    # conditions.
    # Specifically in this case the scaled gradient will be sufficiently low.

    scaling = scipy_cl_scaling_vector(a(res.x), a(res.grad), np.atleast_1d(0), np.atleast_1d(np.inf))
    assert res.status == 1  # Converged by gradient
    assert np.linalg.norm(a(res.grad) * scaling, ord=np.inf) < gtol


def test_gh_19103():
    # Checks that least_squares trf method selects a strictly feasible point,
    # and thus succeeds instead of failing,
    # when the initial guess is reported exactly at a boundary point.
    # This is a reduced example from gh191303

    ydata = torch.tensor([0.0] * 66 + [
        1., 0., 0., 0., 0., 0., 1., 1., 0., 0., 1.,
        1., 1., 1., 0., 0., 0., 1., 0., 0., 2., 1.,
        0., 3., 1., 6., 5., 0., 0., 2., 8., 4., 4.,
        6., 9., 7., 2., 7., 8., 2., 13., 9., 8., 11.,
        10., 13., 14., 19., 11., 15., 18., 26., 19., 32., 29.,
        28., 36., 32., 35., 36., 43., 52., 32., 58., 56., 52.,
        67., 53., 72., 88., 77., 95., 94., 84., 86., 101., 107.,
        108., 118., 96., 115., 138., 137.,
    ], dtype=F64)  # fmt: skip
    xdata = torch.arange(0, ydata.numel(), dtype=F64) * 0.1

    def exponential_wrapped(params):
        A, B, x0 = params
        return A * torch.exp(B * (xdata - x0)) - ydata

    x0 = [0.01, 1.0, 5.0]
    bounds = ((0.01, 0, 0), (np.inf, 10, 20.9))
    res = least_squares(exponential_wrapped, x0, method="trf", bounds=bounds)
    assert res.success


def test_docstring_examples():
    import doctest

    import trustls.api

    failures, tried = doctest.testmod(trustls.api)
    assert failures == 0 and tried > 0
