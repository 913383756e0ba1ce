"""The Gauss-Newton model of a nonlinear least-squares cost.

For f(x) = ½‖r(x)‖² the Gauss-Newton model at x drops the second-order
term Σ r_i ∇²r_i from the Hessian (Nocedal & Wright 2006, §10.3):

    f(x + p) ≈ f(x) + gᵀp + ½‖Jp‖²,   g = Jᵀr,   B = JᵀJ.

B is positive semidefinite, so the trust-region subproblem is convex. By
default B is the matrix-free `GaussNewtonOperator` (one JVP and one VJP per
product; see `trustls.operators.implicit`); a solver that factors J itself
(``"lstsq"``) gets the dense Jacobian, by the automatic-differentiation
route measured fastest on the user's function (`trustls.models.dense_jacobian`).

A user who knows J better than automatic differentiation does, typically
its sparsity (bundle adjustment, banded problems), passes ``jacobian=``, a
function returning J at x as a dense tensor, a torch sparse tensor or a
`LinearOperator` such as `SparseOperator` (scipy's ``jac=`` argument). Products
then cost two sparse matrix-vector products, and ``x_scale="jac"`` uses J's
exact column norms.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable

import torch
from torch import Tensor

from trustls.models.base import CurvatureModel, Linearization
from trustls.models.dense_jacobian import DenseJacobian
from trustls.operators.base import LinearOperator
from trustls.operators.dense import DenseOperator, NormalOperator
from trustls.operators.sparse import SparseOperator
from trustls.operators.implicit import (
    DEFAULT_PRODUCT_METHOD,
    PRODUCT_METHODS,
    GaussNewtonOperator,
    JacobianOperator,
    JacobianProducts,
    ProductFallback,
    jacobian_products,
)

__all__ = ["GaussNewtonModel"]


def _weak(fun: Callable) -> Callable[[], Callable | None]:
    if inspect.ismethod(fun):
        return weakref.WeakMethod(fun)
    try:
        return weakref.ref(fun)
    except TypeError:  # not weak-referenceable: kept alive until the next solve
        return lambda: fun


def _same_function(a: Callable | None, b: Callable) -> bool:
    return a is b or (inspect.ismethod(a) and a == b)  # bound methods are created anew at each access


def half_squared_norm(residual: Tensor) -> float:
    """½‖r‖² as a Python float, accumulated in float64 whatever r's dtype."""
    r = residual.detach().to(torch.float64)
    return 0.5 * float(torch.dot(r, r))


