"""The index structure of a Schur-complement elimination, for one sparsity pattern and partition.

`schur_plan` reads, from the sparsity pattern of J and a `BlockPartition`
(`trustls.subproblem.schur_structure` for the notation):

* the free groups F and the eliminated groups E, checked so that no row of J
  meets two eliminated blocks (then C = J_EᵀJ_E is block diagonal);
* the variables of F and of E in their local order (group, block, position),
  and the operators J_F and J_E on them whose stored entries are the slot
  rows (`trustls.sparsity.normal_blocks`), as templates to fill with values;
* one `Coupling` per (free group, eliminated group) pair that shares a row:
  the pairs of slots on the shared rows, numbered by (free block, eliminated
  block) pair, from which the blocks W_fe are summed;
* the CSR indices of block-diagonal matrices over F and over E.

None of it depends on J's values: the `SchurPlan` is cached on the pattern,
keyed by the partition, and built once for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from trustls.operators.sparse import SparseOperator, SparsityPattern
from trustls.sparsity import normal_blocks
from trustls.sparsity.blocks import BlockPartition
from trustls.sparsity.normal_blocks import BlockSlots, block_slots

__all__ = ["Coupling", "SchurPlan", "schur_plan"]


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


def schur_plan(pattern: SparsityPattern, partition: BlockPartition) -> SchurPlan:
    """The `SchurPlan` of ``pattern`` and ``partition``, from the pattern's cache when it holds one."""
    key = ("schur_plan", id(partition))
    hit = pattern.cache.get(key)
    if hit is not None and hit[0] is partition:
        return hit[1]
    plan = _build_plan(pattern, partition, block_slots(pattern, partition))
    pattern.cache[key] = (partition, plan)
    return plan
