"""trustls against scipy's trf on small dense problems: time ratios, cost agreement, errors.

Two collections: the test-problem registry (`trustls.problems.registry`,
vectorized residuals) and the styled problems (`trustls.problems.styled`,
residuals written as users write them: ``torch.stack`` of scalar expressions,
Python loops, ``torch.where``, data drawn inside ``fun``, ``.item()``).

Both sides use the same torch residual function and the same tolerances
(``--tol``, default 1e-12 for ftol, xtol and gtol); scipy gets the exact
Jacobian from ``torch.func.jacrev`` (``--scipy-jacobian``; ``trustls`` gives it
the route trustls itself measures fastest, so that the ratio isolates the
controller), converted to numpy, so the ratios measure the algorithms and
their overhead, not two residual implementations. Every solve runs once untimed (warm), then the best
of ``--repeats`` timed runs counts. One thread; all in this one process.

A last section times the issue's exponential fit (3 parameters, 50 points)
against scipy given a hand-written numpy residual and Jacobian, and shows
where trustls spends the time of one solve.

Run:  OMP_NUM_THREADS=1 python benchmarks/small_problems.py [--repeats 5] [--only registry,styled,exponential]
      [--clock cpu]   (process CPU time instead of wall time, for a machine shared with other jobs)
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time
import warnings

import numpy as np
import scipy.optimize
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from trustls import GaussNewtonModel, TrustRegion  # noqa: E402
from trustls.models.dense_jacobian import DenseJacobian  # noqa: E402
from trustls.problems import registry, styled  # noqa: E402


def scipy_trf(residual, x0, tol, jacobian="jacrev"):
    if jacobian == "trustls":  # the route trustls measures fastest, chosen afresh for each solve
        chooser = DenseJacobian()

        def jac_fn(x):
            return chooser(residual, x).matrix
    else:
        jac_fn = getattr(torch.func, jacobian)(residual)

    def fun(x):
        return residual(torch.from_numpy(x)).detach().numpy()

    def jac(x):
        return jac_fn(torch.from_numpy(x)).detach().numpy()

    return scipy.optimize.least_squares(fun, x0.numpy(), jac=jac, method="trf", ftol=tol, xtol=tol, gtol=tol)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter  # set from --clock


def best_of(run, repeats):
    """(result, best seconds) of ``repeats`` timed runs after one untimed warm run."""
    results, times = interleaved_best({"run": run}, repeats)
    return results["run"], times["run"]


def interleaved_best(runs, repeats):
    """(results, best seconds) of several runs after a warm run each, timed round-robin so that a change
    of the machine's load hits all alike."""
    results = {label: run() for label, run in runs.items()}
    times = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for label, run in runs.items():
            start = clock()
            results[label] = run()
            times[label] = min(times[label], clock() - start)
    return results, times


def attempt(run, repeats):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # overflow in rejected trials; fallback notices
            return (*best_of(run, repeats), None)
    except Exception as error:  # noqa: BLE001 - the benchmark reports errors per problem
        return None, None, f"{type(error).__name__}: {str(error).splitlines()[0][:60]}"


def agree(cost, reference, initial):
    """Final costs equal to 1e-6 relative, or both at the rounding level of the initial cost."""
    return abs(cost - reference) <= 1e-6 * max(cost, reference) + 1e-14 * initial


