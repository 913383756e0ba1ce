"""Inexact subproblem solvers against scipy's lsmr on sparse problems with and without robust losses.

Steihaug-Toint CG (``solver="cg"``) stops where its path first leaves the
trust region; GLTR (``solver="gltr"``) solves the subproblem exactly in the
same Krylov space. This benchmark runs a scipy user's call,
``least_squares(fun, x0, jac_sparsity=P, loss=..., f_scale=...)``, on

* the chained Rosenbrock function (n = 1,000, from x = (−1.2, 1, −1.2, …)):
  a curved valley along a chain, whose linear-loss solve is slow for every
  method (the start's error travels along the chain one link per step);
* the user-style problems of `benchmarks/user_problems.py` at n = 10⁴
  (``--size``), the two badly scaled ones with ``x_scale="jac"`` as in
  `benchmarks/large_structured.py`,

each with the losses ``linear``, ``soft_l1``, ``cauchy`` and ``huber``
(``f_scale`` 0.1; 1 for cauchy). The routes: scipy's trf with
``tr_solver="lsmr"`` and the pattern (its finite differences grouped by
coloring), trustls ``solver="cg"`` and ``solver="gltr"`` with the same
pattern (J from one JVP per color), all with ``ftol = xtol = gtol = 1e-10``
and ``max_nfev=3000``. The table lists evaluations, the final cost, and
wall time relative to scipy's, one run each, after a warm-up solve.

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/krylov_steps.py [--size 10000] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
import warnings

import numpy as np
import scipy.optimize
import scipy.sparse
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import trustls  # noqa: E402
from user_problems import BADLY_SCALED, PROBLEMS  # noqa: E402

LOSSES = {"linear": 1.0, "soft_l1": 0.1, "cauchy": 1.0, "huber": 0.1}
TOL = 1e-10


def chained_rosenbrock(n: int):
    """r = (10(x_{i+1} − x_i²), 1 − x_i), i < n: the residual, x0 and J's pattern (scipy CSR)."""

    def residual(x):
        return torch.cat([10 * (x[1:] - x[:-1] ** 2), 1 - x[:-1]])

    i = np.arange(n - 1)
    rows = np.concatenate([i, i, n - 1 + i])
    cols = np.concatenate([i, i + 1, i])
    pattern = scipy.sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(2 * (n - 1), n))
    x0 = torch.tensor(np.tile([-1.2, 1.0], n // 2), dtype=torch.float64)
    return residual, x0, pattern


def problems(size: int) -> dict:
    """name → (residual, x0, pattern, x_scale)."""
    table = {"chained_rosenbrock": (*chained_rosenbrock(1000), 1.0)}
    for name, make in PROBLEMS.items():
        problem = make(size)
        generator = np.random.default_rng(0)
        J = problem.jacobian(problem.x0.numpy() + generator.uniform(0.1, 0.2, problem.n))  # no accidental zeros
        pattern = scipy.sparse.csr_matrix((np.ones(J.nnz), J.indices, J.indptr), shape=J.shape)
        table[name] = (problem.residual, problem.x0, pattern, "jac" if name in BADLY_SCALED else 1.0)
    return table


def run_scipy(residual, x0, pattern, x_scale, loss):
    def fun(x):
        return residual(torch.from_numpy(x)).numpy()

    result = scipy.optimize.least_squares(
        fun, x0.numpy(), jac_sparsity=pattern, tr_solver="lsmr", loss=loss, f_scale=LOSSES[loss],
        x_scale=x_scale, ftol=TOL, xtol=TOL, gtol=TOL, max_nfev=3000,
    )
    return result.nfev, float(result.cost)


def run_trustls(residual, x0, pattern, x_scale, loss, solver):
    coo = pattern.tocoo()
    sparse = torch.sparse_coo_tensor(np.vstack([coo.row, coo.col]), np.ones(coo.nnz), coo.shape)
    result = trustls.least_squares(
        residual, x0, jac_sparsity=sparse, solver=solver, loss=loss, f_scale=LOSSES[loss], x_scale=x_scale,
        ftol=TOL, xtol=TOL, gtol=TOL, max_nfev=3000,
    )
    return result.nfev, float(result.cost)


def timed(run, *args):
    start = time.perf_counter()
    nfev, cost = run(*args)
    return nfev, cost, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Sparse invariant checks")
    table = problems(args.size)
    print(f"torch {torch.__version__} threads 1; scipy {scipy.__version__}; tolerances {TOL:g}; max_nfev 3000\n")
    print("| problem | loss | scipy lsmr nfev | cg nfev | gltr nfev | scipy cost | cg cost | gltr cost "
          "| cg / scipy time | gltr / scipy time |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    warm = chained_rosenbrock(10)
    for solver in ("cg", "gltr"):
        run_trustls(*warm, 1.0, "soft_l1", solver)
    for name, (residual, x0, pattern, x_scale) in table.items():
        if args.only and name not in args.only:
            continue
        for loss in LOSSES:
            s_nfev, s_cost, s_time = timed(run_scipy, residual, x0, pattern, x_scale, loss)
            c_nfev, c_cost, c_time = timed(run_trustls, residual, x0, pattern, x_scale, loss, "cg")
            g_nfev, g_cost, g_time = timed(run_trustls, residual, x0, pattern, x_scale, loss, "gltr")
            print(f"| {name} | {loss} | {s_nfev} | {c_nfev} | {g_nfev} | {s_cost:.3e} | {c_cost:.3e} | "
                  f"{g_cost:.3e} | {c_time / s_time:.2f} | {g_time / s_time:.2f} |", flush=True)


if __name__ == "__main__":
    main()
