r"""Checking a sparsity pattern against the residual function: one random JVP.

A colored Jacobian is exact only if the pattern holds every nonzero of J. If
J has a nonzero (i, j') outside it, the colored J differs from J: the entry
(i, j') is missing, and it leaks into the entry (i, j) of the same color if
one exists. Let D = J − J_colored ≠ 0. For v drawn from a continuous
distribution, D v = 0 has probability zero (the kernel of D ≠ 0 is a proper
subspace), so comparing J v (one JVP of ``fun``) with J_colored v (a sparse
product) detects a wrong pattern with probability 1, up to rounding. Rows are
compared against the scale (|J_colored| |v|)_i + |(J v)_i| of their own terms,
so that large rows do not hide small ones.

When a row differs, one VJP with eᵢ gives row i of J exactly, and with it the
columns that the pattern misses there.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from trustls.operators.residual_graph import ResidualGraph
from trustls.operators.sparse import SparseOperator
from trustls.sparsity.colored import ColoredJacobian, colored_jacobian
from trustls.sparsity.found import disagreeing_rows

__all__ = ["check_sparsity"]

_SHOWN_COLUMNS = 8


def check_sparsity(
    fun: Callable[[Tensor], Tensor],
    x: Tensor,
    jac_sparsity: ColoredJacobian | object,
    *,
    jacobian: SparseOperator | None = None,
    generator: torch.Generator | None = None,
    rtol: float | None = None,
) -> None:
    """Raise `ValueError` if J(x) has a nonzero outside ``jac_sparsity`` (see the module docstring).

    Args:
        fun: the residual function.
        x: the point, shape ``(n,)``.
        jac_sparsity: the pattern (any accepted form) or a `ColoredJacobian`.
        jacobian: the colored J at ``x`` when already computed; otherwise it
            is computed here (``n_colors`` more JVPs).
        generator: draws v (default: a generator seeded with 0, so the check
            is reproducible).
        rtol: relative tolerance per row (default √eps of ``x``'s dtype).

    Raises:
        ValueError: naming ``jac_sparsity``, the first row where J v
            differs and the columns the pattern misses in that row.

    Examples:
        >>> import torch
        >>> fun = lambda x: torch.stack([x[0] * x[1], x[2] ** 2])
        >>> check_sparsity(fun, torch.ones(3), torch.tensor([[1, 1, 0], [0, 0, 1]]))
        >>> check_sparsity(fun, torch.ones(3), torch.tensor([[1, 0, 0], [0, 0, 1]]))
        Traceback (most recent call last):
        ...
        ValueError: jac_sparsity misses nonzeros of the Jacobian at x: J v differs in 1 of 2 rows; row 0 depends on columns [1], which jac_sparsity omits
    """
    if jacobian is None:
        jacobian = colored_jacobian(fun, x, jac_sparsity).jacobian
    x = x.detach()
    if generator is None:
        generator = torch.Generator(device=x.device).manual_seed(0)
    v = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    # One evaluation with its graph: J v by double backward, and a row of J by one VJP if needed.
    graph = ResidualGraph.evaluate(fun, x)
    residual = graph.residual
    if not isinstance(residual, Tensor) or residual.shape != (jacobian.shape[0],):
        raise ValueError(f"fun must return a residual of length {jacobian.shape[0]}, the rows of jac_sparsity, "
                         f"got {tuple(residual.shape) if isinstance(residual, Tensor) else type(residual).__name__}")
    if residual.dtype != x.dtype:
        raise TypeError(f"fun must return a tensor of x's dtype {x.dtype}, got {residual.dtype}")
    exact = graph.jvp(v).detach()
    wrong = disagreeing_rows(jacobian, v, exact, rtol)
    if wrong.numel() == 0:
        return
    colored = jacobian.matvec(v)
    row = int(wrong[0])
    row_of_j = graph.vjp(torch.zeros_like(residual).index_fill_(0, wrong[:1], 1.0)).detach()
    dependencies = torch.nonzero(row_of_j != 0).flatten()
    listed = jacobian.cols[jacobian.rows == row]
    missing = dependencies[~torch.isin(dependencies, listed)].tolist()
    if missing:
        shown = ", ".join(str(j) for j in missing[:_SHOWN_COLUMNS]) + (", ..." if len(missing) > _SHOWN_COLUMNS else "")
        where = f"row {row} depends on columns [{shown}], which jac_sparsity omits"
    else:  # the missing entry leaked into this row's entries without being in it
        where = f"row {row} differs: {float(colored[row]):.6g} from the pattern, {float(exact[row]):.6g} from fun"
    raise ValueError(f"jac_sparsity misses nonzeros of the Jacobian at x: J v differs in {wrong.numel()} of "
                     f"{residual.shape[0]} rows; {where}")

