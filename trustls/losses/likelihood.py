"""Negative log-likelihoods of network outputs: the generalized Gauss-Newton losses.

Each loss is convex in the outputs z, so its Hessian H is positive
semidefinite and the generalized Gauss-Newton matrix JᵀHJ = J̃ᵀJ̃, J̃ = S J,
is a positive semidefinite model of the cost's curvature that, unlike the
Hessian, needs no second derivatives of the network (Schraudolph 2002;
Martens 2020, §8, who shows it equals the Fisher information for these
exponential-family outputs). With w the weight of one term (1/count for
``reduction="mean"``, 1 for ``"sum"``), per sample or element:

`CrossEntropy` (softmax over the class dimension, class indices or
probabilities y ≥ 0 with mass μ = Σₖyₖ; μ = 1 for indices):
    L = −w Σₖ yₖ log pₖ,  p = softmax(z),  ∇L = w(μp − y),
    H = wμ(diag(p) − ppᵀ) = SᵀS,  S = diag(a)(I − 1pᵀ),  a = √(wμp)
    (`SoftmaxFactor` derives SᵀS). log p comes from ``log_softmax``, and
    a = exp(½ log p + ½ log wμ), so large logits neither overflow nor turn
    p into 0/0, and a stays representable where p underflows.
`BinaryCrossEntropyWithLogits` (y ∈ [0, 1] of z's shape):
    L = w(softplus(z) − yz) = w(y softplus(−z) + (1 − y) softplus(z)),
    ∇L = w(σ(z) − y),  H = diag(wσ(z)σ(−z)),
    S = diag(√w exp(½(log σ(z) + log σ(−z)))). The second form of L, each
    term dropped where its weight y or 1 − y is 0, is the limit at an
    infinite logit (0 where the target agrees, inf where it does not) rather
    than inf − inf = NaN, and has no cancellation where the fit is good.
`GaussianNLL` (fixed variance v, targets optional):
    L = ½w(log v + (z − t)²/v) [+ ½w log 2π],  ∇L = w(z − t)/v,
    S = diag(√(w/v)),  f̃ = √(w/v)(z − t): with ``reduction="sum"`` and
    v = 1, the least-squares cost ½‖z − t‖².
`PoissonNLL` (log-rate inputs z, counts y ≥ 0, floating or integer):
    L = w(eᶻ − yz) [+ Stirling's y log y − y + ½ log 2πy for y > 1],
    ∇L = w(eᶻ − y),  S = diag(√w e^{z/2}); yz is 0 where y = 0, so that a
    rate of 0 (z = −inf) for a count of 0 costs 0, its limit.

Conventions follow ``torch.nn.functional`` (``cross_entropy``,
``binary_cross_entropy_with_logits``, ``gaussian_nll_loss``,
``poisson_nll_loss``): the class dimension is 1 (0 for 1-D outputs),
``reduction="mean"`` by default averages over samples (cross-entropy) or
elements. Targets outside a loss's range (y ∉ [0, 1] for binary
cross-entropy, y < 0 for Poisson, NaN for either) are refused with a
``ValueError``, at the cost of one host read per evaluation, as
`CrossEntropy` reads its targets' range. Not supported: class weights, ``ignore_index``, ``label_smoothing``
(pass smoothed probabilities instead), ``pos_weight``, and torch's clamp of
the variance at ``eps``. Only GaussianNLL has a residual f̃: for the others
f̃ = S⁺ᵀ∇L divides by a curvature that vanishes where the fit is worst.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from trustls.losses.base import (
    COMPUTE_DTYPE,
    Loss,
    LossLinearization,
    check_outputs,
    check_positive,
    check_reduction,
    check_targets,
)
from trustls.operators.output import DiagonalFactor, SoftmaxFactor

__all__ = ["BinaryCrossEntropyWithLogits", "CrossEntropy", "GaussianNLL", "PoissonNLL"]


def _weight(reduction: str, count: int) -> float:
    return 1.0 / count if reduction == "mean" else 1.0


def _class_targets(targets: Tensor, logp: Tensor, dim: int) -> Tensor:
    """One-hot y from integer class indices, after checking their shape and range."""
    if targets.dtype == torch.bool or targets.is_complex():
        raise TypeError(
            f"targets of CrossEntropy must be integer class indices or floating probabilities, got {targets.dtype}"
        )
    expected = logp.shape[:dim] + logp.shape[dim + 1 :]
    if targets.shape != expected:
        raise ValueError(
            f"targets of CrossEntropy with class indices must have shape {tuple(expected)} (the outputs' shape "
            f"{tuple(logp.shape)} without class dimension {dim}), got {tuple(targets.shape)}"
        )
    classes = logp.shape[dim]
    indices = targets.to(torch.int64)
    if bool(((indices < 0) | (indices >= classes)).any()):
        raise ValueError(
            f"targets of CrossEntropy must be class indices in [0, {classes}), got values from "
            f"{int(indices.min())} to {int(indices.max())}"
        )
    return torch.zeros_like(logp).scatter_(dim, indices.unsqueeze(dim), 1.0)


@dataclass(frozen=True)
class CrossEntropy(Loss):
    """Softmax cross-entropy, ``F.cross_entropy`` (module docstring).

    Args:
        reduction: ``"mean"`` (over samples) or ``"sum"``.

    Targets are integer class indices of the outputs' shape without the class
    dimension, or non-negative class probabilities of the outputs' shape.

    Examples:
        >>> import torch
        >>> lin = CrossEntropy().linearize(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
        >>> lin.value, lin.gradient
        (tensor(0.6931, dtype=torch.float64), tensor([[ 0.5000, -0.5000]]))
    """

    reduction: str = field(default="mean", kw_only=True)
    requires_targets: ClassVar[bool] = True

    def __post_init__(self):
        check_reduction(self.reduction)

    def _terms(self, outputs: Tensor, targets: Tensor | None):
        z = check_outputs(outputs)
        dim = 1 if z.ndim >= 2 else 0
        logp = torch.log_softmax(z.to(COMPUTE_DTYPE), dim)
        if isinstance(targets, Tensor) and not targets.is_floating_point():
            if targets.device != z.device:
                raise ValueError(f"targets must be on the outputs' device {z.device}, got {targets.device}")
            y = _class_targets(targets.detach(), logp, dim)
        else:
            y = check_targets(targets, z, "CrossEntropy").to(COMPUTE_DTYPE)
            if bool((y < 0).any()):
                raise ValueError(
                    "targets of CrossEntropy with class probabilities must be non-negative, "
                    f"got a minimum of {float(y.min())}"
                )
        # 0·log p = 0 where y = 0, even for a logit of −inf (a masked class).
        nll = -torch.where(y > 0, y * logp, 0.0).sum(dim)
        return z, dim, logp, y, nll, _weight(self.reduction, nll.numel())

    def value(self, outputs: Tensor, targets: Tensor | None = None) -> Tensor:
        _, _, _, _, nll, w = self._terms(outputs, targets)
        return w * nll.sum()

    def linearize(self, outputs: Tensor, targets: Tensor | None = None) -> LossLinearization:
        z, dim, logp, y, nll, w = self._terms(outputs, targets)
        p = torch.exp(logp)
        mass = y.sum(dim, keepdim=True)
        scale = torch.exp(0.5 * logp) * torch.sqrt(w * mass)
        return LossLinearization(
            value=w * nll.sum(),
            gradient=(w * (mass * p - y)).to(z.dtype),
            factor=SoftmaxFactor(scale.to(z.dtype), p.to(z.dtype), dim),
        )


@dataclass(frozen=True)
class _ElementwiseNLL(Loss):
    """A negative log-likelihood that acts on each output alone (diagonal H)."""

    reduction: str = field(default="mean", kw_only=True)
    requires_targets: ClassVar[bool] = True

    def __post_init__(self):
        check_reduction(self.reduction)

    # Whether integer targets (counts) are taken, converted to the compute dtype.
    integer_targets: ClassVar[bool] = False

    def _inputs(self, outputs: Tensor, targets: Tensor | None) -> tuple[Tensor, Tensor, Tensor, float]:
        z = check_outputs(outputs)
        if targets is None and not self.requires_targets:
            t = torch.zeros((), dtype=COMPUTE_DTYPE, device=z.device)
        else:
            integer = isinstance(targets, Tensor) and not targets.is_floating_point() and not targets.is_complex()
            if self.integer_targets and integer and targets.dtype != torch.bool:
                targets = targets.to(COMPUTE_DTYPE)  # exact for counts below 2⁵³
            t = check_targets(targets, z, type(self).__name__).to(COMPUTE_DTYPE)
            self._check_range(t)
        return z, z.to(COMPUTE_DTYPE), t, _weight(self.reduction, z.numel())

    def _check_range(self, t: Tensor) -> None:
        """Raise ``ValueError`` for targets outside the loss's domain (none by default)."""

    def value(self, outputs: Tensor, targets: Tensor | None = None) -> Tensor:
        _, z, t, w = self._inputs(outputs, targets)
        return w * self._terms(z, t).sum()

    def linearize(self, outputs: Tensor, targets: Tensor | None = None) -> LossLinearization:
        z0, z, t, w = self._inputs(outputs, targets)
        gradient, scale, residual = self._derivatives(z, t, w)
        return LossLinearization(
            value=w * self._terms(z, t).sum(),
            gradient=gradient.to(z0.dtype),
            factor=DiagonalFactor(scale.to(z0.dtype)),
            residual=None if residual is None else residual.to(z0.dtype),
        )


@dataclass(frozen=True)
class BinaryCrossEntropyWithLogits(_ElementwiseNLL):
    """Binary cross-entropy of logits, ``F.binary_cross_entropy_with_logits``.

    Args:
        reduction: ``"mean"`` (over elements) or ``"sum"``.

    Examples:
        >>> import torch
        >>> BinaryCrossEntropyWithLogits().value(torch.tensor([0.0]), torch.tensor([1.0]))
        tensor(0.6931, dtype=torch.float64)
    """

    def _check_range(self, t: Tensor) -> None:
        outside = ~((t >= 0) & (t <= 1))  # NaN included
        if bool(outside.any()):
            raise ValueError(
                "targets of BinaryCrossEntropyWithLogits must lie in [0, 1] (probabilities), got values from "
                f"{float(t.min())} to {float(t.max())} ({int(outside.sum())} outside)"
            )

    def _terms(self, z: Tensor, t: Tensor) -> Tensor:
        # softplus(z) − tz as a sum of non-negative terms, each dropped where its weight is 0 (module docstring).
        return torch.where(t > 0, t * F.softplus(-z), 0.0) + torch.where(t < 1, (1 - t) * F.softplus(z), 0.0)

    def _derivatives(self, z: Tensor, t: Tensor, w: float):
        scale = math.sqrt(w) * torch.exp(0.5 * (F.logsigmoid(z) + F.logsigmoid(-z)))
        return w * (torch.sigmoid(z) - t), scale, None


@dataclass(frozen=True)
class PoissonNLL(_ElementwiseNLL):
    """Poisson negative log-likelihood of log-rates, ``F.poisson_nll_loss(log_input=True)``.

    Args:
        full: add Stirling's approximation of log y! for counts y > 1 (torch's ``full``).
        reduction: ``"mean"`` (over elements) or ``"sum"``.

    Targets are non-negative counts of the outputs' shape, floating or integer
    (``int64`` counts are converted, exactly below 2⁵³).

    Examples:
        >>> import torch
        >>> PoissonNLL().linearize(torch.tensor([0.0]), torch.tensor([2.0])).gradient
        tensor([-1.])
    """

    full: bool = False
    integer_targets: ClassVar[bool] = True

    def _check_range(self, t: Tensor) -> None:
        negative = ~(t >= 0)  # NaN included
        if bool(negative.any()):
            raise ValueError(
                f"targets of PoissonNLL must be non-negative counts, got a minimum of {float(t.min())} "
                f"({int(negative.sum())} entries below 0 or NaN)"
            )

    def _terms(self, z: Tensor, t: Tensor) -> Tensor:
        terms = torch.exp(z) - torch.where(t > 0, t * z, 0.0)  # 0·(−inf) is 0 here: a rate of 0 for a count of 0
        if self.full:
            safe = torch.where(t > 1, t, 1.0)
            stirling = safe * torch.log(safe) - safe + 0.5 * torch.log(2 * math.pi * safe)
            terms = terms + torch.where(t > 1, stirling, 0.0)
        return terms

    def _derivatives(self, z: Tensor, t: Tensor, w: float):
        return w * (torch.exp(z) - t), math.sqrt(w) * torch.exp(0.5 * z), None


@dataclass(frozen=True)
class GaussianNLL(_ElementwiseNLL):
    """Gaussian negative log-likelihood with a fixed variance, ``F.gaussian_nll_loss``.

    Args:
        variance: v > 0, a number or a tensor broadcastable to the outputs'
            shape (for torch's per-sample ``(N,)`` variance of ``(N, K)``
            outputs, pass ``variance[:, None]``).
        full: add the constant ½ log 2π per element (torch's ``full``).
        reduction: ``"mean"`` (over elements) or ``"sum"``.

    Targets are optional (t = 0 without them).

    Examples:
        >>> import torch
        >>> GaussianNLL(reduction="sum").value(torch.tensor([3.0]), torch.tensor([1.0]))
        tensor(2., dtype=torch.float64)
    """

    variance: float | Tensor = 1.0
    full: bool = False
    requires_targets: ClassVar[bool] = False

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.variance, Tensor):
            if not self.variance.is_floating_point():
                raise TypeError(f"variance must be a floating tensor, got dtype {self.variance.dtype}")
            if not bool(((self.variance > 0) & torch.isfinite(self.variance)).all()):
                raise ValueError("variance must be positive and finite everywhere")
        else:
            check_positive("variance", self.variance)

    def _variance(self, z: Tensor) -> Tensor:
        v = torch.as_tensor(self.variance, dtype=COMPUTE_DTYPE, device=z.device)
        try:
            return v.broadcast_to(z.shape)
        except RuntimeError:
            raise ValueError(
                f"variance of shape {tuple(v.shape)} must broadcast to the outputs' shape {tuple(z.shape)}"
            ) from None

    def _terms(self, z: Tensor, t: Tensor) -> Tensor:
        v = self._variance(z)
        terms = 0.5 * (torch.log(v) + (z - t) ** 2 / v)
        return terms + 0.5 * math.log(2 * math.pi) if self.full else terms

    def _derivatives(self, z: Tensor, t: Tensor, w: float):
        scale = torch.sqrt(w / self._variance(z))
        residual = scale * (z - t)
        return scale * residual, scale, residual
