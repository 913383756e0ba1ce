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
(`times_block_diagonal`). The index structure (the `SchurPlan`) depends on
the sparsity pattern and the partition only and is cached on the pattern.

The Schur-Jacobi preconditioner needs the diagonal blocks of the Schur
complement, S_ff = (J_FᵀJ_F)_ff + λI − Σ_e W_fe (C_e + λI)⁻¹ W_feᵀ. With the
Cholesky factor LLᵀ = C_e + λI and X = L⁻¹, each term is YᵀY for Y = X W_feᵀ,
so the sum over e is one Gram matrix of the rows of all the Y of block f
(`schur_jacobi_blocks`): one BLAS product per free block, with no product of
two small matrices per pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from trustls.operators.base import LinearOperator, ScaledOperator
from trustls.operators.block_cholesky import (
    lower_triangular_inverse,
    regularized_cholesky,
)
from trustls.operators.diagonal import BlockDiagonalOperator
from trustls.operators.sparse import SparseOperator, SparsityPattern
from trustls.sparsity import normal_blocks
from trustls.sparsity.blocks import BlockPartition
from trustls.sparsity.normal_blocks import (
    BlockSlots,
    block_columns,
    block_slots,
    slot_gram,
    slot_rows,
    slot_times_blocks,
    times_block_diagonal,
)

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
]


@dataclass(frozen=True, eq=False)
class Coupling:
    """The rows shared by one group of free blocks and one group of eliminated blocks.

    Entry k of ``free_slot``/``eliminated_slot`` is a pair of slots on the same
    row of J; ``pair`` numbers the distinct (free block, eliminated block)
    pairs, ordered by free block, then eliminated block. When every pair
    shares the same number of rows (two per observation in bundle
    adjustment), ``rows_per_pair`` is that number and the entries are ordered
    by pair, so that W sums fixed-size groups instead of scattering.
    """

    free_group: int  # index into SchurPlan.free
    eliminated_group: int  # index into SchurPlan.eliminated
    free_slot: Tensor
    eliminated_slot: Tensor
    pair: Tensor
    pair_free_block: Tensor
    pair_eliminated_block: Tensor
    pair_counts: list[int] | None  # pairs per free block, for few free blocks
    rows_per_pair: int | None


@dataclass(frozen=True, eq=False)
class SchurPlan:
    """The index structure of the elimination for one sparsity pattern and partition."""

    slots: tuple[BlockSlots, ...]  # one per group of the partition
    free: tuple[int, ...]  # the partition's groups in F, in order
    eliminated: tuple[int, ...]
    free_columns: Tensor  # the variables of F in their local order (group, block, position)
    eliminated_columns: Tensor
    free_template: SparseOperator  # J_F with the slot rows of F as its stored entries
    eliminated_template: SparseOperator
    couplings: tuple[Coupling, ...]
    free_diagonal: tuple[Tensor, Tensor]  # CSR indices of block-diagonal matrices over F and E
    eliminated_diagonal: tuple[Tensor, Tensor]


@dataclass(frozen=True, eq=False)
class SchurBlocks:
    """The blocks of the elimination at one point (see the module docstring)."""

    plan: SchurPlan
    free_jacobian: SparseOperator  # J_F
    eliminated_jacobian: SparseOperator  # J_E
    free_blocks: list[Tensor]  # diagonal blocks of J_FᵀJ_F, per group of F
    eliminated_blocks: list[Tensor]  # diagonal blocks of C, per group of E
    couplings: list[Tensor]  # per Coupling, the (pairs, eliminated size, free size) blocks W_feᵀ


def _block_diagonal_csr(shapes: list[tuple[int, int]], device: torch.device) -> tuple[Tensor, Tensor]:
    """CSR indices of a block-diagonal matrix whose stored values are its blocks flattened in order."""
    cols, lengths, offset = [], [], 0
    for count, size in shapes:
        start = offset + size * torch.arange(count, device=device)
        block = start.view(count, 1, 1) + torch.arange(size, device=device).view(1, 1, size)
        cols.append(block.expand(count, size, size).reshape(-1))
        lengths.append(torch.full((count * size,), size, device=device))
        offset += count * size
    index = torch.int32 if sum(c * s * s for c, s in shapes) <= torch.iinfo(torch.int32).max else torch.int64
    crow = torch.zeros(offset + 1, dtype=index, device=device)
    crow[1:] = torch.cumsum(torch.cat(lengths), 0)
    return crow, torch.cat(cols).to(index)


def _template(slots: list[BlockSlots], local: Tensor, shape: tuple[int, int]) -> SparseOperator:
    """The operator whose stored entries are these groups' slot rows, on local columns."""
    size = [s.columns.shape[1] for s in slots]
    rows = torch.cat([s.slot_row.repeat_interleave(k) for s, k in zip(slots, size)])
    cols = torch.cat([local.index_select(0, s.columns.index_select(0, s.slot_block).reshape(-1)) for s in slots])
    return SparseOperator(rows, cols, torch.zeros(rows.shape, dtype=torch.float64, device=rows.device), shape)


