"""Sparse Jacobians from a sparsity pattern: coloring, colored products, block structure."""

from trustls.sparsity.blocks import BlockPartition

__all__ = ["BlockPartition"]
