"""Diagonal and block-diagonal operators: the changes of variables of scaled trust regions.

A scaled trust region ‖T⁻¹p‖ ≤ Δ is a sphere in the variables z = T⁻¹p.
T is diagonal for scipy's ``x_scale`` (T = diag(x_scale)) and for Jacobi
scaling (T = diag(1/‖J e_j‖)), and block diagonal for block-Jacobi
preconditioning (T = L⁻ᵀ with LLᵀ the block diagonal of JᵀJ). Besides the
products with T and Tᵀ, these operators apply T⁻¹, needed for the norm
‖T⁻¹x‖ that sets the initial radius.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from trustls.operators.base import LinearOperator

__all__ = ["BlockDiagonalOperator", "DiagonalOperator"]


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


class BlockDiagonalOperator(LinearOperator):
    """A block-diagonal matrix whose blocks come in groups of equal size.

    Args:
        blocks: tensors of shape ``(count, size, size)``, one per group, laid
            along the diagonal in order.
        inverse_blocks: optional inverses of ``blocks`` (same shapes), for
            `inverse_matvec`.

    Examples:
        >>> import torch
        >>> A = BlockDiagonalOperator([2 * torch.eye(2).expand(1, 2, 2), torch.ones(2, 1, 1)])
        >>> A @ torch.ones(4)
        tensor([2., 2., 1., 1.])
    """

    is_matrix_free = False

    def __init__(self, blocks: Sequence[Tensor], inverse_blocks: Sequence[Tensor] | None = None):
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

    def _apply(self, blocks: list[Tensor], v: Tensor, transpose: bool) -> Tensor:
        parts = []
        for block, chunk in zip(blocks, torch.split(v, self._sizes)):
            if transpose:
                block = block.transpose(1, 2)
            parts.append(torch.bmm(block, chunk.view(block.shape[0], -1, 1)).reshape(-1))
        return torch.cat(parts)

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
        return torch.block_diag(*(block for group in self.blocks for block in group))