def _coupling(a: int, b: int, fs: BlockSlots, es: BlockSlots, m: int) -> Coupling | None:
    device = fs.slot_row.device
    row_to_slot = torch.full((m,), -1, dtype=torch.int64, device=device)
    row_to_slot[es.slot_row] = torch.arange(es.n_slots, device=device)
    partner = row_to_slot.index_select(0, fs.slot_row)
    free_slot = torch.nonzero(partner >= 0).squeeze(1)
    if free_slot.numel() == 0:
        return None
    eliminated_slot = partner.index_select(0, free_slot)
    count = es.columns.shape[0]
    key = fs.slot_block.index_select(0, free_slot) * count + es.slot_block.index_select(0, eliminated_slot)
    pairs, pair = torch.unique(key, return_inverse=True)
    pair_free_block = pairs // count
    free_count = fs.columns.shape[0]
    counts = None
    if free_count <= normal_blocks._MAX_LOOPED_BLOCKS:
        counts = torch.bincount(pair_free_block, minlength=free_count).tolist()
    rows = torch.bincount(pair, minlength=pairs.numel())
    rows_per_pair = None
    if int(rows.min()) == int(rows.max()):
        rows_per_pair = int(rows[0])
        order = torch.argsort(pair, stable=True)
        free_slot, eliminated_slot, pair = free_slot[order], eliminated_slot[order], pair[order]
    return Coupling(a, b, free_slot, eliminated_slot, pair, pair_free_block, pairs % count, counts, rows_per_pair)


def _build_plan(pattern: SparsityPattern, partition: BlockPartition, slots: tuple[BlockSlots, ...]) -> SchurPlan:
    m, n = pattern.shape
    if partition.n != n:
        raise ValueError(f"partition must cover the {n} variables of J, it covers {partition.n}")
    eliminated = tuple(sorted(set(partition.eliminated)))
    if not eliminated or any(not 0 <= i < len(partition.groups) for i in eliminated):
        raise ValueError(
            f"partition.eliminated must name at least one of the {len(partition.groups)} groups, "
            f"got {partition.eliminated!r}"
        )
    free = tuple(i for i in range(len(partition.groups)) if i not in eliminated)
    if not free:
        raise ValueError("partition.eliminated must leave at least one group of blocks free")
    # No row may meet two eliminated blocks: then C = J_EᵀJ_E is block diagonal.
    rows_met = torch.bincount(torch.cat([slots[i].slot_row for i in eliminated]), minlength=m)
    if bool((rows_met > 1).any()):
        row = int(torch.nonzero(rows_met > 1)[0])
        raise ValueError(
            f"partition.eliminated must name groups whose blocks share no row of J, "
            f"got row {row} in {int(rows_met[row])} eliminated blocks"
        )
    device = pattern.cols.device
    free_columns = torch.cat([partition.groups[i].reshape(-1) for i in free])
    eliminated_columns = torch.cat([partition.groups[i].reshape(-1) for i in eliminated])
    local = torch.empty(n, dtype=torch.int64, device=device)
    local[free_columns] = torch.arange(free_columns.numel(), device=device)
    local[eliminated_columns] = torch.arange(eliminated_columns.numel(), device=device)
    couplings = []
    for a, f in enumerate(free):
        for b, e in enumerate(eliminated):
            coupling = _coupling(a, b, slots[f], slots[e], m)
            if coupling is not None:
                couplings.append(coupling)
    return SchurPlan(
        slots,
        free,
        eliminated,
        free_columns,
        eliminated_columns,
        _template([slots[i] for i in free], local, (m, free_columns.numel())),
        _template([slots[i] for i in eliminated], local, (m, eliminated_columns.numel())),
        tuple(couplings),
        _block_diagonal_csr([tuple(slots[i].columns.shape) for i in free], device),
        _block_diagonal_csr([tuple(slots[i].columns.shape) for i in eliminated], device),
    )


def _plan(pattern: SparsityPattern, partition: BlockPartition) -> SchurPlan:
    key = ("schur_plan", id(partition))
    hit = pattern.cache.get(key)
    if hit is not None and hit[0] is partition:
        return hit[1]
    plan = _build_plan(pattern, partition, block_slots(pattern, partition))
    pattern.cache[key] = (partition, plan)
    return plan


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
    plan = _plan(pattern, partition)
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


def inverse_factors(blocks: Tensor, damping: float = 0.0) -> Tensor:
    """X = L⁻¹ with LLᵀ = B + damping·I per block (jittered where singular), so (B + λI)⁻¹ = XᵀX."""
    return lower_triangular_inverse(regularized_cholesky(blocks, damping))


def _gram_by_block(rows: Tensor, block: Tensor, counts: list[int] | None, count: int) -> Tensor:
    """Σ rᵀr over the rows of each block (rows ordered by block)."""
    size = rows.shape[1]
    if counts is not None:
        return torch.stack([r.T @ r for r in torch.split(rows, counts)])
    outer = (rows[:, :, None] * rows[:, None, :]).reshape(rows.shape[0], size * size)
    sums = torch.zeros(count, size * size, dtype=rows.dtype, device=rows.device)
    return sums.index_add_(0, block, outer).view(count, size, size)


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
        target -= _gram_by_block(Y.reshape(-1, Y.shape[2]), free_block, counts, target.shape[0])
    return result
