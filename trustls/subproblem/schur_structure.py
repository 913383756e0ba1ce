"""The blocks of a Schur-complement elimination, from a sparse Jacobian and a `BlockPartition`.

Split the columns of the (scaled) Jacobian into the eliminated blocks E
(the partition's ``eliminated`` groups, e.g. the points of bundle adjustment)
and the free blocks F (the cameras), J = [J_F  J_E]. Since no row of J meets
two eliminated blocks, the normal matrix is

    JᵀJ = [ J_FᵀJ_F   W  ]      W = J_FᵀJ_E,
          [   Wᵀ      C  ]      C = J_EᵀJ_E block diagonal over E,

and the coupling W is a sum over rows: the block W_{fe} for a free block f and
an eliminated block e is Σ_i J_{i,f}ᵀ J_{i,e} over the rows i meeting both,
the slot rows of `trustls.sparsity.normal_blocks` on each side. Everything
the elimination needs at a point is built from the slot rows of the scaled
Jacobian J T:

* the diagonal blocks of C and of J_FᵀJ_F (Gram matrices of slot rows);
* the coupling blocks W_{fe}, one per (free block, eliminated block) pair
  sharing a row (an observation of bundle adjustment);
* J_F and J_E as `SparseOperator`s on their own columns, whose stored
  entries are the slot rows themselves, so that no gather of J's values
  is needed.

When T is block diagonal over the partition's own blocks (block-Jacobi
scaling, `trustls.scaling.BlockJacobi` or
`trustls.sparsity.block_jacobi_scaling`), the slot rows of J T are the slot
rows of J times T's blocks (`slot_times_blocks`); when T is diagonal, times
T's entries; other block-diagonal T are multiplied out first
(`times_block_diagonal`). The index structure, the `SchurPlan`
(`trustls.subproblem.schur_plan`), depends on the sparsity pattern and the
partition only and is cached on the pattern.

The Schur-Jacobi preconditioner needs the diagonal blocks of the Schur
complement, S_ff = (J_FᵀJ_F)_ff + λI − Σ_e W_fe (C_e + λI)⁻¹ W_feᵀ. With the
Cholesky factor LLᵀ = C_e + λI and X = L⁻¹, each term is YᵀY for Y = X W_feᵀ,
so the sum over e is one Gram matrix of the rows of all the Y of block f
(`schur_jacobi_blocks`): one BLAS product per free block, with no product of
two small matrices per pair.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from trustls.operators.base import LinearOperator, ScaledOperator
from trustls.operators.block_cholesky import (
    lower_triangular_inverse,
    regularized_cholesky,
)
from trustls.operators.diagonal import BlockDiagonalOperator
from trustls.operators.sparse import SparseOperator, SparsityPattern
from trustls.sparsity.blocks import BlockPartition
from trustls.sparsity.normal_blocks import (
    block_columns,
    block_slots,
    gram_by_block,
    slot_gram,
    slot_rows,
    slot_times_blocks,
    times_block_diagonal,
)
from trustls.subproblem.schur_plan import Coupling, SchurPlan, schur_plan

# Eliminated blocks up to this size are multiplied by their factors with
# unrolled elementwise products; batched matrix products have a high cost
# per tiny matrix on CPUs.
_MAX_UNROLLED_SIZE = 6

__all__ = [
    "Coupling",
    "SchurBlocks",
    "SchurPlan",
    "inverse_factors",
    "schur_blocks",
    "schur_jacobi_blocks",
    "shifted_blocks",
]


@dataclass(frozen=True, eq=False)
class SchurBlocks:
    """The blocks of the elimination at one point (see the module docstring)."""

    plan: SchurPlan
    free_jacobian: SparseOperator  # J_F
    eliminated_jacobian: SparseOperator  # J_E
    free_blocks: list[Tensor]  # diagonal blocks of J_FᵀJ_F, per group of F
    eliminated_blocks: list[Tensor]  # diagonal blocks of C, per group of E
    couplings: list[Tensor]  # per Coupling, the (pairs, eliminated size, free size) blocks W_feᵀ


def _matching_groups(T: BlockDiagonalOperator, partition: BlockPartition, pattern: SparsityPattern) -> list[int] | None:
    """For each group of the partition, the group of T over the same columns; ``None`` if one has none."""
    columns = block_columns(T, pattern)
    matches = []
    for group in partition.groups:
        match = next((j for j, c in enumerate(columns) if c is group), None)
        if match is None:
            match = next((j for j, c in enumerate(columns) if c.shape == group.shape and torch.equal(c, group)), None)
        if match is None:
            return None
        matches.append(match)
    return matches


def _scaled_slot_rows(jacobian: LinearOperator, partition: BlockPartition) -> tuple[SparsityPattern, list[Tensor]]:
    """The pattern whose slots describe J T, and the slot rows of J T per group of the partition."""
    scale = None
    if isinstance(jacobian, ScaledOperator) and not jacobian.left and isinstance(jacobian.operator, SparseOperator):
        J, scale = jacobian.operator, jacobian.scale
    elif isinstance(jacobian, SparseOperator):
        J = jacobian
    else:
        raise TypeError(
            "IterativeSchur needs a sparse Jacobian: a SparseOperator (GaussNewtonModel(jacobian=...) returning "
            f"one), possibly scaled by a diagonal or a BlockDiagonalOperator; got {jacobian!r}"
        )
    matches = None
    if isinstance(scale, BlockDiagonalOperator):
        matches = _matching_groups(scale, partition, J.pattern)
        if matches is None:
            J, scale = times_block_diagonal(J, scale), None
    elif scale is not None and not isinstance(scale, Tensor):
        raise TypeError(f"IterativeSchur needs T diagonal or block diagonal, got {type(scale).__name__}")
    slots = block_slots(J.pattern, partition)
    rows = [slot_rows(J.values, s) for s in slots]
    if isinstance(scale, Tensor):
        rows = [r * scale[s.columns].index_select(0, s.slot_block) for r, s in zip(rows, slots)]
    elif scale is not None:
        rows = [slot_times_blocks(r, scale.blocks[j], s) for r, s, j in zip(rows, slots, matches)]
    return J.pattern, rows


def schur_blocks(jacobian: LinearOperator, partition: BlockPartition, *, couplings: bool = True) -> SchurBlocks:
    """The blocks of the elimination for the (scaled) Jacobian of a linearization.

    ``couplings=False`` skips the coupling blocks W_fe (an empty list), which
    only the Schur-Jacobi preconditioner needs.
    """
    pattern, rows = _scaled_slot_rows(jacobian, partition)
    plan = schur_plan(pattern, partition)
    free_rows = [rows[i] for i in plan.free]
    eliminated_rows = [rows[i] for i in plan.eliminated]
    blocks = []
    for c in plan.couplings if couplings else ():
        a = free_rows[c.free_group].index_select(0, c.free_slot)
        b = eliminated_rows[c.eliminated_group].index_select(0, c.eliminated_slot)
        n_pairs = c.pair_free_block.shape[0]
        if c.rows_per_pair is not None:
            # Wᵀ = Σ_k b_kᵀ a_k over the pair's k-th rows, as a few broadcast products.
            a = a.view(n_pairs, c.rows_per_pair, a.shape[1])
            b = b.view(n_pairs, c.rows_per_pair, b.shape[1])
            Wt = b[:, 0, :, None] * a[:, 0, None, :]
            for k in range(1, c.rows_per_pair):
                Wt.addcmul_(b[:, k, :, None], a[:, k, None, :])
            blocks.append(Wt)
            continue
        outer = (b[:, :, None] * a[:, None, :]).reshape(a.shape[0], -1)
        Wt = torch.zeros(n_pairs, outer.shape[1], dtype=outer.dtype, device=outer.device).index_add_(0, c.pair, outer)
        blocks.append(Wt.view(n_pairs, b.shape[1], a.shape[1]))
    return SchurBlocks(
        plan,
        plan.free_template.with_values(torch.cat([r.reshape(-1) for r in free_rows])),
        plan.eliminated_template.with_values(torch.cat([r.reshape(-1) for r in eliminated_rows])),
        [slot_gram(r, plan.slots[i]) for r, i in zip(free_rows, plan.free)],
        [slot_gram(r, plan.slots[i]) for r, i in zip(eliminated_rows, plan.eliminated)],
        blocks,
    )


def shifted_blocks(blocks: SchurBlocks, partition: BlockPartition, shift: Tensor) -> SchurBlocks:
    """The blocks of JᵀJ + diag(c): c added to the diagonal blocks of C and of J_FᵀJ_F.

    W is off the block diagonal, so it is unchanged; the product with S then
    adds c_F ⊙ v (`trustls.subproblem.schur_reduced`), and (C + diag(c_E) + λI)⁻¹
    takes c_E through the shifted blocks.
    """
    plan = blocks.plan

    def shifted(block: Tensor, group: int) -> Tensor:
        return block + torch.diag_embed(shift[partition.groups[group]])

    return replace(
        blocks,
        free_blocks=[shifted(b, i) for b, i in zip(blocks.free_blocks, plan.free)],
        eliminated_blocks=[shifted(b, i) for b, i in zip(blocks.eliminated_blocks, plan.eliminated)],
    )


def inverse_factors(blocks: Tensor, damping: float = 0.0) -> Tensor:
    """X = L⁻¹ with LLᵀ = B + damping·I per block (jittered where singular), so (B + λI)⁻¹ = XᵀX."""
    return lower_triangular_inverse(regularized_cholesky(blocks, damping))


def _factor_times(X: Tensor, Wt: Tensor) -> Tensor:
    """X Wᵀ per pair for lower-triangular X (pairs, s, s) and Wᵀ (pairs, s, f)."""
    size = X.shape[-1]
    if size > _MAX_UNROLLED_SIZE:
        return torch.bmm(X, Wt)
    # Row j of X Wᵀ is Σ_{k ≤ j} X_jk (Wᵀ)_k, accumulated in place: batched products
    # of tiny matrices, and large temporaries, are slow on CPUs.
    out = torch.empty(X.shape[0], size, Wt.shape[2], dtype=X.dtype, device=X.device)
    for j in range(size):
        row = out[:, j]
        torch.mul(Wt[:, 0], X[:, j, 0:1], out=row)
        for k in range(1, j + 1):
            row.addcmul_(Wt[:, k], X[:, j, k : k + 1])
    return out


def schur_jacobi_blocks(blocks: SchurBlocks, factors: list[Tensor], damping: float) -> list[Tensor]:
    """The diagonal blocks of S over F: (J_FᵀJ_F)_ff + λI − Σ_e W_fe (C_e + λI)⁻¹ W_feᵀ.

    With (C_e + λI)⁻¹ = XᵀX, each term is YᵀY for Y = X W_feᵀ, so the sum over
    e is a Gram matrix of the rows of the Y (one BLAS product per free block).
    """
    result = [D + damping * torch.eye(D.shape[-1], dtype=D.dtype, device=D.device) for D in blocks.free_blocks]
    for c, Wt in zip(blocks.plan.couplings, blocks.couplings):
        X = factors[c.eliminated_group].index_select(0, c.pair_eliminated_block)
        Y = _factor_times(X, Wt)  # (pairs, eliminated size, free size)
        size = Y.shape[1]
        counts = None if c.pair_counts is None else [k * size for k in c.pair_counts]
        free_block = c.pair_free_block.repeat_interleave(size) if counts is None else c.pair_free_block
        target = result[c.free_group]
        target -= gram_by_block(Y.reshape(-1, Y.shape[2]), free_block, counts, target.shape[0])
    return result
