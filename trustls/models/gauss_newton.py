"""The (generalized) Gauss-Newton model of a cost of a function's outputs.

For f(x) = ½‖r(x)‖² the Gauss-Newton model at x drops the second-order
term Σ r_i ∇²r_i from the Hessian (Nocedal & Wright 2006, §10.3):

    f(x + p) ≈ f(x) + gᵀp + ½‖Jp‖²,   g = Jᵀr,   B = JᵀJ.

For a loss L of the outputs z = fun(x) (`trustls.losses`: scipy's robust
losses, cross-entropy, …) the generalized Gauss-Newton model (Schraudolph
2002; Martens 2020) keeps the loss's curvature H = SᵀS in the outputs and
drops the outputs' own second derivatives: g = Jᵀ∇L, B = JᵀHJ = J̃ᵀJ̃ with
the effective Jacobian J̃ = S J. For least squares S = I and nothing changes;
for scipy's robust losses this is scipy's rescaling of J and f.

B is positive semidefinite, so the trust-region subproblem is convex. By
default B is matrix-free: the normal operator of J̃, one JVP and one VJP per
product (`trustls.operators.implicit`); a solver that factors J itself
(``"lstsq"``) gets the dense J̃.

How J is obtained (the routes, in the order they are tried):

* ``jacobian=``: a function returning J at x as a dense tensor, a torch
  sparse tensor or a `LinearOperator` such as `SparseOperator` (scipy's
  ``jac=``). The residual needs no pass of its own: the trial's evaluation
  is reused, as scipy does.
* otherwise automatic differentiation. A trial point is evaluated with its
  autograd graph kept (`trustls.operators.residual_graph.ResidualGraph`), so
  that if the trial is accepted, the gradient Jᵀr, the matrix-free products
  (Jᵀu a backward pass, Jv a double-backward pass) and the dense J (reverse
  or forward mode by the shape, `trustls.models.dense_jacobian`) need no
  second call of the residual
  function. Only backward passes are ever vmapped, never the function, so
  random draws, ``.item()`` and data-dependent control flow inside it are
  harmless.
* ``jac_sparsity=``, scipy's argument: the (m, n) pattern of J. Its columns
  are colored once, at construction, so that no two columns of a color share
  a row (`trustls.sparsity`), and the exact sparse J comes from one product
  J v_c per color: double-backward passes through the graph the trial kept
  (the map u ↦ Jᵀu is linear; its VJP with cotangent v is Jv), or, where J's
  rows color with no more colors than its columns, one VJP u_cᵀJ per row
  color, plain backward passes (`trustls.sparsity.colored`, "By rows"); so
  again no second call of the residual function, and no ``vmap``, which some
  functions defeat (random draws, custom autograd Functions, sparse ops).

Sparsity found. With neither ``jacobian`` nor ``jac_sparsity``, a
matrix-free J that has computed `SEARCH_AFTER` = 128 products at one point
(64 CG iterations: an ill-conditioned problem, a discretized differential
equation) searches J's pattern from products through the kept graph
(`trustls.sparsity.found`: 8 to 142 of them, once per solve) and, if it finds
one, answers its remaining products, in the middle of the CG solve, from the
exact sparse J of that pattern, colored as for ``jac_sparsity``; every
later point gets that sparse J at c + 2 products (c colors, one J v and one
Jᵀu that check the colored J at the point, repairing the rows and columns
that left the pattern or searching again). CG's products are then sparse
matrix-vector products, and ``x_scale="jac"`` takes J's exact column norms.
It applies from `FIND_FROM` = 1,024 float64 variables on (in float32 the
search cannot tell column indices in the thousands apart); the search gives
up, leaving the solve matrix-free, when J is not sparse enough (some row
keeps two of its variables in one class at every stage) or its pattern keeps
changing. ``find_sparsity=False`` turns it off. Solves whose CG needs fewer
products never search: a search and its coloring cost as much as several
such solves (docs/sparse.md, "Sparsity found").

Small problems. Up to 32 variables a matrix-free linearization stores J
instead, computed from the kept graph by the dense route
(`trustls.models.dense_jacobian`: one batched backward pass) and wrapped as a
`DenseOperator`. There `SteihaugCG` solves near-exactly, up to 2n iterations
of two products each (`SteihaugCG.exact_up_to`), and ``x_scale="jac"`` takes
exact column norms from n JVPs: at least n + 2 passes through the graph per
point, against one batched pass for J, after which every product is a small
matrix-vector product. That holds while the batch is cheap, so J is stored
only when it has at most 2²⁰ entries and the batched pass holds at most
`BATCH_ELEMENTS` elements of the graph's saved tensors (counted at the solve's
first evaluation): a residual of few outputs computed through a large
intermediate stays matrix-free. The subproblem and its solution are the same;
only the products' rounding differs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from trustls.function import check_outputs, split_outputs
from trustls.losses import (
    Loss,
    LossLinearization,
    RobustLoss,
    SquaredError,
    resolve_loss,
)
from trustls.models.base import CurvatureModel, Evaluation, Linearization
from trustls.models.dense_jacobian import BATCH_ELEMENTS, DenseJacobian
from trustls.models.user_jacobian import SparseStructure, jacobian_operator
from trustls.operators.base import LinearOperator
from trustls.operators.column_norms import diluted_column_norms, exact_column_norms
from trustls.operators.dense import DenseOperator, NormalOperator
from trustls.operators.implicit import (
    DEFAULT_PRODUCT_METHOD,
    PRODUCT_METHODS,
    JacobianOperator,
    ProductFallback,
    jacobian_products,
)
from trustls.operators.output import effective_jacobian, effective_jacobian_matrix
from trustls.operators.residual_graph import ResidualGraph
from trustls.operators.sparse import SparseOperator
from trustls.sparsity.colored import ColoredJacobian
from trustls.sparsity.found import FIND_FROM, SEARCH_AFTER, FoundSparsity

__all__ = ["GaussNewtonModel", "half_squared_norm"]

# Column norms are computed exactly from n JVPs up to this many variables
# (`GaussNewtonModel.column_norms`).
_EXACT_COLUMN_NORMS_UP_TO = 32
# A matrix-free linearization stores J up to this many variables and entries
# (module docstring, "Small problems").
_STORED_UP_TO = 32
_STORED_ENTRIES = 2**20


def _stores_small_jacobian(m: int, n: int, dense: DenseJacobian) -> bool:
    """Whether a matrix-free linearization stores J instead (module docstring, "Small problems")."""
    if n > _STORED_UP_TO or m * n > _STORED_ENTRIES:
        return False
    held = dense.batch_elements(m, n)
    return held is not None and held <= BATCH_ELEMENTS


def half_squared_norm(residual: Tensor) -> Tensor:
    """½‖r‖² as a 0-d float64 tensor, accumulated in float64 whatever r's dtype."""
    r = residual.detach().reshape(-1).to(torch.float64)
    return 0.5 * torch.dot(r, r)


