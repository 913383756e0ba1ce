r"""The reduced system of a Schur-complement step at one damping λ: S, its preconditioner, PCG.

The subproblem and the choice of λ are `trustls.subproblem.schur`'s; the
blocks C, W and J_F, J_E at a point are `trustls.subproblem.schur_structure`'s.

Elimination. Let the columns split into row-disjoint eliminated blocks E
(the points of bundle adjustment) and the free blocks F (the cameras), with
C = J_EᵀJ_E block diagonal and W = J_FᵀJ_E (`trustls.subproblem.schur_structure`).
Eliminating p_E = −(C + λI)⁻¹(g_E + Wᵀp_F) from (B + λI)p = −g leaves

    S p_F = −(g_F − W (C + λI)⁻¹ g_E),   S = J_FᵀJ_F + λI − W (C + λI)⁻¹ Wᵀ,

the Schur complement, symmetric with S ⪰ λI (Agarwal, Snavely, Seitz &
Szeliski 2010; Triggs et al. 2000, §6.1). (C + λI)⁻¹ is one small Cholesky
factorization per eliminated block. S is never formed: a product

    S v = J_Fᵀ(I − J_E (C + λI)⁻¹ J_Eᵀ) J_F v + λv

costs four sparse products (J_F, J_Eᵀ, J_E, J_Fᵀ: together the entries of J
twice, as one product with JᵀJ) and a block-diagonal solve, Ceres' implicit
Schur complement. Preconditioned conjugate gradients solve the reduced
system to ‖S p_F + ĝ_F‖ ≤ η‖ĝ_F‖ (the reduced residual is the whole residual
(B + λI)p + g, whose E part vanishes after the exact back-substitution for
p_E). The preconditioner is Schur-Jacobi, the diagonal blocks of S over F,

    S_ff = (J_FᵀJ_F)_ff + λI − Σ_e W_fe (C_e + λI)⁻¹ W_feᵀ,

summed over the eliminated blocks e that share a row with f (one per
observation of camera f), or, with ``preconditioner="block_jacobi"``, the
blocks of J_FᵀJ_F + λI only (cheaper; equal to (1 + λ)I under block-Jacobi
scaling).

`ReducedSolve` runs the preconditioned CG at one λ, resumable with a smaller
tolerance, and back-substitutes its iterate into the full step p = (p_F, p_E).

References:
    S. Agarwal, N. Snavely, S. M. Seitz and R. Szeliski, "Bundle adjustment in
    the large", ECCV 2010, pp. 29-42.
    S. Agarwal, K. Mierle et al., Ceres Solver documentation: "Solving
    non-linear least squares" (ITERATIVE_SCHUR, SCHUR_JACOBI),
    http://ceres-solver.org.
    B. Triggs, P. McLauchlan, R. Hartley and A. Fitzgibbon, "Bundle adjustment:
    a modern synthesis", Vision Algorithms: Theory and Practice, LNCS 1883,
    2000, pp. 298-372.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from trustls.subproblem.schur_structure import (
    SchurBlocks,
    inverse_factors,
    schur_jacobi_blocks,
)

__all__ = ["DampedStep", "Prepared", "ReducedSolve"]


@dataclass(eq=False)
class Prepared:
    """What `IterativeSchur.prepare` keeps of a point: its blocks, its gradient split over F and E."""

    blocks: SchurBlocks
    gradient: Tensor
    gradient_norm: float
    free_gradient: Tensor
    eliminated_gradient: Tensor
    cauchy_curvature: float  # gᵀ(JᵀJ + diag(c))g
    shift: Tensor | None = None  # c of B = JᵀJ + diag(c), already in the blocks; None for c = 0
    free_shift: Tensor | None = None  # c over F, for the products with S


@dataclass(eq=False)
class DampedStep:
    """A step of the full system from one reduced solve, with J p for the predicted reduction."""

    step: Tensor
    jacobian_step: Tensor  # J p
    norm: float


def _block_diagonal(indices: tuple[Tensor, Tensor], blocks: list[Tensor]) -> Tensor:
    """The block-diagonal matrix of ``blocks`` as a CSR tensor: a product is one sparse product."""
    n = indices[0].shape[0] - 1
    values = torch.cat([b.reshape(-1) for b in blocks])
    return torch.sparse_csr_tensor(indices[0], indices[1], values, (n, n), check_invariants=False)


class ReducedSolve:
    """Preconditioned CG on the reduced system at one damping, from x = 0, resumable.

    `run` iterates until ‖b − Sx‖ ≤ η‖b‖ for the η it is given, and a later
    call with a smaller η continues from there; `step` back-substitutes the
    current x into the full step p.
    """

    def __init__(self, prep: Prepared, damping: float, schur_jacobi: bool, max_iter: int | None):
        blocks = self.blocks = prep.blocks
        plan = blocks.plan
        self.prep, self.damping = prep, damping
        factors = [inverse_factors(C, damping) for C in blocks.eliminated_blocks]
        self.C_inverse = _block_diagonal(plan.eliminated_diagonal, [X.transpose(1, 2) @ X for X in factors])
        if schur_jacobi:
            diagonal = schur_jacobi_blocks(blocks, factors, damping)
        else:
            diagonal = [D + damping * torch.eye(D.shape[-1], dtype=D.dtype, device=D.device)
                        for D in blocks.free_blocks]
        inverses = [X.transpose(1, 2) @ X for X in map(inverse_factors, diagonal)]
        self.M_inverse = _block_diagonal(plan.free_diagonal, inverses)
        J_E, J_F = blocks.eliminated_jacobian, blocks.free_jacobian
        # The reduced right-hand side −(g_F − W (C + λI)⁻¹ g_E).
        self.b = J_F.rmatvec(J_E.matvec(self.C_inverse @ prep.eliminated_gradient)) - prep.free_gradient
        self.x, self.r = torch.zeros_like(self.b), self.b
        self.z = self.M_inverse @ self.r
        self.d = self.z
        self.b_norm, self.rz = torch.stack([torch.linalg.vector_norm(self.b), torch.dot(self.r, self.z)]).tolist()
        self.r_norm = self.b_norm
        self.max_iter = 2 * self.b.shape[0] if max_iter is None else max_iter
        self.iterations, self.products, self.reason = 0, 1, "converged"
        self.stopped = False  # max_iter or a breakdown: no further iterations

    def schur(self, v: Tensor) -> Tensor:
        J_E, J_F = self.blocks.eliminated_jacobian, self.blocks.free_jacobian
        u = J_F.matvec(v)
        u = u - J_E.matvec(self.C_inverse @ J_E.rmatvec(u))
        Sv = J_F.rmatvec(u) + self.damping * v
        return Sv if self.prep.free_shift is None else Sv + self.prep.free_shift * v

    def run(self, forcing: float) -> None:
        tolerance = forcing * self.b_norm
        while not self.stopped and self.r_norm > tolerance:
            if self.iterations >= self.max_iter:
                self.stopped, self.reason = True, "max_iter"
                break
            Sd = self.schur(self.d)
            self.iterations += 1
            self.products += 1
            # The iteration's one read: dᵀSd, and ‖r‖² and rᵀz of the candidate update.
            kappa_t = torch.dot(self.d, Sd)
            alpha = self.rz / kappa_t
            x, r = self.x + alpha * self.d, self.r - alpha * Sd
            z = self.M_inverse @ r
            kappa, rr, rz = torch.stack([kappa_t, torch.dot(r, r), torch.dot(r, z)]).tolist()
            if not kappa > 0.0:  # S ⪰ λI: only rounding or overflow; the candidate is dropped
                self.stopped, self.reason = True, "negative_curvature"
                break
            self.x, self.r, self.z, self.r_norm = x, r, z, math.sqrt(rr)
            self.d = z + (rz / self.rz) * self.d
            self.rz = rz

    def step(self) -> DampedStep:
        prep, plan = self.prep, self.blocks.plan
        J_E, J_F = self.blocks.eliminated_jacobian, self.blocks.free_jacobian
        u = J_F.matvec(self.x)
        p_E = -(self.C_inverse @ (prep.eliminated_gradient + J_E.rmatvec(u)))
        p = torch.empty_like(prep.gradient)
        p.index_copy_(0, plan.free_columns, self.x).index_copy_(0, plan.eliminated_columns, p_E)
        self.products += 1
        return DampedStep(p, u + J_E.matvec(p_E), float(torch.linalg.vector_norm(p)))
