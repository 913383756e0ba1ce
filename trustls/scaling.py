"""Scaling of the trust region: scipy's ``x_scale``, Jacobi and block-Jacobi.

The trust region ‖T⁻¹p‖ ≤ Δ is a sphere in the variables z = T⁻¹x, and
solving the subproblem there with CG is CG preconditioned by M = (TTᵀ)⁻¹
with the trust region in the matching M-norm (Steihaug 1983, §3; Conn,
Gould & Toint 2000, §5.1.6). The choices, selected by `TrustRegion`'s
``x_scale``:

* a number or a tensor: T = diag(x_scale), fixed (scipy's ``x_scale``);
* ``"jac"``: T = diag(1/‖J e_j‖) with the running maximum of the column norms
  (Moré 1978, §6; MINPACK and scipy): Jacobi preconditioning,
  M = diag(JᵀJ) up to the running maximum;
* `BlockJacobi`: T = L⁻ᵀ with LLᵀ the block diagonal of JᵀJ over a partition
  of the variables into blocks (camera and point parameters in bundle
  adjustment): block-Jacobi preconditioning, recomputed at every
  linearization, the preconditioner of Ceres' iterative solvers (Agarwal et
  al. 2010). The blocks are computed from a dense or sparse Jacobian.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from trustls.models.base import CurvatureModel, Linearization
from trustls.operators.dense import DenseOperator
from trustls.operators.diagonal import BlockDiagonalOperator
from trustls.operators.sparse import SparseOperator
from trustls.sparsity.blocks import pattern_blocks
from trustls.sparsity.normal_blocks import block_jacobi_scaling

__all__ = [
    "BlockJacobi",
    "BlockScaling",
    "DiagonalScaling",
    "FixedScale",
    "IdentityScaling",
    "JacobiScale",
    "ScalePolicy",
    "Scaling",
    "block_normal_diagonal",
    "resolve_x_scale",
]

# Blocks are materialized from an implicit Jacobian (n JVPs) only up to this n.
_MAX_IMPLICIT_N = 256


class Scaling(abc.ABC):
    """T, the change of variables p = T z under which the trust region is a sphere in z."""

    @abc.abstractmethod
    def apply(self, z: Tensor) -> Tensor:
        """p = T z."""

    @abc.abstractmethod
    def inverse(self, p: Tensor) -> Tensor:
        """z = T⁻¹ p."""

    @abc.abstractmethod
    def transform(self, linearization: Linearization) -> Linearization:
        """The linearization in the variables z (`Linearization.scaled`)."""

    def norm(self, x: Tensor) -> Tensor:
        """‖T⁻¹x‖, the length of x in the trust region's norm (a 0-d tensor)."""
        return torch.linalg.vector_norm(self.inverse(x))


class IdentityScaling(Scaling):
    """T = I: no scaling (``x_scale=1``)."""

    def apply(self, z: Tensor) -> Tensor:
        return z

    def inverse(self, p: Tensor) -> Tensor:
        return p

    def transform(self, linearization: Linearization) -> Linearization:
        return linearization


class DiagonalScaling(Scaling):
    """T = diag(d) for a positive 1-D tensor d."""

    def __init__(self, diagonal: Tensor):
        self.diagonal = diagonal

    def apply(self, z: Tensor) -> Tensor:
        return self.diagonal * z

    def inverse(self, p: Tensor) -> Tensor:
        return p / self.diagonal

    def transform(self, linearization: Linearization) -> Linearization:
        return linearization.scaled(self.diagonal)


class BlockScaling(Scaling):
    """T a block-diagonal operator that knows its inverse (block-Jacobi)."""

    def __init__(self, operator: BlockDiagonalOperator):
        self.operator = operator

    def apply(self, z: Tensor) -> Tensor:
        return self.operator.matvec(z)

    def inverse(self, p: Tensor) -> Tensor:
        return self.operator.inverse_matvec(p)

    def transform(self, linearization: Linearization) -> Linearization:
        return linearization.scaled(self.operator)


class ScalePolicy(abc.ABC):
    """How T is chosen at each linearized point; resolved once from ``x_scale``.

    A policy is frozen configuration. What it carries from point to point (the
    running maximum of the column norms for ``"jac"``) lives in the `Scaling`
    it returned last, which the solve's state keeps.
    """

    #: Whether T is diagonal at every point (box bounds need a diagonal T).
    diagonal: bool = True

    def check(self, x: Tensor) -> None:
        """Check the policy against the starting point (shapes, devices); raise ``ValueError``."""

    @abc.abstractmethod
    def scaling(
        self, model: CurvatureModel, linearization: Linearization, previous: Scaling | None, iteration: int
    ) -> Scaling:
        """T at a new point; ``previous`` is T at the point before (``None`` at the first)."""