@dataclass
class _Context:
    """What a solve learns about its function: the shape of its outputs (fixed at the first call),
    the dense-Jacobian route's fallbacks and the size of the graph (measured at the first kept
    evaluation, unless that cannot be done), a ``torch.func`` product method's failure, and the
    structure of the last sparse J a user's ``jacobian`` returned (`SparseStructure`)."""

    shape: tuple[int, ...] | None = None
    dense: DenseJacobian = field(default_factory=DenseJacobian)
    fallback: ProductFallback = field(default_factory=ProductFallback)
    measurable: bool = True  # False once measuring the graph failed (`evaluate`)
    sparse: SparseStructure = field(default_factory=SparseStructure)  # a user's last sparse J
    found: FoundSparsity = field(default_factory=FoundSparsity)  # J's pattern found from products


class _Outputs:
    """``fun`` reduced to its flattened outputs, for the differentiation transforms.

    The targets of the last call are kept aside: they are data, not a function of x.
    """

    def __init__(self, fun: Callable[[Tensor], Any], x: Tensor, shape: tuple[int, ...] | None):
        self.fun, self.x = fun, x
        self.targets: Tensor | None = None
        self.shape = shape

    def __call__(self, x: Tensor) -> Tensor:
        outputs, targets = split_outputs(self.fun(x))
        check_outputs(outputs, self.x, self.shape)
        self.shape, self.targets = tuple(outputs.shape), targets
        return outputs.reshape(-1)


