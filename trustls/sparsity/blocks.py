"""Block structure of a sparse Jacobian, found from its sparsity pattern.

A *block* is a set of columns whose row sets are identical (a camera's nine
parameters, a point's three in bundle adjustment). Blocks of equal size are
stored together, one ``(count, size)`` tensor of column indices per size.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["BlockPartition"]


@dataclass(frozen=True, eq=False)
class BlockPartition:
    """The columns of a Jacobian grouped into blocks, and which blocks can be eliminated.

    Attributes:
        n: the number of columns; every column lies in exactly one block.
        groups: one ``(count, size)`` int64 tensor of column indices per block
            size; row ``k`` of a group lists the columns of one block.
        eliminated: indices into ``groups`` of the groups whose blocks can be
            eliminated exactly: no two of their blocks (within a group or across
            these groups) share a row of J, so their part of JᵀJ is block
            diagonal (the points of bundle adjustment). Empty when no such
            split exists.
    """

    n: int
    groups: tuple[Tensor, ...]
    eliminated: tuple[int, ...] = ()
