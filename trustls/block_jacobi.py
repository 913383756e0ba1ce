"""`BlockJacobi`: block-Jacobi scaling over a given partition of x into contiguous blocks.

T = L⁻ᵀ with LLᵀ the diagonal blocks of JᵀJ over the partition (camera and
point parameters in bundle adjustment), recomputed at every linearization: the
preconditioner of Ceres' iterative solvers (Agarwal, Snavely, Seitz & Szeliski
2010, "Bundle adjustment in the large"). The blocks are computed from a dense
or sparse Jacobian (`trustls.sparsity.normal_blocks`). `trustls.scaling`
re-exports it; ``x_scale="jac"`` finds such blocks in a sparse J's pattern by
itself (`trustls.scaling.JacobiScale`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from trustls.models.base import Linearization
from trustls.operators.dense import DenseOperator
from trustls.operators.sparse import SparseOperator
from trustls.scale_maps import BlockScaling, ScalePolicy, Scaling
from trustls.sparsity.normal_blocks import block_jacobi_scaling

__all__ = ["BlockJacobi"]

# Blocks are materialized from an implicit Jacobian (n JVPs) only up to this n.
_MAX_IMPLICIT_N = 256


@dataclass(frozen=True)
class BlockJacobi(ScalePolicy):
    """Block-Jacobi scaling over a partition of x into contiguous blocks.

    Args:
        blocks: ``(count, size)`` groups in the order of x: ``((49, 9), (7776, 3))``
            is 49 blocks of 9 variables followed by 7,776 blocks of 3.
        damping: each block B_k is factored as B_k + damping·diag(B_k), which
            keeps blocks that are singular (gauge freedoms, points seen once)
            factorable without changing well-conditioned ones.

    Examples:
        >>> BlockJacobi(((2, 3), (4, 1))).n
        10
    """

    blocks: tuple[tuple[int, int], ...]
    damping: float = 1e-10

    def __post_init__(self):
        blocks = tuple(tuple(group) for group in self.blocks) if isinstance(self.blocks, Sequence) else None
        if not blocks or any(
            len(g) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in g) for g in blocks
        ):
            raise ValueError(f"blocks must be a non-empty sequence of (count, size) pairs of positive ints, got {self.blocks!r}")
        object.__setattr__(self, "blocks", blocks)
        if not isinstance(self.damping, (int, float)) or not 0 <= self.damping < 1:
            raise ValueError(f"damping must be a number in [0, 1), got {self.damping!r}")

    diagonal = False

    @property
    def n(self) -> int:
        """Number of variables the partition covers."""
        return sum(count * size for count, size in self.blocks)

    def check(self, x: Tensor) -> None:
        if self.n != x.shape[0]:
            raise ValueError(f"x_scale=BlockJacobi must cover the {x.shape[0]} variables, its blocks cover {self.n}")

    def partition(self, device: torch.device | str | None = None) -> tuple[Tensor, ...]:
        """The blocks as groups of column indices, one ``(count, size)`` tensor per group, on ``device`` (CPU).

        Made once per device: the plans of `trustls.sparsity.normal_blocks` are
        cached on J's pattern under the identity of these tensors, so fresh ones
        at every point would rebuild the plans and grow the pattern's cache; and
        they must lie on J's device, where they index J's entries and x.
        """
        device = torch.device("cpu" if device is None else device)
        made = self.__dict__.get("_partitions")
        if made is None:
            made = {}
            object.__setattr__(self, "_partitions", made)
        groups = made.get(device)
        if groups is None:
            groups, offset = [], 0
            for count, size in self.blocks:
                groups.append(torch.arange(offset, offset + count * size, device=device).view(count, size))
                offset += count * size
            groups = made[device] = tuple(groups)
        return groups

    def scaling(self, model, linearization, previous, iteration) -> Scaling:
        J = _sparse_jacobian(linearization)
        return BlockScaling(block_jacobi_scaling(J, self.partition(J.device), self.damping))


def _sparse_jacobian(linearization: Linearization) -> SparseOperator:
    """J as a `SparseOperator`: as given, or from a dense J (formed from n products up to n = 256)."""
    J = linearization.jacobian
    if isinstance(J, SparseOperator):
        return J
    n = J.shape[1]
    if linearization.jacobian_matrix is not None:
        matrix = linearization.jacobian_matrix
    elif isinstance(J, DenseOperator) or n <= _MAX_IMPLICIT_N:
        matrix = J.to_dense()
    else:
        raise ValueError(
            f"x_scale=BlockJacobi needs a dense or sparse Jacobian when n > {_MAX_IMPLICIT_N}: "
            "pass GaussNewtonModel(jac_sparsity=...) or a jacobian returning a sparse tensor"
        )
    return SparseOperator.from_tensor(matrix.to_sparse())
