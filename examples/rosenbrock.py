"""Rosenbrock's function as a least-squares problem, solved both ways.

The residuals r(x) = (10 (x₂ − x₁²), 1 − x₁) have ½‖r‖² = ½ f_Rosenbrock, with
the minimum 0 at (1, 1) and the classical start (−1.2, 1) (Moré, Garbow &
Hillstrom 1981, problem 1). The script solves it with both subproblem solvers
("cg": Steihaug-Toint CG on Gauss-Newton products, never forming J; "lstsq":
the exact step from one SVD of J per point), in float64 and float32, and prints
one row per run. When scipy is installed, its ``least_squares(method="trf")``
answer is printed last for comparison.

Run it with::

    python examples/rosenbrock.py
"""

from __future__ import annotations

import time

import torch

from trustls import GaussNewtonModel, TrustRegion


def residuals(x):  # 1-D tensor (n,) -> 1-D tensor (m,)
    return torch.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])


def scipy_row() -> str | None:
    """scipy's answer on the same problem, or None when scipy is not installed."""
    try:
        import numpy as np
        from scipy.optimize import least_squares
    except ImportError:
        return None

    def fun(x):
        return np.array([10 * (x[1] - x[0] ** 2), 1 - x[0]])

    start = time.perf_counter()
    result = least_squares(fun, [-1.2, 1.0], method="trf")
    seconds = time.perf_counter() - start
    x = ", ".join(f"{v:.10f}" for v in result.x)
    return (
        f"{'scipy trf':<10}{'float64':<9}[{x}]  {result.cost:>9.2e}  {result.nfev:>4}  {result.njev:>4}"
        f"  {1e3 * seconds:>6.1f}  {result.message}"
    )


def main() -> None:
    header = f"{'solver':<10}{'dtype':<9}{'x':<28}  {'cost':>9}  {'nfev':>4}  {'njev':>4}  {'ms':>6}  message"
    print("Rosenbrock, x0 = (-1.2, 1), minimum 0 at (1, 1)\n")
    print(header)
    print("-" * len(header))
    for dtype in (torch.float64, torch.float32):
        for solver in ("cg", "lstsq"):
            x0 = torch.tensor([-1.2, 1.0], dtype=dtype)
            start = time.perf_counter()
            result = TrustRegion(GaussNewtonModel(), solver=solver).solve(residuals, x0)
            seconds = time.perf_counter() - start
            x = ", ".join(f"{v:.10f}" for v in result.x.tolist())
            dtype_name = str(dtype).removeprefix("torch.")
            print(
                f"{solver:<10}{dtype_name:<9}[{x}]  {result.cost:>9.2e}  {result.nfev:>4}  {result.njev:>4}"
                f"  {1e3 * seconds:>6.1f}  {result.message}"
            )
    row = scipy_row()
    print(row if row is not None else "(scipy is not installed: pip install scipy to compare with its answer)")
    print("\nms: wall time; the first run also pays torch's one-time imports on its first backward pass (about 0.5 s).")


if __name__ == "__main__":
    main()
