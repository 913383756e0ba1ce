"""The Gauss-Newton model of a nonlinear least-squares cost.

For f(x) = ½‖r(x)‖² the Gauss-Newton model at x drops the second-order
term Σ r_i ∇²r_i from the Hessian (Nocedal & Wright 2006, §10.3):

    f(x + p) ≈ f(x) + gᵀp + ½‖Jp‖²,   g = Jᵀr,   B = JᵀJ.

B is positive semidefinite, so the trust-region subproblem is convex. By
default B is the matrix-free `GaussNewtonOperator` (one JVP and one VJP per
product; see `trustls.operators.implicit`); a solver that factors J itself
(``"lstsq"``) gets the dense Jacobian, computed in forward mode when n ≤ m
and in reverse mode otherwise (Griewank & Walther 2008: the cost is
min(n, m) passes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from trustls.models.base import CurvatureModel, Linearization
from trustls.operators.dense import DenseOperator, NormalOperator
from trustls.operators.implicit import (
    DEFAULT_PRODUCT_METHOD,
    PRODUCT_METHODS,
    GaussNewtonOperator,
    JacobianOperator,
    JacobianProducts,
    jacobian_products,
)

__all__ = ["GaussNewtonModel"]


def half_squared_norm(residual: Tensor) -> float:
    """½‖r‖² as a Python float, accumulated in float64 whatever r's dtype."""
    r = residual.detach().to(torch.float64)
    return 0.5 * float(torch.dot(r, r))


class GaussNewtonModel(CurvatureModel):
    """Gauss-Newton curvature JᵀJ, matrix-free by default.

    Args:
        products: how the implicit operator computes JVPs and VJPs; one of
            ``trustls.operators.PRODUCT_METHODS`` (default
            ``"vjp+double-backward"``, the fastest measured).

    Example:
        >>> import torch
        >>> model = GaussNewtonModel()
        >>> lin = model.linearize(lambda x: x**2 - 1, torch.tensor([2.0, 0.0]))
        >>> lin.cost, lin.gradient
        (5.0, tensor([12., -0.]))
    """

    def __init__(self, products: str = DEFAULT_PRODUCT_METHOD):
        if products not in PRODUCT_METHODS:
            raise ValueError(f"products must be one of {sorted(PRODUCT_METHODS)}, got {products!r}")
        self.products = products

    def __repr__(self) -> str:
        return f"GaussNewtonModel(products={self.products!r})"

    def linearize(self, fun: Callable[[Tensor], Tensor], x: Tensor, *, dense: bool = False) -> Linearization:
        if dense:
            return self._linearize_dense(fun, x)
        return self.from_products(jacobian_products(fun, x, self.products), x)

    def from_products(self, products: JacobianProducts, x: Tensor) -> Linearization:
        """The linearization at ``x`` from JVP/VJP closures built elsewhere.

        `TrustRegionOptimizer` builds them with autograd on a module's
        parameters rather than with ``torch.func`` on a function of ``x``.
        """
        residual = products.residual.detach()
        n = x.shape[0]
        return Linearization(
            x=x,
            residual=residual,
            cost=half_squared_norm(residual),
            gradient=products.vjp(residual).detach(),
            operator=GaussNewtonOperator(products, n),
            jacobian=JacobianOperator(products, n),
        )

    def _linearize_dense(self, fun: Callable[[Tensor], Tensor], x: Tensor) -> Linearization:
        with torch.enable_grad():
            residual, pullback = torch.func.vjp(fun, x)
            m, n = residual.shape[0], x.shape[0]
            if m < n:
                eye = torch.eye(m, dtype=residual.dtype, device=residual.device)
                J = torch.func.vmap(pullback)(eye)[0]
            else:
                J = torch.func.jacfwd(fun)(x)
        J, residual = J.detach(), residual.detach()
        return Linearization(
            x=x,
            residual=residual,
            cost=half_squared_norm(residual),
            gradient=J.T @ residual,
            operator=NormalOperator(J),
            jacobian=DenseOperator(J),
            jacobian_matrix=J,
        )
