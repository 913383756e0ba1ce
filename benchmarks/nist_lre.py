"""trustls (both solvers) and scipy's trf on the 27 NIST StRD problems: correct digits and nfev.

Every problem is solved from both of NIST's starts by trustls with ``"cg"`` and
``"lstsq"`` (through ``trustls.validate.run``, the self-check's settings) and by
``scipy.optimize.least_squares(method="trf")`` with the exact Jacobian from
``torch.func.jacfwd`` and the same options (``ftol=None, xtol=1e-15, gtol=None,
x_scale="jac", max_nfev=3000`` unless changed on the command line). Each answer
is scored by the log relative error against NIST's certified values (McCullough
1998): LRE = min(LRE of the parameters, LRE of RSS = 2·cost), at most 11.

Prints a markdown table (LRE and nfev per problem × start), the totals, and writes
``docs/img/nist_lre.png`` (a bar chart of LRE per problem and start) when
matplotlib is installed. Runs on one thread so that timings and the last,
rounding-dominated digits are reproducible.

Run:  python benchmarks/nist_lre.py [--x-scale jac|1] [--tol 1e-15] [--png docs/img/nist_lre.png]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import scipy.optimize
import torch

from trustls.problems import nist
from trustls.validate import DEFAULT_OPTIONS, PASS_LRE, run

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("trustls cg", "trustls lstsq", "scipy trf")


def scipy_trf(problem: nist.NistProblem, x0: torch.Tensor, options: dict) -> tuple[float, float, int, float]:
    """(LRE of the parameters, LRE of RSS, nfev, seconds) of scipy's trf from ``x0``."""
    jacobian = torch.func.jacfwd(problem.residual)

    def fun(b):
        return problem.residual(torch.from_numpy(b)).numpy()

    def jac(b):
        return jacobian(torch.from_numpy(b)).numpy()

    began = time.perf_counter()
    # Far trial steps overflow the cost (MGH10, start 1); trf rejects them and shrinks its radius.
    with np.errstate(over="ignore"):
        result = scipy.optimize.least_squares(fun, x0.numpy().astype(np.float64), jac=jac, method="trf", **options)
    seconds = time.perf_counter() - began
    lre_params = nist.lre(torch.from_numpy(np.asarray(result.x)), problem.certified_params)
    return lre_params, nist.lre(2.0 * result.cost, problem.certified_rss), result.nfev, seconds


def collect(options: dict) -> list[dict]:
    """One record per problem × start: LRE, parameter LRE, nfev and seconds per method."""
    # Keep torch.func's one-time setup out of the timings of the first solves.
    run(("cg", "lstsq"), ["DanWood"], **options)
    scipy_trf(nist.load("DanWood"), nist.load("DanWood").starts[0], options)
    trustls_rows = {(r.problem, r.start, r.solver): r for r in run(("cg", "lstsq"), **options)}
    records = []
    for name in nist.names():
        problem = nist.load(name)
        for start, x0 in enumerate(problem.starts, start=1):
            record = {"problem": name, "start": start, "difficulty": problem.difficulty}
            for method, solver in (("trustls cg", "cg"), ("trustls lstsq", "lstsq")):
                row = trustls_rows[name, start, solver]
                record[method] = (row.lre, row.lre_params, row.nfev, row.seconds)
            lre_params, lre_rss, nfev, seconds = scipy_trf(problem, x0, options)
            record["scipy trf"] = (min(lre_params, lre_rss), lre_params, nfev, seconds)
            records.append(record)
    return records


def print_tables(records: list[dict]) -> None:
    print("| problem | start | " + " | ".join(f"{m} LRE" for m in METHODS) + " | "
          + " | ".join(f"{m} nfev" for m in METHODS) + " |")  # fmt: skip
    print("|---|---:|" + "---:|" * (2 * len(METHODS)))
    for r in records:
        lres = " | ".join(f"{r[m][0]:.1f}" + ("" if r[m][0] >= PASS_LRE else " ✗") for m in METHODS)
        nfevs = " | ".join(str(r[m][2]) for m in METHODS)
        print(f"| {r['problem']} | {r['start']} | {lres} | {nfevs} |")
    print()
    print("| method | LRE ≥ 6 | parameters' LRE ≥ 6 | mean LRE | mean parameters' LRE | total nfev | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    n = len(records)
    for m in METHODS:
        values = [r[m] for r in records]
        print(
            f"| {m} | {sum(v[0] >= PASS_LRE for v in values)}/{n} | {sum(v[1] >= PASS_LRE for v in values)}/{n} | "
            f"{math.fsum(v[0] for v in values) / n:.2f} | {math.fsum(v[1] for v in values) / n:.2f} | "
            f"{sum(v[2] for v in values)} | {math.fsum(v[3] for v in values):.1f} |"
        )


def plot(records: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"\n(matplotlib is not installed: {path} not written; pip install matplotlib)")
        return
    names = nist.names()
    fig, axes = plt.subplots(2, 1, figsize=(13, 7.5), sharex=True, sharey=True)
    width = 0.27
    colors = ("#4c72b0", "#dd8452", "#8c8c8c")
    for ax, start in zip(axes, (1, 2)):
        by_name = {r["problem"]: r for r in records if r["start"] == start}
        for k, (method, color) in enumerate(zip(METHODS, colors)):
            xs = [i + (k - 1) * width for i in range(len(names))]
            ax.bar(xs, [by_name[name][method][0] for name in names], width, label=method, color=color)
        ax.axhline(PASS_LRE, color="black", linewidth=0.8, linestyle="--")
        ax.set_ylim(0, 11.5)
        ax.set_ylabel(f"LRE, start {start}")
        ax.grid(axis="y", alpha=0.3)
    # Difficulty bands: lower | average | higher, in NIST's order.
    levels = [nist.load(name).difficulty for name in names]
    for ax in axes:
        for i in range(1, len(names)):
            if levels[i] != levels[i - 1]:
                ax.axvline(i - 0.5, color="gray", linewidth=0.8)
    axes[1].set_xticks(range(len(names)), names, rotation=60, ha="right")
    axes[0].legend(ncol=3, loc="lower left", framealpha=0.9)
    axes[0].set_title(
        "NIST StRD: correct digits (LRE = min over parameters and RSS, at most 11); "
        "dashed: 6; bands: lower | average | higher difficulty"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nwrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--x-scale", default=DEFAULT_OPTIONS["x_scale"], help="'jac' or a number (default jac)")
    parser.add_argument("--tol", type=float, default=DEFAULT_OPTIONS["xtol"], help="xtol (default 1e-15)")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "img" / "nist_lre.png")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x_scale = args.x_scale if args.x_scale == "jac" else float(args.x_scale)
    options = {**DEFAULT_OPTIONS, "xtol": args.tol, "x_scale": x_scale}
    print("options: " + ", ".join(f"{key}={value!r}" for key, value in options.items()))
    print(f"scipy {scipy.__version__}, torch {torch.__version__}, {torch.get_num_threads()} thread\n")
    records = collect(options)
    print_tables(records)
    plot(records, args.png)


if __name__ == "__main__":
    main()