class GaussNewtonModel(CurvatureModel):
    """Gauss-Newton curvature JᵀJ, matrix-free by default.

    Args:
        products: how the implicit operator computes JVPs and VJPs; one of
            ``trustls.operators.PRODUCT_METHODS`` (default ``"autograd"``:
            classic autograd with double backward, the fastest measured; a
            ``torch.func`` method that cannot run ``fun`` falls back to it).
        jacobian: optional ``jacobian(x)`` returning J as a dense tensor, a
            torch sparse tensor or a `LinearOperator`; replaces automatic
            differentiation (see the module docstring).
        column_norm_probes: probes for the column-norm estimate behind
            ``x_scale="jac"`` (see `column_norms`).

    Examples:
        >>> import torch
        >>> model = GaussNewtonModel()
        >>> lin = model.linearize(lambda x: x**2 - 1, torch.tensor([2.0, 0.0]))
        >>> lin.cost, lin.gradient
        (5.0, tensor([12., -0.]))
    """

    def __init__(
        self,
        products: str = DEFAULT_PRODUCT_METHOD,
        *,
        jacobian: Callable[[Tensor], Tensor | LinearOperator] | None = None,
        column_norm_probes: int = 32,
    ):
        if jacobian is not None and not callable(jacobian):
            raise TypeError(f"jacobian must be callable or None, got {type(jacobian).__name__}")
        self.jacobian = jacobian
        if products not in PRODUCT_METHODS:
            raise ValueError(f"products must be one of {sorted(PRODUCT_METHODS)}, got {products!r}")
        if isinstance(column_norm_probes, bool) or not isinstance(column_norm_probes, int) or column_norm_probes < 1:
            raise ValueError(f"column_norm_probes must be a positive int, got {column_norm_probes!r}")
        self.products = products
        self.column_norm_probes = column_norm_probes
        self._state: tuple[Callable[[], Callable | None], DenseJacobian, ProductFallback] | None = None

    def __repr__(self) -> str:
        jacobian = "" if self.jacobian is None else f", jacobian={getattr(self.jacobian, '__name__', self.jacobian)!r}"
        return f"GaussNewtonModel(products={self.products!r}{jacobian}, column_norm_probes={self.column_norm_probes})"

    def column_norms_are_estimated(self, linearization: Linearization) -> bool:
        J = linearization.jacobian
        exact = linearization.jacobian_matrix is not None or isinstance(J, (DenseOperator, SparseOperator))
        return not exact and J.shape[1] > self.column_norm_probes

    def column_norms(self, linearization: Linearization) -> Tensor:
        """Column norms of J for ``x_scale="jac"``, without materializing J.

        Exact from n JVPs when n ≤ ``column_norm_probes``; otherwise the
        unbiased estimate diag(JᵀJ) ≈ (1/k) Σ (Jᵀz)² over k Rademacher
        vectors z (Bekas, Kokiopoulou & Saad 2007), k = ``column_norm_probes``
        VJPs, from a fixed seed so that solves are reproducible. Scale only
        needs the right order of magnitude per column, and ``"jac"`` keeps the
        running maximum, so a relative error of about √(2/k) is harmless. The
        controller refreshes estimated norms at iterations 0, 1, 2, 4, 8, …
        only (`column_norms_are_estimated`): k VJPs cost as much as k/2 CG
        iterations, and the running maximum settles after a few iterations.
        """
        if linearization.jacobian_matrix is not None:
            return torch.linalg.vector_norm(linearization.jacobian_matrix, dim=0)
        J = linearization.jacobian
        if isinstance(J, (DenseOperator, SparseOperator)):
            return J.column_norms()
        m, n = J.shape
        if n <= self.column_norm_probes:
            eye = torch.eye(n, dtype=J.dtype, device=J.device)
            return torch.stack([torch.linalg.vector_norm(J.matvec(e)) for e in eye])
        generator = torch.Generator(device=J.device).manual_seed(0)
        squares = torch.zeros(n, dtype=J.dtype, device=J.device)
        for _ in range(self.column_norm_probes):
            z = torch.randint(0, 2, (m,), generator=generator, device=J.device).to(J.dtype) * 2 - 1
            squares += J.rmatvec(z) ** 2
        return torch.sqrt(squares / self.column_norm_probes)

    def linearize(
        self, fun: Callable[[Tensor], Tensor], x: Tensor, *, dense: bool = False, residual: Tensor | None = None
    ) -> Linearization:
        if self.jacobian is not None:
            return self._linearize_given(fun, x, dense, residual)
        if dense:
            return self._linearize_dense(fun, x, residual)
        products = jacobian_products(fun, x, self.products, fallback=self._solve_state(fun)[1])
        return self.from_products(products, x)

    def _solve_state(self, fun: Callable[[Tensor], Tensor]) -> tuple[DenseJacobian, ProductFallback]:
        # Interim home of the per-solve state (the dense route measured, a torch.func
        # failure remembered): one per function, held by a weak reference, until the
        # controller's state owns it.
        if self._state is None or not _same_function(self._state[0](), fun):
            self._state = (_weak(fun), DenseJacobian(), ProductFallback())
        return self._state[1], self._state[2]

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

    def _linearize_given(
        self, fun: Callable[[Tensor], Tensor], x: Tensor, dense: bool, residual: Tensor | None
    ) -> Linearization:
        # With J given, r(x) needs no pass of its own: the caller's evaluation
        # (the accepted trial's) is reused, as scipy does.
        with torch.no_grad():
            residual = fun(x).detach() if residual is None else residual.detach()
            J = self.jacobian(x)
        if isinstance(J, Tensor):
            J = SparseOperator.from_tensor(J) if J.layout != torch.strided else DenseOperator(J.detach())
        if not isinstance(J, LinearOperator):
            raise TypeError(f"jacobian must return a Tensor or a LinearOperator, got {type(J).__name__}")
        if J.shape != (residual.shape[0], x.shape[0]):
            raise ValueError(f"jacobian must return shape {(residual.shape[0], x.shape[0])}, got {J.shape}")
        return Linearization(
            x=x,
            residual=residual,
            cost=half_squared_norm(residual),
            gradient=J.rmatvec(residual),
            operator=NormalOperator(J),
            jacobian=J,
            jacobian_matrix=J.to_dense() if dense else None,
        )

    def _linearize_dense(self, fun: Callable[[Tensor], Tensor], x: Tensor, residual: Tensor | None) -> Linearization:
        result = self._solve_state(fun)[0](fun, x)
        J, residual = result.matrix, result.residual
        return Linearization(
            x=x,
            residual=residual,
            cost=half_squared_norm(residual),
            gradient=J.T @ residual,
            operator=NormalOperator(J),
            jacobian=DenseOperator(J),
            jacobian_matrix=J,
        )
