"""trustls against scipy on large structured problems (n = 10⁴ and 10⁵), in one run.

Problems: extended Rosenbrock (MGH #21) and Broyden tridiagonal (MGH #30)
from `trustls.problems.structured`, and the problems of
`benchmarks/user_problems.py`, written in user styles (four well scaled,
two with column norms spread over 10⁶). All come with an exact sparse
Jacobian for scipy. Solvers, all with ``ftol = xtol = gtol = --tol``
(default 10⁻¹⁰):

* scipy: ``least_squares(method="trf", tr_solver="lsmr", jac=...)`` with
  ``jac`` returning the exact ``scipy.sparse.csr_matrix``, with scipy's
  default ``x_scale=1`` for trf, and ``x_scale="jac"`` on the badly scaled
  problems, where x_scale=1 runs lsmr into its iteration caps;
* trustls sparse J (the two MGH problems): ``GaussNewtonModel(jacobian=...)``
  returning the analytic J as a `SparseOperator`, ``solver="cg"``;
* trustls with J's pattern only (the two MGH problems):
  ``GaussNewtonModel(jac_sparsity=P)``, scipy's argument, the pattern colored
  when the model is made and J from one JVP per color (the model's
  construction is timed with the solve);
* trustls matrix-free: ``TrustRegion(GaussNewtonModel(), solver="cg")``, the
  route a user takes with no Jacobian: products by automatic differentiation,
  the default ``x_scale`` (`JacobiScale`);
* trustls matrix-free with ``x_scale=1`` (well-scaled problems only: on the
  others unscaled CG runs into its iteration caps).

Each solve runs ``--repeat`` times, interleaved, and the table reports the
fastest process (CPU) time and the fastest wall time, with the CPU-time
ratio to scipy's; on a shared machine the process time is the less disturbed
of the two. Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/large_structured.py [--sizes 10000 100000] [--only NAME ...]
        [--search-after N]
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
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from trustls import GaussNewtonModel, TrustRegion  # noqa: E402
from trustls.operators import SparseOperator  # noqa: E402
from trustls.problems.structured import broyden_tridiagonal, extended_rosenbrock  # noqa: E402
from user_problems import BADLY_SCALED, WELL_SCALED, UserProblem  # noqa: E402


def with_scipy_jacobian(problem) -> UserProblem:
    """A `StructuredProblem` with its COO Jacobian as scipy CSR; the COO kept for the sparse route."""
    shape = (problem.m, problem.n)

    def jacobian(x):
        rows, cols, values = problem.jacobian_coo(torch.from_numpy(x))
        return scipy.sparse.csr_matrix((values.numpy(), (rows.numpy(), cols.numpy())), shape=shape)

    user = UserProblem(problem.name, problem.n, problem.x0, problem.residual, jacobian)
    object.__setattr__(user, "structured", problem)
    return user


MGH = {"extended_rosenbrock": lambda n: with_scipy_jacobian(extended_rosenbrock(n)),
       "broyden_tridiagonal": lambda n: with_scipy_jacobian(broyden_tridiagonal(n))}


def run_scipy(problem, tol, x_scale=1.0) -> dict:
    def fun(x):
        return problem.residual(torch.from_numpy(x)).numpy()

    result = scipy.optimize.least_squares(fun, problem.x0.numpy().copy(), jac=problem.jacobian, method="trf",
                                          tr_solver="lsmr", ftol=tol, xtol=tol, gtol=tol, x_scale=x_scale)
    return {"cost": float(result.cost), "nfev": int(result.nfev), "inner": "-", "status": int(result.status)}


def sparse_model(structured) -> GaussNewtonModel:
    shape = (structured.m, structured.n)
    first: list[SparseOperator] = []

    def jacobian(x):
        # The pattern is fixed: sort the indices once per solve (SparseOperator.with_values).
        rows, cols, values = structured.jacobian_coo(x)
        if not first:
            first.append(SparseOperator(rows, cols, values, shape))
            return first[0]
        return first[0].with_values(values)

    return GaussNewtonModel(jacobian=jacobian)


def pattern_model(structured) -> GaussNewtonModel:
    """The plain residual with scipy's ``jac_sparsity``: J's pattern only, colored here (timed)."""
    rows, cols, _ = structured.jacobian_coo(structured.x0)
    ones = torch.ones(rows.shape[0], dtype=torch.float64)
    pattern = torch.sparse_coo_tensor(torch.stack([rows, cols]), ones, (structured.m, structured.n),
                                      check_invariants=True)
    return GaussNewtonModel(jac_sparsity=pattern)


def run_trustls(problem, tol, *, sparse=False, pattern=False, x_scale=None) -> dict:
    model = sparse_model(problem.structured) if sparse else GaussNewtonModel()
    if pattern:
        model = pattern_model(problem.structured)
    controller = TrustRegion(model, solver="cg", ftol=tol, xtol=tol, gtol=tol, x_scale=x_scale)
    result = controller.solve(problem.residual, problem.x0)
    return {"cost": result.cost, "nfev": result.nfev, "inner": result.inner_iterations, "status": result.status.code}


def timed(run) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    out = run()
    out.update(cpu_s=time.process_time() - cpu, wall_s=time.perf_counter() - wall)
    return out


def routes(name: str, problem, tol: float) -> dict:
    # On the badly scaled problems scipy's default x_scale=1 runs lsmr into its
    # iteration caps; its "jac" is the comparison there.
    x_scale = "jac" if name in BADLY_SCALED else 1.0
    rows = {"scipy trf+lsmr": lambda: run_scipy(problem, tol, x_scale)}
    if hasattr(problem, "structured"):
        rows["trustls cg, sparse J"] = lambda: run_trustls(problem, tol, sparse=True)
        rows["trustls cg, jac_sparsity (pattern only)"] = lambda: run_trustls(problem, tol, pattern=True)
    rows["trustls cg, matrix-free (default)"] = lambda: run_trustls(problem, tol)
    if name not in BADLY_SCALED:
        rows["trustls cg, matrix-free, x_scale=1"] = lambda: run_trustls(problem, tol, x_scale=1.0)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10**4, 10**5])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tol", type=float, default=1e-10)
    parser.add_argument("--only", nargs="*", help="problem names (default: all)")
    parser.add_argument("--search-after", type=int, default=None,
                        help="products of a matrix-free J before it searches its pattern (default: the library's, "
                             "trustls.sparsity.found.SEARCH_AFTER; 0: search at once)")
    args = parser.parse_args()
    if args.search_after is not None:  # the constant as GaussNewtonModel reads it
        import trustls.models.gauss_newton as gauss_newton
        gauss_newton.SEARCH_AFTER = args.search_after
    torch.set_num_threads(1)
    problems = {**MGH, **WELL_SCALED, **BADLY_SCALED}
    print(f"torch {torch.__version__} threads {torch.get_num_threads()}; numpy {np.__version__}; "
          f"scipy {scipy.__version__}; tolerances {args.tol:g}; best of {args.repeat}\n")
    print("| problem | n | solver | final cost | nfev | CG iterations | status | CPU (s) | wall (s) | CPU / scipy |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    warm = MGH["extended_rosenbrock"](1000)  # one-time costs of torch.func and scipy, off the table
    run_trustls(warm, 1e-8), run_scipy(warm, 1e-8)
    for name, make in problems.items():
        if args.only and name not in args.only:
            continue
        for n in args.sizes:
            problem = make(n)
            best: dict[str, dict] = {}
            for _ in range(args.repeat):
                for label, run in routes(name, problem, args.tol).items():
                    out = timed(run)
                    kept = best.setdefault(label, out)
                    kept["cpu_s"], kept["wall_s"] = min(kept["cpu_s"], out["cpu_s"]), min(kept["wall_s"], out["wall_s"])
            base = best["scipy trf+lsmr"]["cpu_s"]
            for label, out in best.items():
                if label.startswith("scipy") and name in BADLY_SCALED:
                    label += ", x_scale='jac'"
                print(f"| {name} | {problem.n:,} | {label} | {out['cost']:.3e} | {out['nfev']} | {out['inner']} | "
                      f"{out['status']} | {out['cpu_s']:.3f} | {out['wall_s']:.3f} | {out['cpu_s'] / base:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