class GaussNewtonModel(CurvatureModel):
    """Gauss-Newton curvature JᵀJ, matrix-free by default (J stored up to 32 variables: module docstring).

    Args:
        products: how the implicit operator computes JVPs and VJPs; one of
            ``trustls.operators.PRODUCT_METHODS`` (default ``"autograd"``:
            classic autograd, Jᵀu by backward and Jv by double backward
            through one recorded graph; ``docs/jacobians.md``).
        loss: the cost of the outputs: ``"linear"`` (least squares, the
            default), scipy's ``"soft_l1"``, ``"huber"``, ``"cauchy"``,
            ``"arctan"`` or a callable ρ, ``"cross_entropy"``,
            ``"bce_with_logits"``, ``"gaussian_nll"``, ``"poisson_nll"``, or a
            `trustls.losses.Loss` (see `trustls.losses.resolve_loss`).
        f_scale: scipy's soft margin C of the robust losses.
        jacobian: optional ``jacobian(x)`` returning J, the Jacobian of the
            flattened outputs, as a dense tensor, a torch sparse tensor or a
            `LinearOperator`; replaces automatic differentiation (see the
            module docstring).
        jac_sparsity: optional ``(m, n)`` sparsity pattern of J (a torch
            sparse or dense tensor, a numpy array, a scipy sparse matrix, or a
            `trustls.sparsity.ColoredJacobian`); J is then the exact
            `SparseOperator` from one product per color, colored here, once.
        column_norm_probes: K, the VJPs (row classes) of the column-norm
            estimate behind ``x_scale="jac"`` for more than max(32, K)
            variables (see `column_norms`).
        find_sparsity: with neither ``jacobian`` nor ``jac_sparsity``, from
            1,024 float64 variables on and matrix-free products (a Krylov
            solver), find J's pattern from a few products and use the exact
            sparse J it gives, checked at every point (module docstring,
            "Sparsity found"); ``False``: always matrix-free.

    Examples:
        >>> import torch
        >>> from trustls.function import CountedFunction
        >>> model = GaussNewtonModel()
        >>> fun = CountedFunction(lambda x: x**2 - 1)
        >>> lin = model.linearize(fun, torch.tensor([2.0, 0.0]))
        >>> float(lin.cost), lin.gradient, fun.calls
        (5.0, tensor([12.,  0.]), 1)
    """

    def __init__(
        self,
        products: str = DEFAULT_PRODUCT_METHOD,
        *,
        loss: str | Loss | Callable | None = "linear",
        f_scale: float = 1.0,
        jacobian: Callable[[Tensor], Tensor | LinearOperator] | None = None,
        jac_sparsity: object | None = None,
        column_norm_probes: int = 32,
        find_sparsity: bool = True,
    ):
        self.loss = resolve_loss(loss, f_scale)
        if jacobian is not None and not callable(jacobian):
            raise TypeError(f"jacobian must be callable or None, got {type(jacobian).__name__}")
        if jacobian is not None and jac_sparsity is not None:
            raise ValueError("pass at most one of jacobian and jac_sparsity, got both")
        self.jacobian = jacobian
        self.colored = None
        if jac_sparsity is not None:
            self.colored = jac_sparsity if isinstance(jac_sparsity, ColoredJacobian) else ColoredJacobian(jac_sparsity)
        if products not in PRODUCT_METHODS:
            raise ValueError(f"products must be one of {sorted(PRODUCT_METHODS)}, got {products!r}")
        if isinstance(column_norm_probes, bool) or not isinstance(column_norm_probes, int) or column_norm_probes < 1:
            raise ValueError(f"column_norm_probes must be a positive int, got {column_norm_probes!r}")
        if not isinstance(find_sparsity, bool):
            raise TypeError(f"find_sparsity must be a bool, got {type(find_sparsity).__name__}")
        self.products = products
        self.column_norm_probes = column_norm_probes
        self.find_sparsity = find_sparsity

    def __repr__(self) -> str:
        jacobian = "" if self.jacobian is None else f", jacobian={getattr(self.jacobian, '__name__', self.jacobian)!r}"
        jacobian += "" if self.colored is None else f", jac_sparsity={self.colored!r}"
        loss = "" if isinstance(self.loss, SquaredError) else f", loss={self.loss!r}"
        return (
            f"GaussNewtonModel(products={self.products!r}{loss}{jacobian}, "
            f"column_norm_probes={self.column_norm_probes}"
            f"{'' if self.find_sparsity else ', find_sparsity=False'})"
        )

    # -- the objective ----------------------------------------------------

    def check_outputs(self, outputs: Tensor, targets: Tensor | None) -> None:
        """Least squares, and scipy's robust losses, without targets take the 1-D residual vector
        (scipy's rule)."""
        if targets is None and isinstance(self.loss, (SquaredError, RobustLoss)) and outputs.ndim != 1:
            hint = (
                " (a 0-d output is rejected: return the vector of residuals, not the loss ½‖r‖²;"
                " reshape a single residual to shape (1,))"
                if outputs.ndim == 0
                else " (flatten it with .reshape(-1))"
            )
            raise ValueError(f"fun must return a 1-D tensor, got shape {tuple(outputs.shape)}{hint}")

    def cost(self, outputs: Tensor, targets: Tensor | None = None) -> Tensor:
        """The loss's value at the outputs, a 0-d float64 tensor (½‖r‖² for least squares)."""
        self.check_outputs(outputs, targets)
        return self.loss.value(outputs, targets)

    # -- evaluation and linearization ---------------------------------------

    def start(self, fun: Callable[..., Any], x: Tensor, *, dense: bool) -> _Context:
        return _Context()

    def evaluate(self, fun: Callable[..., Any], x: Tensor, context: Any = None, *, keep: bool = True) -> Evaluation:
        context = _Context() if context is None else context
        if keep and self.jacobian is None:
            split = _Outputs(fun, x, context.shape)
            if self.products == "autograd":
                # The graph's size is measured until a linearization has taken it (`linearize`), or
                # until a measurement fails (a fun that refuses saved-tensor hooks would pay a call each time).
                measure = context.measurable and context.dense.saved_elements is None
                kept = ResidualGraph.evaluate(split, x, measure=measure)
                if measure and kept.saved_elements is None:
                    context.measurable = False
                outputs = kept.residual.detach()
            else:
                kept = jacobian_products(split, x, self.products, fallback=context.fallback)
                outputs = kept.residual.detach()
            outputs, targets = outputs.view(split.shape), split.targets
        else:
            with torch.no_grad():
                outputs, targets = split_outputs(fun(x))
            check_outputs(outputs, x, context.shape)
            outputs, kept = outputs.detach(), None
        context.shape = tuple(outputs.shape)
        return Evaluation(x, outputs, targets, self.cost(outputs, targets), kept)

    def depends_on_x(self, evaluation: Evaluation) -> bool:
        """Whether the outputs reach x through autograd (unknown, hence True, without a kept graph)."""
        kept = evaluation.kept
        return kept.depends_on_x if isinstance(kept, ResidualGraph) else True

    def linearize(
        self, fun: Callable[..., Any], at: Evaluation | Tensor, context: Any = None, *, dense: bool = False
    ) -> Linearization:
        evaluation = at if isinstance(at, Evaluation) else self.evaluate(fun, at, context, keep=True)
        x = evaluation.x
        loss = self.loss.linearize(evaluation.outputs, evaluation.targets)
        m = evaluation.outputs.numel()
        if self.jacobian is not None:
            # With grad enabled: a jacobian may differentiate fun itself (torch.autograd.grad per
            # row, on a copy of x that requires grad). J is data: detached (jacobian_operator).
            with torch.enable_grad():
                J = self.jacobian(x)
            J = jacobian_operator(J, m, x, None if context is None else context.sparse)
            return self._assemble(evaluation, loss, J, J.to_dense() if dense else None)
        context = _Context(tuple(evaluation.outputs.shape)) if context is None else context
        kept = evaluation.kept
        if kept is None:  # evaluated without its graph: record it now (one more call of fun)
            kept = self.evaluate(fun, x, context, keep=True).kept
        graph = kept if isinstance(kept, ResidualGraph) else None
        if graph is not None and context.dense.saved_elements is None:  # the first measured graph
            context.dense.saved_elements, context.dense.saved_tensors = graph.saved_elements, graph.saved_tensors
        if self.colored is not None:
            if self.colored.shape != (m, x.shape[0]):
                raise ValueError(f"jac_sparsity must have shape {(m, x.shape[0])} (outputs, variables), "
                                 f"got {self.colored.shape}")
            with torch.enable_grad():
                if graph is not None and self.colored.row_coloring is not None:  # backward passes only
                    products = context.dense.compressed_rows(graph, self.colored.row_seeds(graph.residual))
                    J = self.colored.from_row_products(products.to(graph.residual.dtype), x)
                elif graph is not None:  # batched when the graph is small enough (DenseJacobian.compressed_columns)
                    nonzero = self.colored.pattern.nnz
                    products = context.dense.compressed_columns(graph, self.colored.seeds(x)) if nonzero else None
                    J = self.colored.from_products(products, x)
                else:
                    J = self.colored.from_jvp(kept.jvp, x)
            return self._assemble(evaluation, loss, J, J.to_dense() if dense else None)
        if dense or (graph is not None and _stores_small_jacobian(m, x.shape[0], context.dense)):
            # From the kept graph: no call of fun (a torch.func evaluation has none: one call).
            result = context.dense(_Outputs(fun, x, context.shape), x, graph=graph)
            return self._assemble(evaluation, loss, DenseOperator(result.matrix), result.matrix if dense else None)
        finds = self._finds_sparsity(graph, x) and context.found.given_up is None
        if finds and context.found.colored is not None:  # a pattern is in use: J from it, checked
            J = _found_jacobian(context, graph, x, m)
            if J is not None:
                return self._assemble(evaluation, loss, J, None)
        products = jacobian_products(fun, x, "autograd", fallback=context.fallback, graph=graph) if graph else kept
        if finds:  # matrix-free until its products reach SEARCH_AFTER, then from the pattern found
            J = _SearchingJacobian(products, x.shape[0], lambda: _found_jacobian(context, graph, x, m))
            return self._assemble(evaluation, loss, J, None)
        return self._assemble(evaluation, loss, JacobianOperator(products, x.shape[0]), None)

    def _finds_sparsity(self, graph: ResidualGraph | None, x: Tensor) -> bool:
        """Whether J's pattern may be found from products (module docstring, "Sparsity found")."""
        return self.find_sparsity and graph is not None and x.shape[0] >= FIND_FROM and x.dtype == torch.float64

    def linearization_calls(self, context: Any, *, dense: bool) -> int:
        """One call for a dense J after a ``torch.func`` evaluation (it keeps no autograd graph), else none."""
        return int(dense and self.jacobian is None and self.products != "autograd")

    def _assemble(
        self, evaluation: Evaluation, loss: LossLinearization, J: LinearOperator, matrix: Tensor | None
    ) -> Linearization:
        """The linearization from J (of the flattened outputs) and the loss there: J̃ = S J, g = Jᵀ∇L."""
        effective = effective_jacobian(J, loss.factor)
        whitened = None if loss.residual is None else loss.residual.reshape(-1)
        least_squares = isinstance(self.loss, SquaredError)
        return Linearization(
            x=evaluation.x,
            residual=whitened if least_squares else evaluation.outputs.reshape(-1),
            cost=loss.value,
            gradient=J.rmatvec(loss.gradient.reshape(-1)).detach(),
            operator=NormalOperator(effective),
            jacobian=effective,
            jacobian_matrix=None if matrix is None else effective_jacobian_matrix(matrix, loss.factor),
            whitened_residual=whitened,
        )

    # -- column norms for x_scale="jac" --------------------------------------

    def column_norms_are_estimated(self, linearization: Linearization) -> bool:
        J = linearization.jacobian
        exact = linearization.jacobian_matrix is not None or isinstance(J, (DenseOperator, SparseOperator))
        return not exact and J.shape[1] > max(_EXACT_COLUMN_NORMS_UP_TO, self.column_norm_probes)

    def column_norms(self, linearization: Linearization) -> Tensor:
        """Column norms of J for ``x_scale="jac"``, without materializing J.

        Exact from a stored J, or from n JVPs when n ≤ max(32,
        ``column_norm_probes``): up to 32 variables that costs about what CG
        does at one point, where it then solves near-exactly
        (`SteihaugCG.exact_up_to`). Otherwise the last of
        `column_norm_estimates`.
        """
        *_, norms = self.column_norm_estimates(linearization)
        return norms

    def column_norm_estimates(self, linearization: Linearization) -> Iterator[Tensor]:
        """The column norms of `column_norms`, estimated in refining stages when they are estimated.

        Estimated norms come from K = ``column_norm_probes`` VJPs with diluted
        Rademacher probes (`trustls.operators.column_norms`), after 8, 16, …,
        K of them: each stage is exact for every J whose rows sharing a column
        lie in distinct classes mod its number of probes (banded and block
        Jacobians with residuals near their variables, the usual structured
        case) and unbiased otherwise; σ comes from a fixed seed, so that solves
        are reproducible. `JacobiScale` stops after the first stage when the
        estimate shows a well-scaled J, and refreshes estimated norms on a
        schedule (`column_norms_are_estimated`). Exact norms are yielded once.
        """
        if linearization.jacobian_matrix is not None:
            yield torch.linalg.vector_norm(linearization.jacobian_matrix, dim=0)
            return
        J = linearization.jacobian
        if isinstance(J, (DenseOperator, SparseOperator)):
            yield J.column_norms()
            return
        if not self.column_norms_are_estimated(linearization):
            yield exact_column_norms(J)
            return
        generator = torch.Generator(device=J.device).manual_seed(0)
        yield from diluted_column_norms(J, self.column_norm_probes, generator)


