"""trustls against scipy on large banded problems (n = 10⁴ and 10⁵), in one run.

Problems (``trustls.problems.structured``, Moré, Garbow & Hillstrom 1981):
extended Rosenbrock (MGH #21) and Broyden tridiagonal (MGH #30), both with
minimum cost 0 and an exact analytic sparse Jacobian. Solvers, all with their
default tolerances (ftol = xtol = gtol = 1e-8):

* scipy: ``least_squares(method="trf", tr_solver="lsmr", jac=...)`` with
  ``jac`` returning the analytic ``scipy.sparse.csr_matrix``;
* trustls sparse: ``TrustRegion(GaussNewtonModel(jacobian=...), solver="cg")``
  with ``jacobian`` returning the analytic J as a `SparseOperator`;
* trustls matrix-free: ``TrustRegion(GaussNewtonModel(), solver="cg")``
  (products by automatic differentiation, no Jacobian at all).

Each solve runs ``--repeat`` times (default 3) and the table reports the
fastest, which is the least disturbed by other work on a shared machine.
``--unscaled`` adds the matrix-free solve with ``x_scale=1``, which skips the
Jacobi column-norm estimates.

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/large_structured.py
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import scipy.optimize
import scipy.sparse
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from trustls import GaussNewtonModel, TrustRegion  # noqa: E402
from trustls.operators import SparseOperator  # noqa: E402
from trustls.problems.structured import broyden_tridiagonal, extended_rosenbrock  # noqa: E402


def run_scipy(problem) -> dict:
    shape = (problem.m, problem.n)

    def fun(x):
        return problem.residual(torch.from_numpy(x)).numpy()

    def jac(x):
        rows, cols, values = problem.jacobian_coo(torch.from_numpy(x))
        return scipy.sparse.csr_matrix((values.numpy(), (rows.numpy(), cols.numpy())), shape=shape)

    x0 = problem.x0.numpy().copy()
    tic = time.perf_counter()
    result = scipy.optimize.least_squares(fun, x0, jac=jac, method="trf", tr_solver="lsmr")
    return {"time_s": time.perf_counter() - tic, "cost": float(result.cost), "nfev": int(result.nfev),
            "inner": "-", "status": int(result.status)}


def run_trustls(problem, *, sparse: bool, x_scale=None) -> dict:
    if sparse:
        shape = (problem.m, problem.n)
        first: list[SparseOperator] = []

        def jacobian(x):
            # The pattern is fixed: sort the indices once per solve, then
            # only the values change (SparseOperator.with_values).
            rows, cols, values = problem.jacobian_coo(x)
            if not first:
                first.append(SparseOperator(rows, cols, values, shape))
                return first[0]
            return first[0].with_values(values)

        model = GaussNewtonModel(jacobian=jacobian)
    else:
        model = GaussNewtonModel()
    tic = time.perf_counter()
    result = TrustRegion(model, solver="cg", x_scale=x_scale).solve(problem.residual, problem.x0)
    return {"time_s": time.perf_counter() - tic, "cost": result.cost, "nfev": result.nfev,
            "inner": result.inner_iterations, "status": result.status.code}


def best_of(run, repeat: int) -> dict:
    outs = [run() for _ in range(repeat)]
    return min(outs, key=lambda out: out["time_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10**4, 10**5])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--unscaled", action="store_true",
                        help="also time the matrix-free solve with x_scale=1 (no Jacobi column-norm estimates)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__} threads {torch.get_num_threads()}; numpy {np.__version__}; "
          f"scipy {scipy.__version__}; best of {args.repeat}\n")
    print("| problem | n | solver | final cost | nfev | CG iterations | status | time (s) | time / scipy |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for make in (extended_rosenbrock, broyden_tridiagonal):
        for n in args.sizes:
            problem = make(n)
            rows = {
                "scipy trf+lsmr": best_of(lambda: run_scipy(problem), args.repeat),
                "trustls cg, sparse J": best_of(lambda: run_trustls(problem, sparse=True), args.repeat),
                "trustls cg, matrix-free": best_of(lambda: run_trustls(problem, sparse=False), args.repeat),
            }
            if args.unscaled:
                rows["trustls cg, matrix-free, x_scale=1"] = best_of(
                    lambda: run_trustls(problem, sparse=False, x_scale=1.0), args.repeat
                )
            base = rows["scipy trf+lsmr"]["time_s"]
            for label, out in rows.items():
                print(f"| {make.__name__} | {n:,} | {label} | {out['cost']:.3e} | {out['nfev']} | {out['inner']} | "
                      f"{out['status']} | {out['time_s']:.3f} | {out['time_s'] / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
