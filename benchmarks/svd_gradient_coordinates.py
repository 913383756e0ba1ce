"""Accuracy of the SVD solver's gradient coordinates: s·Uᵀf̃ from a residual, or Vᵀg.

An SVD solver (`DenseLstsq`) needs the gradient's coordinates in the right
singular vectors of J̃ = U diag(s) Vᵀ. With a residual f̃ (J̃ᵀf̃ = g) they are
s·Uᵀf̃, as for least squares today; from the gradient alone they are Vᵀg.
The two agree in exact arithmetic. This script measures the relative error
of the Gauss-Newton step −V diag(1/s²) (coordinates) against a reference:

``least-squares``
    J = U diag(s) Vᵀ with a prescribed condition number (30 × 5) and a
    zero-residual or large-residual r; the reference step is solved in
    50-digit arithmetic (mpmath). Medians over 20 seeds.
``robust``
    The Cauchy problem of ``tests/test_generalized_gauss_newton.py``
    (f_scale = 2, three outliers whose curvature scipy clips at EPS), where
    scipy's scaled residual f̃ = ρ′f/√max(ℓ″, EPS) amplifies the clipped
    rows by 1/√EPS; the reference is the eigendecomposition of B = J̃ᵀJ̃
    (cond(B) ≈ 10⁵, so accurate to about 10⁻¹¹).

Run from the repository root::

    python benchmarks/svd_gradient_coordinates.py
"""

from __future__ import annotations

import pathlib
import statistics
import sys

import mpmath
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

F64 = torch.float64


def _step_from_residual(J: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    U, s, Vh = torch.linalg.svd(J, full_matrices=False)
    return -Vh.T @ ((U.T @ r) / s)


def _step_from_gradient(J: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    _, s, Vh = torch.linalg.svd(J, full_matrices=False)
    return -Vh.T @ ((Vh @ g) / s**2)


def _relative_error(p: torch.Tensor, reference: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(p - reference) / torch.linalg.vector_norm(reference))


def least_squares(m: int = 30, n: int = 5, seeds: int = 20) -> None:
    mpmath.mp.dps = 50
    print("least-squares: median relative error of the Gauss-Newton step (20 seeds)")
    print(f"{'cond(J)':>8} {'residual':>9} {'s·Uᵀr':>9} {'Vᵀg':>9}")
    for condition in (1e4, 1e8, 1e12):
        for residual in ("zero", "large"):
            from_residual, from_gradient = [], []
            for seed in range(seeds):
                generator = torch.Generator().manual_seed(seed)
                U, _ = torch.linalg.qr(torch.randn(m, m, generator=generator, dtype=F64))
                V, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=F64))
                s = torch.logspace(0, -torch.log10(torch.tensor(condition)).item(), n, dtype=F64)
                J = U[:, :n] * s @ V.T
                r = U[:, :n] @ torch.randn(n, generator=generator, dtype=F64)
                if residual == "large":
                    r = r + 1e3 * U[:, n:] @ torch.randn(m - n, generator=generator, dtype=F64)
                Jm, rm = mpmath.matrix(J.tolist()), mpmath.matrix(r.tolist())
                reference = torch.tensor([float(v) for v in -mpmath.lu_solve(Jm.T * Jm, Jm.T * rm)], dtype=F64)
                from_residual.append(_relative_error(_step_from_residual(J, r), reference))
                from_gradient.append(_relative_error(_step_from_gradient(J, J.T @ r), reference))
            print(f"{condition:>8.0e} {residual:>9} {statistics.median(from_residual):>9.1e} "
                  f"{statistics.median(from_gradient):>9.1e}")


def robust() -> None:
    from test_generalized_gauss_newton import LOSSES, N_PARAMETERS, exact_step, linearize, make_fun

    from trustls.operators import DiagonalFactor

    generator = torch.Generator().manual_seed(20240611)  # tests/conftest.py's SEED
    x = 0.8 * torch.randn(N_PARAMETERS, generator=generator, dtype=F64)
    fun, loss = make_fun("cauchy"), LOSSES["cauchy"][0]
    lin = linearize(fun, x, loss, dense=True)
    J, g = lin.jacobian_matrix, lin.gradient
    outputs, targets = fun(x)
    loss_lin = loss.linearize(outputs, targets)
    assert isinstance(loss_lin.factor, DiagonalFactor)
    scaled_residual = (loss_lin.gradient / loss_lin.factor.diagonal).reshape(-1)  # scipy's f̃
    reference = exact_step(J.T @ J, g, float("inf"))
    clipped = int((loss_lin.factor.diagonal < 1e-7).sum())
    print(f"robust (Cauchy, {clipped} clipped rows): relative error of the Gauss-Newton step")
    print(f"  s·Uᵀf̃ (scipy's scaled f): {_relative_error(_step_from_residual(J, scaled_residual), reference):.1e}")
    print(f"  Vᵀg:                      {_relative_error(_step_from_gradient(J, g), reference):.1e}")


if __name__ == "__main__":
    least_squares()
    robust()
