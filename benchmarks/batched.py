"""Thousands of exponential fits at once: TrustRegion.solve_batch against loops of single solves.

The problems: y = a·exp(−b·t) + c on 50 points t in [0, 4], with a, b, c
drawn uniformly from [1, 5], [0.5, 3], [−1, 1] and Gaussian noise of 0.05,
all fitted from the common start (1, 1, 0). Compared in one process:

* scipy: a Python loop of ``scipy.optimize.least_squares`` (trf, default
  tolerances) with a hand-written numpy residual and exact Jacobian;
* trustls batched: ``TrustRegion(...).solve_batch`` for "lstsq" and "cg",
  with the Jacobians by automatic differentiation (``compact=True``: the
  finished problems leave the calls of fun) and with a hand-written Jacobian
  (``GaussNewtonModel(jacobian=...)``);
* trustls single: a Python loop of ``TrustRegion.solve`` (autodiff).

The loops over single solves are timed on the first ``--subset`` problems and
extrapolated to the batch (said in the table); scipy runs on all problems
unless ``--scipy-subset`` is given, since its costs are the reference for the
agreement column: the fraction of problems whose cost is within 1e-8
relative of scipy's. Times are wall-clock and process CPU time, each the
best of ``--repeats`` runs (after one warm-up solve of 100 problems for the
batched ones), all in this run; "speed-up" is scipy's time per fit over the
method's, on each clock.

``--factorizations`` times instead the ways to factor the (batch, 50, 3)
Jacobians of one iteration (minimum CPU time of five): torch's batched SVD
(one LAPACK call per matrix), the QR of [J f] by ``geqrf`` that the batched
solvers use, and the SVD of the 3 × 3 R by torch and by the vectorized
one-sided Jacobi of ``trustls.batched.factorization``.

Run:  OMP_NUM_THREADS=1 python benchmarks/batched.py [--batch 10000] [--subset 200]
      OMP_NUM_THREADS=1 python benchmarks/batched.py --factorizations
      python benchmarks/batched.py --device cuda --batch 1000000 --scipy-subset 2000 --subset 0
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import scipy.optimize
import torch

from trustls import GaussNewtonModel, TrustRegion
from trustls.batched.factorization import jacobi_svd, triangular_factor

M = 50
START = (1.0, 1.0, 0.0)


def problems(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The times t (M,) and the data y (batch, M), float64, from a seeded generator."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 4.0, M)
    a, b, c = rng.uniform(1, 5, batch), rng.uniform(0.5, 3, batch), rng.uniform(-1, 1, batch)
    y = a[:, None] * np.exp(-b[:, None] * t) + c[:, None] + 0.05 * rng.standard_normal((batch, M))
    return t, y


def scipy_loop(t: np.ndarray, y: np.ndarray) -> np.ndarray:
    costs = np.empty(y.shape[0])
    x0 = np.array(START)
    for k in range(y.shape[0]):
        data = y[k]

        def fun(p, data=data):
            return p[0] * np.exp(-p[1] * t) + p[2] - data

        def jac(p):
            e = np.exp(-p[1] * t)
            return np.stack([e, -p[0] * t * e, np.ones_like(t)], axis=1)

        costs[k] = scipy.optimize.least_squares(fun, x0, jac=jac, method="trf").cost
    return costs


def batched(t: torch.Tensor, y: torch.Tensor, solver: str, jacobian: bool) -> torch.Tensor:
    def fun(x, rows):
        data = y[rows]
        return x[:, :1] * torch.exp(-x[:, 1:2] * t) + x[:, 2:] - data

    def jac(x, rows):
        # (K, m, n) as a view of the columns, the layout solve_batch reads: no interleaving copy.
        e = torch.exp(-x[:, 1:2] * t)
        return torch.stack([e, -x[:, :1] * t * e, torch.ones_like(e)], dim=1).transpose(1, 2)

    model = GaussNewtonModel(jacobian=jac if jacobian else None)
    x0 = torch.tensor(START, dtype=y.dtype, device=y.device).expand(y.shape[0], 3)
    result = TrustRegion(model, solver=solver).solve_batch(fun, x0, compact=True)
    return result.cost


def single_loop(t: torch.Tensor, y: torch.Tensor, solver: str) -> torch.Tensor:
    controller = TrustRegion(GaussNewtonModel(), solver=solver)
    x0 = torch.tensor(START, dtype=y.dtype)
    costs = []
    for k in range(y.shape[0]):
        data = y[k]
        costs.append(controller.solve(lambda x, data=data: x[0] * torch.exp(-x[1] * t) + x[2] - data, x0).cost)
    return torch.tensor(costs, dtype=torch.float64)


def factorizations(t: torch.Tensor, y: torch.Tensor) -> None:
    """CPU milliseconds of the factorizations of one iteration's Jacobians at the start (1, 1, 0)."""
    x = torch.tensor(START, dtype=y.dtype, device=y.device).expand(y.shape[0], 3)
    e = torch.exp(-x[:, 1:2] * t)
    J = torch.stack([e, -x[:, :1] * t * e, torch.ones_like(e)], dim=2)
    f = x[:, :1] * e + x[:, 2:] - y
    columns = J.transpose(1, 2).contiguous()
    R, _ = triangular_factor(columns, f)
    cases = {
        "torch.linalg.svd(J) (B, 50, 3)": lambda: torch.linalg.svd(J, full_matrices=False),
        "torch.linalg.qr(J), reduced": lambda: torch.linalg.qr(J),
        "triangular_factor: geqrf of [J f]": lambda: triangular_factor(columns, f),
        "torch.linalg.svd(R) (B, 3, 3)": lambda: torch.linalg.svd(R.permute(2, 0, 1)),
        "jacobi_svd(R), vectorized": lambda: jacobi_svd(R),
    }
    print(f"| factorization of {y.shape[0]} Jacobians | CPU ms (min of 5) |")
    print("|---|---:|")
    for label, run in cases.items():
        times = []
        for _ in range(5):
            start = time.process_time()
            run()
            times.append(time.process_time() - start)
        print(f"| {label} | {1e3 * min(times):.1f} |")


