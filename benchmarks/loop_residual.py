"""``jac_sparsity`` on a residual written as a Python loop over its rows, against scipy, in one run.

Broyden banded (Moré, Garbow & Hillstrom #31: lower bandwidth 5, upper 1)
written as scipy's cookbook writes residuals, one row per loop iteration, and
its pattern built as a ``scipy.sparse.lil_matrix``. The residual's autograd
graph is thousands of operations on tensors of a few elements, so a backward
pass is bound by the engine's cost per operation, not by arithmetic.

Two tables, each from this one run:

1. one linearization's colored products (7 colors) from a new graph: by
   columns, in single double-backward passes or one vmapped pass
   (`trustls.models.dense_jacobian.DenseJacobian.compressed_columns`), and by
   rows, in one vmapped backward pass over the 7 row colors (`compressed_rows`,
   the route a solve takes on this pattern), beside one evaluation of ``fun``;
2. the solve ``trustls.least_squares(fun, x0, jac_sparsity=A)`` against
   ``scipy.optimize.least_squares(fun, x0, jac_sparsity=A)`` (finite
   differences grouped by the same pattern), both with default tolerances.

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/loop_residual.py [--n 2000]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np
import scipy.optimize
import scipy.sparse
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import trustls  # noqa: E402
from trustls.models.dense_jacobian import DenseJacobian  # noqa: E402
from trustls.operators.residual_graph import ResidualGraph  # noqa: E402
from trustls.sparsity import ColoredJacobian  # noqa: E402

LOWER, UPPER = 5, 1


def broyden_banded(n: int, module):
    """The residual for ``module`` (torch or numpy), one row per iteration."""
    stack = torch.stack if module is torch else np.array

    def fun(x):
        rows = []
        for i in range(n):
            lo, hi = max(0, i - LOWER), min(n - 1, i + UPPER)
            s = x[lo : hi + 1] * (1 + x[lo : hi + 1])
            rows.append(x[i] * (2 + 5 * x[i] ** 2) + 1 - (s.sum() - x[i] * (1 + x[i])))
        return stack(rows)

    return fun


def pattern(n: int) -> scipy.sparse.lil_matrix:
    A = scipy.sparse.lil_matrix((n, n), dtype=int)
    for i in range(n):
        A[i, max(0, i - LOWER) : min(n - 1, i + UPPER) + 1] = 1
    return A


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    n, A = args.n, pattern(args.n)
    fun, fun_np = broyden_banded(n, torch), broyden_banded(n, np)
    x0 = -np.ones(n)
    x = torch.from_numpy(x0)
    print(f"torch {torch.__version__}, scipy {scipy.__version__}, one thread, process time, median of {args.repeat}\n")

    colored = ColoredJacobian(A)
    seeds, row_seeds = colored.seeds(x), colored.row_seeds(x)
    measured = ResidualGraph.evaluate(fun, x, measure=True)
    batched = DenseJacobian()
    batched.saved_elements, batched.saved_tensors = measured.saved_elements, measured.saved_tensors

    def forward_single():
        graph = ResidualGraph.evaluate(fun, x)
        graph.prepare_jvp()
        return torch.stack([graph.jvp(seed) for seed in seeds])

    def forward_batched():
        graph = ResidualGraph.evaluate(fun, x)
        return batched.compressed_columns(graph, seeds)

    def reverse():
        return batched.compressed_rows(ResidualGraph.evaluate(fun, x), row_seeds)

    with torch.no_grad():
        evaluation = median_time(lambda: fun(x), args.repeat)
    recorded = median_time(lambda: ResidualGraph.evaluate(fun, x), args.repeat)
    single = median_time(forward_single, args.repeat)
    vmapped = median_time(forward_batched, args.repeat)
    by_rows = median_time(reverse, args.repeat)
    print(f"## One linearization, n = {n} ({measured.saved_tensors:,} saved tensors, "
          f"{measured.saved_elements:,} elements): {colored.n_colors} column colors, "
          f"{colored.row_coloring.n_colors} row colors\n")
    print("Each route from a new evaluation of fun with its graph.\n")
    print("| route | s | ratio to single double-backward passes |")
    print("|---|---:|---:|")
    print(f"| one evaluation of fun (no graph) | {evaluation:.3f} | {evaluation / single:.2f} |")
    print(f"| one evaluation of fun with its graph | {recorded:.3f} | {recorded / single:.2f} |")
    print(f"| the graph of u ↦ Jᵀu, then {colored.n_colors} single double-backward passes | {single:.3f} | 1.00 |")
    print(f"| the graph of u ↦ Jᵀu, then one vmapped double-backward pass (`compressed_columns`) | "
          f"{vmapped:.3f} | {vmapped / single:.2f} |")
    print(f"| one vmapped backward pass over the row colors (`compressed_rows`, the solve's route) | "
          f"{by_rows:.3f} | {by_rows / single:.2f} |")

    runs = {
        "scipy, finite differences by the pattern": lambda: scipy.optimize.least_squares(fun_np, x0, jac_sparsity=A),
        "trustls.least_squares(fun, x0, jac_sparsity=A)": lambda: trustls.least_squares(fun, x, jac_sparsity=A),
    }
    print(f"\n## The solve, n = {n}\n")
    print("| solver | final cost | nfev | s | ratio to scipy |")
    print("|---|---:|---:|---:|---:|")
    results, times = {}, {}
    for label, run in runs.items():
        times[label] = median_time(lambda run=run, label=label: results.__setitem__(label, run()), args.repeat)
    base = times["scipy, finite differences by the pattern"]
    for label, result in results.items():
        seconds = times[label]
        print(f"| {label} | {float(result.cost):.3e} | {result.nfev} | {seconds:.2f} | {seconds / base:.2f} |")


if __name__ == "__main__":
    main()
