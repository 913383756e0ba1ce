"""Operators backed by a dense matrix.

`DenseOperator` wraps any matrix A. `NormalOperator` is the Gauss-Newton
curvature JᵀJ of a dense Jacobian J applied as Jᵀ(Jv): two matrix-vector
products of cost O(mn) each, and JᵀJ is never formed, so its condition
number (the square of J's) never enters a computation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trustls.operators.base import LinearOperator

__all__ = ["DenseOperator", "NormalOperator"]


def _check_matrix(name: str, matrix: Tensor) -> None:
    if not isinstance(matrix, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(matrix).__name__}")
    if matrix.ndim != 2 or not matrix.is_floating_point():
        raise ValueError(
            f"{name} must be a 2-D floating tensor, got {matrix.ndim}-D tensor of dtype {matrix.dtype}"
        )


class DenseOperator(LinearOperator):
    """The operator ``v -> A v`` of a dense matrix ``A`` of shape ``(m, n)``.

    Examples:
        >>> import torch
        >>> A = DenseOperator(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        >>> A.rmatvec(torch.tensor([1.0, 0.0]))
        tensor([1., 2.])
    """

    is_matrix_free = False

    def __init__(self, matrix: Tensor):
        _check_matrix("matrix", matrix)
        super().__init__(tuple(matrix.shape), matrix.dtype, matrix.device)
        self.matrix = matrix

    def matvec(self, v: Tensor) -> Tensor:
        return self.matrix @ v

    def rmatvec(self, u: Tensor) -> Tensor:
        return self.matrix.T @ u

    def to_dense(self) -> Tensor:
        return self.matrix

    def column_norms(self) -> Tensor:
        """Euclidean norms of the columns."""
        return torch.linalg.vector_norm(self.matrix, dim=0)


class NormalOperator(LinearOperator):
    """``JᵀJ`` of a Jacobian ``J`` of shape ``(m, n)``, applied as ``Jᵀ(J v)``.

    ``J`` is a dense tensor or any `LinearOperator` (a `SparseOperator`, say).

    Examples:
        >>> import torch
        >>> J = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
        >>> NormalOperator(J) @ torch.tensor([1.0, 0.0])
        tensor([2., 1.])
    """

    is_symmetric = True
    is_positive_semidefinite = True

    def __init__(self, jacobian: Tensor | LinearOperator):
        if not isinstance(jacobian, LinearOperator):
            _check_matrix("jacobian", jacobian)
            jacobian = DenseOperator(jacobian)
        n = jacobian.shape[1]
        super().__init__((n, n), jacobian.dtype, jacobian.device)
        self.jacobian = jacobian
        self.is_matrix_free = jacobian.is_matrix_free

    def matvec(self, v: Tensor) -> Tensor:
        return self.jacobian.rmatvec(self.jacobian.matvec(v))
