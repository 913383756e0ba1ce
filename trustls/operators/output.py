"""Factors of an output curvature, and the effective Jacobian J̃ = S J.

A loss L of the outputs z = fun(x) is linearized at z as
L(z + δ) ≈ L(z) + ∇Lᵀδ + ½δᵀHδ with H a positive semidefinite curvature
(the exact Hessian of a convex loss; `trustls.losses`). Written as H = SᵀS,
the generalized Gauss-Newton model of the cost in x (Schraudolph 2002;
Martens 2010, 2020) is

    m(p) = gᵀp + ½‖J̃p‖²,   g = Jᵀ∇L,   J̃ = S J,   B = J̃ᵀJ̃ = JᵀHJ,

so every subproblem solver written for least squares (B = JᵀJ) applies with
J̃ in place of J. An `OutputFactor` is S, acting on tensors of the outputs'
shape, optionally with trailing dimensions that it treats as columns (so that
one call multiplies a whole Jacobian reshaped to ``(*outputs.shape, n)``):

* `DiagonalFactor`: S = diag(d), for losses that act elementwise.
* `SoftmaxFactor`: S = diag(a)(I − 1pᵀ) on each sample's class vector, the
  factor of softmax cross-entropy's w(diag(p) − ppᵀ) with a = √(w p):
  SᵀS = (I − p1ᵀ) diag(wp) (I − 1pᵀ) = w(diag(p) − 2ppᵀ + (1ᵀp)ppᵀ), which
  is w(diag(p) − ppᵀ) since 1ᵀp = 1. Products cost O(K) per sample.
* `BlockFactor`: a dense K × K block per sample, for any other loss whose
  Hessian couples the entries of one sample (`BlockFactor.from_hessians`).

`effective_jacobian` builds J̃ from any `LinearOperator` J. It stores S J at
once where that keeps the products as cheap as J's: a dense J becomes a dense
J̃ (its rows scaled, or each sample's block multiplied: O(mn), as one J
product costs), and a `SparseOperator` with a diagonal S gets its values
scaled at their rows (`SparseOperator.with_values`), so products remain two
sparse products and column norms stay exact. Otherwise J̃ is the composition
`EffectiveJacobianOperator`: ``J̃v = S(Jv)``, ``J̃ᵀu = Jᵀ(Sᵀu)``.

References:
    N. N. Schraudolph, "Fast curvature matrix-vector products for
    second-order gradient descent", Neural Computation 14(7), 2002.
    J. Martens, "Deep learning via Hessian-free optimization", ICML 2010.
    J. Martens, "New insights and perspectives on the natural gradient
    method", JMLR 21(146), 2020, §8.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from trustls.operators.base import LinearOperator
from trustls.operators.dense import DenseOperator
from trustls.operators.sparse import SparseOperator

__all__ = [
    "BlockFactor",
    "DiagonalFactor",
    "EffectiveJacobianOperator",
    "OutputFactor",
    "SoftmaxFactor",
    "effective_jacobian",
    "effective_jacobian_matrix",
]


class OutputFactor(abc.ABC):
    """A factor S of a positive semidefinite output curvature H = SᵀS.

    S is square on the output space. `matvec` and `rmatvec` take tensors whose
    leading dimensions are ``shape`` (the outputs' shape); trailing
    dimensions, if any, are columns multiplied independently.

    Attributes:
        shape: the outputs' shape.
        diagonal: the diagonal of S as a tensor of the outputs' shape when S
            is diagonal, else ``None`` (lets stored Jacobians be row-scaled).
    """

    diagonal: Tensor | None = None

    def __init__(self, shape: torch.Size, dtype: torch.dtype, device: torch.device):
        self.shape = torch.Size(shape)
        self.dtype = dtype
        self.device = device

    @property
    def numel(self) -> int:
        """The number of outputs m."""
        return self.shape.numel()

    @abc.abstractmethod
    def matvec(self, v: Tensor) -> Tensor:
        """``S v`` for ``v`` of shape ``(*shape, *columns)``."""

    @abc.abstractmethod
    def rmatvec(self, u: Tensor) -> Tensor:
        """``Sᵀ u`` for ``u`` of shape ``(*shape, *columns)``."""

    def to_dense(self) -> Tensor:
        """S as an ``(m, m)`` matrix over the flattened outputs (tests and small problems)."""
        m = self.numel
        eye = torch.eye(m, dtype=self.dtype, device=self.device)
        return self.matvec(eye.reshape(*self.shape, m)).reshape(m, m)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={tuple(self.shape)}, dtype={self.dtype})"


def _columns(factor: Tensor, v: Tensor) -> Tensor:
    """``factor`` viewed with a singleton for each trailing (column) dimension of ``v``."""
    return factor.reshape(factor.shape + (1,) * (v.ndim - factor.ndim))


class DiagonalFactor(OutputFactor):
    """S = diag(d) for ``d`` of the outputs' shape.

    Examples:
        >>> import torch
        >>> DiagonalFactor(torch.tensor([2.0, 3.0])).matvec(torch.ones(2, 2))
        tensor([[2., 2.],
                [3., 3.]])
    """

    def __init__(self, diagonal: Tensor):
        if not isinstance(diagonal, Tensor) or not diagonal.is_floating_point():
            received = f"dtype {diagonal.dtype}" if isinstance(diagonal, Tensor) else type(diagonal).__name__
            raise TypeError(f"diagonal must be a floating torch.Tensor, got {received}")
        super().__init__(diagonal.shape, diagonal.dtype, diagonal.device)
        self.diagonal = diagonal

    def matvec(self, v: Tensor) -> Tensor:
        return _columns(self.diagonal, v) * v

    def rmatvec(self, u: Tensor) -> Tensor:
        return self.matvec(u)


class SoftmaxFactor(OutputFactor):
    """S = diag(a)(I − 1pᵀ) along dimension ``dim`` of each sample (module docstring).

    Args:
        scale: a = √(w p), of the outputs' shape.
        probabilities: p, the softmax along ``dim``, of the outputs' shape.
        dim: the class dimension.

    Examples:
        >>> import torch
        >>> p = torch.tensor([0.25, 0.75], dtype=torch.float64)
        >>> S = SoftmaxFactor(p.sqrt(), p, dim=0).to_dense()
        >>> torch.allclose(S.T @ S, torch.diag(p) - torch.outer(p, p))
        True
    """

    def __init__(self, scale: Tensor, probabilities: Tensor, dim: int):
        if scale.shape != probabilities.shape:
            raise ValueError(
                f"scale and probabilities must have the same shape, got {tuple(scale.shape)} "
                f"and {tuple(probabilities.shape)}"
            )
        super().__init__(scale.shape, scale.dtype, scale.device)
        self.scale, self.probabilities, self.dim = scale, probabilities, dim % scale.ndim

    def matvec(self, v: Tensor) -> Tensor:
        p = _columns(self.probabilities, v)
        return _columns(self.scale, v) * (v - (p * v).sum(self.dim, keepdim=True))

    def rmatvec(self, u: Tensor) -> Tensor:
        a = _columns(self.scale, u)
        return a * u - _columns(self.probabilities, u) * (a * u).sum(self.dim, keepdim=True)


class BlockFactor(OutputFactor):
    """A dense block S_i per sample, acting along dimension ``dim``.

    Args:
        blocks: shape ``(*batch, K, K)``, where ``batch`` is the outputs'
            shape without ``dim`` and K is the size of ``dim``.
        dim: the dimension the blocks act on (default: the last).

    Examples:
        >>> import torch
        >>> blocks = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])
        >>> BlockFactor(blocks).matvec(torch.tensor([[1.0, 2.0]]))
        tensor([[3., 2.]])
    """

    def __init__(self, blocks: Tensor, dim: int = -1):
        if not isinstance(blocks, Tensor) or blocks.ndim < 2 or blocks.shape[-1] != blocks.shape[-2]:
            raise ValueError(f"blocks must be a tensor of shape (*batch, K, K), got {_shape(blocks)}")
        batch = blocks.shape[:-2]
        dim = dim % (len(batch) + 1)
        shape = batch[:dim] + blocks.shape[-1:] + batch[dim:]
        super().__init__(shape, blocks.dtype, blocks.device)
        self.blocks, self.dim = blocks, dim

    @classmethod
    def from_hessians(cls, hessians: Tensor, dim: int = -1) -> BlockFactor:
        """S_i = diag(√λ₊) Qᵀ from the eigendecomposition H_i = Q diag(λ) Qᵀ of each block.

        Negative eigenvalues (rounding, or a loss that is not convex) are set
        to zero, so SᵀS is the nearest positive semidefinite matrix to the
        symmetric part of H_i in the Frobenius norm (Higham 1988).

        Examples:
            >>> import torch
            >>> H = torch.tensor([[[2.0, 1.0], [1.0, 2.0]]], dtype=torch.float64)
            >>> S = BlockFactor.from_hessians(H).blocks[0]
            >>> torch.allclose(S.T @ S, H[0])
            True
        """
        eigenvalues, Q = torch.linalg.eigh(0.5 * (hessians + hessians.mT))
        return cls(eigenvalues.clamp(min=0).sqrt().unsqueeze(-1) * Q.mT, dim)

    def _apply(self, blocks: Tensor, v: Tensor) -> Tensor:
        ndim = len(self.shape)
        moved = v.movedim(self.dim, ndim - 1)
        flat = moved.reshape(*moved.shape[:ndim], -1)
        return (blocks @ flat).reshape(moved.shape).movedim(ndim - 1, self.dim)

    def matvec(self, v: Tensor) -> Tensor:
        return self._apply(self.blocks, v)

    def rmatvec(self, u: Tensor) -> Tensor:
        return self._apply(self.blocks.mT, u)


def _shape(value: object) -> object:
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


def _check_sizes(jacobian_rows: int, factor: OutputFactor) -> None:
    if jacobian_rows != factor.numel:
        raise ValueError(
            f"jacobian must have as many rows as the factor has outputs ({factor.numel}, shape "
            f"{tuple(factor.shape)}), got {jacobian_rows}"
        )


class EffectiveJacobianOperator(LinearOperator):
    """J̃ = S J for any Jacobian operator J: ``J̃v = S(Jv)``, ``J̃ᵀu = Jᵀ(Sᵀu)``.

    Examples:
        >>> import torch
        >>> J = DenseOperator(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        >>> EffectiveJacobianOperator(J, DiagonalFactor(torch.tensor([2.0, 3.0]))).to_dense()
        tensor([[2., 0.],
                [0., 3.]])
    """

    def __init__(self, jacobian: LinearOperator, factor: OutputFactor):
        _check_sizes(jacobian.shape[0], factor)
        super().__init__(jacobian.shape, jacobian.dtype, jacobian.device)
        self.jacobian, self.factor = jacobian, factor
        self.is_matrix_free = jacobian.is_matrix_free

    def matvec(self, v: Tensor) -> Tensor:
        return self.factor.matvec(self.jacobian.matvec(v).reshape(self.factor.shape)).reshape(-1)

    def rmatvec(self, u: Tensor) -> Tensor:
        return self.jacobian.rmatvec(self.factor.rmatvec(u.reshape(self.factor.shape)).reshape(-1))


def effective_jacobian_matrix(matrix: Tensor, factor: OutputFactor | None) -> Tensor:
    """The dense ``(m, n)`` matrix S J from a dense J (J itself when ``factor`` is ``None``).

    Examples:
        >>> import torch
        >>> effective_jacobian_matrix(torch.ones(2, 3), DiagonalFactor(torch.tensor([1.0, 2.0])))
        tensor([[1., 1., 1.],
                [2., 2., 2.]])
    """
    if factor is None:
        return matrix
    m, n = matrix.shape
    _check_sizes(m, factor)
    return factor.matvec(matrix.reshape(*factor.shape, n)).reshape(m, n)


def effective_jacobian(jacobian: LinearOperator, factor: OutputFactor | None) -> LinearOperator:
    """J̃ = S J, stored where that keeps products as cheap as J's (module docstring).

    ``factor=None`` stands for S = I and returns ``jacobian`` itself.

    Examples:
        >>> import torch
        >>> J = SparseOperator(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([1.0, 1.0]), (2, 2))
        >>> Jt = effective_jacobian(J, DiagonalFactor(torch.tensor([2.0, 3.0])))
        >>> type(Jt).__name__, Jt.to_dense()
        ('SparseOperator', tensor([[0., 2.],
                [3., 0.]]))
    """
    if not isinstance(jacobian, LinearOperator):
        raise TypeError(f"jacobian must be a LinearOperator, got {type(jacobian).__name__}")
    if factor is None:
        return jacobian
    if not isinstance(factor, OutputFactor):
        raise TypeError(f"factor must be an OutputFactor or None, got {type(factor).__name__}")
    _check_sizes(jacobian.shape[0], factor)
    if isinstance(jacobian, DenseOperator):
        return DenseOperator(effective_jacobian_matrix(jacobian.matrix, factor))
    if isinstance(jacobian, SparseOperator) and factor.diagonal is not None:
        rows_scale = factor.diagonal.reshape(-1).to(jacobian.dtype).index_select(0, jacobian.rows)
        return jacobian.with_values(jacobian.values * rows_scale)
    return EffectiveJacobianOperator(jacobian, factor)