@dataclass(frozen=True, eq=False)
class FixedScale(ScalePolicy):
    """T = diag(x_scale), fixed (scipy's numeric ``x_scale``); 1 means no scaling.

    Examples:
        >>> FixedScale(1.0).value
        1.0
    """

    value: float | Tensor

    def check(self, x: Tensor) -> None:
        if isinstance(self.value, Tensor) and self.value.shape != x.shape:
            raise ValueError(f"x_scale must have x0's shape {tuple(x.shape)}, got shape {tuple(self.value.shape)}")

    def scaling(self, model, linearization, previous, iteration) -> Scaling:
        if previous is not None:
            return previous
        x = linearization.x
        if isinstance(self.value, Tensor):
            return DiagonalScaling(self.value.to(dtype=x.dtype, device=x.device))
        return IdentityScaling() if self.value == 1.0 else DiagonalScaling(torch.full_like(x, self.value))


@dataclass(frozen=True)
class JacobiScale(ScalePolicy):
    """``x_scale="jac"``: T = diag(1/c) with c the running maximum of J's column norms.

    MINPACK keeps the largest column norm seen so far (Moré 1978, §6); since
    1/x is monotone, also in rounded arithmetic, the running maximum of c is
    exactly the running minimum of T, so T alone carries it and no second
    n-vector is kept. Column norms that the model can only estimate are
    refreshed at iterations 0, 1, 2, 4, 8, … and kept in between (see
    `GaussNewtonModel.column_norms`). A variable no residual depends on yet is
    scaled by 1, as in scipy.

    With ``blocks`` (the default for ``"jac"``) and a sparse J whose columns
    fall into blocks of identical row sets (a camera's nine parameters, a
    point's three: `trustls.sparsity.find_blocks`, found once per pattern), T
    is block-Jacobi over those blocks instead, T = L⁻ᵀ with LLᵀ the diagonal
    blocks of JᵀJ (Agarwal et al. 2010): the same preconditioner for blocks of
    one column, a far better one for larger blocks (on bundle adjustment CG
    needs 524 iterations instead of 36,005, docs/sparse.md). It is recomputed at
    every point, without a running maximum.

    Examples:
        >>> JacobiScale(), JacobiScale(blocks=False).diagonal
        (JacobiScale(blocks=True), True)
    """

    blocks: bool = True

    @property
    def diagonal(self) -> bool:  # box bounds need a diagonal T
        return not self.blocks

    def scaling(self, model, linearization, previous, iteration) -> Scaling:
        if self.blocks:
            partition = _sparse_blocks_of(linearization)
            if partition is not None:
                return BlockScaling(block_jacobi_scaling(linearization.jacobian, partition))
        if isinstance(previous, BlockScaling):
            previous = None
        refresh = iteration & (iteration - 1) == 0  # 0 or a power of two
        if previous is not None and not refresh and model.column_norms_are_estimated(linearization):
            return previous
        scale = torch.reciprocal(model.column_norms(linearization))  # inf for a column of zeros
        if previous is not None:
            return DiagonalScaling(torch.minimum(scale, previous.diagonal))  # finite: previous is
        return DiagonalScaling(scale.masked_fill_(~torch.isfinite(scale), 1.0))


def _sparse_blocks_of(linearization: Linearization):
    """The column blocks of a sparse J when some has more than one column, else ``None``."""
    J = linearization.jacobian
    if not isinstance(J, SparseOperator):
        return None
    partition = pattern_blocks(J)
    return partition if any(group.shape[1] > 1 for group in partition.groups) else None


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

    def scaling(self, model, linearization, previous, iteration) -> Scaling:
        return BlockScaling(_block_jacobi(linearization, self))


# Up to this many blocks in a group, sum each block's outer products with one
# matrix product (BLAS); beyond it, one batched outer product and a scatter.
_MAX_LOOPED_BLOCKS = 1024


def _sparse_blocks(J: SparseOperator, offset: int, count: int, size: int) -> Tensor:
    key = ("block", offset, count, size)
    plan = J.pattern.cache.get(key)
    if plan is None:
        rows, cols = J.pattern.rows, J.pattern.cols
        entries = torch.nonzero((cols >= offset) & (cols < offset + count * size)).squeeze(1)
        local = cols[entries] - offset
        block, position = local // size, local % size
        # One slot per (block, row) pair, holding the row's entries in that
        # block; ordering the key by block first groups each block's slots.
        slots, slot = torch.unique(block * J.shape[0] + rows[entries], return_inverse=True)
        slot_block = slots // J.shape[0]
        plan = (entries, slot * size + position, slot_block, torch.bincount(slot_block, minlength=count).tolist())
        J.pattern.cache[key] = plan
    entries, flat, slot_block, counts = plan
    n_slots = slot_block.numel()
    R = torch.zeros(n_slots * size, dtype=J.dtype, device=J.device).index_add_(0, flat, J.values[entries])
    R = R.view(n_slots, size)
    if count <= _MAX_LOOPED_BLOCKS:
        return torch.stack([rows.T @ rows for rows in torch.split(R, counts)])
    outer = (R[:, :, None] * R[:, None, :]).reshape(n_slots, size * size)
    blocks = torch.zeros(count, size * size, dtype=J.dtype, device=J.device).index_add_(0, slot_block, outer)
    return blocks.view(count, size, size)


