"""Bundle adjustment on BAL problem-49-7776 with trustls.

Bundle adjustment refines cameras and 3-D points together so that the points,
projected through the cameras, land on their observed image positions
(Agarwal, Snavely, Seitz & Szeliski, "Bundle Adjustment in the Large", 2010).
Each camera has 9 parameters (Rodrigues rotation w, translation t, focal f,
radial distortion k1, k2), each point 3; an observation (camera c, point j,
image position u, v) gives two residuals::

    P = R(w) X + t                   rotate by Rodrigues' formula, translate
    p = -P[:2] / P[2]                perspective division (BAL cameras look down -z)
    r = f (1 + k1‖p‖² + k2‖p‖⁴) p - (u, v)

problem-49-7776-pre has 49 cameras, 7,776 points and 31,843 observations:
23,769 parameters and 63,686 residuals. The Jacobian is sparse (each residual
touches 12 parameters), so it is computed exactly per observation (two
vector-Jacobian products of the batched projection give every 2x12 block) and
handed to trustls as a `SparseOperator`; Steihaug CG then costs two sparse
products per iteration. CG is preconditioned by block Jacobi: the trust
region is measured in the norm of the 9×9 camera and 3×3 point blocks of JᵀJ,
which cuts CG from about 90 to about 7 iterations per step.

Run from the repository root (the problem file ships inside the package; pass
another BAL file, plain or ``.bz2``, as the first argument)::

    OMP_NUM_THREADS=1 python examples/bundle_adjustment.py [path/to/problem.txt]
"""

from __future__ import annotations

import sys
import time

import torch

from trustls import GaussNewtonModel, SteihaugCG, TrustRegion
from trustls.operators import SparseOperator
from trustls.problems.bal import load_bal
from trustls.scaling import BlockJacobi


def rotate(points, w):
    """Rodrigues: R(w)X = X + (sin θ/θ) w×X + ((1 − cos θ)/θ²) w×(w×X), θ = ‖w‖ (θ > 0 in BAL data)."""
    theta = torch.linalg.vector_norm(w, dim=-1, keepdim=True)
    a = torch.sin(theta) / theta
    b = (1 - torch.cos(theta)) / theta**2
    wx = torch.linalg.cross(w, points, dim=-1)
    return points + a * wx + b * torch.linalg.cross(w, wx, dim=-1)


def project(q):
    """Image positions ``(M, 2)`` from per-observation parameters ``q (M, 12)`` = camera (9), point (3)."""
    P = rotate(q[:, 9:12], q[:, 0:3]) + q[:, 3:6]
    p = -P[:, :2] / P[:, 2:3]
    f, k1, k2 = q[:, 6:7], q[:, 7:8], q[:, 8:9]
    n2 = (p * p).sum(dim=1, keepdim=True)
    return f * (1 + k1 * n2 + k2 * n2 * n2) * p


def make_problem(bal):
    """``residual(x)`` and ``jacobian(x)`` (a `SparseOperator`) for the flat parameters x."""
    C, N, M = bal.n_cameras, bal.n_points, bal.n_observations
    cam_idx, pt_idx, observed = bal.camera_indices, bal.point_indices, bal.observations

    def gather(x):
        cameras, points = x[: 9 * C].view(C, 9), x[9 * C :].view(N, 3)
        return torch.cat((cameras[cam_idx], points[pt_idx]), dim=1)  # (M, 12)

    def residual(x):
        return (project(gather(x)) - observed).reshape(-1)

    # Column of each of an observation's 12 parameters, and the two residual rows.
    cols = torch.cat((9 * cam_idx[:, None] + torch.arange(9), 9 * C + 3 * pt_idx[:, None] + torch.arange(3)), 1)
    cols = cols[:, None, :].expand(M, 2, 12).reshape(-1)
    rows = (2 * torch.arange(M)[:, None] + torch.arange(2))[:, :, None].expand(M, 2, 12).reshape(-1)

    pattern = []

    def jacobian(x):
        # The projection is independent per observation, so one VJP with the
        # cotangent selecting every u residual (then every v) yields all blocks.
        _, pullback = torch.func.vjp(project, gather(x))
        selectors = torch.eye(2, dtype=x.dtype)[:, None, :].expand(2, M, 2)
        (blocks,) = torch.func.vmap(pullback)(selectors)  # (2, M, 12)
        values = blocks.transpose(0, 1).reshape(-1)
        if not pattern:  # sort the indices once; later Jacobians reuse them
            pattern.append(SparseOperator(rows, cols, values, (2 * M, bal.n_parameters)))
            return pattern[0]
        return pattern[0].with_values(values)

    return residual, jacobian


def main() -> None:
    torch.set_num_threads(1)
    bal = load_bal(sys.argv[1] if len(sys.argv) > 1 else None)
    residual, jacobian = make_problem(bal)
    print(f"{bal.n_cameras} cameras, {bal.n_points} points, {bal.n_observations} observations: "
          f"{bal.n_parameters} parameters, {bal.n_residuals} residuals")

    # Inexact Gauss-Newton steps (forcing 0.1, Ceres' default), block-Jacobi
    # preconditioning over cameras then points (docs/bundle-adjustment.md).
    solver = TrustRegion(
        GaussNewtonModel(jacobian=jacobian),
        solver=SteihaugCG(forcing=0.1, max_iter=100),
        ftol=1e-4,
        x_scale=BlockJacobi(((bal.n_cameras, 9), (bal.n_points, 3))),
        verbose=2,
    )
    tic = time.perf_counter()
    result = solver.solve(residual, bal.x0)
    elapsed = time.perf_counter() - tic
    print(f"cost {0.5 * float(residual(bal.x0).square().sum()):,.2f} -> {result.cost:,.2f} in {elapsed:.1f} s, "
          f"{result.nfev} evaluations, {result.inner_iterations} CG iterations ({result.message})")


if __name__ == "__main__":
    main()
