"""Matrix-free Jacobian and Gauss-Newton operators from automatic differentiation.

For a residual function ``r: R^n -> R^m`` linearized at ``x`` the Jacobian
``J = ∂r/∂x`` is available through two products that automatic
differentiation computes at the cost of a small multiple of one evaluation of
``r`` (Griewank & Walther 2008, ch. 3-4):

* a Jacobian-vector product (JVP, forward mode) ``v -> J v``,
* a vector-Jacobian product (VJP, reverse mode) ``u -> Jᵀ u``.

The Gauss-Newton product is ``JᵀJ v = Jᵀ(J v)``: one JVP then one VJP, and
J is never materialized (Schraudolph 2002; Martens 2010). How the two products
are obtained matters for speed, and this module offers the ways measured in
``benchmarks/products.py`` (see ``docs/benchmarks.md``):

``"vjp+double-backward"``
    A VJP kept for the whole outer iteration gives ``Jᵀu``; ``Jv`` is the VJP
    of that (linear) VJP map, i.e. a backward pass through the backward
    graph, recorded once per linearization. On an MLP 784-512-512-10 at batch
    256 a product costs 1.2 gradient evaluations and the linearization 1.4,
    so 1.4 amortized over a 10-product CG solve (``benchmarks/products.py``).
``"linearize"``
    ``torch.func.linearize`` traces the JVP of ``r`` at ``x`` once; each ``J v``
    replays only the tangent computation. ``Jᵀ u`` is the VJP of that traced,
    linear map, recorded once per linearization. A product costs one tangent
    pass and one backward pass; the primal is never recomputed, but tracing
    costs about 16 gradient evaluations per linearization.
``"vjp+jvp"``
    A VJP kept for the whole outer iteration for ``Jᵀu``; ``Jv`` by
    forward-mode AD (``torch.func.jvp``), which recomputes the primal.
``"fresh"``
    A new JVP and a new VJP for every product (the textbook baseline).
``"autograd"`` (default)
    Classic (tape-based) autograd instead of ``torch.func``: one evaluation
    with the graph kept (`ResidualGraph`); ``Jᵀu`` is a backward pass and
    ``Jv`` a backward pass through the graph of the backward, as in
    ``"vjp+double-backward"``. Nothing of ``fun`` runs under a functorch
    transform, so it needs no vmap, jvp or functorch rule of any op. It is
    the default because it costs no more than ``"vjp+double-backward"`` on the
    large problems of ``benchmarks/products.py`` and less on small ones, where
    torch.func's fixed cost per call dominates (``docs/jacobians.md``).

Every method is exact: they differ in cost only. Product functions never
synchronize host and device.

Never failing on valid torch code: ``torch.func`` cannot run every function
that classic autograd differentiates (an autograd.Function without
``setup_context`` or ``jvp``, ``.item()`` under ``"linearize"``'s tracing,
forward-mode AD of sparse products). When a ``torch.func`` method fails,
while linearizing or at its first product, the products come from
``"autograd"`` instead (one more call of ``fun`` if the failure came after
the first one), with one ``UserWarning`` naming torch's error; a
`ProductFallback` passed by the caller remembers it for the rest of a solve,
so that later linearizations go straight to ``"autograd"`` without a second
warning. When even the backward of ``fun`` cannot be differentiated (an
autograd.Function marked ``once_differentiable`` without a ``jvp``), ``Jv``
comes from J built row by row from m VJPs, with a warning: exact, and costly
only for large m.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from trustls.operators.base import LinearOperator
from trustls.operators.product_fallback import ProductFallback, warn_once, with_fallback
from trustls.operators.residual_graph import ResidualGraph

__all__ = [
    "DEFAULT_PRODUCT_METHOD",
    "PRODUCT_METHODS",
    "JacobianOperator",
    "JacobianProducts",
    "ProductFallback",
    "jacobian_products",
]

ResidualFunction = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class JacobianProducts:
    """The residual at a point and the two Jacobian products there.

    Attributes:
        residual: ``r(x)``.
        jvp: ``v -> J v``.
        vjp: ``u -> Jᵀ u``.
    """

    residual: Tensor
    jvp: Callable[[Tensor], Tensor]
    vjp: Callable[[Tensor], Tensor]


def _linearize(fun: ResidualFunction, x: Tensor) -> JacobianProducts:
    with warnings.catch_warnings():
        # torch's constant folding of the traced graph warns about its own
        # internal get_attr nodes; the warning is not actionable by users.
        warnings.filterwarnings("ignore", message="Attempted to insert a get_attr Node")
        residual, jvp = torch.func.linearize(fun, x)
        zero = torch.zeros_like(x)
        # The first call folds the traced constants; it must happen outside
        # torch.func.vjp, whose wrapped tensors have no storage to fold.
        jvp(zero)
    # The JVP map is linear, so its VJP is the same at every primal point:
    # record it once, at zero, and reuse it for every Jᵀu of this iteration.
    _, pullback = torch.func.vjp(jvp, zero)
    return JacobianProducts(residual, jvp, lambda u: pullback(u)[0])


def _kept_vjp(fun: ResidualFunction, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    residual, pullback = torch.func.vjp(fun, x)
    return residual, lambda u: pullback(u)[0]


def _vjp_and_jvp(fun: ResidualFunction, x: Tensor) -> JacobianProducts:
    residual, vjp = _kept_vjp(fun, x)
    return JacobianProducts(residual, lambda v: torch.func.jvp(fun, (x,), (v,))[1], vjp)


def _vjp_and_double_backward(fun: ResidualFunction, x: Tensor) -> JacobianProducts:
    residual, vjp = _kept_vjp(fun, x)
    pullbacks = []

    def jvp(v: Tensor) -> Tensor:
        # u -> Jᵀu is linear; the VJP of that map with cotangent v is J v.
        # Its graph is recorded on the first product only, so a linearization
        # used just for the gradient (the final point) never pays for it.
        if not pullbacks:
            with torch.enable_grad():
                # At u = 1, not 0: a backward with a shortcut for zero cotangents
                # would record a graph without u (see trustls.operators.residual_graph).
                pullbacks.append(torch.func.vjp(vjp, torch.ones_like(residual))[1])
        return pullbacks[0](v)[0]

    return JacobianProducts(residual, jvp, vjp)


def _fresh(fun: ResidualFunction, x: Tensor) -> JacobianProducts:
    residual = fun(x)
    return JacobianProducts(
        residual,
        lambda v: torch.func.jvp(fun, (x,), (v,))[1],
        lambda u: torch.func.vjp(fun, x)[1](u)[0],
    )


def _autograd(
    fun: ResidualFunction, x: Tensor, memo: ProductFallback | None = None, graph: ResidualGraph | None = None
) -> JacobianProducts:
    memo = ProductFallback() if memo is None else memo
    graph = ResidualGraph.evaluate(fun, x) if graph is None else graph
    rows: list[Tensor] = []

    def jvp(v: Tensor) -> Tensor:
        if not rows:
            if memo.rows_reason is None:
                try:
                    return graph.jvp(v)
                except RuntimeError as error:  # the backward of fun is not differentiable
                    memo.rows_reason = warn_once(
                        memo, "compute J v by double backward", error, "from J built by m VJPs"
                    )
            rows.append(_rows_by_vjps(graph))
        return rows[0] @ v

    return JacobianProducts(graph.residual.detach(), jvp, graph.vjp)


def _rows_by_vjps(graph: ResidualGraph) -> Tensor:
    eye = torch.eye(graph.shape[0], dtype=graph.residual.dtype, device=graph.residual.device)
    try:
        return graph.vjp_batched(eye)
    except (RuntimeError, NotImplementedError):  # no batching rule: the same rows one by one
        return torch.stack([graph.vjp(e) for e in eye])


PRODUCT_METHODS: dict[str, Callable[[ResidualFunction, Tensor], JacobianProducts]] = {
    "vjp+double-backward": _vjp_and_double_backward,
    "linearize": _linearize,
    "vjp+jvp": _vjp_and_jvp,
    "fresh": _fresh,
    "autograd": _autograd,
}
DEFAULT_PRODUCT_METHOD = "autograd"


def jacobian_products(
    fun: ResidualFunction,
    x: Tensor,
    method: str = DEFAULT_PRODUCT_METHOD,
    *,
    fallback: ProductFallback | None = None,
    graph: ResidualGraph | None = None,
) -> JacobianProducts:
    """Linearize ``fun`` at ``x`` and return the residual with its JVP and VJP.

    Args:
        fun: residual function ``R^n -> R^m`` built from differentiable torch ops.
        x: the point, a 1-D floating tensor.
        method: one of `PRODUCT_METHODS` (see the module docstring).
        fallback: a solve's `ProductFallback`, so that a ``torch.func`` method that
            failed once is not tried (nor warned about) again; ``None``: a fresh one.
        graph: r(x) with its graph, already evaluated by the caller (an accepted
            trial point): the ``"autograd"`` products then call ``fun`` not at all
            (otherwise once). Other methods do not take it.

    Examples:
        >>> import torch
        >>> products = jacobian_products(lambda x: x**2, torch.tensor([1.0, 3.0]))
        >>> products.jvp(torch.tensor([1.0, 1.0]))
        tensor([2., 6.])
    """
    try:
        build = PRODUCT_METHODS[method]
    except KeyError:
        raise ValueError(
            f"method must be one of {sorted(PRODUCT_METHODS)}, got {method!r}"
        ) from None
    if graph is not None and method != "autograd":
        raise ValueError(f"graph is taken by the 'autograd' method only, got method {method!r}")
    memo = ProductFallback() if fallback is None else fallback
    with torch.enable_grad():
        if method == "autograd":
            return _autograd(fun, x, memo, graph)
        return with_fallback(build, fun, x, method, memo, _autograd)


class JacobianOperator(LinearOperator):
    """The Jacobian ``J`` (shape ``(m, n)``) through its JVP and VJP.

    Examples:
        >>> import torch
        >>> products = jacobian_products(lambda x: x**2, torch.tensor([1.0, 3.0]))
        >>> JacobianOperator(products, n=2).to_dense()
        tensor([[2., 0.],
                [0., 6.]])
    """

    def __init__(self, products: JacobianProducts, n: int):
        residual = products.residual
        super().__init__((residual.shape[0], n), residual.dtype, residual.device)
        self.products = products
        self.calls = 0  # products computed, J v and Jᵀu together

    def matvec(self, v: Tensor) -> Tensor:
        self.calls += 1
        return self.products.jvp(v)

    def rmatvec(self, u: Tensor) -> Tensor:
        self.calls += 1
        return self.products.vjp(u)
