"""Dense Jacobians of small problems by the automatic-differentiation route measured fastest.

A solver that factors J (``"lstsq"``: one SVD per point) needs the dense
m x n Jacobian at every accepted point. Automatic differentiation builds it
from min(m, n) products in principle (Griewank & Walther 2008, ch. 3): m
VJPs (reverse mode, one row each) or n JVPs (forward mode, one column each).
Which is fastest in practice depends on more than the shape, because for the
small problems that use dense solves the fixed cost of each pass dominates,
and that cost depends on how the residual is written: a Python loop over 0-d
expressions makes every pass a long chain of small kernels, forward mode in
``torch.func`` goes through Python decompositions of each op, and ``vmap``
adds its own overhead per op.

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

The rule (`DenseJacobian`, one per solve):

1. Passes: reverse mode needs m, forward n + 1 (the ``create_graph`` pass
   counts one). A family needing more than 16 times the passes of the other
   is never tried: the shape decides.
2. Reverse mode, when eligible, computes J at the first linearization:
   measured on the styled problems it wins on most small problems, a vmapped
   backward pass costing about as much whatever the batch. Forward mode then
   computes J at the second linearization, unless reverse mode's best time is
   at most twice that of a single VJP: forward mode costs at least two passes
   (the ``create_graph`` pass and one double-backward pass), each no cheaper
   than a VJP, so it cannot win.
3. A family measures its two routes on the way, with no extra work: row (or
   column) 0 by a single product, the other k - 1 by one batched product,
   each timed in thread CPU time (robust to other processes; small problems
   run on one thread). The loop route is estimated at k single products, the
   batched route at the measured batch (a batch's fixed overhead dominates at
   these sizes, so the batch of k - 1 stands for the batch of k). The first
   measurement of a process runs after a warm-up of each kind of pass, so
   that autograd's one-time initialization is not counted.
4. After the exploration the route with the smallest estimate (the forward
   estimates include their ``create_graph`` pass) computes every later J.
   Every J computed while measuring is the one the solve uses.

Off the CPU, timing would need a host-device synchronization, so the rule is
the shape's family, batched, without measurement.

Fallback: when a batched pass fails (a backward formula without a batching
rule: ``torch.sparse.mm``, some autograd.Functions), the rows or columns are
computed one by one and the family's batched route is dropped; when the
backward is not differentiable, forward mode is dropped and reverse mode
used. Either way the result is exact, and one ``UserWarning`` per solve names
the first reason (the first line of torch's error). Errors of single
products are never caught: they are errors of ``fun``.

Calls: a J built from a graph the caller passes costs no call of ``fun``;
otherwise one (the evaluation that records the graph). `DenseJacobianResult`
reports the count so that nfev can include it.

Reference:
    A. Griewank, A. Walther, "Evaluating Derivatives", 2nd ed., SIAM 2008.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from trustls.operators.residual_graph import ResidualGraph

__all__ = ["ROUTES", "DenseJacobian", "DenseJacobianResult"]

ROUTES = ("reverse-batched", "reverse-loop", "forward-batched", "forward-loop")

# A family is explored only if it needs at most this many times the passes of
# the other: beyond it the shape decides (a batched pass would have to be
# this many times cheaper per row or column to win).
_EXPLORE_PASS_RATIO = 16


_warmed_up = False


def _warm_up() -> None:
    """Run each kind of pass once on a 2-vector, so that measurements exclude one-time costs.

    The first backward pass of a process initializes autograd's engine (hundreds
    of milliseconds, once); without this the first family measured would look
    that much slower.
    """
    global _warmed_up
    if not _warmed_up:
        graph = ResidualGraph.evaluate(lambda x: x * x.flip(0), torch.ones(2, dtype=torch.float64))
        eye = torch.eye(2, dtype=torch.float64)
        graph.vjp_batched(eye), graph.jvp_batched(eye)
        _warmed_up = True


@dataclass(frozen=True)
class DenseJacobianResult:
    """A dense Jacobian and what it cost.

    Attributes:
        matrix: J, shape ``(m, n)``, detached.
        residual: r(x), detached.
        calls: calls of ``fun`` made (0 when the caller gave the graph, else 1).
        route: the route that computed J (for a J computed while measuring,
            the family's batched route unless it failed, see the module docstring).
    """

    matrix: Tensor
    residual: Tensor
    calls: int
    route: str


class DenseJacobian:
    """Dense Jacobians for one solve, by the route measured fastest (see the module docstring).

    Args:
        route: one of `ROUTES` to always use that route (tests, benchmarks), or
            ``None`` (default) to choose by measurement.

    Examples:
        >>> import torch
        >>> jacobian = DenseJacobian()
        >>> result = jacobian(lambda x: torch.stack([x[0] * x[1], x[1] ** 2]), torch.tensor([2.0, 3.0]))
        >>> result.matrix, result.calls
        (tensor([[3., 2.],
                [0., 6.]]), 1)
    """

    def __init__(self, route: str | None = None):
        if route is not None and route not in ROUTES:
            raise ValueError(f"route must be one of {list(ROUTES)} or None, got {route!r}")
        self.route = route
        self.estimates: dict[str, float] = {}
        self.unavailable: dict[str, str] = {}  # route -> first line of the error that ruled it out
        self._families_done: list[str] = []
        self._decided: str | None = None  # the route once nothing is left to measure
        self._rows = 1
        self._eyes: dict[tuple, Tensor] = {}
        self._warned = False

    def __repr__(self) -> str:
        return f"DenseJacobian(route={self.route!r}, estimates={self.estimates})"

    def __call__(
        self, fun: Callable[[Tensor], Tensor] | None, x: Tensor, graph: ResidualGraph | None = None
    ) -> DenseJacobianResult:
        """J at ``x``: from ``graph`` (r(x) with its graph, no call of ``fun``) or one evaluation of ``fun``."""
        calls = 0
        if graph is None:
            graph, calls = ResidualGraph.evaluate(fun, x), 1
        if self._decided is None or self._decided in self.unavailable:
            family, measure = self._next_family(graph)
        else:
            family, measure = self._decided.split("-")[0], False
        matrix, route = self._compute(graph, family, measure)
        if not measure:
            self._decided = route
        return DenseJacobianResult(matrix.detach(), graph.residual.detach(), calls, route)

    # -- the rule -----------------------------------------------------------

    def _passes(self, family: str, graph: ResidualGraph) -> int:
        m, n = graph.shape
        return m if family == "reverse" else n + 1

    def _next_family(self, graph: ResidualGraph) -> tuple[str, bool]:
        """The family to compute J with now, and whether to time its routes."""
        if self.route is not None:
            return self.route.split("-")[0], False
        available = [f for f in ("reverse", "forward") if f"{f}-loop" not in self.unavailable]
        if graph.residual.device.type != "cpu":
            return min(available, key=lambda f: self._passes(f, graph)), False
        other = {"reverse": "forward", "forward": "reverse"}
        eligible = [
            f for f in available if self._passes(f, graph) <= _EXPLORE_PASS_RATIO * self._passes(other[f], graph)
        ]
        for family in eligible:
            if family in self._families_done or (family == "forward" and self._forward_cannot_win()):
                continue
            return family, True
        return (eligible or available)[0], False

    def _forward_cannot_win(self) -> bool:
        # Forward mode costs at least two backward passes (the create_graph pass and
        # one double-backward pass), each no cheaper than a single VJP.
        single = self.estimates.get("reverse-loop")
        if single is None:
            return False
        single /= self._rows
        return min(t for r, t in self.estimates.items() if r.startswith("reverse")) <= 2 * single

    def _chosen_route(self, family: str) -> str:
        if self.route is not None:
            return self.route
        if self._decided is not None and self._decided not in self.unavailable:
            return self._decided
        candidates = {r: t for r, t in self.estimates.items() if r not in self.unavailable}
        if candidates:
            return min(candidates, key=candidates.get)
        batched = f"{family}-batched"
        return batched if batched not in self.unavailable else f"{family}-loop"

    # -- computing ----------------------------------------------------------

    def _compute(self, graph: ResidualGraph, family: str, measure: bool) -> tuple[Tensor, str]:
        route = None
        if not measure:
            route = self._chosen_route(family)
            family = route.split("-")[0]
        setup = 0.0
        if measure:
            _warm_up()
        if family == "forward":
            start = time.thread_time()
            try:
                graph.prepare_jvp()
            except RuntimeError as error:
                self._rule_out(("forward-batched", "forward-loop"), error)
                return self._compute(graph, "reverse", measure and "reverse" not in self._families_done)
            setup = time.thread_time() - start
        if measure:
            return self._measured(graph, family, setup)
        if route.endswith("loop"):
            return self._loop(graph, family, 0), route
        matrix = self._batched(graph, family, 0)
        return matrix, route if route not in self.unavailable else f"{family}-loop"

    def _measured(self, graph: ResidualGraph, family: str, setup: float) -> tuple[Tensor, str]:
        """J by ``family``: unit 0 by a single product, the rest batched, both timed (thread CPU time)."""
        self._families_done.append(family)
        k = graph.shape[0] if family == "reverse" else graph.shape[1]
        self._rows = graph.shape[0]
        start = time.thread_time()
        first = self._loop(graph, family, 0, stop=1)
        self.estimates[f"{family}-loop"] = setup + k * (time.thread_time() - start)
        if k == 1:
            return first, f"{family}-loop"
        route = f"{family}-batched"
        start = time.thread_time()
        rest = self._batched(graph, family, 1)
        if route not in self.unavailable:
            self.estimates[route] = setup + time.thread_time() - start
        else:
            route = f"{family}-loop"
        return torch.cat([first, rest], dim=0 if family == "reverse" else 1), route

    def _batched(self, graph: ResidualGraph, family: str, start: int) -> Tensor:
        """Rows (reverse) or columns (forward) ``start:`` of J in one batched pass, else one by one."""
        route = f"{family}-batched"
        if route not in self.unavailable:
            eye = self._eye(graph, family, start)
            try:
                if family == "reverse":
                    return graph.vjp_batched(eye)
                return graph.jvp_batched(eye).T
            except (RuntimeError, NotImplementedError) as error:
                self._rule_out((route,), error)
        return self._loop(graph, family, start)

    def _loop(self, graph: ResidualGraph, family: str, start: int, stop: int | None = None) -> Tensor:
        eye = self._eye(graph, family, start, stop)
        if family == "reverse":
            return torch.stack([graph.vjp(e) for e in eye])
        return torch.stack([graph.jvp(e) for e in eye], dim=1)

    def _eye(self, graph: ResidualGraph, family: str, start: int, stop: int | None = None) -> Tensor:
        m, n = graph.shape
        key = (m if family == "reverse" else n, graph.residual.dtype, graph.residual.device)
        if key not in self._eyes:  # made once per solve: torch.eye costs as much as a small backward pass
            self._eyes[key] = torch.eye(key[0], dtype=key[1], device=key[2])
        return self._eyes[key][start:stop]

    def _rule_out(self, routes: tuple[str, ...], error: Exception) -> None:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        for route in routes:
            self.unavailable.setdefault(route, reason)
            self.estimates.pop(route, None)
        if self.route in routes:
            self.route = None  # a forced route that cannot run: choose among the others
        if not self._warned:
            self._warned = True
            what = "use forward mode" if len(routes) == 2 else "batch the Jacobian's rows or columns"
            warnings.warn(
                f"trustls could not {what} ({type(error).__name__}: {reason}); it computes the dense "
                f"Jacobian without {', '.join(routes)} for the rest of this solve (exact, possibly slower)",
                UserWarning,
                stacklevel=2,
            )