def _found_jacobian(context: _Context, graph: ResidualGraph, x: Tensor, m: int) -> SparseOperator | None:
    """J at x on the pattern found from the graph's products (`trustls.sparsity.found`), or ``None``
    where there is none to find (the search gave up, or J v is not available from the graph)."""
    with torch.enable_grad():
        try:
            return context.found.jacobian(lambda seeds: context.dense.compressed_columns(graph, seeds),
                                          lambda u: graph.vjp(u).detach(), x, m)
        except RuntimeError as error:  # the backward of fun is not differentiable: products decide
            context.found.given_up = f"no J v from the graph ({error})"
            return None


class _SearchingJacobian(JacobianOperator):
    """A matrix-free J whose `SEARCH_AFTER`-th product finds J's pattern (``find``) and, if one is found,
    answers that product and all later ones from the exact sparse J, in the middle of a CG solve:
    the operator stays the same matrix (the found J is checked at this point), only cheaper."""

    def __init__(self, products, n: int, find: Callable[[], SparseOperator | None]):
        super().__init__(products, n)
        self._find = find
        self.sparse: SparseOperator | None = None

    def _route(self) -> SparseOperator | None:
        if self.sparse is None and self.calls == SEARCH_AFTER:
            self.sparse = self._find()
        return self.sparse

    def matvec(self, v: Tensor) -> Tensor:
        sparse = self._route()
        self.calls += 1
        return self.products.jvp(v) if sparse is None else sparse.matvec(v)

    def rmatvec(self, u: Tensor) -> Tensor:
        sparse = self._route()
        self.calls += 1
        return self.products.vjp(u) if sparse is None else sparse.rmatvec(u)
