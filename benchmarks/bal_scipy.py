"""scipy baseline on the BAL bundle adjustment problem (problem-49-7776-pre).

Runs ``scipy.optimize.least_squares(method="trf", x_scale="jac", tr_solver="lsmr")``
with the residual and the exact sparse Jacobian of
:class:`trustls.problems.bal.BundleAdjustmentProblem`, the configuration of the
scipy cookbook's "Large-scale bundle adjustment" example (there with a
finite-difference Jacobian over ``jac_sparsity``, here exact), and records the
cost at every residual evaluation for a cost-versus-time plot.

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bal_scipy.py

``OMP_NUM_THREADS=1`` pins both OpenBLAS (numpy's dot products inside LSMR) and
torch's intra-op pool to one thread. On a small shared machine (2 cores) the
default thread pools oversubscribe the cores: measured there, 11 s with one
thread against 48 s with the defaults, nearly all of the difference inside
scipy's LSMR. Compare solvers only under the same thread settings.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.optimize
import scipy.sparse
import torch


def run_scipy_baseline(problem, ftol: float = 1e-4, verbose: int = 0) -> dict:
    """Solve ``problem`` with scipy's TRF + LSMR and time it.

    Args:
        problem: a :class:`~trustls.problems.bal.BundleAdjustmentProblem`.
        ftol: scipy's relative cost-reduction tolerance.
        verbose: passed to ``scipy.optimize.least_squares``.

    Returns:
        A dict with ``cost_initial``, ``cost_final`` (½‖r‖²), ``nfev``, ``njev``,
        ``time_s`` (wall time of the whole solve), ``time_fun_s`` and ``time_jac_s``
        (wall time inside the residual and Jacobian callbacks, including the
        torch/numpy/CSR conversions), ``history`` (a list of ``(elapsed_s, cost)``
        per residual evaluation, rejected trial points included), ``status`` and
        ``message``.
    """
    history: list[tuple[float, float]] = []
    timers = {"fun": 0.0, "jac": 0.0}
    shape = (problem.n_residuals, problem.n_parameters)
    start = 0.0

    def fun(x: np.ndarray) -> np.ndarray:
        tic = time.perf_counter()
        r = problem.residual(torch.from_numpy(np.array(x, dtype=np.float64))).numpy()
        toc = time.perf_counter()
        timers["fun"] += toc - tic
        history.append((toc - start, 0.5 * float(r @ r)))
        return r

    def jac(x: np.ndarray) -> scipy.sparse.csr_matrix:
        tic = time.perf_counter()
        rows, cols, values = problem.jacobian_coo(torch.from_numpy(np.array(x, dtype=np.float64)))
        J = scipy.sparse.csr_matrix((values.numpy(), (rows.numpy(), cols.numpy())), shape=shape)
        timers["jac"] += time.perf_counter() - tic
        return J

    x0 = problem.x0.detach().cpu().numpy().astype(np.float64)
    start = time.perf_counter()
    result = scipy.optimize.least_squares(
        fun, x0, jac=jac, method="trf", x_scale="jac", ftol=ftol, tr_solver="lsmr", verbose=verbose
    )
    elapsed = time.perf_counter() - start
    return {
        "cost_initial": history[0][1],
        "cost_final": float(result.cost),
        "nfev": int(result.nfev),
        "njev": int(result.njev),
        "time_s": elapsed,
        "time_fun_s": timers["fun"],
        "time_jac_s": timers["jac"],
        "history": history,
        "status": int(result.status),
        "message": result.message,
    }


def main() -> None:
    import pathlib
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from trustls.problems.bal import load_bal

    problem = load_bal()
    print(f"BAL problem: {problem.n_cameras} cameras, {problem.n_points} points, "
          f"{problem.n_observations} observations; {problem.n_parameters} parameters, "
          f"{problem.n_residuals} residuals; torch threads: {torch.get_num_threads()}")
    out = run_scipy_baseline(problem, verbose=2)
    other = out["time_s"] - out["time_fun_s"] - out["time_jac_s"]
    print(f"initial cost: {out['cost_initial']:.6e}")
    print(f"final cost:   {out['cost_final']:.6e}")
    print(f"nfev: {out['nfev']}, njev: {out['njev']}, status: {out['status']} ({out['message']})")
    print(f"time: {out['time_s']:.2f} s  (fun {out['time_fun_s']:.2f} s, jac {out['time_jac_s']:.2f} s, "
          f"scipy {other:.2f} s)")


if __name__ == "__main__":
    main()
