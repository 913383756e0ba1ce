"""The changes of variables p = T z of a scaled trust region, and the interface of the policies that choose T.

A scaled trust region ‖T⁻¹p‖ ≤ Δ is a sphere in z = T⁻¹p; a `Scaling` applies
T and T⁻¹ and poses the linearization in z (`Linearization.scaled`); a
`ScalePolicy` chooses T at each point. The policies themselves, and the
references, are in `trustls.scaling`, which re-exports these classes.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from trustls.models.base import CurvatureModel, Linearization
from trustls.operators.diagonal import BlockDiagonalOperator

__all__ = ["BlockScaling", "DiagonalScaling", "IdentityScaling", "ScalePolicy", "Scaling", "UniformScaling"]


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
        estimate_stages: for Jacobi's T from estimated column norms, the
            stages of the estimate that gave the full estimate at the point
            where it was last made in full (`JacobiScale`'s refreshes stop
            there); ``None`` otherwise.
    """

    def __init__(self, diagonal: Tensor, unit: float = 1.0, estimate_stages: int | None = None):
        self.diagonal = diagonal
        self.unit = unit
        self.estimate_stages = estimate_stages

    def apply(self, z: Tensor) -> Tensor:
        return self.diagonal * z

    def inverse(self, p: Tensor) -> Tensor:
        return p / self.diagonal

    def transform(self, linearization: Linearization) -> Linearization:
        return linearization.scaled(self.diagonal)


class BlockScaling(Scaling):
    """T a block-diagonal operator that knows its inverse (block-Jacobi).

    ``references``: what `JacobiScale` carries to the next point, the running
    maximum of the squared column norms, one ``(count, size)`` tensor per group
    of blocks; ``None`` otherwise.
    """

    def __init__(self, operator: BlockDiagonalOperator, references: list[Tensor] | None = None):
        self.operator = operator
        self.references = references

    def apply(self, z: Tensor) -> Tensor:
        return self.operator.matvec(z)

    def inverse(self, p: Tensor) -> Tensor:
        return self.operator.inverse_matvec(p)

    def transform(self, linearization: Linearization) -> Linearization:
        return linearization.scaled(self.operator)


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
