r"""The exact sparse Jacobian of a plain torch residual, from one JVP per color.

Given a column coloring (`trustls.sparsity.coloring`) with seeds
v_c = Σ_{color(j)=c} e_j, the product J v_c holds, in row i, the sum of J_ij
over the columns j of color c; the pattern admits at most one such j per row,
so for every (i, j) in the pattern

    J_ij = (J v_{color(j)})_i                                    (Curtis, Powell & Reid 1974)

and k = n_colors JVPs give all of J, exactly (automatic differentiation, not
finite differences as in scipy's ``jac_sparsity``). The entries are gathered
from the ``(k, m)`` block of products with one precomputed index, into a
`SparseOperator` whose sorted structure is built once per pattern and then
refreshed with `SparseOperator.with_values`.

Two ways to compute the k products:

* batched: ``torch.func.vmap`` over ``torch.func.jvp``, one call of ``fun``
  with k tangents. It accepts most residual code (loops, in-place writes,
  ``.item()`` and Python control flow on x, since x itself is not batched).
* looped: when vmap fails (random draws, ``autograd.Function`` without
  ``setup_context``, sparse ops without forward-mode formulas, ``.numpy()``),
  one call of ``fun`` with its graph, a backward pass with a cotangent u
  recorded as a graph (u ↦ Jᵀu, ``create_graph=True``, at u = 1 so that a
  backward with a shortcut for zero cotangents records its general path:
  `trustls.operators.ResidualGraph`), and k backward passes through that
  graph: the VJP of the linear map u ↦ Jᵀu is J v (the "double-backward
  trick", Townsend 2017). Plain autograd only, so it works wherever the
  backward of ``fun`` is itself differentiable (a ``once_differentiable``
  backward raises rather than dropping its part of J); and since ``fun``
  runs once, every product belongs to the same evaluation, random draws
  included.

In a solve the products come from the graph of the accepted trial point
(`ColoredJacobian.from_products`; `GaussNewtonModel` computes them with
`trustls.models.dense_jacobian.DenseJacobian.compressed_columns`, in one
vmapped backward pass through that graph where its tensors are small).

By rows. The same holds for Jᵀ: with a coloring of the rows, no two rows of a
color sharing a column, and seeds u_c = Σ_{color(i)=c} e_i, J_ij = (u_{color(i)}ᵀJ)_j,
so k' row colors give J from k' VJPs, plain backward passes through the kept
graph (`ColoredJacobian.from_row_products`, `DenseJacobian.compressed_rows`).
By columns a solve pays one backward pass with ``create_graph=True`` (the
graph of u ↦ Jᵀu) and then k passes through that larger graph; by rows only
the k' passes. So where the rows color with no more colors than the columns
(`ColoredJacobian.row_coloring`: square bands, stencils, chained residuals;
not bundle adjustment, whose camera columns meet hundreds of rows), the model
takes J by rows (measured in docs/sparse.md, "By rows"). The row coloring is
tried only where a column's rows do not already outnumber the column colors
(its lower bound), cyclically first, at the first use.

A `VmapDecision` remembers that vmap failed: the first failure warns once
(naming the reason: the first line of vmap's error) and every later
evaluation with the same decision goes straight to the loop. `ColoredJacobianResult.calls`
counts the calls of ``fun``: 1 per evaluation, 2 when vmap was tried and failed.

`check_sparsity` tests a pattern: a nonzero of J outside it (the user's
pattern misses a dependency) makes the colored J wrong, and J v ≠ J_colored v
for a random v with probability 1. It costs one evaluation and one JVP.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from trustls.operators.product_fallback import error_reason
from trustls.operators.residual_graph import ResidualGraph
from trustls.operators.sparse import SparseOperator
from trustls.sparsity.coloring import ColumnColoring, color_columns, cyclic_coloring
from trustls.sparsity.pattern import JacobianPattern, jacobian_pattern

__all__ = ["ColoredJacobian", "ColoredJacobianResult", "VmapDecision", "colored_jacobian"]


@dataclass(eq=False)
class VmapDecision:
    """Whether ``vmap(jvp)`` works on one residual function; keep one per solve.

    Attributes:
        failure: ``None`` until vmap fails; then the first line of its error,
            and every later evaluation uses the double-backward loop. Set it
            yourself to use the loop from the start.

    Examples:
        >>> VmapDecision().failure is None
        True
    """

    failure: str | None = None


@dataclass(frozen=True, eq=False)
class ColoredJacobianResult:
    """One evaluation of the colored Jacobian.

    Attributes:
        jacobian: J(x) as a `SparseOperator` on the pattern's entries.
        residual: r(x), detached (the caller's when it passed one).
        calls: calls of ``fun`` made: 1, or 2 when vmap was tried and failed
            (0 for an empty pattern with the residual given).
        batched: whether the products came from ``vmap(jvp)``.
    """

    jacobian: SparseOperator
    residual: Tensor
    calls: int
    batched: bool


class ColoredJacobian:
    """What a sparsity pattern fixes about J, prepared once: coloring, seeds, gather index, sparse structure.

    Args:
        jac_sparsity: the ``(m, n)`` pattern in any form `jacobian_pattern` accepts.
        coloring: a `ColumnColoring` of that pattern, or the ``ordering`` to
            compute one with (`color_columns`; default ``"best"``).

    Examples:
        >>> import torch
        >>> P = torch.tensor([[1, 1, 0], [0, 1, 1]])
        >>> colored = ColoredJacobian(P)
        >>> fun = lambda x: torch.stack([x[0] * x[1], x[1] + x[2] ** 2])
        >>> colored(fun, torch.tensor([1.0, 2.0, 3.0])).jacobian.to_dense()
        tensor([[2., 1., 0.],
                [0., 1., 6.]])
    """

    def __init__(self, jac_sparsity: object, coloring: ColumnColoring | str = "best"):
        self.pattern: JacobianPattern = jacobian_pattern(jac_sparsity)
        m, n = self.pattern.shape
        if isinstance(coloring, str):
            coloring = color_columns(self.pattern, coloring)
        elif not isinstance(coloring, ColumnColoring):
            raise TypeError(f"coloring must be a ColumnColoring or an ordering name, got {type(coloring).__name__}")
        elif coloring.colors.shape != (n,) or coloring.conflicts(self.pattern).numel():
            raise ValueError(f"coloring must color the {n} columns of jac_sparsity with no two columns "
                             f"of one color in a row; got {coloring.colors.numel()} colors with conflicts")
        self.coloring = coloring
        # Entry (i, j) of J is entry i of product color(j): one gather from the
        # flattened (k, m) products.
        self.gather = self.coloring.colors.index_select(0, self.pattern.cols) * m + self.pattern.rows
        # Per device: the SparseOperator whose structure later values reuse, and the gather index.
        self._on_device: dict[torch.device, tuple[SparseOperator | None, Tensor]] = {}
        self._seeds: dict[tuple, Tensor] = {}
        self._row_gathers: dict[torch.device, Tensor] = {}

    @property
    def shape(self) -> tuple[int, int]:
        return self.pattern.shape

    @property
    def n_colors(self) -> int:
        return self.coloring.n_colors

    def __repr__(self) -> str:
        return (f"ColoredJacobian(shape={self.shape}, nnz={self.pattern.nnz}, n_colors={self.n_colors}, "
                f"lower_bound={self.coloring.lower_bound}, method={self.coloring.method!r})")

    def seeds(self, x: Tensor) -> Tensor:
        """The ``(n_colors, n)`` seeds v_c on ``x``'s dtype and device, made once per dtype and device
        (read-only: the products of every point share them)."""
        return self._cached_seeds(self.coloring, x)

    @cached_property
    def row_coloring(self) -> ColumnColoring | None:
        """A coloring of J's rows, no two rows of a color sharing a column, when it needs no more
        colors than the columns' (module docstring, "By rows"); ``None`` otherwise. Computed at
        the first use."""
        m, n = self.shape
        if self.pattern.nnz == 0 or int(self.pattern.column_counts().max()) > self.n_colors:
            return None  # a column's rows need distinct colors: more than the columns need
        order = self.pattern.column_order  # stable: rows ascend within each column, as Jᵀ's pattern needs
        transposed = JacobianPattern(self.pattern.cols.index_select(0, order), self.pattern.rows.index_select(0, order),
                                     (n, m))
        coloring = cyclic_coloring(transposed, self.n_colors) or color_columns(transposed)
        return coloring if coloring.n_colors <= self.n_colors else None

    @cached_property
    def _row_gather(self) -> Tensor:
        # Entry (i, j) of J is entry j of row product color(i): one gather from the flattened (k, n) products.
        return self.row_coloring.colors.index_select(0, self.pattern.rows) * self.shape[1] + self.pattern.cols

    def row_seeds(self, residual: Tensor) -> Tensor:
        """The ``(k, m)`` seeds u_c of `row_coloring` on the residual's dtype and device."""
        return self._cached_seeds(self.row_coloring, residual)

    def _cached_seeds(self, coloring: ColumnColoring, like: Tensor) -> Tensor:
        key = (coloring is self.coloring, like.dtype, like.device)
        if key not in self._seeds:
            self._seeds[key] = coloring.seeds(like.dtype, like.device)
        return self._seeds[key]

    def __call__(
        self,
        fun: Callable[[Tensor], Tensor],
        x: Tensor,
        *,
        residual: Tensor | None = None,
        decision: VmapDecision | None = None,
    ) -> ColoredJacobianResult:
        """J(x) from ``n_colors`` JVPs of ``fun`` (see the module docstring).

        Args:
            fun: the residual function, x ↦ r(x), 1-D to 1-D.
            x: the point, shape ``(n,)``.
            residual: r(x) when the caller has it; it is returned as the
                residual (the products' own primal is not used).
            decision: keeps vmap's failure across calls (one warning, then
                the loop); a fresh one is used when ``None``.
        """
        n = self.shape[1]
        if not isinstance(x, Tensor) or x.shape != (n,):
            raise ValueError(f"x must be a tensor of shape ({n},), the columns of jac_sparsity {self.shape}, "
                             f"got {tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating tensor (J is differentiated at it), got dtype {x.dtype}")
        x = x.detach()
        decision = VmapDecision() if decision is None else decision
        calls, batched = 0, False
        if self.pattern.nnz == 0:  # J = 0: no product needed
            if residual is None:
                residual, calls = fun(x), 1
            products = None
        else:
            seeds = self.seeds(x)
            if decision.failure is None:
                calls += 1
                try:
                    primal, products = torch.func.vmap(_pushforward(fun, x), out_dims=(None, 0))(seeds)
                    batched = True
                except Exception as error:  # noqa: BLE001 - reported, and the loop retries
                    decision.failure = error_reason(error)
                    warnings.warn(
                        f"jac_sparsity: torch.func.vmap over torch.func.jvp failed on this residual function "
                        f"({type(error).__name__}: {decision.failure}); the {self.n_colors} colored JVPs now "
                        "come from one call of fun and double-backward passes, for the rest of the solve",
                        UserWarning,
                        stacklevel=2,
                    )
            if not batched:
                calls += 1
                primal, products = double_backward_products(fun, x, seeds)
            self._check_length(primal)
            # J has r's dtype; forward mode can promote a tangent (to float64
            # through Python scalars in torch.stack of scalar expressions).
            products = products.to(primal.dtype)
            residual = primal if residual is None else residual
        self._check_length(residual)
        return ColoredJacobianResult(self._operator(products, x), residual.detach(), calls, batched)

    def from_jvp(self, jvp: Callable[[Tensor], Tensor], x: Tensor) -> SparseOperator:
        """J(x) from ``n_colors`` products J v_c by a given JVP (e.g. the double-backward
        products of a graph the caller kept), with no call of the function.

        Examples:
            >>> import torch
            >>> colored = ColoredJacobian(torch.tensor([[1, 1, 0], [0, 1, 1]]))
            >>> x = torch.tensor([1.0, 2.0, 3.0])
            >>> J = lambda v: torch.stack([x[1] * v[0] + x[0] * v[1], v[1] + 2 * x[2] * v[2]])
            >>> colored.from_jvp(J, x).to_dense()
            tensor([[2., 1., 0.],
                    [0., 1., 6.]])
        """
        self._check_x(x)
        products = torch.stack([jvp(seed) for seed in self.seeds(x)]) if self.pattern.nnz else None
        return self.from_products(products, x)

    def from_products(self, products: Tensor | None, x: Tensor) -> SparseOperator:
        """J(x) from the ``(n_colors, m)`` products J v_c, computed by the caller (``None`` when the
        pattern is empty)."""
        self._check_x(x)
        if products is not None:
            self.pattern.check_shape(products.shape[1], self.shape[1])
        return self._operator(products, x)

    def from_row_products(self, products: Tensor, x: Tensor) -> SparseOperator:
        """J(x) from the ``(k, n)`` products u_cᵀJ for the seeds of `row_coloring`, computed by the
        caller (module docstring, "By rows").

        Examples:
            >>> import torch
            >>> colored = ColoredJacobian(torch.tensor([[1, 1, 0], [0, 1, 1]]))
            >>> J = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 4.0]])
            >>> colored.from_row_products(colored.row_seeds(torch.zeros(2)) @ J, torch.zeros(3)).to_dense()
            tensor([[2., 1., 0.],
                    [0., 3., 4.]])
        """
        self._check_x(x)
        if products.shape != (self.row_coloring.n_colors, self.shape[1]):
            raise ValueError(f"products must have shape {(self.row_coloring.n_colors, self.shape[1])} "
                             f"(row colors, variables), got {tuple(products.shape)}")
        return self._operator(products, x, by_rows=True)

    def _check_x(self, x: Tensor) -> None:
        n = self.shape[1]
        if x.shape != (n,):
            raise ValueError(f"x must have shape ({n},), the columns of jac_sparsity {self.shape}, got {tuple(x.shape)}")

    def _operator(self, products: Tensor | None, x: Tensor, *, by_rows: bool = False) -> SparseOperator:
        """The `SparseOperator` with the entries of the colored products (by columns, or by rows), on
        the cached structure."""
        operator, gather = self._on_device.get(x.device, (None, None))
        if gather is None:
            gather = self.gather.to(x.device)
        if by_rows:
            if x.device not in self._row_gathers:
                self._row_gathers[x.device] = self._row_gather.to(x.device)
            gather = self._row_gathers[x.device]
        values = (torch.zeros(0, dtype=x.dtype, device=x.device) if products is None
                  else products.reshape(-1).index_select(0, gather))
        if operator is None:
            rows, cols = self.pattern.rows.to(x.device), self.pattern.cols.to(x.device)
            column_order = self.pattern.column_order.to(x.device)  # computed for the coloring: no second sort
            operator = SparseOperator(rows, cols, values, self.shape, column_order=column_order)
            partition = self.pattern.cache.get("partition")
            if partition is not None:  # found from the pattern already: on J's device
                operator.pattern.cache["partition"] = partition.to(x.device)
            self._on_device[x.device] = (operator, gather)
        else:
            operator = operator.with_values(values)
        return operator

    def _check_length(self, residual: Tensor) -> None:
        _check_residual(residual)
        self.pattern.check_shape(residual.shape[0], self.shape[1])


def colored_jacobian(
    fun: Callable[[Tensor], Tensor],
    x: Tensor,
    jac_sparsity: ColoredJacobian | object,
    *,
    residual: Tensor | None = None,
    decision: VmapDecision | None = None,
) -> ColoredJacobianResult:
    """The exact sparse J(x) of ``fun`` from the pattern ``jac_sparsity`` (see the module docstring).

    Pass a `ColoredJacobian` to reuse its coloring and structure across
    points; any other pattern is colored on every call.

    Examples:
        >>> import torch
        >>> fun = lambda x: x[1:] * x[:-1]
        >>> P = torch.tensor([[1, 1, 0], [0, 1, 1]])
        >>> result = colored_jacobian(fun, torch.tensor([1.0, 2.0, 3.0]), P)
        >>> result.jacobian.to_dense(), result.calls
        (tensor([[2., 1., 0.],
                [0., 3., 2.]]), 1)
    """
    colored = jac_sparsity if isinstance(jac_sparsity, ColoredJacobian) else ColoredJacobian(jac_sparsity)
    return colored(fun, x, residual=residual, decision=decision)


def _pushforward(fun: Callable[[Tensor], Tensor], x: Tensor) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    def pushforward(seed: Tensor) -> tuple[Tensor, Tensor]:
        return torch.func.jvp(fun, (x,), (seed,))

    return pushforward


def double_backward_products(fun: Callable[[Tensor], Tensor], x: Tensor, seeds: Tensor) -> tuple[Tensor, Tensor]:
    """r(x) and the rows J v for each row v of ``seeds``, from one call of ``fun`` and plain autograd.

    u ↦ Jᵀu is recorded once as a graph (`ResidualGraph`: at u = 1, so that a
    backward with a shortcut for zero cotangents still records its general
    path); each J v is then a backward pass through it. The graph is kept
    until the function returns.

    Raises:
        RuntimeError: if the backward of ``fun`` is not differentiable (a
            ``once_differentiable`` autograd.Function): its part of J v would
            otherwise be dropped in silence (`ResidualGraph.prepare_jvp`).

    Examples:
        >>> import torch
        >>> r, Jv = double_backward_products(lambda x: x**2, torch.tensor([1.0, 3.0]), torch.eye(2))
        >>> Jv
        tensor([[2., 0.],
                [0., 6.]])
    """
    graph = ResidualGraph.evaluate(fun, x)
    _check_residual(graph.residual)
    products = torch.stack([graph.jvp(seed) for seed in seeds]) if seeds.shape[0] else None
    if products is None:
        products = torch.zeros(0, graph.residual.shape[0], dtype=graph.residual.dtype, device=graph.residual.device)
    return graph.residual.detach(), products


def _check_residual(residual: object) -> None:
    if not isinstance(residual, Tensor):
        raise TypeError(f"fun must return the residual vector as a torch.Tensor, got {type(residual).__name__}")
    if residual.ndim != 1:
        raise ValueError(f"fun must return a 1-D residual vector, got shape {tuple(residual.shape)}")
    if not residual.is_floating_point():
        raise TypeError(f"fun must return a floating tensor, got {residual.dtype}")
