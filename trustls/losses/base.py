"""The `Loss` interface: a cost of the outputs, its gradient and a factor of its curvature.

A loss maps the outputs z = fun(x) (a tensor of any shape, with optional
targets t) to a cost L(z). Linearized at z it gives

* the value L(z), a 0-d float64 tensor whatever z's dtype;
* the output gradient ∇L = ∂L/∂z, of z's shape and dtype;
* a factor S of a positive semidefinite output curvature H = SᵀS (an
  `OutputFactor`; ``None`` for S = I), the exact Hessian ∇²L for convex
  losses;
* optionally a residual f̃ with Sᵀf̃ = ∇L, where S is fixed by the loss
  rather than by the data (`SquaredError`: S = I, f̃ = z − t;
  `GaussianNLL`: S = √(w/v), f̃ = √(w/v)(z − t)), so that computing f̃
  divides by no curvature that the data can make tiny.

With J = ∂z/∂x the generalized Gauss-Newton model of the cost in x is
m(p) = gᵀp + ½‖J̃p‖² with g = Jᵀ∇L and J̃ = S J (Schraudolph 2002; Martens
2020, §8), the least-squares model with J̃ in place of J
(`trustls.operators.output`). When f̃ exists the model is also
L − ½‖f̃‖² + ½‖f̃ + J̃p‖², a linear least-squares problem in p, and an SVD
solver (`DenseLstsq`) can read the gradient's coordinates as s·Uᵀf̃ rather
than Vᵀg: on zero-residual problems 12 to 25 times more accurate when J̃ is
ill-conditioned (``benchmarks/svd_gradient_coordinates.py``). Where S has
tiny entries (a robust loss's clipped curvature, a vanishing probability)
f̃ = ∇L/S is amplified and Vᵀg is the accurate choice; those losses return
``residual=None``.

Numerics: every built-in loss computes in float64 from the outputs, then
returns the gradient and the factor in the outputs' dtype, so that they
compose with J's products; float16 and bfloat16 outputs thus lose nothing
to their range in the loss itself.
"""

from __future__ import annotations

import abc
import numbers
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from trustls.operators.output import OutputFactor

__all__ = ["REDUCTIONS", "Loss", "LossLinearization"]

REDUCTIONS = ("mean", "sum")
# Where loss computations happen: scipy's precision, and the range that
# keeps exp of large logits and tiny probabilities representable.
COMPUTE_DTYPE = torch.float64


@dataclass(frozen=True)
class LossLinearization:
    """A loss at the outputs z: value, output gradient and curvature factor.

    Attributes:
        value: L(z), a 0-d float64 tensor on z's device.
        gradient: ∂L/∂z, of z's shape and dtype.
        factor: S with output curvature H = SᵀS, or ``None`` for S = I.
        residual: f̃ with Sᵀf̃ = ∂L/∂z (z's shape and dtype) where S does
            not depend on the data, else ``None`` (module docstring).
    """

    value: Tensor
    gradient: Tensor
    factor: OutputFactor | None
    residual: Tensor | None = None


class Loss(abc.ABC):
    """A cost L(z) of a function's outputs; subclass to define your own.

    Implement `linearize`; override `value` when the value alone is cheaper
    (the trust-region controller evaluates it at every trial point). Targets
    are constants: they are detached and never differentiated.

    Examples:
        >>> import torch
        >>> from trustls.operators.output import DiagonalFactor
        >>> class Weighted(Loss):  # ½ Σ w z²
        ...     def __init__(self, w):
        ...         self.w = w
        ...     def linearize(self, outputs, targets=None):
        ...         z = outputs.detach()
        ...         value = 0.5 * (self.w * z.double() ** 2).sum()
        ...         return LossLinearization(value, self.w * z, DiagonalFactor(self.w.sqrt()), self.w.sqrt() * z)
        >>> Weighted(torch.tensor([1.0, 4.0])).value(torch.tensor([1.0, 1.0]))
        tensor(2.5000, dtype=torch.float64)
    """

    requires_targets: ClassVar[bool] = False

    @abc.abstractmethod
    def linearize(self, outputs: Tensor, targets: Tensor | None = None) -> LossLinearization:
        """Value, gradient and curvature factor at ``outputs`` (module docstring)."""

    def value(self, outputs: Tensor, targets: Tensor | None = None) -> Tensor:
        """L(outputs) as a 0-d float64 tensor."""
        return self.linearize(outputs, targets).value


def check_outputs(outputs: object) -> Tensor:
    """The outputs, detached, after checking they are a non-empty floating tensor."""
    if not isinstance(outputs, Tensor):
        raise TypeError(f"outputs must be a torch.Tensor, got {type(outputs).__name__}")
    if not outputs.is_floating_point():
        raise TypeError(f"outputs must be a floating tensor, got dtype {outputs.dtype}")
    if outputs.numel() == 0:
        raise ValueError(f"outputs must be non-empty, got shape {tuple(outputs.shape)}")
    return outputs.detach()


def check_targets(targets: object, outputs: Tensor, loss: str, *, floating: bool = True) -> Tensor:
    """Targets detached, after checking their type, shape and device against the outputs'."""
    if targets is None:
        raise ValueError(f"{loss} needs targets: pass them, or make fun return (outputs, targets)")
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if floating and not targets.is_floating_point():
        raise TypeError(f"targets of {loss} must be a floating tensor, got dtype {targets.dtype}")
    if targets.device != outputs.device:
        raise ValueError(f"targets must be on the outputs' device {outputs.device}, got {targets.device}")
    if floating and targets.shape != outputs.shape:
        raise ValueError(
            f"targets of {loss} must have the outputs' shape {tuple(outputs.shape)}, got {tuple(targets.shape)}"
        )
    return targets.detach()


def check_reduction(reduction: object) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")


def check_positive(name: str, value: object) -> None:
    """A positive finite real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy scalars too
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__}")
    if not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
