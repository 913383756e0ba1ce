"""trustls against scipy on BAL bundle adjustment (problem-49-7776-pre), in one run.

Three routes, timed in the same run:

* scipy: ``least_squares(method="trf", x_scale="jac", ftol=1e-4, tr_solver="lsmr")``
  with the exact sparse Jacobian in closed form
  (:meth:`trustls.problems.bal.BundleAdjustmentProblem.jacobian_coo`,
  ``benchmarks/bal_scipy.py``);
* trustls as a user calls it: the plain torch residual and scipy's
  ``jac_sparsity`` pattern (``problem.jacobian_sparsity()``, built as scipy's
  cookbook builds it), nothing else: ``trustls.least_squares(fun, x0,
  jac_sparsity=P, ftol=1e-4)`` (its defaults take the Schur solver, with the
  blocks found in the pattern) and the headline
  ``TrustRegion(GaussNewtonModel(jac_sparsity=P), solver="cg", ftol=1e-4)``
  (block-Jacobi scaling from the pattern's blocks). J comes from 12 colored
  products per linearization. Also scipy users' two other calls: the
  cookbook's, with ``x_scale="jac"``, and ``jac=`` returning the closed-form J
  as a new torch sparse tensor at every point with ``solver="schur"`` (``USER_ROUTES``);
* trustls with the closed-form Jacobian: ``TrustRegion(GaussNewtonModel(jacobian=...), solver=...,
  ftol=1e-4, x_scale=...)`` with J as a `SparseOperator`, for the solvers
  and scalings listed in ``CONFIGS``: Steihaug CG (`SteihaugCG`) and the
  Schur-complement Levenberg-Marquardt solver (`IterativeSchur`, the points
  eliminated), with block-Jacobi scaling over the 9 camera and 3 point
  parameters or Jacobi scaling ``"jac"``.

It prints one table row per solver (final cost, evaluations, outer and inner
iterations, products, wall time, time relative to scipy, and the time at
which the solver first evaluated a cost at or below scipy's final cost) and,
with ``--plot``, draws the cost at every residual evaluation against wall
time (``docs/img/bal_cost_time.png``).

Every route is timed after a warm-up solve of a tiny problem with the same
route (torch imports parts of itself on the first double-backward pass, about
1 s here, which a long-running process pays once).

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bal.py --plot docs/img/bal_cost_time.png

``OMP_NUM_THREADS=1`` (and ``torch.set_num_threads(1)`` below) pins numpy's
BLAS and torch to one thread each; on a small shared machine the default pools
oversubscribe the cores and the timings mean little (see ``bal_scipy.py``).
Add ``--matrix-free`` to also time the default ``GaussNewtonModel()``
(autodiff JVP/VJP products, no Jacobian; about 50 ms per product here, so it
is capped at 40 CG iterations per step and still slow).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from bal_scipy import run_scipy_baseline  # noqa: E402

from trustls import GaussNewtonModel, IterationInfo, SteihaugCG, TrustRegion, least_squares  # noqa: E402
from trustls.operators import SparseOperator  # noqa: E402
from trustls.problems.bal import load_bal  # noqa: E402
from trustls.scaling import BlockJacobi, JacobiScale  # noqa: E402
from trustls.sparsity import BlockPartition  # noqa: E402
from trustls.subproblem import IterativeSchur  # noqa: E402

FTOL = 1e-4

# label -> (solver class, its settings, scaling); all with the sparse Jacobian.
CONFIGS: dict[str, tuple[type, dict, str]] = {
    "cg block-Jacobi forcing=0.1 max_iter=100": (SteihaugCG, {"forcing": 0.1, "max_iter": 100}, "block"),
    "cg block-Jacobi forcing=0.01 max_iter=200": (SteihaugCG, {"forcing": 0.01, "max_iter": 200}, "block"),
    "cg Jacobi forcing=0.5 max_iter=100": (SteihaugCG, {"forcing": 0.5, "max_iter": 100}, "jac"),
    "cg Jacobi forcing=0.1 max_iter=100": (SteihaugCG, {"forcing": 0.1, "max_iter": 100}, "jac"),
    "schur Jacobi schur_jacobi": (IterativeSchur, {}, "jac"),
    "schur Jacobi block_jacobi": (IterativeSchur, {"preconditioner": "block_jacobi"}, "jac"),
    "schur block-Jacobi schur_jacobi": (IterativeSchur, {}, "block"),
}


def sparse_jacobian(problem):
    """``jacobian(x)`` for `GaussNewtonModel`: the exact J of ``problem`` as a `SparseOperator`.

    The sparsity pattern is the same at every x, so after the first call the
    new values go into the first operator's pattern (`SparseOperator.with_values`).
    """
    shape = (problem.n_residuals, problem.n_parameters)
    first: list[SparseOperator] = []

    def jacobian(x: torch.Tensor) -> SparseOperator:
        rows, cols, values = problem.jacobian_coo(x)
        if not first:
            first.append(SparseOperator(rows, cols, values, shape))
            return first[0]
        return first[0].with_values(values)

    return jacobian


def block_jacobi(problem) -> BlockJacobi:
    """Blocks of 9 camera parameters, then blocks of 3 point coordinates."""
    return BlockJacobi(((problem.n_cameras, 9), (problem.n_points, 3)))


def bal_partition(problem) -> BlockPartition:
    """The camera blocks and the point blocks of x, the points eliminated (for `IterativeSchur`)."""
    cameras = torch.arange(9 * problem.n_cameras).view(problem.n_cameras, 9)
    points = 9 * problem.n_cameras + torch.arange(3 * problem.n_points).view(problem.n_points, 3)
    return BlockPartition(problem.n_parameters, (cameras, points), eliminated=(1,))


def make_solver(problem, label: str):
    """The solver of ``CONFIGS[label]`` for ``problem``, and its scaling."""
    kind, settings, scaling = CONFIGS[label]
    if kind is IterativeSchur:
        return IterativeSchur(bal_partition(problem), **settings), scaling
    return kind(**settings), scaling


def run_trustls(problem, solver, *, scaling: str = "block", matrix_free: bool = False, ftol: float = FTOL) -> dict:
    """Solve ``problem`` with trustls and record the cost at every residual evaluation.

    Returns the keys of ``run_scipy_baseline`` (``cost_initial``, ``cost_final``,
    ``nfev``, ``njev``, ``time_s``, ``history``, ``message``) plus ``nit``,
    ``inner_iterations`` and ``products``.
    """
    model = GaussNewtonModel() if matrix_free else GaussNewtonModel(jacobian=sparse_jacobian(problem))
    history: list[tuple[float, float]] = []
    start = 0.0

    def callback(info: IterationInfo) -> None:
        history.append((time.perf_counter() - start, info.trial_cost))

    # Jacobi proper: "jac" is block-Jacobi on a sparse J whose columns form blocks (JacobiScale.blocks)
    x_scale = block_jacobi(problem) if scaling == "block" else JacobiScale(blocks=False)
    optimizer = TrustRegion(model, solver=solver, ftol=ftol, x_scale=x_scale, callback=callback)
    start = time.perf_counter()
    result = optimizer.solve(problem.residual, problem.x0)
    elapsed = time.perf_counter() - start
    cost_initial = 0.5 * float(torch.sum(problem.residual(problem.x0) ** 2))
    return {
        "cost_initial": cost_initial,
        "cost_final": result.cost,
        "nfev": result.nfev,
        "njev": result.njev,
        "nit": result.nit,
        "inner_iterations": result.inner_iterations,
        "products": result.products,
        "time_s": elapsed,
        "history": [(0.0, cost_initial)] + history,
        "message": result.message,
    }


USER_ROUTES = {
    "least_squares": "least_squares(fun, x0, jac_sparsity=P) (defaults: Schur)",
    "cookbook": "least_squares(fun, x0, jac_sparsity=P, x_scale='jac') (scipy's cookbook call)",
    "jac": "least_squares(fun, x0, jac=J, solver='schur') (J a torch sparse tensor at every point)",
    "jac_scipy": "least_squares(fun, x0, jac=J, x_scale='jac') (the same J, scipy's options: CG)",
    "cg": 'TrustRegion(GaussNewtonModel(jac_sparsity=P), solver="cg")',
}


def run_user_route(problem, route: str, ftol: float = FTOL) -> dict:
    """Solve ``problem`` from its plain torch residual, as a user calls trustls.

    ``route`` is one of `USER_ROUTES`: ``"least_squares"`` (trustls'
    scipy-compatible function with its defaults and the ``jac_sparsity``
    pattern), ``"cookbook"`` (the same with ``x_scale="jac"``, as scipy's
    cookbook calls it), ``"jac"`` (``jac=`` returning the closed-form J as a new
    torch sparse COO tensor at every point, with ``solver="schur"``: scipy's call
    with an exact sparse Jacobian, asking for the Schur solver), ``"jac_scipy"``
    (the same ``jac`` with scipy's ``x_scale="jac"`` only: CG) or ``"cg"``
    (``TrustRegion(GaussNewtonModel(jac_sparsity=P), solver="cg")``). The pattern is built inside the timed region, as the user
    would build it. Returns the keys of `run_trustls`.
    """
    history: list[tuple[float, float]] = []
    start = time.perf_counter()
    pattern = problem.jacobian_sparsity()
    if route == "cg":
        def record(info: IterationInfo) -> None:
            history.append((time.perf_counter() - start, info.trial_cost))

        method = TrustRegion(GaussNewtonModel(jac_sparsity=pattern), solver="cg", ftol=ftol, callback=record)
        result = method.solve(problem.residual, problem.x0)
    else:
        def record(intermediate_result) -> None:
            history.append((time.perf_counter() - start, float(intermediate_result.cost)))

        def jac(x: torch.Tensor) -> torch.Tensor:
            rows, cols, values = problem.jacobian_coo(x)
            shape = (problem.n_residuals, problem.n_parameters)
            return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, shape, check_invariants=True)

        options = {"least_squares": {"jac_sparsity": pattern}, "cookbook": {"jac_sparsity": pattern, "x_scale": "jac"},
                   "jac": {"jac": jac, "solver": "schur"}, "jac_scipy": {"jac": jac, "x_scale": "jac"}}[route]
        result = least_squares(problem.residual, problem.x0, ftol=ftol, callback=record, **options)
    elapsed = time.perf_counter() - start
    return {
        "cost_initial": float(result.initial_cost),
        "cost_final": result.cost,
        "nfev": result.nfev,
        "njev": result.njev,
        "nit": result.nit,
        "inner_iterations": result.inner_iterations,
        "products": result.products,
        "time_s": elapsed,
        "history": [(0.0, float(result.initial_cost))] + history,
        "message": result.message,
    }


def warm_up() -> None:
    """One tiny solve per route, so that torch's first-use imports are not timed.

    The tiny problem has BAL's structure: 4 "points" (one column each) seen
    by 2 "cameras" (two columns each), two residuals per observation.
    """
    cameras, points = torch.arange(4).view(2, 2), 4 + torch.arange(4)
    observation_camera = torch.tensor([0, 1, 0, 1, 1, 0])
    observation_point = torch.tensor([0, 0, 1, 2, 3, 3])

    def fun(x):
        cam, pt = x[cameras[observation_camera]], x[points[observation_point]]
        return torch.cat([cam[:, 0] * pt - 1, cam[:, 1] + pt.exp() - 2])

    pattern = torch.zeros(12, 8, dtype=torch.bool)
    for row, (camera, point) in enumerate(zip(observation_camera.tolist() * 2, observation_point.tolist() * 2)):
        pattern[row, cameras[camera]] = True
        pattern[row, points[point]] = True
    x0 = torch.full((8,), 0.5, dtype=torch.float64)
    least_squares(fun, x0, jac_sparsity=pattern, max_nfev=4)
    TrustRegion(GaussNewtonModel(jac_sparsity=pattern), solver="cg", max_nfev=4).solve(fun, x0)


def plot(runs: dict[str, dict], path: pathlib.Path) -> None:
    """Cost against wall time, one line per run, running minimum of the evaluated costs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, out in runs.items():
        times, costs, best = [], [], float("inf")
        for t, c in out["history"]:
            best = min(best, c)
            times.append(t)
            costs.append(best)
        ax.step(times, costs, where="post", marker=".", label=f"{label} ({out['time_s']:.1f} s)")
    ax.set_yscale("log")
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("cost ½‖r‖² (best so far)")
    ax.set_title("BAL problem-49-7776: cost against time (1 thread)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", type=pathlib.Path, help="write the cost-time plot (PNG) here")
    parser.add_argument("--configs", nargs="*", choices=sorted(CONFIGS), help="trustls settings to run (default all)")
    parser.add_argument("--matrix-free", action="store_true", help="also run the default matrix-free model")
    args = parser.parse_args()

    torch.set_num_threads(1)
    problem = load_bal()
    print(f"BAL problem: {problem.n_cameras} cameras, {problem.n_points} points, "
          f"{problem.n_observations} observations; {problem.n_parameters} parameters, "
          f"{problem.n_residuals} residuals; torch {torch.__version__}, threads {torch.get_num_threads()}")

    warm_up()
    runs: dict[str, dict] = {"scipy trf+lsmr": run_scipy_baseline(problem, ftol=FTOL)}
    for route, label in USER_ROUTES.items():
        runs[f"trustls {label}"] = run_user_route(problem, route)
    for label in args.configs or list(CONFIGS):
        solver, scaling = make_solver(problem, label)
        runs[f"trustls {label}"] = run_trustls(problem, solver, scaling=scaling)
    if args.matrix_free:
        runs["trustls matrix-free Jacobi cg forcing=0.1 max_iter=40"] = run_trustls(
            problem, SteihaugCG(forcing=0.1, max_iter=40), scaling="jac", matrix_free=True
        )

    base = runs["scipy trf+lsmr"]["time_s"]
    target = runs["scipy trf+lsmr"]["cost_final"]
    print(f"\ninitial cost {runs['scipy trf+lsmr']['cost_initial']:,.2f}; ftol={FTOL}\n")
    print("| solver | final cost | nfev | njev | nit | CG iterations | products | time (s) | time / scipy "
          f"| time to cost ≤ {target:,.0f} (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, out in runs.items():
        inner, nit, products = (out.get(key, "") for key in ("inner_iterations", "nit", "products"))
        reached = next((f"{t:.2f}" for t, cost in out["history"] if cost <= target), "not reached")
        print(f"| {label} | {out['cost_final']:,.2f} | {out['nfev']} | {out['njev']} | {nit} | {inner or 'lsmr'} | "
              f"{products} | {out['time_s']:.2f} | {out['time_s'] / base:.2f} | {reached} |")
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    main()
