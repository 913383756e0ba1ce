"""Curvature models: what the trust-region controller knows about the cost at a point.

A model owns the objective. It evaluates the function at a point (an
`Evaluation`: the outputs and the cost) and linearizes it there (a
`Linearization`: the cost, the gradient g, the curvature operator B of the
quadratic model m(p) = gᵀp + ½pᵀBp, and the Jacobian as an operator and,
when a solver needs it, as a dense matrix).

For a Gauss-Newton model of a cost L(r(x)) the Jacobian in the linearization
is the *effective* one, J̃ = S J with H = SᵀS the curvature of L with respect
to the outputs (S = I for ½‖r‖²), so that B = J̃ᵀJ̃ and the predicted
reduction is −(gᵀp + ½‖J̃p‖²) for every loss (see `trustls.losses`).

Scaling (scipy's ``x_scale``): the trust region ‖T⁻¹p‖ ≤ Δ is a sphere in the
variables z = T⁻¹x. `Linearization.scaled` returns the linearization in those
variables, g_z = Tᵀg, B_z = TᵀBT, J_z = J̃T, so every subproblem solver works
on a sphere and the controller maps the step back with p = Tz (Moré 1978,
§6). T is diagonal for ``x_scale`` and Jacobi scaling, block diagonal for
block-Jacobi scaling (`trustls.scaling`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from trustls.operators.base import LinearOperator, ScaledOperator
from trustls.operators.dense import NormalOperator

__all__ = ["CurvatureModel", "Evaluation", "Linearization"]


@dataclass(frozen=True)
class Evaluation:
    """The function evaluated at one point.

    Attributes:
        x: the point.
        outputs: what the function returned (the residual vector r for least
            squares), detached.
        targets: the targets the function returned beside the outputs, or ``None``.
        cost: the model's cost at ``x``, a 0-d float64 tensor (inf when the
            outputs are not finite).
        kept: model-specific state kept for a linearization at ``x`` (a
            pullback, say), or ``None``.
    """

    x: Tensor
    outputs: Tensor
    targets: Tensor | None
    cost: Tensor
    kept: Any = None


@dataclass(frozen=True)
class Linearization:
    """A function linearized at a point.

    Attributes:
        x: the point.
        residual: the outputs at x (r(x) for least squares).
        cost: the cost at x, a 0-d float64 tensor.
        gradient: the gradient of the cost, shape ``(n,)``.
        operator: the curvature B, an ``(n, n)`` symmetric `LinearOperator`.
        jacobian: the effective Jacobian J̃ as an ``(m, n)`` `LinearOperator`.
        jacobian_matrix: J̃ as a dense tensor, or ``None`` when not requested.
        whitened_residual: a vector f̃ with J̃ᵀf̃ = g when the model has one
            (r itself for least squares), or ``None``; the exact solver takes
            the gradient's coordinates from it, more accurately than from g.
    """

    x: Tensor
    residual: Tensor
    cost: Tensor
    gradient: Tensor
    operator: LinearOperator
    jacobian: LinearOperator
    jacobian_matrix: Tensor | None = None
    whitened_residual: Tensor | None = None

    def predicted_reduction(self, step: Tensor) -> Tensor:
        """−(gᵀp + ½‖J̃p‖²), the decrease of the model along ``step`` (a 0-d tensor)."""
        Jp = self.jacobian.matvec(step)
        return -(torch.dot(self.gradient, step) + 0.5 * torch.dot(Jp, Jp))

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
        # Gauss-Newton curvature J̃ᵀJ̃ becomes (J̃T)ᵀ(J̃T): the normal operator of the
        # scaled Jacobian, which a stored J may have scaled once for every product
        # (`SparseOperator.scale_columns`). Any other curvature is scaled on both sides.
        if isinstance(self.operator, NormalOperator) and self.operator.jacobian is self.jacobian:
            operator = NormalOperator(jacobian)
        else:
            operator = ScaledOperator(self.operator, scale)
        return replace(self, gradient=gradient, operator=operator, jacobian=jacobian, jacobian_matrix=matrix)


class CurvatureModel(abc.ABC):
    """Interface of curvature providers (subclass to supply another model).

    A solve calls `start` once, then `evaluate` at every trial point and
    `linearize` at every accepted one. The function handed to them counts
    its calls, so a model may call it as it needs (a Jacobian in forward mode
    or by colored JVPs calls it again); `linearization_calls` says how many
    calls a linearization will make, so that the controller keeps
    ``max_nfev``.
    """

    def start(self, fun: Callable[..., Any], x: Tensor, *, dense: bool) -> Any:
        """Per-solve working state of the model (e.g. a measured choice of differentiation mode)."""
        return None

    @abc.abstractmethod
    def evaluate(self, fun: Callable[..., Any], x: Tensor, context: Any = None, *, keep: bool = True) -> Evaluation:
        """Evaluate ``fun`` at ``x``; with ``keep``, keep what `linearize` can reuse there."""

    @abc.abstractmethod
    def linearize(
        self, fun: Callable[..., Any], at: Evaluation | Tensor, context: Any = None, *, dense: bool = False
    ) -> Linearization:
        """Linearize ``fun`` at an `Evaluation` (or at a point, evaluated first); build
        ``jacobian_matrix`` when ``dense``."""

    def depends_on_x(self, evaluation: Evaluation) -> bool:
        """Whether the evaluation's outputs depend on x through autograd, when the model can tell."""
        return True

    def linearization_calls(self, context: Any, *, dense: bool) -> int:
        """Calls of ``fun`` that `linearize` makes after `evaluate` with ``keep=True``."""
        return 0

    def column_norms_are_estimated(self, linearization: Linearization) -> bool:
        """Whether `column_norms` estimates rather than computes (then it is refreshed less often)."""
        return False

    def column_norms(self, linearization: Linearization) -> Tensor:
        """Euclidean norms of the columns of the effective Jacobian (for ``x_scale="jac"``).

        The default builds them from n products with J; models with cheaper
        estimates override it.
        """
        if linearization.jacobian_matrix is not None:
            return torch.linalg.vector_norm(linearization.jacobian_matrix, dim=0)
        return torch.linalg.vector_norm(linearization.jacobian.to_dense(), dim=0)
