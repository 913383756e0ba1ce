"""The cost of a batch: least squares or one of scipy's robust losses, per problem.

For each problem b with residual f_b = z_b − t_b (z_b the outputs, t_b the
optional targets) the cost is that of `GaussNewtonModel`'s loss, computed in
float64:

* least squares: C_b = ½‖f_b‖², gradient g_b = J_bᵀf_b, effective
  Jacobian J̃_b = J_b and whitened residual f̃_b = f_b;
* a robust loss ρ with soft margin C (`trustls.losses.robust`; scipy's
  ``loss=`` and ``f_scale``): C_b = ½C²Σρ(f²/C²), g_b = J_bᵀ(ρ′⊙f_b),
  J̃_b = diag(√max(ℓ″, EPS)) J_b and no whitened residual (the exact solver
  then reads the gradient's coordinates from Vᵀg, as `DenseLstsq` does).

The loss's elementwise ``rho`` and ``curvature`` act on the (K, m) residuals
of all problems at once; the sums run over each row. The other losses of
`trustls.losses` (likelihoods with their own output structure) are rejected
by `check_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from trustls.losses import Loss, RobustLoss, SquaredError
from trustls.losses.robust import EPS

__all__ = ["Linearized", "check_loss", "linearize"]


def check_loss(loss: Loss) -> None:
    """Least squares and scipy's robust losses (callables included) batch; others raise ``TypeError``."""
    if not isinstance(loss, (SquaredError, RobustLoss)):
        raise TypeError(
            "solve_batch supports least squares and scipy's robust losses (soft_l1, huber, cauchy, arctan or a "
            f"callable rho) in GaussNewtonModel(loss=...), got {loss!r}"
        )


@dataclass(frozen=True)
class Linearized:
    """A batch's cost and first-order quantities at K points (batch-last where small).

    Attributes:
        cost: ``(K,)`` float64, inf where the outputs are not finite.
        gradient: ``(n, K)``, g = Jᵀ∇L.
        columns: ``(n, K, m)``, the columns of the effective Jacobian J̃.
        whitened: ``(K, m)`` f̃ with J̃ᵀf̃ = g, or ``None`` (robust losses).
        outputs: ``(K, m)``, the outputs.
    """

    cost: Tensor
    gradient: Tensor
    columns: Tensor
    whitened: Tensor | None
    outputs: Tensor


def linearize(loss: Loss, outputs: Tensor, targets: Tensor | None, columns: Tensor) -> Linearized:
    """The cost, gradient and effective Jacobian of ``loss`` at outputs ``(K, m)`` with Jacobian columns ``(n, K, m)``.

    Examples:
        >>> outputs = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
        >>> columns = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]], dtype=torch.float64)  # J = diag(1, 2)
        >>> lin = linearize(SquaredError(), outputs, None, columns)
        >>> lin.cost, lin.gradient[:, 0]
        (tensor([12.5000], dtype=torch.float64), tensor([3., 8.], dtype=torch.float64))
    """
    f64 = outputs.to(torch.float64) if targets is None else outputs.to(torch.float64) - targets.to(torch.float64)
    f = f64.to(outputs.dtype)
    if isinstance(loss, SquaredError):
        cost, derivative, effective, whitened = 0.5 * (f64 * f64).sum(-1), f, columns, f
    else:
        z = (f64 / loss.f_scale) ** 2
        rho, rho1, rho2 = loss.rho(z)
        cost = 0.5 * loss.f_scale**2 * rho.sum(-1)
        derivative = (rho1 * f64).to(outputs.dtype)
        # scipy's scale_for_robust_loss_function: the curvature ℓ″, clipped at EPS.
        scale = torch.sqrt(torch.clamp(loss.curvature(z, rho1, rho2), min=EPS)).to(outputs.dtype)
        effective, whitened = columns * scale, None
    gradient = torch.einsum("jkm,km->jk", columns, derivative)
    cost = torch.where(torch.isfinite(cost), cost, torch.inf)
    return Linearized(cost, gradient, effective, whitened, outputs)
