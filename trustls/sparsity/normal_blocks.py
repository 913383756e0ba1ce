"""Diagonal blocks of JᵀJ, block-Jacobi scaling and J T over column blocks of a sparse J.

Let the n columns of a sparse (m, n) Jacobian J be partitioned into blocks,
given as in a `BlockPartition`: one ``(count, size)`` tensor of column indices
per block size, row k listing the columns of block k (not necessarily
contiguous in x). A *slot* is a pair (row i, block b) such that row i has a
stored entry in b's columns, and its *slot row* J_{i,b} ∈ R^{1×size} holds
that row's entries in b's columns (zero where it has none). Three quantities
are sums or products over slot rows:

* the diagonal block of JᵀJ for block b,

      (JᵀJ)_{bb} = Σ_{slots (i, b)} J_{i,b}ᵀ J_{i,b},

  a batched outer product and a sum per block;
* the block-Jacobi change of variables T = L⁻ᵀ with LLᵀ = (JᵀJ)_{bb} + δ
  diag((JᵀJ)_{bb}) block by block, so that (JT)ᵀ(JT) has identity diagonal
  blocks up to δ (Ceres' ``BLOCK_JACOBI``; Agarwal, Snavely, Seitz & Szeliski
  2010): `block_jacobi_scaling`, with T⁻¹ = Lᵀ kept for the norm ‖T⁻¹x‖;
* the scaled Jacobian J T for any T block diagonal over these blocks:

      (J T)_{i,b} = J_{i,b} T_b,

  one small matrix product per slot (`times_block_diagonal`). J T has stored
  entries in exactly the slots of J, so when every slot of J stores one entry
  per column of its block, J T has J's sparsity pattern and is
  ``J.with_values(...)``: a product with the scaled Jacobian stays one sparse
  product instead of a sparse product and a batch of small dense ones
  (`ScaledOperator`). Blocks whose columns share their rows (those of
  ``find_blocks``, the cameras and points of bundle adjustment) fill every
  slot. Otherwise J T lives on the pattern of the filled slots.

The grouping of the stored entries into slots depends on the sparsity pattern
only: it costs one sort per group (``torch.unique``) once, and is cached on
the `SparsityPattern`, which Jacobians with the same pattern share
(`SparseOperator.with_values`). Each new J then costs a gather into the slot
rows (a permutation when every slot is full) and batched small products.

References:
    S. Agarwal, N. Snavely, S. M. Seitz and R. Szeliski, "Bundle adjustment in
    the large", ECCV 2010, pp. 29-42.
    S. Agarwal, K. Mierle et al., Ceres Solver documentation, "Solving
    non-linear least squares: Preconditioners" (http://ceres-solver.org).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from trustls._sorting import stable_order, unique_with_inverse
from trustls.operators.block_cholesky import (
    lower_triangular_inverse,
    regularized_cholesky,
)
from trustls.operators.diagonal import BlockDiagonalOperator
from trustls.operators.sparse import SparseOperator, SparsityPattern
from trustls.sparsity.blocks import BlockPartition

__all__ = [
    "BlockSlots",
    "block_columns",
    "block_jacobi_scaling",
    "block_slots",
    "cholesky_whitening",
    "gram_by_block",
    "normal_diagonal_blocks",
    "running_block_jacobi_scaling",
    "slot_gram",
    "slot_rows",
    "slot_times_blocks",
    "times_block_diagonal",
]

# Up to this many blocks in a group, sum each block's outer products with one
# matrix product (BLAS); beyond it, one batched outer product and a scatter
# (the rule of `trustls.scaling`).
_MAX_LOOPED_BLOCKS = 1024
# Blocks up to this size multiply slot rows by unrolled elementwise products.
_MAX_UNROLLED_SIZE = 6


@dataclass(frozen=True, eq=False)
class BlockSlots:
    """Where the stored entries of J fall in the slots of one group of blocks.

    Attributes:
        columns: the group's ``(count, size)`` column indices.
        entries: positions (in J's ``values``) of the stored entries in the group's columns.
        flat: for each of ``entries``, its position in the ``(n_slots, size)`` slot rows, flattened.
        slot_block: the block of each slot, non-decreasing.
        slot_row: the row of J of each slot.
        counts: slots per block, for groups of at most ``_MAX_LOOPED_BLOCKS`` blocks, else ``None``.
        order: when every slot stores exactly one entry per column (a full group),
            the entries in slot-row order, so that the slot rows are
            ``values[order]``; ``None`` otherwise.
    """

    columns: Tensor
    entries: Tensor
    flat: Tensor
    slot_block: Tensor
    slot_row: Tensor
    counts: list[int] | None
    order: Tensor | None

    @property
    def n_slots(self) -> int:
        return self.slot_block.shape[0]


def _groups(columns: BlockPartition | Sequence[Tensor]) -> tuple[Tensor, ...]:
    groups = tuple(columns.groups if isinstance(columns, BlockPartition) else columns)
    if not groups or any(not isinstance(g, Tensor) or g.dtype != torch.int64 or g.ndim != 2 for g in groups):
        raise TypeError("columns must be a BlockPartition or a non-empty sequence of (count, size) int64 tensors")
    return groups


def block_slots(pattern: SparsityPattern, columns: BlockPartition | Sequence[Tensor]) -> tuple[BlockSlots, ...]:
    """The slots of each group of blocks in ``pattern``, cached on the pattern.

    The cache is keyed by the identity of the column tensors (kept alive by
    the cache entry), so that a partition reused across Jacobians of one
    pattern costs nothing after the first call.

    Raises:
        ValueError: if the groups do not list each of the n columns exactly once.
    """
    groups = _groups(columns)
    key = ("block_slots", tuple(id(g) for g in groups))
    hit = pattern.cache.get(key)
    if hit is not None and all(a is b for a, b in zip(hit[0], groups)):
        return hit[1]
    slots = _build_slots(pattern, groups)
    pattern.cache[key] = (groups, slots)
    return slots


def _build_slots(pattern: SparsityPattern, groups: tuple[Tensor, ...]) -> tuple[BlockSlots, ...]:
    m, n = pattern.shape
    rows, cols = pattern.rows, pattern.cols
    flat_columns = torch.cat([g.reshape(-1) for g in groups])
    if flat_columns.numel() and (int(flat_columns.min()) < 0 or int(flat_columns.max()) >= n):
        # Checked first: counted clamped, a −1 would stand in for a missing column 0.
        raise ValueError(
            f"columns must list each of the {n} columns of J exactly once, got indices from "
            f"{int(flat_columns.min())} to {int(flat_columns.max())}, outside [0, {n})"
        )
    listed = torch.bincount(flat_columns, minlength=n)
    if flat_columns.numel() != n or bool((listed != 1).any()):
        raise ValueError(f"columns must list each of the {n} columns of J exactly once")
    # Group and position within the group (block-major) of every column.
    group_of = torch.empty(n, dtype=torch.int64, device=cols.device)
    local_of = torch.empty(n, dtype=torch.int64, device=cols.device)
    for number, index in enumerate(groups):
        group_of[index.reshape(-1)] = number
        local_of[index.reshape(-1)] = torch.arange(index.numel(), device=cols.device)
    entry_group, entry_local = group_of[cols], local_of[cols]
    slots = []
    for number, index in enumerate(groups):
        count, size = index.shape
        entries = torch.nonzero(entry_group == number).squeeze(1)
        local = entry_local[entries]
        block, position = local // size, local % size
        # One slot per (block, row) pair; ordering the key by block first groups each block's slots.
        keys, slot = unique_with_inverse(block * m + rows[entries], count * m)
        slot_block, slot_row = keys // m, keys % m
        flat = slot * size + position
        n_slots = keys.numel()
        full = flat.numel() == n_slots * size and bool((torch.bincount(flat, minlength=n_slots * size) == 1).all())
        counts = torch.bincount(slot_block, minlength=count).tolist() if count <= _MAX_LOOPED_BLOCKS else None
        order = entries[stable_order(flat, n_slots * size)] if full else None
        slots.append(BlockSlots(index, entries, flat, slot_block, slot_row, counts, order))
    return tuple(slots)


def slot_rows(values: Tensor, slots: BlockSlots) -> Tensor:
    """The ``(n_slots, size)`` slot rows of the matrix with stored entries ``values`` (duplicates summed)."""
    size = slots.columns.shape[1]
    if slots.order is not None:
        return values.index_select(0, slots.order).view(slots.n_slots, size)
    rows = torch.zeros(slots.n_slots * size, dtype=values.dtype, device=values.device)
    return rows.index_add_(0, slots.flat, values.index_select(0, slots.entries)).view(slots.n_slots, size)


def slot_gram(rows: Tensor, slots: BlockSlots) -> Tensor:
    """Σ over each block's slots of J_{i,b}ᵀ J_{i,b}: the ``(count, size, size)`` diagonal blocks of JᵀJ."""
    return gram_by_block(rows, slots.slot_block, slots.counts, slots.columns.shape[0])


def gram_by_block(rows: Tensor, block: Tensor, counts: list[int] | None, count: int) -> Tensor:
    """Σ rᵀr over the rows of each of ``count`` blocks: ``rows`` ordered by block, ``block`` the block
    of each row, ``counts`` the rows per block where a loop of products is cheaper (or ``None``)."""
    size = rows.shape[1]
    if count == 0:  # an empty group (no block of this size): nothing to sum
        return rows.new_zeros(0, size, size)
    if counts is not None:
        return torch.stack([r.T @ r for r in torch.split(rows, counts)])
    outer = (rows[:, :, None] * rows[:, None, :]).reshape(rows.shape[0], size * size)
    sums = torch.zeros(count, size * size, dtype=rows.dtype, device=rows.device)
    return sums.index_add_(0, block, outer).view(count, size, size)


def normal_diagonal_blocks(J: SparseOperator, columns: BlockPartition | Sequence[Tensor]) -> list[Tensor]:
    """The diagonal blocks of JᵀJ over column blocks, one ``(count, size, size)`` tensor per group.

    Examples:
        >>> import torch
        >>> J = SparseOperator(torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1]), torch.tensor([1.0, 2.0, 3.0]), (2, 3))
        >>> normal_diagonal_blocks(J, [torch.tensor([[0, 2]]), torch.tensor([[1]])])
        [tensor([[[1., 2.],
                 [2., 4.]]]), tensor([[[9.]]])]
    """
    slots = block_slots(J.pattern, columns)
    return [slot_gram(slot_rows(J.values, s), s) for s in slots]


def cholesky_whitening(blocks: Tensor, damping: float = 1e-10, reference: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(L⁻ᵀ, Lᵀ)`` per block, with LLᵀ = B + damping·D, D = diag(B) (T = L⁻ᵀ and T⁻¹).

    The rule of `trustls.scaling.BlockJacobi`: the damping keeps singular
    blocks (gauge freedoms, points seen once) factorable; a variable no
    residual depends on (zero diagonal) is scaled by 1; a block that still
    fails gets a jitter of √eps times its largest diagonal entry (only that
    block: the others keep their exact factors; see `regularized_cholesky`).
    ``reference``, a ``(count, size)`` tensor, replaces diag(B) in D
    (`JacobiScale` passes the running maximum of diag(B) over its points).
    """
    d = torch.diagonal(blocks, dim1=1, dim2=2) if reference is None else reference
    L = regularized_cholesky(blocks, torch.where(d > 0, damping * d, torch.ones_like(d)))
    return lower_triangular_inverse(L).transpose(1, 2), L.transpose(1, 2)


def block_jacobi_scaling(
    J: SparseOperator, columns: BlockPartition | Sequence[Tensor], damping: float = 1e-10
) -> BlockDiagonalOperator:
    """T = L⁻ᵀ over column blocks of J (any order in x), with T⁻¹ = Lᵀ; see `cholesky_whitening`.

    Examples:
        >>> import torch
        >>> rows, cols = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 2, 0, 1])
        >>> J = SparseOperator(rows, cols, torch.tensor([1.0, 2.0, 3.0, 4.0]), (2, 3))
        >>> blocks = [torch.tensor([[0, 2]]), torch.tensor([[1]])]
        >>> T = block_jacobi_scaling(J, blocks, damping=0.0)
        >>> JT = times_block_diagonal(J, T)
        >>> [torch.allclose(B, torch.eye(B.shape[1])) for B in normal_diagonal_blocks(JT, blocks)]
        [True, True]
    """
    return running_block_jacobi_scaling(J, columns, damping)[0]


def running_block_jacobi_scaling(
    J: SparseOperator,
    columns: BlockPartition | Sequence[Tensor],
    damping: float = 1e-10,
    previous: Sequence[Tensor] | None = None,
) -> tuple[BlockDiagonalOperator, list[Tensor]]:
    """`block_jacobi_scaling` with D the running maximum of the blocks' diagonals, and that maximum.

    ``previous``: the maxima an earlier call returned, one ``(count, size)``
    tensor per group of blocks (ignored when the blocks' shapes differ); D is
    their elementwise maximum with the diagonals of this J's blocks
    (`cholesky_whitening`'s ``reference``). Returns T and the new maxima.

    Examples:
        >>> import torch
        >>> blocks = [torch.tensor([[0, 1]])]
        >>> J = SparseOperator(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([3.0, 4.0]), (2, 2))
        >>> _, maxima = running_block_jacobi_scaling(J, blocks, 0.01, [torch.tensor([[1.0, 25.0]])])
        >>> maxima
        [tensor([[ 9., 25.]])]
    """
    if not isinstance(damping, (int, float)) or isinstance(damping, bool) or not 0 <= damping < 1:
        raise ValueError(f"damping must be a number in [0, 1), got {damping!r}")
    groups = _groups(columns)
    blocks = normal_diagonal_blocks(J, groups)
    maxima = [torch.diagonal(B, dim1=1, dim2=2) for B in blocks]
    if previous is not None and [d.shape for d in previous] == [d.shape for d in maxima]:
        maxima = [torch.maximum(d, kept) for d, kept in zip(maxima, previous)]
    factors = [cholesky_whitening(B, damping, d) for B, d in zip(blocks, maxima)]
    return BlockDiagonalOperator([t for t, _ in factors], [ti for _, ti in factors], columns=groups), maxima


def slot_times_blocks(rows: Tensor, blocks: Tensor, slots: BlockSlots) -> Tensor:
    """Each slot row times its block's matrix: ``(n_slots, size)``."""
    if slots.counts is not None:
        return torch.cat([r @ b for r, b in zip(torch.split(rows, slots.counts), blocks)])
    gathered = blocks.index_select(0, slots.slot_block)
    size = rows.shape[1]
    if size > _MAX_UNROLLED_SIZE:
        return torch.bmm(rows.unsqueeze(1), gathered).squeeze(1)
    # Σ_k r_k T[k, :] accumulated in place: batched products of tiny matrices are slow on CPUs.
    out = rows[:, 0:1] * gathered[:, 0]
    for k in range(1, size):
        out.addcmul_(rows[:, k : k + 1], gathered[:, k])
    return out


def block_columns(T: BlockDiagonalOperator, pattern: SparsityPattern) -> tuple[Tensor, ...]:
    """T's column indices; those of a contiguous T are made once per pattern and block shapes."""
    if T.columns is not None:
        return tuple(T.columns)
    shapes = tuple(tuple(b.shape[:2]) for b in T.blocks)
    key = ("contiguous_columns", shapes)
    if key not in pattern.cache:
        sizes = [count * size for count, size in shapes]
        flat = torch.arange(sum(sizes), device=T.device)
        pattern.cache[key] = tuple(c.view(shape) for c, shape in zip(torch.split(flat, sizes), shapes))
    return pattern.cache[key]


def times_block_diagonal(J: SparseOperator, T: BlockDiagonalOperator) -> SparseOperator:
    """J T as a `SparseOperator`, on J's pattern when every slot of T's blocks is full.

    See the module docstring. Equal to ``J @ T.to_dense()``.

    Examples:
        >>> import torch
        >>> J = SparseOperator(torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1]), torch.tensor([1.0, 2.0, 3.0]), (2, 3))
        >>> T = BlockDiagonalOperator([torch.tensor([[[1.0, 1.0], [0.0, 1.0]]]), torch.tensor([[[2.0]]])],
        ...                           columns=[torch.tensor([[0, 2]]), torch.tensor([[1]])])
        >>> JT = times_block_diagonal(J, T)
        >>> JT.pattern is J.pattern, JT.to_dense()
        (True, tensor([[1., 0., 3.],
                [0., 6., 0.]]))
    """
    if not isinstance(J, SparseOperator) or not isinstance(T, BlockDiagonalOperator):
        raise TypeError(
            f"times_block_diagonal needs a SparseOperator and a BlockDiagonalOperator, "
            f"got {type(J).__name__} and {type(T).__name__}"
        )
    if T.shape[0] != J.shape[1]:
        raise ValueError(f"T must have shape ({J.shape[1]}, {J.shape[1]}), got {T.shape}")
    pattern = J.pattern
    groups = block_columns(T, pattern)
    slots = block_slots(pattern, groups)
    products = [slot_times_blocks(slot_rows(J.values, s), b, s) for s, b in zip(slots, T.blocks)]
    if all(s.order is not None for s in slots):
        key = ("slot_order", tuple(id(g) for g in groups))
        if key not in pattern.cache:
            # The position of each stored entry among the slot rows (the inverse
            # permutation of the slot order): a gather, cheaper than a scatter.
            pattern.cache[key] = (groups, torch.argsort(torch.cat([s.order for s in slots])))
        position = pattern.cache[key][1]
        return J.with_values(torch.cat([p.reshape(-1) for p in products]).index_select(0, position))
    key = ("filled_slots", tuple(id(g) for g in groups))
    if key not in pattern.cache:
        rows = torch.cat([s.slot_row.repeat_interleave(s.columns.shape[1]) for s in slots])
        cols = torch.cat([s.columns.index_select(0, s.slot_block).reshape(-1) for s in slots])
        template = SparseOperator(rows, cols, torch.zeros(rows.shape, dtype=J.dtype, device=J.device), J.shape)
        pattern.cache[key] = (groups, template)
    return pattern.cache[key][1].with_values(torch.cat([p.reshape(-1) for p in products]))
