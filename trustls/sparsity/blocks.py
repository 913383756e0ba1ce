"""Block structure of a sparse Jacobian, found from its sparsity pattern.

A *block* is a set of columns whose row sets are identical (a camera's nine
parameters, a point's three in bundle adjustment). Blocks of equal size are
stored together, one ``(count, size)`` tensor of column indices per size.

`find_blocks` groups the columns by row set (hashed, then checked exactly:
`trustls.sparsity.twins.identical_sets`) and then chooses the groups to
eliminate. A set of blocks that pairwise share no row has a block-diagonal
part of JᵀJ, which a Schur complement inverts block by block (the points of
bundle adjustment; Triggs et al. 2000, §6; Agarwal et al. 2010). The choice
is made per group: a group qualifies when its own blocks pairwise share no
row; the qualifying groups are then taken greedily, most columns first, each
kept only if it shares no row with the groups already taken. Greedy is exact
for what matters in practice (one dominant group, as in bundle adjustment),
and maximizing the eliminated columns over all compatible sets of groups is
a maximum-weight independent set problem in general, which is not worth
solving for a handful of groups.

Blocks of one size may still split: cameras and points of three parameters
each, or a shared-parameter fit with one parameter per curve and one shared
(every column a block of one). A group whose blocks share rows is split into
the blocks that come first, by (number of rows, index), on every row they
touch, and the rest (`_split`): no two of the first share a row (both would
be first on it), and in such bipartite structures they are the many small
blocks (points, curves), the rest the few that couple them. The split is
kept only when at least twice as many blocks are eliminated as remain, so
that elimination shrinks the group's system at least threefold: each step
of the Schur solver costs more than a CG step on the whole system, and pays
only when the reduced system is much smaller. A banded pattern, whose
first-on-every-row columns are a few at its ends, and extended Rosenbrock,
whose pairs split one to one, keep their group whole.

A column with no entry (a variable nothing depends on) is a block of size 1
of its own: empty row sets share nothing, so they are never grouped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from trustls.operators.sparse import SparseOperator
from trustls.sparsity.pattern import JacobianPattern, pattern_from_indices
from trustls.sparsity.twins import all_distinct

__all__ = ["BlockPartition", "find_blocks", "pattern_blocks"]


@dataclass(frozen=True, eq=False)
class BlockPartition:
    """The columns of a Jacobian grouped into blocks, and which blocks can be eliminated.

    Attributes:
        n: the number of columns; every column lies in exactly one block.
        groups: ``(count, size)`` int64 tensors of column indices, one per
            block size, or two where a size splits into eliminated blocks and
            the rest (`find_blocks`); row ``k`` of a group lists the columns of
            one block.
        eliminated: indices into ``groups`` of the groups whose blocks can be
            eliminated exactly: no two of their blocks (within a group or across
            these groups) share a row of J, so their part of JᵀJ is block
            diagonal (the points of bundle adjustment). Empty when no such
            split exists.
    """

    n: int
    groups: tuple[Tensor, ...]
    eliminated: tuple[int, ...] = ()

    def to(self, device: torch.device | str) -> BlockPartition:
        """The partition with its groups on ``device`` (itself when they are there already).

        Examples:
            >>> import torch
            >>> partition = BlockPartition(3, (torch.tensor([[0, 1]]), torch.tensor([[2]])))
            >>> partition.to("cpu") is partition
            True
        """
        device = torch.device(device)
        if all(group.device == device for group in self.groups):
            return self
        return BlockPartition(self.n, tuple(group.to(device) for group in self.groups), self.eliminated)


def find_blocks(rows: Tensor, cols: Tensor, m: int, n: int) -> BlockPartition:
    """The blocks of the ``(m, n)`` pattern with entries at ``(rows, cols)`` (see the module docstring).

    Groups come by decreasing block size (a split size gives its eliminated
    blocks first); within a group, blocks by their first column, and each
    block's columns ascending.

    Args:
        rows: integer row indices of the structural nonzeros (any order; duplicates allowed).
        cols: their column indices.
        m: the number of rows (residuals).
        n: the number of columns (variables).

    Examples:
        >>> import torch
        >>> # two "cameras" of 3 columns, four "points" of 2 columns, one row per observation
        >>> camera, point = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 2, 3])
        >>> cols = torch.cat([3 * camera[:, None] + torch.arange(3), 6 + 2 * point[:, None] + torch.arange(2)], 1)
        >>> blocks = find_blocks(torch.arange(4).repeat_interleave(5), cols.flatten(), 4, 14)
        >>> [group.tolist() for group in blocks.groups], blocks.eliminated
        ([[[0, 1, 2], [3, 4, 5]], [[6, 7], [8, 9], [10, 11], [12, 13]]], (1,))
    """
    device = cols.device  # the pattern is normalized on the CPU; the groups go back to the caller's device
    return _pattern_partition(pattern_from_indices(rows, cols, (m, n)), device)


def _pattern_partition(pattern: JacobianPattern, device: torch.device) -> BlockPartition:
    """`find_blocks` of a normalized pattern, the groups on ``device``."""
    (m, n), rows, cols = pattern.shape, pattern.rows, pattern.cols
    blocks, first = pattern.column_classes
    if first.numel() == n:  # no two columns alike: one group of single columns
        return _single_columns(rows, cols, m, n, device)
    sizes = torch.bincount(blocks, minlength=first.numel())
    size_of_column = sizes.index_select(0, blocks)
    groups, touched = [], []
    # A block's entries are those of its first column: one entry per (row, block).
    leading = cols == first.index_select(0, blocks).index_select(0, cols)
    for size in torch.unique(sizes).flip(0).tolist():
        columns = torch.nonzero(size_of_column == size).flatten()  # ascending
        by_block = torch.argsort(blocks.index_select(0, columns), stable=True)
        group = columns.index_select(0, by_block).reshape(-1, size)
        in_group = leading & (size_of_column.index_select(0, cols) == size)
        for part, part_rows in _split(group, rows[in_group], cols[in_group], m, n):
            groups.append(part)
            touched.append(part_rows)
    return BlockPartition(n, tuple(g.to(device) for g in groups), _eliminable(groups, touched, m))


def _single_columns(rows: Tensor, cols: Tensor, m: int, n: int, device: torch.device) -> BlockPartition:
    """The partition of a pattern whose columns all have different row sets: single columns, split if
    the split pays (`_split`)."""
    parts = _split(torch.arange(n, device=rows.device).reshape(n, 1), rows, cols, m, n)
    groups, touched = [g for g, _ in parts], [t for _, t in parts]
    return BlockPartition(n, tuple(g.to(device) for g in groups), _eliminable(groups, touched, m))


def _split(group: Tensor, rows: Tensor, cols: Tensor, m: int, n: int) -> list[tuple[Tensor, Tensor]]:
    """``group`` (``(count, size)`` blocks) with the rows its blocks touch, one entry per (row, block):
    whole, or split into row-disjoint blocks and the rest (module docstring).

    ``rows`` and ``cols`` are the group's entries, one per (row, block), ``cols`` naming each block by
    its first column.
    """
    count = group.shape[0]
    if count < 2 or not rows.numel():
        return [(group, rows)]
    block_of = torch.full((n,), -1, dtype=torch.int64, device=group.device)
    block_of[group[:, 0]] = torch.arange(count, device=group.device)
    block = block_of.index_select(0, cols)  # the block of each entry
    per_row = torch.bincount(rows, minlength=m)
    touched_rows = torch.bincount(block, minlength=count)
    least_touched = torch.where(touched_rows > 0, touched_rows, rows.numel()).amin()
    shared, distinct, smallest = torch.stack([per_row.amax(), (per_row > 0).sum(), least_touched]).tolist()
    if shared <= 1:  # no two blocks share a row: eliminable whole
        return [(group, rows)]
    if 2 * count * smallest > 3 * distinct:
        # Row-disjoint blocks of at least `smallest` rows each number at most distinct/smallest, below
        # the two thirds of the blocks a split needs (a banded pattern): no need to rank them.
        return [(group, rows)]
    # Rank the blocks by (rows touched, index); a block is first on a row if its rank is the row's least.
    rank = torch.empty(count, dtype=torch.int64, device=group.device)
    rank[torch.argsort(touched_rows * count + torch.arange(count, device=group.device))] = torch.arange(
        count, device=group.device
    )
    entry_rank = rank.index_select(0, block)
    least = torch.full((m,), count, dtype=torch.int64, device=group.device).scatter_reduce(
        0, rows, entry_rank, reduce="amin"
    )
    not_first = (least.index_select(0, rows) != entry_rank).to(torch.int64)
    misses = torch.zeros(count, dtype=torch.int64, device=group.device).index_add_(0, block, not_first)
    first_everywhere = (misses == 0) & (touched_rows > 0)
    chosen = int(first_everywhere.sum())
    if chosen == 0 or chosen < 2 * (count - chosen):  # elimination would not shrink the system threefold
        return [(group, rows)]
    entries_first = first_everywhere.index_select(0, block)
    return [(group[first_everywhere], rows[entries_first]), (group[~first_everywhere], rows[~entries_first])]


def _eliminable(groups: list[Tensor], touched: list[Tensor], m: int) -> tuple[int, ...]:
    """The groups to eliminate: row-disjoint blocks, greedily by column count (see the module docstring)."""
    used = torch.zeros(m, dtype=torch.bool, device=touched[0].device if touched else None)
    chosen = []
    for g in sorted(range(len(groups)), key=lambda g: -groups[g].numel()):
        rows = touched[g]
        if not rows.numel():  # variables nothing depends on: nothing to eliminate
            continue
        if int(torch.bincount(rows, minlength=m).max()) > 1:  # two of its blocks share a row
            continue
        if bool(used.index_select(0, rows).any()):
            continue
        used[rows] = True
        chosen.append(g)
    return tuple(sorted(chosen))


def pattern_blocks(J: SparseOperator | JacobianPattern) -> BlockPartition:
    """`find_blocks` of a sparse J's pattern (or of a `JacobianPattern`), computed once per pattern (cached on it).

    Examples:
        >>> import torch
        >>> J = SparseOperator(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1]), torch.ones(4), (2, 3))
        >>> [group.tolist() for group in pattern_blocks(J).groups]
        [[[0, 1]], [[2]]]
    """
    pattern = J if isinstance(J, JacobianPattern) else J.pattern
    partition = pattern.cache.get("partition")
    if partition is None:
        m, n = pattern.shape
        rows, cols = pattern.rows, pattern.cols
        if all_distinct(cols, rows, n, m):  # the common case without blocks, without sorting the pattern
            partition = _single_columns(rows, cols, m, n, cols.device)
        elif isinstance(pattern, JacobianPattern):  # normalized already, its column classes shared
            partition = _pattern_partition(pattern, pattern.cols.device)
        else:
            partition = find_blocks(rows, cols, m, n)
        pattern.cache["partition"] = partition
    return partition
