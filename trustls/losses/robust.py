"""Least squares and scipy's robust losses.

`SquaredError` is the least-squares cost ½‖f‖² of the residuals f = z (or
z − t with targets): ∇L = f, S = I (``factor=None``, no overhead), f̃ = f.

A robust loss (scipy's ``loss=`` with ``f_scale`` C) replaces ½fᵢ² by
ℓ(fᵢ) = ½C²ρ(fᵢ²/C²) with ρ(z) ≈ z near 0 and growing more slowly beyond,
so that outliers pull less on the fit (scipy's ``least_squares``; Triggs,
McLauchlan, Hartley & Fitzgibbon 2000, §4.3). With z = f²/C²,

    ℓ′(f) = ρ′(z) f,    ℓ″(f) = ρ′(z) + 2ρ″(z) z,

so the gradient is ∇L = ρ′ ⊙ f and the exact curvature of L in f is the
diagonal ℓ″. It is negative where ρ is concave enough (Cauchy and arctan for
z > 1 and z > 1/√3; zero for Huber beyond its threshold), and scipy, whose
semantics these losses follow exactly, clips it at EPS (float64's machine
epsilon) before the square root:

    S = diag(√max(ℓ″, EPS)),    f̃ = ρ′ ⊙ f / √max(ℓ″, EPS),

which is ``scale_for_robust_loss_function``'s scaling of J's rows and of f:
J̃ = S J and Sᵀf̃ = ρ′ ⊙ f = ∇L. (Ceres' corrector, Triggs' §4.3, agrees
with ℓ″ where ρ″ > 0 and uses √ρ′ alone elsewhere, that is iteratively
reweighted least squares; trustls follows scipy.)

trustls returns ∇L and S but not f̃ (``residual=None``): where ℓ″ is
clipped, f̃ is ρ′f amplified by 1/√EPS ≈ 6.7·10⁷, and an SVD solver that
reads the gradient from Uᵀf̃, as scipy's does, loses about √EPS of relative
accuracy; from Vᵀg it does not (on the Cauchy problem of
``tests/test_generalized_gauss_newton.py`` the Gauss-Newton step is off by
2·10⁻⁷ through f̃ and by 1·10⁻¹² through Vᵀg;
``benchmarks/svd_gradient_coordinates.py``).

The four built-in ρ are scipy's, computed without cancellation: soft_l1's
ρ(z) = 2(√(1+z) − 1) as 2z/(√(1+z) + 1), and ℓ″ from its closed form
((1+z)^(−3/2) for soft_l1, (1 − z)/(1 + z)² for Cauchy, (1 − 3z²)/(1 + z²)²
for arctan, 1 or 0 for Huber) where scipy's ρ′ + 2ρ″z loses about z·eps
relative. A callable ρ (`CallableRobustLoss`) has scipy's signature:
``rho = loss(z)`` with z a 1-D float64 tensor of length m, returning ρ, ρ′
and ρ″ as a ``(3, m)`` array or tensor.

Robust losses sum over the outputs (scipy's cost); they are computed in
float64 and ∇L and S returned in the outputs' dtype.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from trustls.losses.base import (
    COMPUTE_DTYPE,
    Loss,
    LossLinearization,
    check_outputs,
    check_positive,
    check_targets,
)
from trustls.operators.output import DiagonalFactor

__all__ = ["Arctan", "Cauchy", "CallableRobustLoss", "Huber", "RobustLoss", "SoftL1", "SquaredError"]

# scipy's clip of the curvature ρ′ + 2ρ″z (``optimize._lsq.common.EPS``).
EPS = torch.finfo(torch.float64).eps


def _residuals(outputs: Tensor, targets: Tensor | None, loss: str) -> tuple[Tensor, Tensor]:
    """f = z − t in the outputs' dtype, and in float64 (subtracted there, not in the outputs' precision)."""
    outputs = check_outputs(outputs)
    if targets is None:
        return outputs, outputs.to(COMPUTE_DTYPE)
    f64 = outputs.to(COMPUTE_DTYPE) - check_targets(targets, outputs, loss).to(COMPUTE_DTYPE)
    return f64.to(outputs.dtype), f64


@dataclass(frozen=True)
class SquaredError(Loss):
    """½‖z − t‖² (½‖z‖² without targets): least squares, the default loss.

    Examples:
        >>> import torch
        >>> lin = SquaredError().linearize(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0]))
        >>> lin.value, lin.gradient, lin.factor
        (tensor(2.5000, dtype=torch.float64), tensor([ 1., -2.]), None)
    """

    def value(self, outputs: Tensor, targets: Tensor | None = None) -> Tensor:
        r64 = _residuals(outputs, targets, "SquaredError")[1].reshape(-1)
        return 0.5 * torch.dot(r64, r64)

    def linearize(self, outputs: Tensor, targets: Tensor | None = None) -> LossLinearization:
        r, r64 = _residuals(outputs, targets, "SquaredError")
        r64 = r64.reshape(-1)
        return LossLinearization(0.5 * torch.dot(r64, r64), r, None, r)


@dataclass(frozen=True)
class RobustLoss(Loss):
    """Σ ½C²ρ(fᵢ²/C²) for a scalar function ρ (module docstring); C = ``f_scale``.

    Subclasses implement `rho`. ``f_scale`` is keyword-only.
    """

    f_scale: float = field(default=1.0, kw_only=True)

    def __post_init__(self):
        check_positive("f_scale", self.f_scale)

    @abc.abstractmethod
    def rho(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """ρ(z), ρ′(z), ρ″(z) for z ≥ 0 (float64, z's shape)."""

    def curvature(self, z: Tensor, rho1: Tensor, rho2: Tensor) -> Tensor:
        """ℓ″ = ρ′(z) + 2ρ″(z)z; the built-in losses override it with a form free of cancellation."""
        return rho1 + 2 * rho2 * z

    def _evaluate(self, outputs: Tensor, targets: Tensor | None) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        f, f64 = _residuals(outputs, targets, type(self).__name__)
        z = (f64 / self.f_scale) ** 2
        return f, f64, (z, *self.rho(z))

    def value(self, outputs: Tensor, targets: Tensor | None = None) -> Tensor:
        _, _, (_, rho, _, _) = self._evaluate(outputs, targets)
        return 0.5 * self.f_scale**2 * rho.sum()

    def linearize(self, outputs: Tensor, targets: Tensor | None = None) -> LossLinearization:
        f, f64, (z, rho, rho1, rho2) = self._evaluate(outputs, targets)
        gradient = rho1 * f64
        # scipy's scale_for_robust_loss_function: the curvature ℓ″, clipped at EPS.
        scale = torch.sqrt(torch.clamp(self.curvature(z, rho1, rho2), min=EPS))
        return LossLinearization(
            value=0.5 * self.f_scale**2 * rho.sum(),
            gradient=gradient.to(f.dtype),
            factor=DiagonalFactor(scale.to(f.dtype)),
        )


@dataclass(frozen=True)
class SoftL1(RobustLoss):
    """scipy's ``"soft_l1"``: ρ(z) = 2(√(1+z) − 1), a smooth ℓ1.

    Examples:
        >>> import torch
        >>> SoftL1(f_scale=2.0).value(torch.tensor([0.0, 3.0], dtype=torch.float64))
        tensor(3.2111, dtype=torch.float64)
    """

    def rho(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t = 1 + z
        root = torch.sqrt(t)
        return 2 * z / (root + 1), 1 / root, -0.5 / (t * root)

    def curvature(self, z: Tensor, rho1: Tensor, rho2: Tensor) -> Tensor:
        return 1 / ((1 + z) * torch.sqrt(1 + z))  # (1 + z)^(-3/2)


@dataclass(frozen=True)
class Huber(RobustLoss):
    """scipy's ``"huber"``: ρ(z) = z for z ≤ 1, 2√z − 1 beyond.

    Examples:
        >>> import torch
        >>> Huber().value(torch.tensor([0.5, 3.0], dtype=torch.float64))
        tensor(2.6250, dtype=torch.float64)
    """

    def rho(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        inside = z <= 1
        # Powers of z only where z > 1: the other branch would divide by zero.
        outer = torch.where(inside, 1.0, z)
        root = torch.sqrt(outer)
        return (
            torch.where(inside, z, 2 * root - 1),
            torch.where(inside, 1.0, 1 / root),
            torch.where(inside, 0.0, -0.5 / (outer * root)),
        )

    def curvature(self, z: Tensor, rho1: Tensor, rho2: Tensor) -> Tensor:
        return (z <= 1).to(z.dtype)


@dataclass(frozen=True)
class Cauchy(RobustLoss):
    """scipy's ``"cauchy"``: ρ(z) = log(1 + z).

    Examples:
        >>> import torch
        >>> Cauchy().value(torch.tensor([1.0], dtype=torch.float64))
        tensor(0.3466, dtype=torch.float64)
    """

    def rho(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t = 1 + z
        return torch.log1p(z), 1 / t, -1 / (t * t)

    def curvature(self, z: Tensor, rho1: Tensor, rho2: Tensor) -> Tensor:
        return (1 - z) / ((1 + z) * (1 + z))


@dataclass(frozen=True)
class Arctan(RobustLoss):
    """scipy's ``"arctan"``: ρ(z) = arctan(z), bounded by π/2.

    Examples:
        >>> import torch
        >>> Arctan().value(torch.tensor([1.0], dtype=torch.float64))
        tensor(0.3927, dtype=torch.float64)
    """

    def rho(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        t = 1 + z * z
        return torch.arctan(z), 1 / t, -2 * z / (t * t)

    def curvature(self, z: Tensor, rho1: Tensor, rho2: Tensor) -> Tensor:
        t = 1 + z * z
        return (1 - 3 * z * z) / (t * t)


@dataclass(frozen=True)
class CallableRobustLoss(RobustLoss):
    """A robust loss from a callable ρ with scipy's signature (module docstring).

    Args:
        function: ``function(z)`` for a 1-D float64 tensor z ≥ 0 of length
            m, returning ρ(z), ρ′(z), ρ″(z) as a ``(3, m)`` array or tensor,
            or a sequence of three length-m ones. A callable written for
            scipy with numpy works on CPU once it starts with
            ``z = numpy.asarray(z)``.
        f_scale: C.

    Examples:
        >>> import torch
        >>> cauchy = CallableRobustLoss(lambda z: torch.stack([torch.log1p(z), 1 / (1 + z), -1 / (1 + z) ** 2]))
        >>> cauchy.value(torch.tensor([1.0], dtype=torch.float64))
        tensor(0.3466, dtype=torch.float64)
    """

    function: Callable[[Tensor], object]

    def __post_init__(self):
        super().__post_init__()
        if not callable(self.function):
            raise TypeError(f"function must be callable, got {type(self.function).__name__}")

    def rho(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m = z.numel()
        try:
            result = self.function(z.reshape(-1))
        except TypeError as error:  # numpy code on a tensor (np.empty((3, z.size)): size is a method)
            raise TypeError(
                f"loss callable failed on its torch.Tensor argument z ({error}); a loss written for scipy with "
                "numpy starts with z = np.asarray(z), or compute with torch operations (docs/losses.md)"
            ) from error
        if isinstance(result, (tuple, list)) and len(result) == 3:
            result = torch.stack([torch.as_tensor(r, dtype=z.dtype, device=z.device) for r in result])
        result = torch.as_tensor(result, dtype=z.dtype, device=z.device)
        if result.shape != (3, m):
            raise ValueError(
                f"loss callable must return an array of shape (3, {m}) (ρ, ρ′, ρ″), got {tuple(result.shape)}"
            )
        return tuple(r.reshape(z.shape) for r in result)
