"""Random sparse Jacobians with a known block partition, for the block and Schur-complement tests.

Built by hand, without the pattern analysis (``find_blocks``): the groups of
column blocks are drawn first (in a random order of x unless ``contiguous``),
then rows, each meeting at most one eliminated block and one or two free
blocks, like the observations of bundle adjustment.
"""

from __future__ import annotations

import torch

from trustls.operators import SparseOperator
from trustls.sparsity import BlockPartition

F64 = torch.float64


def block_problem(
    generator: torch.Generator,
    *,
    free: tuple[tuple[int, int], ...] = ((3, 4), (2, 2)),
    eliminated: tuple[tuple[int, int], ...] = ((6, 3), (4, 2)),
    contiguous: bool = False,
    full_slots: bool = True,
    duplicates: bool = False,
    dtype: torch.dtype = F64,
) -> tuple[torch.Tensor, SparseOperator, BlockPartition]:
    """A dense J, the same J as a `SparseOperator` (COO triplets shuffled) and its partition.

    The groups alternate free and eliminated where both remain (so that the
    eliminated groups are not the last ones). Eliminated block 0 of each
    group meets a single row (a singular block of JᵀJ once its size exceeds
    1) and the last block of the last eliminated group meets no row (a zero
    block). ``full_slots=False`` leaves out about a third of each slot's
    entries; ``duplicates`` splits some entries into two triplets.
    """
    shapes = []
    for i in range(max(len(free), len(eliminated))):
        shapes += [("free", free[i])] if i < len(free) else []
        shapes += [("eliminated", eliminated[i])] if i < len(eliminated) else []
    n = sum(count * size for _, (count, size) in shapes)
    order = torch.arange(n) if contiguous else torch.randperm(n, generator=generator)
    groups, offset = [], 0
    for _, (count, size) in shapes:
        groups.append(order[offset : offset + count * size].view(count, size))
        offset += count * size
    kinds = [kind for kind, _ in shapes]
    free_blocks = [block for g, kind in zip(groups, kinds) if kind == "free" for block in g]
    eliminated_groups = [g for g, kind in zip(groups, kinds) if kind == "eliminated"]

    def draw(k: int) -> int:
        return int(torch.randint(k, (1,), generator=generator))

    row_blocks = []
    for number, g in enumerate(eliminated_groups):
        for b, block in enumerate(g):
            rows = 1 if b == 0 else 2 + draw(3)
            if number == len(eliminated_groups) - 1 and b == g.shape[0] - 1:
                rows = 0
            for _ in range(rows):
                touched = [free_blocks[draw(len(free_blocks))] for _ in range(1 + draw(2))]
                row_blocks.append([block] + touched)
    for _ in range(3):  # rows that meet free blocks only
        row_blocks.append([free_blocks[draw(len(free_blocks))], free_blocks[draw(len(free_blocks))]])
    m = len(row_blocks)
    dense = torch.zeros(m, n, dtype=F64)
    for i, blocks in enumerate(row_blocks):
        for block in blocks:
            keep = torch.ones(block.shape[0], dtype=torch.bool)
            if not full_slots:
                keep = torch.rand(block.shape[0], generator=generator) > 0.35
            dense[i, block[keep]] = torch.randn(int(keep.sum()), generator=generator, dtype=F64)
    rows, cols = torch.nonzero(dense, as_tuple=True)
    values = dense[rows, cols]
    if duplicates:
        split = torch.rand(rows.numel(), generator=generator) < 0.3
        part = torch.rand(int(split.sum()), generator=generator, dtype=F64)
        rows, cols = torch.cat([rows, rows[split]]), torch.cat([cols, cols[split]])
        values = torch.cat([values, values[split] * part])
        values[: split.numel()][split] *= 1 - part
    shuffle = torch.randperm(rows.numel(), generator=generator)
    J = SparseOperator(rows[shuffle], cols[shuffle], values[shuffle].to(dtype), (m, n))
    partition = BlockPartition(n, tuple(groups), tuple(i for i, kind in enumerate(kinds) if kind == "eliminated"))
    return dense.to(dtype), J, partition
