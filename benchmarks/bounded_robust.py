"""Bounds and a robust loss at n = 10⁴: trustls' matrix-free solve against scipy's trf, in one run.

The problem is the one of ``tests/test_api.py``: the extended Rosenbrock function
(MGH #21) with ``loss="soft_l1"``, ``f_scale=0.5`` and bounds that cut off its
minimizer in four patterns (x₂ᵢ ≤ 0.5, 0.8, 2, 0.9 and x₂ᵢ₊₁ ≥ −1, 0.7, 1.2, −1,
repeating), from x₂ᵢ = −1.2, x₂ᵢ₊₁ = 1.5. Solvers, both with their default
tolerances (ftol = xtol = gtol = 1e-8):

* trustls: ``least_squares(..., solver="cg")``, products by automatic
  differentiation, no Jacobian formed;
* scipy: ``least_squares(method="trf", tr_solver="lsmr", jac_sparsity=...)``, its
  finite differences grouped by the 2 × 2 block pattern (what a scipy user runs).

Each solve runs ``--repeat`` times (default 3) and the table reports the fastest;
trustls' first call in a process also pays torch's one-time setup, which the
repeats exclude.

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bounded_robust.py
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

import numpy as np
import scipy.sparse
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from scipy_oracle import scipy_least_squares_sparse  # noqa: E402

import trustls  # noqa: E402

F64 = torch.float64


def problem(n: int):
    kind = torch.arange(n // 2) % 4
    lb = torch.full((n,), -math.inf, dtype=F64)
    ub = torch.full((n,), math.inf, dtype=F64)
    ub[0::2] = torch.tensor([0.5, 0.8, 2.0, 0.9], dtype=F64)[kind]
    lb[1::2] = torch.tensor([-1.0, 0.7, 1.2, -1.0], dtype=F64)[kind]
    x0 = torch.tensor([-1.2, 1.5], dtype=F64).repeat(n // 2)

    def residual(x):
        first, second = x[0::2], x[1::2]
        return torch.stack([10 * (second - first**2), 1 - first], dim=1).reshape(-1)

    i = np.arange(n // 2)
    rows, cols = np.concatenate([2 * i, 2 * i, 2 * i + 1]), np.concatenate([2 * i, 2 * i + 1, 2 * i])
    pattern = scipy.sparse.coo_array((np.ones(rows.size), (rows, cols)), shape=(n, n)).tocsr()
    return residual, x0, (lb, ub), pattern


def fastest(run, repeat: int):
    best, result = math.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    residual, x0, (lb, ub), pattern = problem(args.n)
    options = {"loss": "soft_l1", "f_scale": 0.5}
    trustls.least_squares(residual, x0[:4], bounds=(lb[:4], ub[:4]), solver="cg", **options)  # one-time setup
    t_trustls, ours = fastest(lambda: trustls.least_squares(residual, x0, bounds=(lb, ub), solver="cg", **options),
                              args.repeat)
    t_scipy, theirs = fastest(
        lambda: scipy_least_squares_sparse(residual, x0, pattern, bounds=(lb.numpy(), ub.numpy()), tr_solver="lsmr",
                                           **options),
        args.repeat,
    )
    print(f"n = {args.n}, {torch.get_num_threads()} thread(s)")
    print(f"{'solver':<16}{'time (s)':>10}{'nfev':>6}{'cost':>18}{'optimality':>12}{'status':>8}")
    print(f"{'trustls cg':<16}{t_trustls:>10.2f}{ours.nfev:>6}{ours.cost:>18.10g}{ours.optimality:>12.2e}"
          f"{int(ours.status):>8}")
    print(f"{'scipy trf lsmr':<16}{t_scipy:>10.2f}{theirs.nfev:>6}{theirs.cost:>18.10g}{theirs.optimality:>12.2e}"
          f"{theirs.status:>8}")
    print(f"time ratio trustls / scipy: {t_trustls / t_scipy:.2f}")


if __name__ == "__main__":
    main()
