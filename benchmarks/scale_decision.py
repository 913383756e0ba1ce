"""The evidence behind `JacobiScale`'s matrix-free default: CG iterations, not seconds.

Sections (all by default, or pick with ``--only``):

``noise``
    Jacobi scaling from column norms of three qualities on the problems of
    ``large_structured.py`` (n = 10⁴, tolerances 10⁻¹⁰): exact (from the
    analytic J), the diluted 32-probe estimate (`GaussNewtonModel`'s), and 32
    plain Rademacher probes (the estimate before it), all refreshed at
    iterations 0, 1, 2, 4, 8, … with the running maximum; beside T = I.
``spread``
    When is Jacobi scaling worth it? Extended Rosenbrock, Broyden tridiagonal
    and Powell singular (``--spread-n``, default 2,000) from x0·(1 + 0.1ξ), ξ
    standard normal, in variables y = x / s with s = S^U(−½, ½) for units
    spreads S = 1, 3, 10: T = I against Jacobi from the exact norms. The largest over the
    smallest column norm at the start is what `JacobiScale` compares with
    ``uniform_spread``.
``later``
    A problem whose scale appears during the solve: r = x² − t, t = 10^U(−3, 3),
    from x0 = 1 (all column norms 2 at the start): the default with and
    without its re-check of T = I at iteration 8.

Run from the repository root::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scale_decision.py [--only noise,spread,later]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
import scipy.sparse
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import trustls.scaling as scaling  # noqa: E402
from trustls import GaussNewtonModel, TrustRegion  # noqa: E402
from large_structured import MGH  # noqa: E402
from user_problems import BADLY_SCALED, WELL_SCALED, UserProblem, powell_singular  # noqa: E402

TOL = 1e-10


class ExactJacobi(scaling.ScalePolicy):
    """Jacobi T from the exact column norms of the scipy Jacobian, on the estimated norms' schedule."""

    def __init__(self, problem: UserProblem):
        self.problem = problem

    def scaling(self, model, linearization, previous, iteration):
        if previous is not None and iteration & (iteration - 1):
            return previous
        J = self.problem.jacobian(linearization.x.numpy())
        norms = torch.from_numpy(np.sqrt(np.asarray(J.multiply(J).sum(axis=0)).ravel()))
        return scaling._running_jacobi(norms, previous)


class RademacherJacobi(scaling.ScalePolicy):
    """Jacobi T from (1/k) Σ (Jᵀz)², k = 32 Rademacher VJPs (trustls 0.1's estimate), same schedule."""

    def scaling(self, model, linearization, previous, iteration):
        if previous is not None and iteration & (iteration - 1):
            return previous
        J = linearization.jacobian
        generator = torch.Generator().manual_seed(0)
        squares = torch.zeros(J.shape[1], dtype=J.dtype)
        for _ in range(32):
            z = torch.randint(0, 2, (J.shape[0],), generator=generator).to(J.dtype) * 2 - 1
            squares += J.rmatvec(z) ** 2
        return scaling._running_jacobi(torch.sqrt(squares / 32), previous)


def solve(problem, x_scale, max_nfev=None):
    controller = TrustRegion(GaussNewtonModel(), solver="cg", ftol=TOL, xtol=TOL, gtol=TOL, x_scale=x_scale,
                             max_nfev=max_nfev)
    result = controller.solve(problem.residual, problem.x0)
    return f"{result.nfev} / {result.inner_iterations}" + ("" if result.success else f" ({result.status.name})")


def noise(n: int) -> None:
    print("| problem | T = I | exact Jacobi | diluted estimate (default) | Rademacher estimate |")
    print("|---|---:|---:|---:|---:|")
    for name, make in {**MGH, **WELL_SCALED, **BADLY_SCALED}.items():
        if name == "reaction_diffusion_2d":
            continue  # the 1-D one stands for it; same answer, slower
        problem = make(n)
        unscaled = solve(problem, 1.0, max_nfev=300) if name not in BADLY_SCALED else "—"
        diluted = scaling.JacobiScale(uniform_spread=1.0)  # Jacobi from the default estimate, no decision
        print(f"| {name} | {unscaled} | {solve(problem, ExactJacobi(problem))} | {solve(problem, diluted)} | "
              f"{solve(problem, RademacherJacobi())} |", flush=True)


def in_units(problem: UserProblem, spread: float, seed: int = 0) -> UserProblem:
    generator = torch.Generator().manual_seed(seed)
    x0 = problem.x0 * (1 + 0.1 * torch.randn(problem.n, generator=generator, dtype=torch.float64))
    s = spread ** (torch.rand(problem.n, generator=generator, dtype=torch.float64) - 0.5)
    diagonal = scipy.sparse.diags(s.numpy())
    return UserProblem(f"{problem.name}, S = {spread:g}", problem.n, x0 / s, lambda y: problem.residual(s * y),
                       lambda y: problem.jacobian(s.numpy() * y) @ diagonal)


def spread(n: int) -> None:
    print(f"n = {n}\n")
    print("| problem | S | largest / smallest column norm at x0 | T = I: nfev / CG | exact Jacobi: nfev / CG |")
    print("|---|---:|---:|---:|---:|")
    makers = {"extended_rosenbrock": MGH["extended_rosenbrock"], "broyden_tridiagonal": MGH["broyden_tridiagonal"],
              "powell_singular": powell_singular}
    for name, make in makers.items():
        for S in (1, 3, 10):
            problem = in_units(make(n), S)
            J = problem.jacobian(problem.x0.numpy())
            norms = np.sqrt(np.asarray(J.multiply(J).sum(axis=0)).ravel())
            print(f"| {name} | {S} | {norms.max() / norms[norms > 0].min():.1f} | {solve(problem, 1.0, 300)} | "
                  f"{solve(problem, ExactJacobi(problem), 300)} |", flush=True)


def later(n: int) -> None:
    t = 10.0 ** (6 * torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 3)
    problem = UserProblem("x² − t", n, torch.ones(n, dtype=torch.float64), lambda x: x**2 - t, None)
    refresh = scaling._refresh
    print("| r = x² − t | nfev / CG |\n|---|---:|")
    print(f"| default | {solve(problem, None, 500)} |")
    scaling._refresh = lambda iteration, uniform: refresh(iteration, uniform) and not uniform
    try:
        print(f"| default without the re-check at 8, 64, … | {solve(problem, None, 500)} |")
    finally:
        scaling._refresh = refresh
    print(f"| x_scale=1 | {solve(problem, 1.0, 500)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="noise,spread,later")
    parser.add_argument("--n", type=int, default=10**4)
    parser.add_argument("--spread-n", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for section in args.only.split(","):
        print(f"\n## {section}\n")
        {"noise": noise, "spread": spread, "later": later}[section](args.spread_n if section == "spread" else args.n)


if __name__ == "__main__":
    main()