def timed(run, repeats: int = 1):
    """``run()``'s value and its best wall-clock and CPU seconds over ``repeats`` runs."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        value = run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return value, min(walls), min(cpus)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--subset", type=int, default=200, help="problems timed for the loops of trustls' solve")
    parser.add_argument("--scipy-subset", type=int, default=None, help="problems for scipy (default: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--solvers", default="lstsq,cg")
    parser.add_argument("--factorizations", action="store_true", help="time the factorizations only")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each method; the best is reported")
    args = parser.parse_args()
    t_np, y_np = problems(args.batch)
    device = torch.device(args.device)
    t, y = torch.from_numpy(t_np).to(device), torch.from_numpy(y_np).to(device)
    if args.factorizations:
        factorizations(t, y)
        return
    print(
        f"# {args.batch} fits of a·exp(−b·t) + c on {M} points; {platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s), device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )

    scipy_count = args.batch if args.scipy_subset is None else min(args.scipy_subset, args.batch)
    reference, scipy_wall, scipy_cpu = timed(lambda: scipy_loop(t_np, y_np[:scipy_count]), args.repeats)
    per_fit_wall, per_fit_cpu = scipy_wall / scipy_count, scipy_cpu / scipy_count
    rows = [("scipy trf loop (numpy jac)", scipy_count, scipy_wall, scipy_cpu, None)]

    for solver in args.solvers.split(","):
        for jacobian in (False, True):
            batched(t, y[: min(100, args.batch)], solver, jacobian)  # warm-up: first-call costs of torch.func
            costs, wall, cpu = timed(
                lambda solver=solver, jacobian=jacobian: batched(t, y, solver, jacobian), args.repeats
            )
            label = f"trustls solve_batch {solver} ({'hand-written jac' if jacobian else 'autodiff'})"
            rows.append((label, args.batch, wall, cpu, costs.cpu()))
        if args.subset and device.type == "cpu":
            count = min(args.subset, args.batch)
            costs, wall, cpu = timed(lambda count=count, solver=solver: single_loop(t, y[:count], solver), args.repeats)
            rows.append((f"trustls solve loop {solver} (autodiff)", count, wall, cpu, costs))

    print(
        "| method | problems timed | wall s | CPU s | fits/s (wall) | speed-up, wall | speed-up, CPU "
        "| same cost as scipy |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, count, wall, cpu, costs in rows:
        if costs is None:
            agreement = "reference"
        else:
            shared = min(len(costs), scipy_count)
            close = np.abs(costs[:shared].numpy() - reference[:shared]) <= 1e-8 * np.abs(reference[:shared])
            agreement = f"{close.mean():.4%} of {shared}"
        extrapolated = " (extrapolated)" if count < args.batch else ""
        print(
            f"| {label} | {count}{extrapolated} | {wall:.2f} | {cpu:.2f} | {count / wall:.0f} | "
            f"{per_fit_wall / (wall / count):.1f}× | {per_fit_cpu / (cpu / count):.1f}× | {agreement} |"
        )


if __name__ == "__main__":
    main()