def run_collection(label, entries, solvers, args):
    rows = []
    for name, family, residual, x0 in entries:
        initial = 0.5 * float(residual(x0).square().sum())
        reference, scipy_time, scipy_error = attempt(lambda: scipy_trf(residual, x0, args.tol, args.scipy_jacobian),
                                                     args.repeats)
        row = {"problem": name, "family": family, "scipy_ms": None if scipy_error else 1e3 * scipy_time,
               "scipy_error": scipy_error, "scipy_nfev": None if scipy_error else reference.nfev}
        for solver, make in solvers.items():
            # A new controller per solve: its Jacobian route is measured afresh, as a new solve's would be.
            result, seconds, error = attempt(lambda: make().solve(residual, x0), args.repeats)
            row[f"{solver}_error"] = error
            if error is None and scipy_error is None:
                row[f"{solver}_ratio"] = seconds / scipy_time
                row[f"{solver}_agree"] = agree(result.cost, reference.cost, initial)
                row[f"{solver}_nfev"] = result.nfev
        rows.append(row)
    print(f"\n## {label}\n")
    header = "| problem | family | scipy nfev | scipy ms |"
    for solver in solvers:
        header += f" {solver} nfev | {solver} time ratio | {solver} cost agrees |"
    print(header)
    print("|---|---|---:|---:|" + "---:|---:|---|" * len(solvers))
    for row in rows:
        if row["scipy_error"]:
            print(f"| {row['problem']} | {row['family']} | scipy error: {row['scipy_error']} |")
            continue
        line = f"| {row['problem']} | {row['family']} | {row['scipy_nfev']} | {row['scipy_ms']:.2f} |"
        for solver in solvers:
            if row[f"{solver}_error"]:
                line += f" | **{row[f'{solver}_error']}** | |"
            else:
                line += (f" {row[f'{solver}_nfev']} | {row[f'{solver}_ratio']:.2f} | "
                         f"{'yes' if row[f'{solver}_agree'] else '**no**'} |")
        print(line)
    return rows


def print_medians(rows, solvers):
    print("\n## Median time ratio (trustls / scipy trf) per family\n")
    columns = " | ".join(f"{s} median | {s} errors | {s} cost disagrees" for s in solvers)
    print(f"| family | problems | {columns} |")
    print("|---|---:|" + "---:|---:|---:|" * len(solvers))
    families = sorted({row["family"] for row in rows})
    for family in [*families, "all"]:
        chosen = [row for row in rows if family in (row["family"], "all") and not row["scipy_error"]]
        line = f"| {family} | {len(chosen)} |"
        for s in solvers:
            ratios = [row[f"{s}_ratio"] for row in chosen if not row[f"{s}_error"]]
            errors = sum(1 for row in chosen if row[f"{s}_error"])
            disagree = sum(1 for row in chosen if not row[f"{s}_error"] and not row[f"{s}_agree"])
            median = f"{statistics.median(ratios):.2f}" if ratios else "-"
            line += f" {median} | {errors} | {disagree} |"
        print(line)


def exponential_fit(args):
    """The issue's 3-parameter fit against scipy with a hand-written numpy Jacobian."""
    # The styled problem's data, drawn once here: the fit had its data outside fun.
    problem = styled.get("exponential_decay")
    x0 = problem.x0
    t = np.linspace(0, 5, 50)
    y = -problem.residual(torch.zeros(3, dtype=torch.float64)).numpy()  # r(0) = -y
    t_torch, y_torch = torch.from_numpy(t), torch.from_numpy(y)

    def residual(x):
        return x[0] * torch.exp(-x[1] * t_torch) + x[2] - y_torch

    def fun(x):
        return x[0] * np.exp(-x[1] * t) + x[2] - y

    def jac(x):
        e = np.exp(-x[1] * t)
        return np.stack([e, -x[0] * t * e, np.ones_like(t)], axis=1)

    def jacobian(x):  # by hand, in torch, for trustls' jacobian=
        e = torch.exp(-x[1] * t_torch)
        return torch.stack([e, -x[0] * t_torch * e, torch.ones_like(t_torch)], dim=1)

    tol = args.tol

    def make(**model):
        return TrustRegion(GaussNewtonModel(**model), solver="lstsq", ftol=tol, xtol=tol, gtol=tol)

    reused = make()  # one model for every solve: its identity matrix for J's rows is made once
    runs = {
        "scipy trf, numpy Jacobian by hand": lambda: scipy.optimize.least_squares(
            fun, x0.numpy(), jac=jac, method="trf", ftol=tol, xtol=tol, gtol=tol),
        "trustls lstsq, a new TrustRegion per solve": lambda: make().solve(residual, x0),
        "trustls lstsq, one TrustRegion reused": lambda: reused.solve(residual, x0),
        "trustls lstsq, jacobian= by hand (torch)": lambda: make(jacobian=jacobian).solve(residual, x0),
    }  # fmt: skip
    results, times = interleaved_best(runs, args.repeats)
    scipy_time = times["scipy trf, numpy Jacobian by hand"]
    print("\n## Exponential decay, 3 parameters, 50 points, against scipy with a hand-written numpy Jacobian\n")
    print("| run | ms | ratio to scipy | evaluations | final cost |")
    print("|---|---:|---:|---:|---|")
    for label, result in results.items():
        print(f"| {label} | {1e3 * times[label]:.2f} | {times[label] / scipy_time:.2f} | {result.nfev} | "
              f"{result.cost:.10e} |")
    breakdown(make, residual, x0, args.repeats)


