"""Curvature models: what the trust-region controller knows about the cost at a point.

A model linearizes the residual function r at x and returns a `Linearization`:
the residual, the cost ½‖r‖² (scipy's convention), the gradient g = Jᵀr, the
curvature operator B of the quadratic model m(p) = gᵀp + ½pᵀBp, the Jacobian
as an operator and, when a solver needs it, as a dense matrix.

Scaling (scipy's ``x_scale``): the trust region ‖T⁻¹p‖ ≤ Δ is a sphere in the
variables z = T⁻¹x. `Linearization.scaled` returns the linearization in those
variables, g_z = Tᵀg, B_z = TᵀBT, J_z = JT, so every subproblem solver works
on a sphere and the controller maps the step back with p = Tz (Moré 1978,
§6). T is diagonal for ``x_scale`` and Jacobi scaling, block diagonal for
block-Jacobi scaling (`trustls.scaling`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from trustls.operators.base import LinearOperator, ScaledOperator
from trustls.operators.dense import NormalOperator

__all__ = ["CurvatureModel", "Linearization"]


@dataclass(frozen=True)
class Linearization:
    """A residual function linearized at a point.

    Attributes:
        x: the point.
        residual: r(x), shape ``(m,)``.
        cost: ½‖r(x)‖², a Python float computed in float64.
        gradient: Jᵀr, shape ``(n,)``.
        operator: the curvature B, an ``(n, n)`` symmetric `LinearOperator`.
        jacobian: J as an ``(m, n)`` `LinearOperator`.
        jacobian_matrix: J as a dense tensor, or ``None`` when not requested.
    """

    x: Tensor
    residual: Tensor
    cost: float
    gradient: Tensor
    operator: LinearOperator
    jacobian: LinearOperator
    jacobian_matrix: Tensor | None = None

    def predicted_reduction(self, step: Tensor) -> float:
        """−(gᵀp + ½‖Jp‖²), the decrease of the Gauss-Newton model along ``step``."""
        Jp = self.jacobian.matvec(step)
        return -float(torch.dot(self.gradient, step) + 0.5 * torch.dot(Jp, Jp))

    def scaled(self, scale: Tensor | LinearOperator) -> Linearization:
        """The linearization in the variables z = T⁻¹x (see the module docstring).

        ``scale`` is T: a 1-D tensor (diagonal) or a square operator
        (`BlockDiagonalOperator`). The gradient, curvature and Jacobian are
        transformed; ``x`` stays the point in the original variables, since no
        subproblem solver reads it (and an n-vector less matters in training).
        """
        if isinstance(scale, Tensor):
            gradient = self.gradient * scale
            matrix = None if self.jacobian_matrix is None else self.jacobian_matrix * scale
            jacobian = self.jacobian.scale_columns(scale)
        else:
            gradient = scale.rmatvec(self.gradient)
            matrix = None if self.jacobian_matrix is None else self.jacobian_matrix @ scale.to_dense()
            jacobian = ScaledOperator(self.jacobian, scale, left=False)
        # Gauss-Newton curvature JᵀJ becomes (JT)ᵀ(JT): the normal operator of the
        # scaled Jacobian, which a stored J may have scaled once for every product
        # (`SparseOperator.scale_columns`). Any other curvature is scaled on both sides.
        if isinstance(self.operator, NormalOperator) and self.operator.jacobian is self.jacobian:
            operator = NormalOperator(jacobian)
        else:
            operator = ScaledOperator(self.operator, scale)
        return replace(self, gradient=gradient, operator=operator, jacobian=jacobian, jacobian_matrix=matrix)


class CurvatureModel(abc.ABC):
    """Interface of curvature providers (subclass to supply another model)."""

    @abc.abstractmethod
    def linearize(
        self, fun: Callable[[Tensor], Tensor], x: Tensor, *, dense: bool = False, residual: Tensor | None = None
    ) -> Linearization:
        """Linearize ``fun`` at ``x``; build ``jacobian_matrix`` when ``dense``.

        ``residual`` is ``fun(x)`` when the caller has already evaluated it (the
        controller passes the accepted trial's residual); a model that needs no
        forward pass of its own, such as one given the Jacobian, then skips one.
        """

    def column_norms_are_estimated(self, linearization: Linearization) -> bool:
        """Whether `column_norms` estimates rather than computes (then it is refreshed less often)."""
        return False

    def column_norms(self, linearization: Linearization) -> Tensor:
        """Euclidean norms of the columns of J (for ``x_scale="jac"``).

        The default builds them from n products with J; models with cheaper
        estimates override it.
        """
        if linearization.jacobian_matrix is not None:
            return torch.linalg.vector_norm(linearization.jacobian_matrix, dim=0)
        return torch.linalg.vector_norm(linearization.jacobian.to_dense(), dim=0)
