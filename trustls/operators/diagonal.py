"""Diagonal and block-diagonal operators: the changes of variables of scaled trust regions.

A scaled trust region ‖T⁻¹p‖ ≤ Δ is a sphere in the variables z = T⁻¹p.
T is diagonal for scipy's ``x_scale`` (T = diag(x_scale)) and for Jacobi
scaling (T = diag(1/‖J e_j‖)), and block diagonal for block-Jacobi
preconditioning (T = L⁻ᵀ with LLᵀ the block diagonal of JᵀJ). Besides the
products with T and Tᵀ, these operators apply T⁻¹, needed for the norm
‖T⁻¹x‖ that sets the initial radius.

The blocks of a block-diagonal operator need not be contiguous: with
``columns`` the block k of a group acts on the variables listed in row k of
that group's column indices (a `trustls.sparsity.BlockPartition`'s
``groups``). Such an operator is P D Pᵀ with D the contiguous block diagonal
and P the permutation that lists the columns group by group: a product
gathers v in that order, applies the blocks, and scatters the result back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from trustls.operators.base import LinearOperator

__all__ = ["BlockDiagonalOperator", "DiagonalOperator", "ShiftedOperator"]


class DiagonalOperator(LinearOperator):
    """``diag(d)`` for a 1-D tensor ``d``.

    Examples:
        >>> import torch
        >>> DiagonalOperator(torch.tensor([2.0, 4.0])).inverse_matvec(torch.tensor([2.0, 2.0]))
        tensor([1.0000, 0.5000])
    """

    is_symmetric = True
    is_matrix_free = False

    def __init__(self, diagonal: Tensor):
        if not isinstance(diagonal, Tensor) or diagonal.ndim != 1 or not diagonal.is_floating_point():
            raise TypeError("diagonal must be a 1-D floating tensor")
        n = diagonal.shape[0]
        super().__init__((n, n), diagonal.dtype, diagonal.device)
        self.diagonal = diagonal

    def matvec(self, v: Tensor) -> Tensor:
        return self.diagonal * v

    def inverse_matvec(self, v: Tensor) -> Tensor:
        """``diag(d)⁻¹ v``."""
        return v / self.diagonal

    def to_dense(self) -> Tensor:
        return torch.diag(self.diagonal)


class ShiftedOperator(LinearOperator):
    """B + diag(c) for a symmetric operator B and a 1-D tensor c ⪰ 0.

    The curvature of a subproblem whose quadratic has a diagonal term beside
    JᵀJ, such as the Coleman-Li subproblem of box bounds (`trustls.bounds`).
    CG takes its products; `IterativeSchur` reads ``diagonal`` and adds c to
    its diagonal blocks; for the exact solver `trustls.bounds` stacks
    diag(c)^½ under the dense J instead.
    """

    is_symmetric = True

    def __init__(self, operator: LinearOperator, diagonal: Tensor):
        super().__init__(operator.shape, operator.dtype, operator.device)
        self.operator, self.diagonal = operator, diagonal
        self.is_matrix_free = operator.is_matrix_free
        self.is_positive_semidefinite = operator.is_positive_semidefinite

    def matvec(self, v: Tensor) -> Tensor:
        return self.operator.matvec(v) + self.diagonal * v


class BlockDiagonalOperator(LinearOperator):
    """A block-diagonal matrix whose blocks come in groups of equal size.

    Args:
        blocks: tensors of shape ``(count, size, size)``, one per group, laid
            along the diagonal in order.
        inverse_blocks: optional inverses of ``blocks`` (same shapes), for
            `inverse_matvec`.
        columns: optional int64 tensors of shape ``(count, size)``, one per
            group: row k lists the variables that block k acts on, so that
            blocks need not be contiguous (see the module docstring). Every
            variable must be listed exactly once. ``None``: contiguous, in order.

    Examples:
        >>> import torch
        >>> A = BlockDiagonalOperator([2 * torch.eye(2).expand(1, 2, 2), torch.ones(2, 1, 1)])
        >>> A @ torch.ones(4)
        tensor([2., 2., 1., 1.])
        >>> swap, ten = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]]), torch.tensor([[[10.0]]])
        >>> B = BlockDiagonalOperator([swap, ten], columns=[torch.tensor([[0, 2]]), torch.tensor([[1]])])
        >>> B @ torch.tensor([1.0, 2.0, 3.0])
        tensor([ 3., 20.,  1.])

    A variable listed twice (so that another is missing) is refused:

        >>> BlockDiagonalOperator([torch.eye(2).expand(1, 2, 2)], columns=[torch.tensor([[0, 0]])])
        Traceback (most recent call last):
        ...
        ValueError: columns must list each of the 2 variables exactly once, got variable 0 listed 2 times
    """

    is_matrix_free = False

    def __init__(
        self,
        blocks: Sequence[Tensor],
        inverse_blocks: Sequence[Tensor] | None = None,
        *,
        columns: Sequence[Tensor] | None = None,
    ):
        blocks = list(blocks)
        if not blocks or any(b.ndim != 3 or b.shape[1] != b.shape[2] for b in blocks):
            raise ValueError("blocks must be a non-empty list of (count, size, size) tensors")
        if inverse_blocks is not None:
            inverse_blocks = list(inverse_blocks)
            if [b.shape for b in inverse_blocks] != [b.shape for b in blocks]:
                raise ValueError("inverse_blocks must have the shapes of blocks")
        n = sum(b.shape[0] * b.shape[1] for b in blocks)
        super().__init__((n, n), blocks[0].dtype, blocks[0].device)
        self.blocks = blocks
        self.inverse_blocks = inverse_blocks
        self._sizes = [b.shape[0] * b.shape[1] for b in blocks]
        self.columns = None if columns is None else _check_columns(columns, blocks, n)
        # The variables group by group, block by block: v[order] is in contiguous layout.
        self._order = None if self.columns is None else torch.cat([c.reshape(-1) for c in self.columns])

    def _apply(self, blocks: list[Tensor], v: Tensor, transpose: bool) -> Tensor:
        parts = []
        chunks = torch.split(v if self._order is None else v.index_select(0, self._order), self._sizes)
        for block, chunk in zip(blocks, chunks):
            if transpose:
                block = block.transpose(1, 2)
            parts.append(torch.bmm(block, chunk.reshape(block.shape[0], -1, 1)).reshape(-1))
        out = torch.cat(parts)
        return out if self._order is None else torch.empty_like(out).index_copy_(0, self._order, out)

    def matvec(self, v: Tensor) -> Tensor:
        return self._apply(self.blocks, v, transpose=False)

    def rmatvec(self, u: Tensor) -> Tensor:
        return self._apply(self.blocks, u, transpose=True)

    def inverse_matvec(self, v: Tensor) -> Tensor:
        """The inverse applied to ``v`` (needs ``inverse_blocks``)."""
        if self.inverse_blocks is None:
            raise ValueError("inverse_matvec needs inverse_blocks")
        return self._apply(self.inverse_blocks, v, transpose=False)

    def to_dense(self) -> Tensor:
        contiguous = torch.block_diag(*(block for group in self.blocks for block in group))
        if self._order is None:
            return contiguous
        dense = torch.empty_like(contiguous)
        dense[self._order.unsqueeze(1), self._order.unsqueeze(0)] = contiguous
        return dense


def _check_columns(columns: Sequence[Tensor], blocks: list[Tensor], n: int) -> list[Tensor]:
    """``columns`` as a list, checked against the blocks' shapes and for covering 0..n-1 once each."""
    columns = list(columns)
    if len(columns) != len(blocks):
        raise ValueError(f"columns must hold one index tensor per group of blocks ({len(blocks)}), got {len(columns)}")
    for index, block in zip(columns, blocks):
        if not isinstance(index, Tensor) or index.dtype != torch.int64 or index.shape != block.shape[:2]:
            raise ValueError(
                f"columns must be int64 tensors of the blocks' (count, size) shapes {tuple(block.shape[:2])}, "
                f"got {getattr(index, 'dtype', type(index).__name__)} of shape {tuple(getattr(index, 'shape', ()))}"
            )
    flat = torch.cat([index.reshape(-1) for index in columns])
    if bool(((flat < 0) | (flat >= n)).any()):
        raise ValueError(f"columns must lie in [0, {n}), got range [{int(flat.min())}, {int(flat.max())}]")
    listed = torch.bincount(flat, minlength=n)
    if bool((listed != 1).any()):
        bad = int(torch.nonzero(listed != 1)[0])
        raise ValueError(
            f"columns must list each of the {n} variables exactly once, "
            f"got variable {bad} listed {int(listed[bad])} times"
        )
    return columns
