"""Scaling of the trust region: scipy's ``x_scale``, Jacobi and block-Jacobi.

The trust region ‖T⁻¹p‖ ≤ Δ is a sphere in the variables z = T⁻¹x, and
solving the subproblem there with CG is CG preconditioned by M = (TTᵀ)⁻¹
with the trust region in the matching M-norm (Steihaug 1983, §3; Conn,
Gould & Toint 2000, §5.1.6). The choices, selected by `TrustRegion`'s
``x_scale``:

* a number or a tensor: T = diag(x_scale), fixed (scipy's ``x_scale``);
* ``"jac"``: T = diag(1/‖J e_j‖) with the running maximum of the column norms
  (Moré 1978, §6; MINPACK and scipy): Jacobi preconditioning,
  M = diag(JᵀJ) up to the running maximum. When the norms are estimated (a
  matrix-free J with many variables), T = I instead while they lie within a
  small factor of each other (`JacobiScale`, `UniformScaling`);
* `BlockJacobi`: T = L⁻ᵀ with LLᵀ the block diagonal of JᵀJ over a partition
  of the variables into blocks (camera and point parameters in bundle
  adjustment): block-Jacobi preconditioning, recomputed at every
  linearization, the preconditioner of Ceres' iterative solvers (Agarwal et
  al. 2010). The blocks are computed from a dense or sparse Jacobian.

References:
    J. J. Moré, "The Levenberg-Marquardt algorithm: implementation and
    theory", Numerical Analysis, LNM 630, Springer, 1978, pp. 105-116.
    T. Steihaug, "The conjugate gradient method and trust regions in large
    scale optimization", SIAM J. Numer. Anal. 20(3), 1983, pp. 626-637.
    A. van der Sluis, "Condition numbers and equilibration of matrices",
    Numer. Math. 14, 1969, pp. 14-23.
    S. Agarwal, N. Snavely, S. M. Seitz and R. Szeliski, "Bundle adjustment in
    the large", ECCV 2010, pp. 29-42.
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
    "UniformScaling",
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
    """T = diag(d) for a positive 1-D tensor d.

    Args:
        diagonal: d.
        unit: for Jacobi's T = unit/c (`JacobiScale`), the column norm that T
            maps to 1, kept so that the running maximum of c stays in the
            same units from point to point; 1 otherwise.
    """

    def __init__(self, diagonal: Tensor, unit: float = 1.0):
        self.diagonal = diagonal
        self.unit = unit

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


class UniformScaling(IdentityScaling, DiagonalScaling):
    """T = I, chosen by `JacobiScale` for a well-scaled J: no product pays for a scale.

    `IdentityScaling`'s products, and a diagonal all the same (of stride 0,
    no memory), so that it persists like any diagonal T
    (`TrustRegionOptimizer` keeps ``T.diagonal``) and `JacobiScale` still
    recognizes it there.

    Examples:
        >>> T = UniformScaling(torch.zeros(3))
        >>> T.diagonal.stride(), T.apply(torch.ones(3))
        ((0,), tensor([1., 1., 1.]))
    """

    def __init__(self, like: Tensor):
        super().__init__(torch.ones((), dtype=like.dtype, device=like.device).expand(like.shape))


def _is_uniform(scaling: Scaling | None) -> bool:
    """A `UniformScaling`, or the diagonal of one restored by the optimizer (a stride-0 ones)."""
    return isinstance(scaling, DiagonalScaling) and scaling.diagonal.ndim == 1 and scaling.diagonal.stride(0) == 0


@dataclass(frozen=True, kw_only=True)
class JacobiScale(ScalePolicy):
    """``x_scale="jac"``: T = diag(1/c) with c the running maximum of J's column norms.

    MINPACK keeps the largest column norm seen so far (Moré 1978, §6); since
    1/x is monotone, also in rounded arithmetic, the running maximum of c is
    exactly the running minimum of T, so T alone carries it and no second
    n-vector is kept. A variable no residual depends on yet is scaled by 1, as
    in scipy. Column norms a stored J gives exactly are recomputed at every
    point.

    Column norms the model can only estimate (a matrix-free J with more than
    32 variables: `GaussNewtonModel.column_norm_estimates`, 8 to K VJPs, each
    about half a CG iteration) first decide whether scaling is worth them.
    While the largest estimated norm is within ``uniform_spread`` of the
    smallest nonzero one, T = I (`UniformScaling`): over such a spread the
    scales T = I and Jacobi's change the condition number of B by a factor
    ``uniform_spread``² at most, and the products of the estimates and of its
    refreshes are saved. The first stage of the estimate (8 VJPs) settles a
    well-scaled J; the decision is checked again at iterations 8, 64, 512, …
    Otherwise T is Jacobi's from the full estimate, refreshed at iterations 0,
    1, 2, 4, 8, …; after T = I it is T = max c / c, which keeps the largest
    column's units and so the meaning of the radius (its refreshes keep the
    running maximum in those units). Jacobi's loss on a
    well-scaled J is bounded (the Jacobi-scaled B is within a factor q of the
    best diagonal scaling's condition number, q the nonzeros of a row of B;
    van der Sluis 1969), T = I's on a badly scaled one is not: the decision
    errs towards Jacobi, and ``uniform_spread`` = 4 only declares well scaled
    what T = I cannot make much worse.

    With ``blocks`` (the default for ``"jac"``) and a sparse J whose columns
    fall into blocks of identical row sets (a camera's nine parameters, a
    point's three: `trustls.sparsity.find_blocks`, found once per pattern), T
    is block-Jacobi over those blocks instead, T = L⁻ᵀ with LLᵀ the diagonal
    blocks of JᵀJ (Agarwal et al. 2010): the same preconditioner for blocks of
    one column, a far better one for larger blocks (`docs/sparse.md`). It is
    recomputed at every point, without a running maximum.

    Args:
        blocks: block-Jacobi over the column blocks of a sparse J.
        uniform_spread: largest ratio of estimated column norms that counts as
            well scaled; 1 turns the decision off (Jacobi unless the norms are
            all equal), ``math.inf`` keeps T = I.

    Examples:
        >>> JacobiScale(), JacobiScale(blocks=False).diagonal
        (JacobiScale(blocks=True, uniform_spread=4.0), True)
    """

    blocks: bool = True
    uniform_spread: float = 4.0

    def __post_init__(self):
        if (
            isinstance(self.uniform_spread, bool)
            or not isinstance(self.uniform_spread, (int, float))
            or not 1 <= self.uniform_spread <= math.inf
        ):
            raise ValueError(f"uniform_spread must be a number of at least 1, got {self.uniform_spread!r}")
        object.__setattr__(self, "uniform_spread", float(self.uniform_spread))

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
        if not model.column_norms_are_estimated(linearization):
            return _running_jacobi(model.column_norms(linearization), previous)
        uniform = _is_uniform(previous)
        if previous is not None and not _refresh(iteration, uniform):
            return UniformScaling(linearization.x) if uniform else previous
        if previous is not None and not uniform:
            return _running_jacobi(model.column_norms(linearization), previous)
        # Decide after each stage of the estimate (GaussNewtonModel.column_norm_estimates):
        # a well-scaled J stops at the first, a badly scaled one gets the full estimate.
        stages = getattr(model, "column_norm_estimates", None)
        for norms in stages(linearization) if stages is not None else [model.column_norms(linearization)]:
            smallest_positive = torch.where(norms > 0, norms, math.inf).amin()
            largest, smallest = torch.stack([norms.amax(), smallest_positive]).tolist()  # one read
            if largest == 0.0 or math.isfinite(largest) and largest <= self.uniform_spread * smallest:
                return UniformScaling(norms)
        if uniform and math.isfinite(largest):
            scale = largest / norms
            return DiagonalScaling(scale.masked_fill_(~torch.isfinite(scale), 1.0), unit=largest)
        return _running_jacobi(norms, None)


def _refresh(iteration: int, uniform: bool) -> bool:
    """Jacobi T at iterations 0, 1, 2, 4, 8, …; T = I at 8, 64, 512, … (`JacobiScale`)."""
    power_of_two = iteration & (iteration - 1) == 0
    if not uniform:
        return power_of_two
    return iteration >= 8 and power_of_two and (iteration.bit_length() - 1) % 3 == 0


def _running_jacobi(norms: Tensor, previous: Scaling | None) -> DiagonalScaling:
    """T = u/c, the running minimum with the previous diagonal T; a zero column is scaled by 1.

    u is the previous T's unit (1 unless T followed T = I: `JacobiScale`), so
    that the minimum compares T's in the same units.
    """
    if isinstance(previous, DiagonalScaling):
        unit = previous.unit
        scale = unit * torch.reciprocal(norms)  # inf for a column of zeros
        return DiagonalScaling(torch.minimum(scale, previous.diagonal), unit)  # finite: previous is
    scale = torch.reciprocal(norms)
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


def resolve_x_scale(x_scale: object) -> ScalePolicy | None:
    """The `ScalePolicy` for scipy's ``x_scale``; ``None`` stays ``None`` (the solver's default).

    Accepts ``"jac"``, a positive number, a 1-D sequence of positive numbers
    (a list, a numpy array or a tensor), or a `ScalePolicy` such as `BlockJacobi`.

    Examples:
        >>> resolve_x_scale("jac"), resolve_x_scale(2)
        (JacobiScale(blocks=True, uniform_spread=4.0), FixedScale(value=2.0))
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
