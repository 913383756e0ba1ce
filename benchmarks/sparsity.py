"""Colored Jacobians from ``jac_sparsity`` on BAL bundle adjustment (problem-49-7776-pre), in one run.

Measures, with the pattern built as a user builds it
(:meth:`~trustls.problems.bal.BundleAdjustmentProblem.jacobian_sparsity`):

1. preparation: normalizing the pattern, coloring it (every ordering), finding
   its blocks; and the coloring of banded patterns with n = 10⁵;
2. one linearization: the colored J of the plain residual (``vmap(jvp)`` and
   the double-backward loop) against the hand-written closed form
   (``jacobian_coo`` into a `SparseOperator` with ``with_values``, as
   ``benchmarks/bal.py`` does) and against one residual evaluation;
3. with ``--solve``: full solves with ``GaussNewtonModel(jac_sparsity=P)``,
   ``solver="cg"``, ``ftol=1e-4``, default ``x_scale`` and block-Jacobi, and
   the hand-written Jacobian with block-Jacobi, against scipy trf+lsmr
   (``benchmarks/bal_scipy.py``), all in the same process.

Each time is the median of several runs, as wall time and as CPU time of
this process (on a shared machine the second is the steadier one; with one
thread they agree on an idle machine). Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sparsity.py --solve
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from bal_scipy import run_scipy_baseline

from trustls import BlockJacobi, GaussNewtonModel, TrustRegion
from trustls.operators import SparseOperator
from trustls.problems.bal import load_bal
from trustls.sparsity import (
    ORDERINGS,
    ColoredJacobian,
    VmapDecision,
    color_columns,
    find_blocks,
    jacobian_pattern,
    pattern_from_indices,
)


def timed(fn, repeat: int = 5) -> tuple[float, float, object]:
    """Median wall and CPU seconds of ``fn()`` over ``repeat`` runs, and its last result."""
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), out


def row(label: str, wall: float, cpu: float, extra: str = "") -> None:
    print(f"| {label} | {1e3 * wall:.1f} | {1e3 * cpu:.1f} | {extra} |")


def banded(n: int, width: int):
    rows = torch.arange(n).repeat_interleave(width)
    cols = rows + torch.arange(width).repeat(n) - width // 2
    keep = (cols >= 0) & (cols < n)
    return pattern_from_indices(rows[keep], cols[keep], (n, n))


def preparation(problem) -> None:
    print("\n### Preparation (once per pattern)\n")
    print("| step | wall (ms) | CPU (ms) | result |")
    print("|---|---:|---:|---|")
    wall, cpu, sparsity = timed(problem.jacobian_sparsity)
    row("BAL: build the pattern (user side, jacobian_sparsity())", wall, cpu, f"nnz {sparsity._nnz():,}")
    wall, cpu, pattern = timed(lambda: jacobian_pattern(sparsity))
    row("BAL: jacobian_pattern", wall, cpu, f"shape {pattern.shape}")
    for ordering in ORDERINGS:
        wall, cpu, coloring = timed(lambda ordering=ordering: color_columns(jacobian_pattern(sparsity), ordering))
        row(f"BAL: jacobian_pattern + color_columns({ordering!r})", wall, cpu,
            f"{coloring.n_colors} colors (lower bound {coloring.lower_bound}, {coloring.method})")
    rows, cols = sparsity.indices()
    wall, cpu, blocks = timed(lambda: find_blocks(rows, cols, *sparsity.shape))
    shapes = ", ".join(f"{g.shape[0]}x{g.shape[1]}" for g in blocks.groups)
    row("BAL: find_blocks", wall, cpu, f"blocks {shapes}; eliminated groups {blocks.eliminated}")
    wall, cpu, colored = timed(lambda: ColoredJacobian(sparsity))
    row("BAL: ColoredJacobian(P) (pattern + coloring + gather index)", wall, cpu, f"{colored.n_colors} colors")
    generator = torch.Generator().manual_seed(0)
    rows = torch.arange(20_000).repeat_interleave(10)
    random = pattern_from_indices(rows, torch.randint(0, 20_000, (rows.numel(),), generator=generator),
                                  (20_000, 20_000))
    for ordering in ORDERINGS:
        wall, cpu, coloring = timed(lambda ordering=ordering: color_columns(random, ordering), repeat=3)
        row(f"random 20,000 x 20,000, 10 per row: color_columns({ordering!r})", wall, cpu,
            f"{coloring.n_colors} colors (lower bound {coloring.lower_bound}, {coloring.method})")
    for width in (3, 11):
        pattern = banded(100_000, width)
        wall, cpu, coloring = timed(lambda pattern=pattern: color_columns(pattern))
        row(f"band of width {width}, n = 10⁵: color_columns", wall, cpu,
            f"{coloring.n_colors} colors ({coloring.method})")
        wall, cpu, coloring = timed(lambda pattern=pattern: color_columns(pattern, "natural"), repeat=3)
        row(f"band of width {width}, n = 10⁵: color_columns('natural')", wall, cpu, f"{coloring.n_colors} colors")


def linearization(problem) -> None:
    print("\n### One linearization at x0 (BAL-49)\n")
    x = problem.x0
    colored = ColoredJacobian(problem.jacobian_sparsity())
    shape = (problem.n_residuals, problem.n_parameters)
    first = SparseOperator(*problem.jacobian_coo(x), shape)
    wall, cpu, _ = timed(lambda: colored(problem.residual, x), repeat=1)
    print(f"first vmap(jvp) in this process (torch's one-time setup included): {wall:.2f} s wall, {cpu:.2f} s CPU\n")
    print("| route | wall (ms) | CPU (ms) | CPU / residual |")
    print("|---|---:|---:|---:|")
    base_wall, base_cpu, _ = timed(lambda: problem.residual(x), repeat=20)
    row("residual r(x)", base_wall, base_cpu, "1.0")
    wall, cpu, _ = timed(lambda: first.with_values(problem.jacobian_coo(x)[2]))
    row("hand-written jacobian_coo + with_values", wall, cpu, f"{cpu / base_cpu:.1f}")
    wall, cpu, _ = timed(lambda: colored(problem.residual, x))
    row(f"colored, vmap(jvp), {colored.n_colors} colors", wall, cpu, f"{cpu / base_cpu:.1f}")
    forced = VmapDecision(failure="measuring the loop")
    wall, cpu, _ = timed(lambda: colored(problem.residual, x, decision=forced))
    row(f"colored, double-backward loop, {colored.n_colors} colors", wall, cpu, f"{cpu / base_cpu:.1f}")


def solve(problem, model, x_scale, label: str) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    result = TrustRegion(model, solver="cg", ftol=1e-4, x_scale=x_scale).solve(problem.residual, problem.x0)
    return {"label": label, "cost": result.cost, "nfev": result.nfev, "njev": result.njev,
            "inner": result.inner_iterations, "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
            "message": result.message}


def solves(problem) -> None:
    print("\n### Full solves (BAL-49, ftol=1e-4, solver='cg')\n")
    wall, cpu = time.perf_counter(), time.process_time()
    scipy_out = run_scipy_baseline(problem, ftol=1e-4)
    runs = [{"label": "scipy trf+lsmr, exact sparse J, x_scale='jac'", "cost": scipy_out["cost_final"],
             "nfev": scipy_out["nfev"], "njev": scipy_out["njev"], "inner": "lsmr",
             "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}]
    sparsity = problem.jacobian_sparsity()
    blocks = BlockJacobi(((problem.n_cameras, 9), (problem.n_points, 3)))
    runs.append(solve(problem, GaussNewtonModel(jac_sparsity=sparsity), None, "trustls jac_sparsity, x_scale default"))
    runs.append(solve(problem, GaussNewtonModel(jac_sparsity=sparsity), blocks,
                      "trustls jac_sparsity, x_scale=BlockJacobi"))
    hand = _hand_written(problem)
    runs.append(solve(problem, GaussNewtonModel(jacobian=hand), blocks,
                      "trustls jacobian=jacobian_coo, x_scale=BlockJacobi"))
    base = runs[0]
    print("| solver | final cost | nfev | njev | CG iterations | wall (s) | CPU (s) | wall / scipy | CPU / scipy |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for out in runs:
        print(f"| {out['label']} | {out['cost']:,.2f} | {out['nfev']} | {out['njev']} | {out['inner']} | "
              f"{out['wall']:.1f} | {out['cpu']:.1f} | {out['wall'] / base['wall']:.2f} | "
              f"{out['cpu'] / base['cpu']:.2f} |")


def _hand_written(problem):
    shape = (problem.n_residuals, problem.n_parameters)
    first: list[SparseOperator] = []

    def jacobian(x):
        rows, cols, values = problem.jacobian_coo(x)
        if not first:
            first.append(SparseOperator(rows, cols, values, shape))
            return first[0]
        return first[0].with_values(values)

    return jacobian


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solve", action="store_true", help="also run the full solves (minutes)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    problem = load_bal()
    print(f"BAL problem: {problem.n_cameras} cameras, {problem.n_points} points, {problem.n_observations} "
          f"observations; torch {torch.__version__}, threads {torch.get_num_threads()}")
    preparation(problem)
    linearization(problem)
    if args.solve:
        solves(problem)


if __name__ == "__main__":
    main()
