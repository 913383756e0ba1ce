"""Fault injection against `least_squares` and `TrustRegion` (GitHub issue 11).

Each example draws a residual function from a small grammar of torch ops (affine maps,
exp, sin, tanh, squares, sums, products, ``torch.where``, indexing; the scalar
expressions stacked into r, as users write them), a dtype (float16, bfloat16, float32,
float64), a solver (``"cg"``, ``"lstsq"``), options, and one fault:

* ``nonfinite_region``: fun returns NaN, inf or -inf in a region of x decided by a seeded
  hash of x (never at x0), so that random trial points fall into it;
* ``nan_jacobian``: the value stays finite, the derivative is NaN in such a region (x0
  included): ``0·sqrt(b)`` with b = 0 and ∂b/∂x = 1 there;
* ``raise_on_call``: fun raises `InjectedFault` on its k-th call;
* ``mutate_argument``: fun changes its argument in place (under ``no_grad``): adds 0.25
  before computing r, or halves it after;
* ``overflow``: r times a factor near the dtype's largest power of ten.

What must hold is the contract written once in ``tests/fault_contract.py`` (its module
docstring): a clear refusal naming the argument, or fun's own exception unchanged with a
state the caller can resume from, or an honest result (cost recomputed at x, success only
after a decrease, nfev = the calls of fun ≤ max_nfev), x0 bitwise unchanged.

Profiles: by default (``ci``) hypothesis runs a fixed, derandomized set of examples
(150 and 60 here) in seconds, without shrinking. ``TRUSTLS_FAULTS_PROFILE=thorough
python -m pytest tests/test_faults.py tests/test_faults_optim.py`` runs 20 times as many
random examples and shrinks failures (minutes); a failure prints a ``@reproduce_failure``
blob to replay it. While many faults stand, ``python tests/fault_census.py solve 600``
tallies every violation over 600 examples instead of stopping at the first.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from fault_contract import check_resumable, check_solve, fault_settings
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

import trustls
from trustls import GaussNewtonModel, TrustRegion

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
SOLVERS = ["cg", "lstsq"]
COEFFICIENTS = st.sampled_from([-2.0, -1.5, -1.0, -0.5, 0.5, 1.0, 1.5, 2.0, 3.0])
STARTS = st.sampled_from([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0])


# -- the residual grammar ------------------------------------------------------


def expressions(n: int) -> st.SearchStrategy:
    """Scalar expressions of x ∈ Rⁿ as nested tuples; every leaf reads x."""
    leaves = st.one_of(
        st.tuples(st.just("x"), st.integers(0, n - 1)),
        st.tuples(st.just("affine"), st.lists(COEFFICIENTS, min_size=n, max_size=n).map(tuple), COEFFICIENTS),
        st.just(("sum",)),
    )

    def extend(children: st.SearchStrategy) -> st.SearchStrategy:
        return st.one_of(
            st.tuples(st.sampled_from(["exp", "sin", "tanh", "square"]), children),
            st.tuples(st.sampled_from(["scale", "shift"]), COEFFICIENTS, children),
            st.tuples(st.sampled_from(["add", "mul"]), children, children),
            st.tuples(st.just("where"), children, children, children),
        )

    return st.recursive(leaves, extend, max_leaves=6)


def evaluate(e: tuple, x: Tensor) -> Tensor:
    op = e[0]
    if op == "x":
        return x[e[1]]
    if op == "affine":
        return (torch.tensor(e[1], dtype=x.dtype, device=x.device) * x).sum() + e[2]
    if op == "sum":
        return x.sum()
    if op in ("exp", "sin", "tanh"):
        return getattr(torch, op)(evaluate(e[1], x))
    if op == "square":
        return evaluate(e[1], x) ** 2
    if op == "scale":
        return e[1] * evaluate(e[2], x)
    if op == "shift":
        return evaluate(e[2], x) + e[1]
    if op == "add":
        return evaluate(e[1], x) + evaluate(e[2], x)
    if op == "mul":
        return evaluate(e[1], x) * evaluate(e[2], x)
    if op == "where":
        return torch.where(evaluate(e[1], x) > 0, evaluate(e[2], x), evaluate(e[3], x))
    raise AssertionError(op)


@dataclasses.dataclass(frozen=True)
class Problem:
    """r(x) = stack of the expressions, from x0; dtype-generic (ops follow x's dtype)."""

    expressions: tuple
    start: tuple

    def residual(self, x: Tensor) -> Tensor:
        return torch.stack([evaluate(e, x) for e in self.expressions])

    def x0(self, dtype: torch.dtype) -> Tensor:
        return torch.tensor(self.start, dtype=dtype)


@st.composite
def problems(draw) -> Problem:
    n = draw(st.integers(1, 4))
    m = draw(st.integers(1, 5))
    exprs = draw(st.lists(expressions(n), min_size=m, max_size=m).map(tuple))
    return Problem(exprs, tuple(draw(st.lists(STARTS, min_size=n, max_size=n))))


# -- the faults ----------------------------------------------------------------


def region(x: Tensor, seed: int, fraction: float) -> Tensor:
    """A 0-d bool: whether x lies in the seeded hash region covering ``fraction`` of space.

    Pure torch on x.detach() (no host read), so it works under torch.func transforms.
    """
    w = torch.randn(x.shape[-1], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    h = torch.sin((x.detach().to(torch.float64) * w.to(x.device)).sum() * 12.9898 + seed) * 43758.5453
    return torch.frac(h).abs() < fraction


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str
    seed: int = 0
    fraction: float = 0.0
    value: float = math.nan
    raise_on: int | None = None
    before: bool = True
    power: float = 0.0

    def wrap(self, fun, x0: Tensor):
        """fun with the fault built in (``raise_on_call`` is injected by `Counted` instead)."""
        if self.kind == "nonfinite_region":
            def faulty(x):
                r = fun(x)
                outside_x0 = (x.detach() != x0).any()
                return torch.where(region(x, self.seed, self.fraction) & outside_x0, self.value, r)
        elif self.kind == "nan_jacobian":
            def faulty(x):
                on = region(x, self.seed, self.fraction).to(x.dtype)
                bump = (x - x.detach()).sum() * on + (1 - on)  # value 0 (on) or 1; ∂/∂x = on
                return fun(x) + 0.0 * torch.sqrt(bump)  # sqrt'(0) = inf: a NaN derivative, a finite value
        elif self.kind == "mutate_argument":
            def faulty(x):
                if self.before:
                    with torch.no_grad():
                        x.add_(0.25)
                r = fun(x)
                if not self.before:
                    with torch.no_grad():
                        x.mul_(0.5)
                return r
        elif self.kind == "overflow":
            return self.reference(fun, x0)
        else:
            return fun
        return faulty

    def reference(self, fun, x0: Tensor):
        """fun without its non-finite regions (scaled for ``overflow``), for the stationary-start
        exemption; ``None`` for ``mutate_argument`` (fun changes x during the call)."""
        if self.kind == "mutate_argument":
            return None
        if self.kind == "overflow":
            factor = 10.0 ** math.floor(self.power * math.log10(torch.finfo(x0.dtype).max))
            return lambda x: factor * fun(x)
        return fun


def faults() -> st.SearchStrategy:
    seeds = st.integers(0, 2**16)
    by_kind = {
        "none": st.just(Fault("none")),
        "nonfinite_region": st.builds(Fault, st.just("nonfinite_region"), seeds, st.sampled_from([0.2, 0.5, 0.9]),
                                      st.sampled_from([math.nan, math.inf, -math.inf])),
        "nan_jacobian": st.builds(Fault, st.just("nan_jacobian"), seeds, st.sampled_from([0.2, 0.5, 1.0])),
        "raise_on_call": st.builds(Fault, st.just("raise_on_call"), raise_on=st.integers(1, 12)),
        "mutate_argument": st.builds(Fault, st.just("mutate_argument"), before=st.booleans()),
        "overflow": st.builds(Fault, st.just("overflow"), power=st.sampled_from([0.3, 0.5, 0.8, 0.95])),
    }  # fmt: skip
    # The kind first, then its parameters: one_of over the six would favour its first branches.
    return st.sampled_from(sorted(by_kind)).flatmap(by_kind.__getitem__)


# -- the tests -----------------------------------------------------------------


SOLVE_STRATEGIES = {
    "problem": problems(),
    "dtype": st.sampled_from(DTYPES),
    "solver": st.sampled_from(SOLVERS),
    "fault": faults(),
    "max_nfev": st.sampled_from([None, 1, 2, 3, 5, 10, 25]),
    "entry": st.sampled_from(["least_squares", "TrustRegion"]),
    "initial_radius": st.sampled_from([None, 1e-300, 1e-3, 1e12]),
}
RESUME_STRATEGIES = {
    "problem": problems(),
    "dtype": st.sampled_from([torch.float32, torch.float64]),
    "solver": st.sampled_from(SOLVERS),
    "raise_on": st.integers(1, 10),
}


@pytest.mark.filterwarnings("ignore:fun's derivative is not finite:UserWarning")  # faults inject such points
@fault_settings(150)
@given(**SOLVE_STRATEGIES)
def test_solve_keeps_the_contract(problem, dtype, solver, fault, max_nfev, entry, initial_radius):
    x0 = problem.x0(dtype)
    fun = fault.wrap(problem.residual, x0)
    infos = []

    def record(intermediate_result):  # scipy's name: least_squares then passes the IterationInfo
        infos.append(intermediate_result)

    def solve(f, x):
        if entry == "least_squares":
            return trustls.least_squares(f, x, solver=solver, max_nfev=max_nfev, callback=record)
        controller = TrustRegion(GaussNewtonModel(), solver, max_nfev=max_nfev, initial_radius=initial_radius,
                                 callback=infos.append)  # fmt: skip
        return controller.solve(f, x)

    check_solve(solve, fun, x0, max_nfev=max_nfev, raise_on=fault.raise_on,
                reference=fault.reference(problem.residual, x0), infos=infos)  # fmt: skip


@fault_settings(60)
@given(**RESUME_STRATEGIES)
def test_an_exception_from_fun_leaves_a_resumable_state(problem, dtype, solver, raise_on):
    controller = TrustRegion(GaussNewtonModel(), solver, max_nfev=30)
    check_resumable(controller, problem.residual, problem.x0(dtype), raise_on, max_nfev=30,
                    reference=problem.residual)  # fmt: skip
