"""Sparse Jacobians from a sparsity pattern: coloring, colored products, block structure.

See docs/sparse.md. The pieces, in the order a solve uses them:

* `jacobian_pattern`: normalize a user's ``jac_sparsity`` to a `JacobianPattern`;
* `color_columns`: a `ColumnColoring` (Curtis, Powell & Reid 1974; Coleman & Moré 1983);
* `ColoredJacobian` / `colored_jacobian`: the exact sparse J from one JVP per color;
* `check_sparsity`: test a pattern against the residual function with one random JVP;
* `find_blocks`: the `BlockPartition` of the columns (cameras and points).
"""

from trustls.sparsity.blocks import BlockPartition, find_blocks
from trustls.sparsity.check import check_sparsity
from trustls.sparsity.colored import ColoredJacobian, ColoredJacobianResult, VmapDecision, colored_jacobian
from trustls.sparsity.coloring import ORDERINGS, ColumnColoring, color_columns
from trustls.sparsity.pattern import JacobianPattern, jacobian_pattern, pattern_from_indices

__all__ = [
    "ORDERINGS",
    "BlockPartition",
    "ColoredJacobian",
    "ColoredJacobianResult",
    "ColumnColoring",
    "JacobianPattern",
    "VmapDecision",
    "check_sparsity",
    "color_columns",
    "colored_jacobian",
    "find_blocks",
    "jacobian_pattern",
    "pattern_from_indices",
]
