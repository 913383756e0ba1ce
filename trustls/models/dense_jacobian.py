"""Dense Jacobians of small problems, from one evaluation with its autograd graph kept.

A solver that factors J (``"lstsq"``: one SVD per point) needs the dense
m x n Jacobian at every accepted point. Automatic differentiation builds it
from min(m, n) products in principle (Griewank & Walther 2008, ch. 3): m
VJPs (reverse mode, one row each) or n JVPs (forward mode, one column each).
For the small problems that use dense solves the fixed cost of each pass
dominates, and that cost depends on how the residual is written: a Python
loop over 0-d expressions makes every pass a long chain of small kernels,
forward mode in ``torch.func`` goes through Python decompositions of each op,
and ``vmap`` of the function itself refuses random draws and ``.item()``.

Routes. All four start from one evaluation of r with its autograd graph kept
(`ResidualGraph`), so the reverse routes build J from a caller's existing
(residual, graph) with *no* call of ``fun``, and the forward routes (double
backward: J v is the VJP of the linear map u -> Jᵀu) need no call either:

``"reverse-batched"``  the m rows from one backward pass vmapped over the
                       rows of the identity (``torch.func.vmap``);
``"reverse-loop"``     m single backward passes;
``"forward-batched"``  one backward pass with ``create_graph=True``, then the
                       n columns from one vmapped double-backward pass;
``"forward-loop"``     the same, with n single double-backward passes.

``torch.func.jacfwd`` and ``jacrev`` are not among them: measured on the
styled problems (`trustls.problems.styled`) they were slower on every shape
(jacfwd several times slower on scalar-heavy code), ``jacfwd`` needs a
vmapped call of ``fun`` (random ops inside ``fun`` then fail), and both fail
on autograd.Functions without functorch support (see ``docs/jacobians.md``).

The rule, by the shape, so that a solve is reproducible bit for bit:
reverse mode (m rows) unless it needs more than 16 times the passes of
forward mode (n columns and the ``create_graph`` pass), batched. A batched
pass costs about as much whatever the batch at these sizes; measured on the
79 small problems of ``benchmarks/small_problems.py``, timing each route at
the first linearizations and keeping the fastest chose exactly these routes
(reverse mode on 75, forward mode where m > 16(n + 1)), so the rule loses
nothing and its results do not depend on the machine's load. That holds
while the fixed cost of a pass dominates. A batched pass holds one copy of
the graph's saved tensors per product, and does that much more arithmetic:
when the caller measured them (`saved_elements`, counted at the solve's
first evaluation, `ResidualGraph.evaluate`) and reverse mode's batch would
hold more than `BATCH_ELEMENTS` of them, the family with fewer products is
taken (a residual of a few outputs computed through a large intermediate,
where m rows cost m times a pass and n + 1 columns n + 1 times).

Fallback: when a batched pass fails (a backward formula without a batching
rule: ``torch.sparse.mm``, some autograd.Functions), the rows or columns are
computed one by one; when the backward is not differentiable, forward mode is
dropped and reverse mode used. Either way the result is exact, and one
``UserWarning`` per solve names the first reason (the first line of torch's
error). Errors of single products are never caught: they are errors of ``fun``.

A batching rule can also be wrong rather than missing (torch 2.13's rule for
the backward of ``torch.cdist`` with ``compute_mode="donot_use_mm_for_euclid_dist"``
returns a wrong J, silently). So the first batched pass of each route in a
solve is checked against one single pass: uᵀJ for a random u against the VJP
with cotangent u (reverse), J v against the JVP (forward). A difference above
2⁻⁶ of the sum of the terms' magnitudes (far above rounding, even of a
function computed in half precision, and far below the errors of a wrong
rule) rules the batched route out, with the same warning, and the product is
computed one by one. It costs one pass per route and solve.

Calls: a J built from a graph the caller passes costs no call of ``fun``;
otherwise one (the evaluation that records the graph). `DenseJacobianResult`
reports the count so that nfev can include it.

Reference:
    A. Griewank, A. Walther, "Evaluating Derivatives", 2nd ed., SIAM 2008.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from trustls.operators.product_fallback import error_reason
from trustls.operators.residual_graph import ResidualGraph

__all__ = ["ROUTES", "DenseJacobian", "DenseJacobianResult"]

ROUTES = ("reverse-batched", "reverse-loop", "forward-batched", "forward-loop")

# Reverse mode unless it needs more than this many times forward mode's passes.
_FAMILY_PASS_RATIO = 16
# A batched pass holds one copy of the graph's saved tensors per product: above this many
# elements (32 MB in float64) the family with fewer products is taken.
BATCH_ELEMENTS = 2**22
# The colored products are batched only where the graph's saved tensors average at most this
# many elements (`DenseJacobian.compressed_columns`).
_BATCHED_TENSOR_ELEMENTS = 2**14


@dataclass(frozen=True)
class DenseJacobianResult:
    """A dense Jacobian and what it cost.

    Attributes:
        matrix: J, shape ``(m, n)``, detached.
        residual: r(x), detached.
        calls: calls of ``fun`` made (0 when the caller gave the graph, else 1).
        route: the route that computed J.
    """

    matrix: Tensor
    residual: Tensor
    calls: int
    route: str


class DenseJacobian:
    """Dense Jacobians for one solve, by the shape's route (see the module docstring).

    Args:
        route: one of `ROUTES` to always use that route (tests, benchmarks), or
            ``None`` (default) to choose by the shape.

    Attributes:
        unavailable: the routes ruled out in this solve, with the first line of
            the error that ruled each out.

    Examples:
        >>> import torch
        >>> jacobian = DenseJacobian()
        >>> result = jacobian(lambda x: torch.stack([x[0] * x[1], x[1] ** 2]), torch.tensor([2.0, 3.0]))
        >>> result.matrix, result.calls, result.route
        (tensor([[3., 2.],
                [0., 6.]]), 1, 'reverse-batched')
    """

    def __init__(self, route: str | None = None):
        if route is not None and route not in ROUTES:
            raise ValueError(f"route must be one of {list(ROUTES)} or None, got {route!r}")
        self.route = route
        self.unavailable: dict[str, str] = {}  # route -> first line of the error that ruled it out
        self.saved_elements: int | None = None  # of fun's graph, when the caller measured it
        self.saved_tensors: int | None = None  # the number of those tensors
        self._eyes: dict[tuple, Tensor] = {}
        self._warned = False
        self._checked: set[str] = set()  # batched routes checked against a single pass in this solve

    def __repr__(self) -> str:
        return f"DenseJacobian(route={self.route!r}, unavailable={sorted(self.unavailable)})"

    def __call__(
        self, fun: Callable[[Tensor], Tensor] | None, x: Tensor, graph: ResidualGraph | None = None
    ) -> DenseJacobianResult:
        """J at ``x``: from ``graph`` (r(x) with its graph, no call of ``fun``) or one evaluation of ``fun``."""
        calls = 0
        if graph is None:
            graph, calls = ResidualGraph.evaluate(fun, x), 1
        route = self.route or f"{self.family(*graph.shape)}-batched"
        family = route.split("-")[0]
        if family == "forward" and "forward-loop" not in self.unavailable:
            try:
                graph.prepare_jvp()
            except RuntimeError as error:
                self._rule_out(("forward-batched", "forward-loop"), error)
        if family == "forward" and "forward-loop" in self.unavailable:
            route, family = "reverse-batched", "reverse"
        if route.endswith("loop"):
            matrix = self._loop(graph, family)
        else:
            matrix = self._batched(graph, family)
            route = route if route not in self.unavailable else f"{family}-loop"
        if family == "forward" and "forward-loop" in self.unavailable:  # forward mode failed in the passes
            route = "reverse-loop" if "reverse-batched" in self.unavailable else "reverse-batched"
        return DenseJacobianResult(matrix.detach(), graph.residual.detach(), calls, route)

    def family(self, m: int, n: int) -> str:
        """Reverse mode unless it needs more than 16 times forward mode's passes, or the graph is so large
        that its batch of m rows holds more than `BATCH_ELEMENTS` saved elements (module docstring)."""
        reverse = m <= _FAMILY_PASS_RATIO * (n + 1)
        if reverse and m > n + 1 and self.saved_elements is not None and m * self.saved_elements > BATCH_ELEMENTS:
            reverse = False
        if "forward-loop" in self.unavailable:  # ruled out in this solve: no double backward here
            reverse = True
        return "reverse" if reverse else "forward"

    def batch_elements(self, m: int, n: int) -> int | None:
        """The saved elements that the batched pass of `family` holds (``None`` when not measured)."""
        if self.saved_elements is None:
            return None
        return (m if self.family(m, n) == "reverse" else n + 1) * self.saved_elements

    def compressed_columns(self, graph: ResidualGraph, seeds: Tensor) -> Tensor:
        """The products J v for the k rows v of ``seeds`` (shape ``(k, n)``), as the rows of a ``(k, m)``
        tensor, by forward mode from ``graph``. With the seeds of a column coloring these are the
        colored J's products (`trustls.sparsity.colored`).

        One batched double-backward pass where it pays: where the passes are bound by the autograd
        engine's cost per operation, the graph's saved tensors being small (at most 2¹⁴ elements on
        average, as measured at the solve's first evaluation) and the batch holding at most
        `BATCH_ELEMENTS` of them; elsewhere, or unmeasured, k single passes, for on large tensors a
        pass is bound by memory traffic, which a batch does not reduce, and k copies leave the cache
        (the measurements: docs/benchmarks.md, "A residual written as a loop over its rows", and
        docs/sparse.md). A batched pass is checked, ruled out and warned about as the forward route
        of a dense J (module docstring).

        Raises:
            RuntimeError: if the backward of ``fun`` is not differentiable (`ResidualGraph.prepare_jvp`):
                no J v can come from the graph.
        """
        graph.prepare_jvp()
        return self._compressed(graph, seeds, "forward")

    def compressed_rows(self, graph: ResidualGraph, seeds: Tensor) -> Tensor:
        """The products uᵀJ for the k rows u of ``seeds`` (shape ``(k, m)``, the residual's dtype), as
        the rows of a ``(k, n)`` tensor, by reverse mode from ``graph``. With the seeds of a row
        coloring these are the colored J's products by rows (`trustls.sparsity.colored`).

        Plain backward passes, with no ``create_graph`` pass before them: batched where
        `compressed_columns` batches, by the same rule and with the same check against a single
        pass; one by one elsewhere.
        """
        return self._compressed(graph, seeds, "reverse")

    def _compressed(self, graph: ResidualGraph, seeds: Tensor, family: str) -> Tensor:
        """The k products of ``seeds`` by ``family`` ("forward": J v, "reverse": uᵀJ), as rows: one
        batched pass where `_batches` allows and the route stands, checked once per solve against a
        single pass; else one pass per seed."""
        route = f"{family}-batched"
        single = graph.jvp if family == "forward" else graph.vjp
        if self._batches(seeds.shape[0]) and route not in self.unavailable:
            try:
                products = graph.jvp_batched(seeds) if family == "forward" else graph.vjp_batched(seeds)
            except (RuntimeError, NotImplementedError) as error:
                self._rule_out((route,), error)
            else:
                matrix = products.T if family == "forward" else products  # J Sᵀ, or S J
                if route in self._checked or self._agrees_with_a_single_pass(graph, family, matrix, seeds):
                    return products
                self._rule_out((route,), RuntimeError(
                    "the batched pass disagreed with a single pass (a wrong batching rule in torch)"))
        return torch.stack([single(seed) for seed in seeds])

    def _batches(self, k: int) -> bool:
        """Whether k colored products go in one batched pass: the graph's saved tensors are small (at
        most 2¹⁴ elements on average, as measured at the solve's first evaluation) and k copies of
        them hold at most `BATCH_ELEMENTS` (`compressed_columns`)."""
        return bool(
            self.saved_elements is not None
            and self.saved_tensors
            and self.saved_elements <= _BATCHED_TENSOR_ELEMENTS * self.saved_tensors
            and k * self.saved_elements <= BATCH_ELEMENTS
        )

    # -- computing ----------------------------------------------------------

    def _batched(self, graph: ResidualGraph, family: str) -> Tensor:
        """The rows (reverse) or columns (forward) of J in one batched pass, else one by one."""
        route = f"{family}-batched"
        if route not in self.unavailable:
            eye = self._eye(graph, family)
            try:
                matrix = graph.vjp_batched(eye) if family == "reverse" else graph.jvp_batched(eye).T
            except (RuntimeError, NotImplementedError) as error:
                self._rule_out((route,), error)
            else:
                if route in self._checked or self._agrees_with_a_single_pass(graph, family, matrix):
                    return matrix
                self._rule_out((route,), RuntimeError(
                    "the batched pass disagreed with a single pass (a wrong batching rule in torch)"))
        return self._loop(graph, family)

    def _agrees_with_a_single_pass(
        self, graph: ResidualGraph, family: str, matrix: Tensor, seeds: Tensor | None = None
    ) -> bool:
        """Whether uᵀJ (reverse) or J v (forward) from ``matrix`` equals one single pass, to rounding.

        ``matrix`` is J, or J Sᵀ for the ``seeds`` S of `compressed_columns` (forward): then v = Sᵀw,
        or S J for those of `compressed_rows` (reverse): then u = Sᵀw."""
        self._checked.add(f"{family}-batched")
        size = matrix.shape[0] if family == "reverse" else matrix.shape[1]
        generator = torch.Generator(device=matrix.device).manual_seed(0)
        probe = torch.rand(size, generator=generator, dtype=matrix.dtype, device=matrix.device) + 0.5
        if family == "reverse":
            direction = probe if seeds is None else seeds.T @ probe.to(seeds.dtype)
            single, batched, terms = graph.vjp(direction), probe @ matrix, probe.abs() @ matrix.abs()
        else:
            direction = probe if seeds is None else seeds.T.to(probe.dtype) @ probe
            single, batched, terms = graph.jvp(direction), matrix @ probe, matrix.abs() @ probe.abs()
        # A wrong rule is wrong at the first digits; the two passes may round differently, by far
        # more than a dot product's k·eps when fun computes in half precision inside a float32
        # graph: 2⁻⁶ of the terms' sum is far from both. A column that is rounding noise (an exact
        # zero computed by cancellation: a parameter that cancels out) carries the rounding of the
        # terms that cancelled, not of its own: each column is also allowed 2⁶·eps of the largest
        # column's terms (a few dozen roundings of terms that size; the noise column that needed it
        # differed by 1.4·10⁻¹⁶ of them), where a wrong rule errs in the first digits of every column
        # it touches. Not more: genuine columns lie far below the largest (10⁻¹⁰ of it in NIST's
        # Hahn1), and a wrong rule there must still show. Where J is not finite (a fault the
        # controller handles) there is nothing to compare.
        compared = torch.isfinite(terms) & torch.isfinite(single) & torch.isfinite(batched)
        largest = torch.where(compared, terms, 0.0).amax() if terms.numel() else terms.new_zeros(())
        finfo = torch.finfo(matrix.dtype)
        allowed = 2.0**-6 * terms + 2.0**6 * finfo.eps * largest + finfo.tiny
        return bool(((single - batched).abs() <= allowed).logical_or_(~compared).all())

    def _loop(self, graph: ResidualGraph, family: str) -> Tensor:
        eye = self._eye(graph, family)
        if family == "reverse":
            return torch.stack([graph.vjp(e) for e in eye])
        try:
            return torch.stack([graph.jvp(e) for e in eye], dim=1)
        except (RuntimeError, NotImplementedError) as error:
            # A double backward that the backward of fun does not support (an op without a
            # second derivative): reverse mode needs none.
            self._rule_out(("forward-batched", "forward-loop"), error)
            return self._batched(graph, "reverse")

    def _eye(self, graph: ResidualGraph, family: str) -> Tensor:
        m, n = graph.shape
        key = (m if family == "reverse" else n, graph.residual.dtype, graph.residual.device)
        if key not in self._eyes:  # made once per solve: torch.eye costs as much as a small backward pass
            self._eyes[key] = torch.eye(key[0], dtype=key[1], device=key[2])
        return self._eyes[key]

    def _rule_out(self, routes: tuple[str, ...], error: Exception) -> None:
        reason = error_reason(error)
        for route in routes:
            self.unavailable.setdefault(route, reason)
        if self.route in routes:
            self.route = None  # a forced route that cannot run: the shape's, or the other family
        if not self._warned:
            self._warned = True
            what = "use forward mode" if len(routes) == 2 else "batch the Jacobian's rows or columns"
            warnings.warn(
                f"trustls could not {what} ({type(error).__name__}: {reason}); it computes the dense "
                f"Jacobian without {', '.join(routes)} for the rest of this solve (exact, possibly slower)",
                UserWarning,
                stacklevel=2,
            )
