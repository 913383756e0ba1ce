"""Cholesky factors and their inverses for batches of small symmetric blocks.

Block-Jacobi scaling and Schur-complement elimination factor one small
symmetric positive (semi)definite block per camera or point: thousands of
3 × 3 or 9 × 9 matrices. LAPACK's batched routines (``torch.linalg``) loop over
the batch with a fixed cost per matrix, which dominates for tiny blocks. For
many small blocks the factorization is written instead as s steps of the
column-oriented Cholesky recurrence (Golub & Van Loan 2013, Alg. 4.2.2),

    l_jj = √(a_jj − Σ_{k<j} l_jk²),   l_ij = (a_ij − Σ_{k<j} l_ik l_jk) / l_jj,

each step one vectorized operation over the whole batch, and L⁻¹ by forward
substitution row by row. For few or larger blocks LAPACK is used.

A block whose pivot is not positive and finite is reported as failed rather
than raised on, so that the caller can regularize that block alone
(`regularized_cholesky`).

References:
    G. H. Golub and C. F. Van Loan, "Matrix Computations", 4th ed., Johns
    Hopkins University Press, 2013, §4.2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["block_cholesky", "lower_triangular_inverse", "regularized_cholesky"]

# The unrolled recurrences cost O(size) vectorized operations whatever the
# batch; LAPACK costs a few microseconds per block. Unrolled from this many
# blocks of size ≤ _MAX_UNROLLED_SIZE.
_MIN_UNROLLED_COUNT = 256
_MAX_UNROLLED_SIZE = 6


def _unrolled(blocks: Tensor) -> bool:
    return blocks.shape[0] >= _MIN_UNROLLED_COUNT and blocks.shape[-1] <= _MAX_UNROLLED_SIZE


def block_cholesky(blocks: Tensor) -> tuple[Tensor, Tensor]:
    """Lower Cholesky factors of ``(count, size, size)`` symmetric blocks, and a mask of failed blocks.

    A failed block (not numerically positive definite, or not finite) has
    an unspecified factor.

    Examples:
        >>> import torch
        >>> L, failed = block_cholesky(torch.tensor([[[4.0, 2.0], [2.0, 5.0]], [[1.0, 2.0], [2.0, 1.0]]]))
        >>> L[0], failed
        (tensor([[2., 0.],
                [1., 2.]]), tensor([False,  True]))
    """
    if not _unrolled(blocks):
        L, info = torch.linalg.cholesky_ex(blocks)
        return L, (info != 0) | ~torch.isfinite(torch.diagonal(L, dim1=1, dim2=2)).all(dim=1)
    size = blocks.shape[-1]
    L = torch.zeros_like(blocks)
    failed = torch.zeros(blocks.shape[0], dtype=torch.bool, device=blocks.device)
    for j in range(size):
        column = blocks[:, j:, j]
        if j:
            column = column - (L[:, j:, :j] * L[:, j : j + 1, :j]).sum(dim=2)
        pivot = column[:, 0]
        failed |= ~(pivot > 0) | ~torch.isfinite(pivot)
        diagonal = torch.sqrt(torch.where(pivot > 0, pivot, torch.ones_like(pivot)))
        L[:, j, j] = diagonal
        L[:, j + 1 :, j] = column[:, 1:] / diagonal[:, None]
    return L, failed


def lower_triangular_inverse(L: Tensor) -> Tensor:
    """L⁻¹ for ``(count, size, size)`` lower-triangular blocks with nonzero diagonals.

    Examples:
        >>> import torch
        >>> lower_triangular_inverse(torch.tensor([[[2.0, 0.0], [1.0, 4.0]]]))
        tensor([[[ 0.5000,  0.0000],
                 [-0.1250,  0.2500]]])
    """
    if not _unrolled(L):
        eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device).expand_as(L)
        return torch.linalg.solve_triangular(L, eye, upper=False)
    size = L.shape[-1]
    X = torch.zeros_like(L)
    reciprocal = 1.0 / torch.diagonal(L, dim1=1, dim2=2)
    for i in range(size):
        X[:, i, i] = reciprocal[:, i]
        if i:
            X[:, i, :i] = -(L[:, i, :i, None] * X[:, :i, :i]).sum(dim=1) * reciprocal[:, i : i + 1]
    return X


def regularized_cholesky(blocks: Tensor, shift: Tensor | float = 0.0) -> Tensor:
    """The Cholesky factor of each block + diag(shift), with a jitter for the blocks that fail.

    ``shift`` is a number or a ``(count, size)`` tensor added to the
    diagonals. A block that is still not numerically positive definite (a
    singular block with no shift, rounding) gets a further √eps times its
    largest diagonal entry, or 1 where that is not positive, on its diagonal
    (the rule of `trustls.scaling.BlockJacobi`, applied to that block only).

    Examples:
        >>> import torch
        >>> regularized_cholesky(torch.zeros(1, 2, 2))
        tensor([[[1., 0.],
                 [0., 1.]]])
    """
    size = blocks.shape[-1]
    eye = torch.eye(size, dtype=blocks.dtype, device=blocks.device)
    if isinstance(shift, Tensor):
        shifted = blocks + torch.diag_embed(shift)
    else:
        shifted = blocks + shift * eye if shift else blocks
    L, failed = block_cholesky(shifted)
    if bool(failed.any()):
        largest = torch.diagonal(blocks, dim1=1, dim2=2).amax(dim=1)
        jitter = torch.where(largest > 0, math.sqrt(torch.finfo(blocks.dtype).eps) * largest, torch.ones_like(largest))
        L, _ = block_cholesky(shifted + (jitter * failed)[:, None, None] * eye)
    return L
