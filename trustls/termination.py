"""Convergence tests, as in scipy's ``least_squares`` and MINPACK (Moré et al. 1980).

* gtol: ‖g‖∞ < gtol, tested at every linearized point (scipy's ``"trf"``);
  or, with ``gtol_test="cosine"`` (MINPACK's ``lmder``, scipy's ``"lm"``),
  max_j |J_jᵀr| / (‖J_j‖·‖r‖) < gtol, the largest cosine between a column of
  J and r (0 where either vanishes), which the units of x and of r leave
  unchanged: ‖g‖∞ scales with them, so that data of size 10⁻¹⁰ meet an
  absolute gtol = 10⁻⁸ at any point, x0 included (`cosine_optimality`);
* ftol: 0 < dF < ftol·F and ρ > ¼ (the model agreed with a small relative
  decrease; scipy's ratio is not shifted by the rounding allowance, so its
  test holds only after a decrease, and neither does this one otherwise);
* xtol: ‖dx‖ < xtol·(xtol + ‖x‖).

Each tolerance can be disabled with ``None``. In reduced precision the
tolerances are raised to the dtype's machine epsilon, below which the tests
cannot hold. `step_termination` works elementwise on tensors (one problem or
a batch) or on Python floats, and returns scipy's status codes, 0 where no
test holds.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trustls._elementwise import as_int, where

__all__ = ["cosine_optimality", "effective_tolerance", "gradient_test", "step_termination"]


def effective_tolerance(tol: float | None, eps: float) -> float:
    """``tol`` raised to ``eps`` (0 when disabled), the smallest testable value."""
    return 0.0 if tol is None else max(tol, eps)


def step_termination(
    actual_reduction: Tensor, cost: Tensor, step_norm: Tensor, x_norm: Tensor, ratio: Tensor, ftol: float, xtol: float
) -> Tensor:
    """The ftol/xtol tests after a trial step, as scipy's codes: 2 ftol, 3 xtol, 4 both, 0 neither.

    Examples:
        >>> import torch
        >>> one = torch.tensor(1.0, dtype=torch.float64)
        >>> int(step_termination(1e-12 * one, one, 0.1 * one, one, 0.9 * one, ftol=1e-8, xtol=1e-8))
        2
    """
    ftol_satisfied = (actual_reduction > 0) & (actual_reduction < ftol * cost) & (ratio > 0.25) if ftol > 0 else False
    xtol_satisfied = step_norm < xtol * (xtol + x_norm)
    code = 2 * as_int(ftol_satisfied) + 3 * as_int(xtol_satisfied)
    return where(code == 5, 4, code)


def gradient_test(gradient: Tensor, measure: Tensor | None = None) -> tuple[float, bool]:
    """‖g‖∞ (for gtol), or the 0-d ``measure`` given instead (`cosine_optimality`), and whether g is
    finite, in one read."""
    tested = gradient.abs().max() if measure is None else measure
    largest, finite = torch.stack([tested.double(), torch.isfinite(gradient).all().double()]).tolist()
    return largest, finite > 0


def cosine_optimality(linearization, model) -> Tensor:
    """MINPACK's gradient measure, max_j |(Jᵀr)_j| / (‖J_j‖·‖r‖), a 0-d tensor (module docstring).

    ‖r‖ is the norm of the (whitened) residual, taken in float64 (√(2·cost)
    for a loss without one), and J's column norms are exact from a stored J
    (the model's otherwise, `GaussNewtonModel.column_norms`); columns of norm
    0 and r = 0 count as 0, as in ``lmder`` (Moré, Garbow & Hillstrom 1980).

    Examples:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> J = torch.tensor([[1e-10, 0.0], [0.0, 2e-10]], dtype=torch.float64)
        >>> r = torch.tensor([3e-10, 0.0], dtype=torch.float64)
        >>> lin = SimpleNamespace(jacobian_matrix=J, gradient=J.T @ r, whitened_residual=r)
        >>> float(cosine_optimality(lin, None))  # J's first column is parallel to r
        1.0
    """
    J = linearization.jacobian_matrix
    f = getattr(linearization, "whitened_residual", None)
    if J is not None and f is not None:
        # With J and r stored, all in float64 from them (MINPACK's enorm and Jᵀr): in float32,
        # J's column norms and Jᵀr underflow where J and r are both small (data of size 1e-25).
        J, f = J.double(), f.double()
        norms, g, r_norm = torch.linalg.vector_norm(J, dim=0), (J.T @ f).abs(), torch.linalg.vector_norm(f)
    else:
        # Otherwise from g, the model's column norms and the cost, all summed over the ranks of a
        # data-parallel solve (a rank's own residual is not the whole r): ‖r‖ = √(2·cost).
        norms, g = model.column_norms(linearization).double(), linearization.gradient.abs().double()
        r_norm = torch.sqrt(2.0 * torch.as_tensor(linearization.cost, dtype=torch.float64, device=g.device))
    cosines = torch.where(norms > 0, g / torch.where(norms > 0, norms, 1.0), 0.0)
    largest = cosines.max() if cosines.numel() else g.new_zeros(())
    return torch.where(r_norm > 0, largest / torch.where(r_norm > 0, r_norm, 1.0), 0.0)
