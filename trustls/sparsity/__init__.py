"""Sparse Jacobians from a sparsity pattern: coloring, colored products, block structure."""

from trustls.sparsity.blocks import BlockPartition
from trustls.sparsity.normal_blocks import (
    block_jacobi_scaling,
    normal_diagonal_blocks,
    times_block_diagonal,
)

__all__ = ["BlockPartition", "block_jacobi_scaling", "normal_diagonal_blocks", "times_block_diagonal"]