def block_normal_diagonal(linearization: Linearization, spec: BlockJacobi) -> list[Tensor]:
    """The diagonal blocks of JᵀJ, one ``(count, size, size)`` tensor per group.

    From the sparse Jacobian's nonzeros (the grouping of entries into row
    blocks is computed once per sparsity pattern), or from a dense J.
    """
    J = linearization.jacobian
    n = J.shape[1]
    if spec.n != n:
        raise ValueError(f"x_scale=BlockJacobi must cover the {n} variables, its blocks cover {spec.n}")
    if isinstance(J, SparseOperator):
        groups, offset = [], 0
        for count, size in spec.blocks:
            groups.append(_sparse_blocks(J, offset, count, size))
            offset += count * size
        return groups
    if linearization.jacobian_matrix is not None:
        matrix = linearization.jacobian_matrix
    elif isinstance(J, DenseOperator) or n <= _MAX_IMPLICIT_N:
        matrix = J.to_dense()
    else:
        raise ValueError(
            f"x_scale=BlockJacobi needs a dense or sparse Jacobian when n > {_MAX_IMPLICIT_N}: "
            "pass GaussNewtonModel(jacobian=...) returning a SparseOperator"
        )
    groups, offset = [], 0
    for count, size in spec.blocks:
        columns = matrix[:, offset : offset + count * size].reshape(matrix.shape[0], count, size)
        groups.append(torch.einsum("rki,rkj->kij", columns, columns))
        offset += count * size
    return groups


def _block_jacobi(linearization: Linearization, spec: BlockJacobi) -> BlockDiagonalOperator:
    """T = L⁻ᵀ (and T⁻¹ = Lᵀ) from the Cholesky factors of the regularized blocks."""
    transforms, inverses = [], []
    for B in block_normal_diagonal(linearization, spec):
        d = torch.diagonal(B, dim1=1, dim2=2)
        # A variable no residual depends on has d = 0: scale it by 1, as "jac" does.
        shift = torch.where(d > 0, spec.damping * d, torch.ones_like(d))
        L, info = torch.linalg.cholesky_ex(B + torch.diag_embed(shift))
        if bool((info != 0).any()):
            jitter = math.sqrt(torch.finfo(B.dtype).eps) * d.amax(dim=1, keepdim=True)
            L = torch.linalg.cholesky(B + torch.diag_embed(shift + jitter))
        eye = torch.eye(B.shape[-1], dtype=B.dtype, device=B.device).expand_as(B)
        L_inverse = torch.linalg.solve_triangular(L, eye, upper=False)
        transforms.append(L_inverse.transpose(1, 2))
        inverses.append(L.transpose(1, 2))
    return BlockDiagonalOperator(transforms, inverses)


def resolve_x_scale(x_scale: object) -> ScalePolicy | None:
    """The `ScalePolicy` for scipy's ``x_scale``; ``None`` stays ``None`` (the solver's default).

    Accepts ``"jac"``, a positive number, a 1-D sequence of positive numbers
    (a list, a numpy array or a tensor), or a `ScalePolicy` such as `BlockJacobi`.

    Examples:
        >>> resolve_x_scale("jac"), resolve_x_scale(2)
        (JacobiScale(blocks=True), FixedScale(value=2.0))
    """
    rule = "x_scale must be 'jac', a positive number, a 1-D sequence of positive numbers, a BlockJacobi or None"
    if x_scale is None or isinstance(x_scale, ScalePolicy):
        return x_scale
    if isinstance(x_scale, str):
        if x_scale != "jac":
            raise ValueError(f"{rule}, got {x_scale!r}")
        return JacobiScale()
    if isinstance(x_scale, bool):
        raise ValueError(f"{rule}, got {x_scale!r}")
    if isinstance(x_scale, (int, float)):
        if not 0 < x_scale < math.inf:
            raise ValueError(f"{rule}, got {x_scale!r}")
        return FixedScale(float(x_scale))
    if not isinstance(x_scale, Tensor):
        try:
            x_scale = torch.as_tensor(x_scale, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{rule}, got {type(x_scale).__name__}") from None
    if x_scale.ndim == 0:
        return resolve_x_scale(float(x_scale))
    if x_scale.ndim != 1 or not x_scale.is_floating_point() and x_scale.dtype.is_complex:
        raise ValueError(f"{rule}, got a tensor of shape {tuple(x_scale.shape)}")
    x_scale = x_scale if x_scale.is_floating_point() else x_scale.to(torch.float64)
    if not bool(torch.isfinite(x_scale).all()) or not bool((x_scale > 0).all()):
        raise ValueError("x_scale must have finite positive entries, got a tensor with entries that are not")
    return FixedScale(x_scale)
