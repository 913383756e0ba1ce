"""Losses of a function's outputs: least squares, scipy's robust losses, and negative log-likelihoods.

A `Loss` maps the outputs z = fun(x) to a cost, its gradient ∂L/∂z and a
factor S of a positive semidefinite curvature H = SᵀS; the trust-region
model then uses the effective Jacobian J̃ = S J (`trustls.losses.base`,
`trustls.operators.output`). `resolve_loss` turns scipy's ``loss=`` strings
and callables, and trustls' own names, into `Loss` objects.
"""

from __future__ import annotations

from collections.abc import Callable

from trustls.losses.base import REDUCTIONS, Loss, LossLinearization, check_positive
from trustls.losses.likelihood import (
    BinaryCrossEntropyWithLogits,
    CrossEntropy,
    GaussianNLL,
    PoissonNLL,
)
from trustls.losses.robust import (
    Arctan,
    CallableRobustLoss,
    Cauchy,
    Huber,
    RobustLoss,
    SoftL1,
    SquaredError,
)

__all__ = [
    "LOSSES",
    "REDUCTIONS",
    "Arctan",
    "BinaryCrossEntropyWithLogits",
    "CallableRobustLoss",
    "Cauchy",
    "CrossEntropy",
    "GaussianNLL",
    "Huber",
    "Loss",
    "LossLinearization",
    "PoissonNLL",
    "RobustLoss",
    "SoftL1",
    "SquaredError",
    "resolve_loss",
]

# scipy's names (which take f_scale), then trustls' negative log-likelihoods.
LOSSES: dict[str, type[Loss]] = {
    "linear": SquaredError,
    "soft_l1": SoftL1,
    "huber": Huber,
    "cauchy": Cauchy,
    "arctan": Arctan,
    "cross_entropy": CrossEntropy,
    "bce_with_logits": BinaryCrossEntropyWithLogits,
    "gaussian_nll": GaussianNLL,
    "poisson_nll": PoissonNLL,
}


def resolve_loss(loss: str | Loss | Callable | None = "linear", f_scale: float = 1.0) -> Loss:
    """The `Loss` for scipy's ``loss``/``f_scale`` arguments or a trustls name.

    ``"linear"`` (or ``None``) is least squares and ignores ``f_scale``, as
    scipy does; ``"soft_l1"``, ``"huber"``, ``"cauchy"``, ``"arctan"`` and a
    callable ρ (`CallableRobustLoss`) take it; the other names
    (``"cross_entropy"``, ``"bce_with_logits"``, ``"gaussian_nll"``,
    ``"poisson_nll"``) resolve to the loss with its defaults and reject an
    ``f_scale`` other than 1. A `Loss` is returned as it is.

    Examples:
        >>> resolve_loss("huber", f_scale=0.1)
        Huber(f_scale=0.1)
        >>> resolve_loss("cross_entropy")
        CrossEntropy(reduction='mean')
    """
    check_positive("f_scale", f_scale)
    if isinstance(loss, Loss):
        _check_unscaled(f_scale, f"a {type(loss).__name__} object")
        return loss
    if loss is None:
        loss = "linear"
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {list(LOSSES)}, a callable or a Loss, got {loss!r}")
        kind = LOSSES[loss]
        if issubclass(kind, RobustLoss):
            return kind(f_scale=f_scale)
        if kind is SquaredError:
            return SquaredError()
        _check_unscaled(f_scale, f"loss={loss!r}")
        return kind()
    if callable(loss):
        return CallableRobustLoss(loss, f_scale=f_scale)
    raise TypeError(f"loss must be a string, a callable or a Loss, got {type(loss).__name__}")


def _check_unscaled(f_scale: object, what: str) -> None:
    if f_scale != 1.0:
        raise ValueError(
            f"f_scale applies to scipy's robust losses and callables only, got f_scale={f_scale!r} with {what}"
        )
