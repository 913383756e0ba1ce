"""The `LinearOperator` interface: a matrix known only through its products.

A trust-region solver needs curvature B only through products B v. For
least squares B = JᵀJ, and J itself is available only through products with
J (a Jacobian-vector product, JVP) and with Jᵀ (a vector-Jacobian product,
VJP). An operator therefore exposes

* ``matvec(v)  = A v``   for ``v`` of length ``shape[1]``,
* ``rmatvec(u) = Aᵀ u``  for ``u`` of length ``shape[0]``,
* ``A @ v`` (a vector, or a matrix whose columns are multiplied one by one),
* ``to_dense()``, which builds the matrix column by column from products;
  it is meant for tests and small problems only.

Structure the solvers rely on is declared, not guessed: ``is_symmetric``
and ``is_positive_semidefinite`` are class-level facts that a solver checks
once, up front (lineax's convention).
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

__all__ = ["LinearOperator", "PowerOfTwoBalanced", "ScaledOperator"]


class LinearOperator(abc.ABC):
    """A linear map ``R^n -> R^m`` known through its products.

    Subclasses implement `matvec` and, unless they are symmetric, `rmatvec`.

    ``is_matrix_free`` says whether a product is computed (by automatic
    differentiation or user code, the default) rather than read from stored
    entries. Solvers use it to weigh recomputing products against storing
    vectors (`SteihaugCG`'s stored path).

    Args:
        shape: ``(m, n)``.
        dtype: floating dtype of the vectors the operator acts on.
        device: device of those vectors.

    Examples:
        >>> import torch
        >>> from trustls.operators import DenseOperator
        >>> A = DenseOperator(torch.eye(2, dtype=torch.float64))
        >>> A @ torch.ones(2, dtype=torch.float64)
        tensor([1., 1.], dtype=torch.float64)
    """

    is_symmetric: bool = False
    is_positive_semidefinite: bool = False
    is_matrix_free: bool = True

    def __init__(self, shape: tuple[int, int], dtype: torch.dtype, device: torch.device | str):
        m, n = shape
        self.shape = (int(m), int(n))
        self.dtype = dtype
        self.device = torch.device(device)

    @abc.abstractmethod
    def matvec(self, v: Tensor) -> Tensor:
        """Return ``A v`` for a vector ``v`` of length ``shape[1]``."""

    def rmatvec(self, u: Tensor) -> Tensor:
        """Return ``Aᵀ u`` for a vector ``u`` of length ``shape[0]``."""
        if self.is_symmetric:
            return self.matvec(u)
        raise NotImplementedError(f"{type(self).__name__} does not implement rmatvec")

    def __matmul__(self, other: Tensor) -> Tensor:
        if other.ndim == 1:
            return self.matvec(other)
        if other.ndim == 2:
            return torch.stack([self.matvec(column) for column in other.T], dim=1)
        raise ValueError(f"operand of @ must be 1-D or 2-D, got a tensor with {other.ndim} dimensions")

    def scale_columns(self, scale: Tensor) -> LinearOperator:
        """``A diag(scale)``; stored matrices may override this to scale their entries once."""
        return ScaledOperator(self, scale, left=False)

    def to_dense(self) -> Tensor:
        """Build the dense ``(m, n)`` matrix from ``n`` products (tests and small problems)."""
        eye = torch.eye(self.shape[1], dtype=self.dtype, device=self.device)
        return self @ eye

    def __repr__(self) -> str:
        m, n = self.shape
        return f"{type(self).__name__}(shape=({m}, {n}), dtype={self.dtype}, device={self.device})"


class ScaledOperator(LinearOperator):
    """``Tᵀ A T`` (or ``A T`` with ``left=False``) for a change of variables ``T``.

    ``T`` is a diagonal given as a 1-D tensor (``T = diag(scale)``) or any
    square `LinearOperator` (a `BlockDiagonalOperator`, say). ``Tᵀ A T`` is the
    curvature in the variables ``z = T⁻¹ x`` of the trust-region subproblem
    ``min gᵀp + ½ pᵀAp, ‖T⁻¹p‖ ≤ Δ`` (Moré 1978; Conn, Gould & Toint 2000,
    §7.7): with ``p = T z`` it becomes ``min (Tᵀg)ᵀz + ½ zᵀ(TᵀAT)z, ‖z‖ ≤ Δ``.
    Solving the scaled problem with CG is CG preconditioned by ``(TTᵀ)⁻¹``
    with the trust region in the matching norm; ``A T`` is the Jacobian in
    those variables.

    Examples:
        >>> import torch
        >>> from trustls.operators import DenseOperator
        >>> A = DenseOperator(torch.ones(2, 2))
        >>> ScaledOperator(A, torch.tensor([1.0, 2.0])).to_dense()
        tensor([[1., 2.],
                [2., 4.]])
    """

    def __init__(self, operator: LinearOperator, scale: Tensor | LinearOperator, *, left: bool = True):
        m, n = operator.shape
        if isinstance(scale, Tensor):
            if scale.shape != (n,):
                raise ValueError(f"scale must have shape ({n},), got {tuple(scale.shape)}")
        elif isinstance(scale, LinearOperator):
            if scale.shape != (n, n):
                raise ValueError(f"scale must have shape ({n}, {n}), got {scale.shape}")
        else:
            raise TypeError(f"scale must be a torch.Tensor or a LinearOperator, got {type(scale).__name__}")
        if left and m != n:
            raise ValueError(f"operator must be square to be scaled on both sides, got shape {operator.shape}")
        super().__init__(operator.shape, operator.dtype, operator.device)
        self.operator = operator
        self.scale = scale
        self.left = left
        self.is_symmetric = left and operator.is_symmetric
        self.is_positive_semidefinite = left and operator.is_positive_semidefinite
        self.is_matrix_free = operator.is_matrix_free or (isinstance(scale, LinearOperator) and scale.is_matrix_free)

    def _T(self, v: Tensor) -> Tensor:
        return self.scale * v if isinstance(self.scale, Tensor) else self.scale.matvec(v)

    def _Tt(self, v: Tensor) -> Tensor:
        return self.scale * v if isinstance(self.scale, Tensor) else self.scale.rmatvec(v)

    def matvec(self, v: Tensor) -> Tensor:
        Av = self.operator.matvec(self._T(v))
        return self._Tt(Av) if self.left else Av

    def rmatvec(self, u: Tensor) -> Tensor:
        return self._Tt(self.operator.rmatvec(self._T(u) if self.left else u))


def power_of_two(v: Tensor) -> Tensor:
    """c = 2^(e−1) with ‖v‖∞ in [2^(e−1), 2^e), as a 0-d tensor on v's device (1 for v = 0), without a host read.

    c ≤ ‖v‖∞ is representable in v's dtype; 2^e is not always (2¹⁶ for float16
    entries from 2¹⁵ up to 65504 overflows to inf, and v/inf·inf is NaN).
    """
    largest = v.abs().max()
    exponent = torch.frexp(largest)[1] - 1
    return torch.where(largest > 0, torch.exp2(exponent.to(v.dtype)), torch.ones_like(largest))


class PowerOfTwoBalanced(LinearOperator):
    """A with every product taken on a vector of unit size: ``A v = c·A(v/c)``, c a power of two.

    For operators whose products run in a narrow precision (float16's largest
    value is 65504): a product that would overflow for a large v runs on
    v/c, whose largest entry lies in [1, 2), and is scaled back in the vectors' own
    precision. Scaling by a power of two is exact, and c is computed on the
    device, so a product reads nothing.

    Examples:
        >>> import torch
        >>> from trustls.operators import DenseOperator
        >>> PowerOfTwoBalanced(DenseOperator(torch.eye(2))) @ torch.tensor([3.0, 5.0])
        tensor([3., 5.])
    """

    def __init__(self, operator: LinearOperator):
        super().__init__(operator.shape, operator.dtype, operator.device)
        self.operator = operator
        self.is_symmetric = operator.is_symmetric
        self.is_positive_semidefinite = operator.is_positive_semidefinite
        self.is_matrix_free = operator.is_matrix_free

    def matvec(self, v: Tensor) -> Tensor:
        c = power_of_two(v)
        return self.operator.matvec(v / c) * c

    def rmatvec(self, u: Tensor) -> Tensor:
        # An operator summed over ranks balances each rank's part before the sum: a factor from this
        # rank's u alone, applied after it, would scale the other ranks' parts by the wrong power.
        balanced = getattr(self.operator, "balanced_rmatvec", None)
        if balanced is not None:
            return balanced(u)
        c = power_of_two(u)
        return self.operator.rmatvec(u / c) * c
