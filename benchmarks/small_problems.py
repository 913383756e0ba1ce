"""trustls against scipy's trf on the test-problem registry: nfev and time ratios.

Both sides use the same torch residual function; scipy gets the exact
Jacobian from ``torch.func.jacfwd`` (converted to numpy), so the ratios
measure the algorithms and their overhead, not two different residual
implementations. Times are medians over ``--repeats`` runs, all measured in
this one process.

Run:  python benchmarks/small_problems.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import scipy.optimize
import torch

from trustls import GaussNewtonModel, TrustRegion
from trustls.problems import registry


def scipy_trf(problem):
    jacobian = torch.func.jacfwd(problem.residual)

    def fun(x):
        return problem.residual(torch.from_numpy(x)).numpy()

    def jac(x):
        return jacobian(torch.from_numpy(x)).numpy()

    return scipy.optimize.least_squares(fun, problem.x0.numpy().astype(np.float64), jac=jac, method="trf")


def timed(run, repeats):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    solvers = {"cg": TrustRegion(GaussNewtonModel(), solver="cg"), "lstsq": TrustRegion(GaussNewtonModel(), solver="lstsq")}
    rows = []
    for problem in registry.problems():
        reference, scipy_time = timed(lambda: scipy_trf(problem), args.repeats)
        row = {"problem": problem.name, "m": problem.m, "n": problem.n, "scipy_nfev": reference.nfev,
               "scipy_cost": reference.cost, "scipy_ms": 1e3 * scipy_time}
        for name, controller in solvers.items():
            result, seconds = timed(lambda: controller.solve(problem.residual, problem.x0), args.repeats)
            row[f"{name}_nfev_ratio"] = result.nfev / reference.nfev
            row[f"{name}_time_ratio"] = seconds / scipy_time
            row[f"{name}_cost"] = result.cost
        rows.append(row)

    print(f"| problem | m | n | scipy nfev | scipy ms | cg nfev ratio | cg time ratio | lstsq nfev ratio | lstsq time ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['problem']} | {row['m']} | {row['n']} | {row['scipy_nfev']} | {row['scipy_ms']:.1f} | "
            f"{row['cg_nfev_ratio']:.2f} | {row['cg_time_ratio']:.2f} | "
            f"{row['lstsq_nfev_ratio']:.2f} | {row['lstsq_time_ratio']:.2f} |"
        )
    medians = {key: statistics.median(row[key] for row in rows) for key in
               ("cg_nfev_ratio", "cg_time_ratio", "lstsq_nfev_ratio", "lstsq_time_ratio")}
    print(
        f"| **median** ({len(rows)} problems) | | | | | {medians['cg_nfev_ratio']:.2f} | {medians['cg_time_ratio']:.2f} | "
        f"{medians['lstsq_nfev_ratio']:.2f} | {medians['lstsq_time_ratio']:.2f} |"
    )


if __name__ == "__main__":
    main()