def breakdown(make, residual, x0, repeats):
    """Where one solve's time goes: wrap the parts (in this benchmark only) and sum their times."""
    spent = {"fun (controller's calls)": 0.0, "model.linearize": 0.0, "solver.prepare + solve": 0.0}

    def timed(key, function):
        def wrapper(*args, **kwargs):
            start = clock()
            try:
                return function(*args, **kwargs)
            finally:
                spent[key] += clock() - start
        return wrapper

    calls = {"fun": 0}

    def counted(x):
        calls["fun"] += 1
        return residual(x)

    fun = timed("fun (controller's calls)", counted)
    total = 0.0
    for _ in range(repeats):
        controller = make()
        model, solver = controller.model, controller.solver
        linearize, prepare, solve = model.linearize, solver.prepare, solver.solve
        # The model's own calls of fun (inside linearize) stay in its time: it gets the plain function.
        model.linearize = timed(
            "model.linearize", lambda f, at, *args, linearize=linearize, **kw: linearize(residual, at, *args, **kw)
        )
        object.__setattr__(solver, "prepare", timed("solver.prepare + solve", prepare))
        object.__setattr__(solver, "solve", timed("solver.prepare + solve", solve))
        start = clock()
        controller.solve(fun, x0)
        total += clock() - start
    total /= repeats
    print(f"\nWhere the time goes (mean of {repeats} solves with the parts timed: {1e3 * total:.2f} ms per solve)\n")
    print("| part | ms per solve | share |")
    print("|---|---:|---:|")
    parts = {key: value / repeats for key, value in spent.items()}
    for key, value in parts.items():
        print(f"| {key} | {1e3 * value:.2f} | {value / total:.0%} |")
    rest = total - sum(parts.values())
    print(f"| controller (the rest) | {1e3 * rest:.2f} | {rest / total:.0%} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tol", type=float, default=1e-12)
    parser.add_argument("--only", default="registry,styled,exponential")
    parser.add_argument("--solvers", default="lstsq,cg")
    parser.add_argument("--scipy-jacobian", choices=("jacrev", "jacfwd", "trustls"), default="jacrev",
                        help="how scipy's exact Jacobian is computed; trustls: trustls.models.dense_jacobian")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall",
                        help="wall time, or this process's CPU time (robust on a shared machine)")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, tolerances {args.tol:g}, best of {args.repeats} after a warm run, "
          f"{args.clock} clock, scipy's Jacobian by {args.scipy_jacobian}")
    tol = args.tol
    solvers = {name: (lambda name=name: TrustRegion(GaussNewtonModel(), solver=name, ftol=tol, xtol=tol, gtol=tol))
               for name in args.solvers.split(",")}
    sections = args.only.split(",")
    rows = []
    if "registry" in sections:
        entries = [(p.name, "registry " + p.source.split()[0].rstrip(":"), p.residual, p.x0)
                   for p in registry.problems()]
        rows += run_collection("Registry", entries, solvers, args)
    if "styled" in sections:
        entries = [(p.name, "styled " + p.family, p.residual, p.x0) for p in styled.problems()]
        rows += run_collection("Styled problems", entries, solvers, args)
    if rows:
        print_medians(rows, solvers)
    if "exponential" in sections:
        exponential_fit(args)


if __name__ == "__main__":
    main()
