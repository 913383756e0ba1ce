"""Sparse Jacobians from a sparsity pattern: coloring, colored products, block structure.

See docs/sparse.md. The pieces, in the order a solve uses them:

* `jacobian_pattern`: normalize a user's ``jac_sparsity`` to a `JacobianPattern`;
* `color_columns`: a `ColumnColoring` (Curtis, Powell & Reid 1974; Coleman & Moré 1983),
  `cyclic_coloring` the fewest valid colors j mod c;
* `ColoredJacobian` / `colored_jacobian`: the exact sparse J from one JVP per color;
* `check_sparsity`: test a pattern against the residual function with one random JVP;
* `find_pattern` / `FoundSparsity`: J's pattern found from products, for a residual
  given without one (`trustls.sparsity.found`);
* `find_blocks`: the `BlockPartition` of the columns (cameras and points);
* `normal_diagonal_blocks`, `block_jacobi_scaling`, `times_block_diagonal`: the
  block diagonal of JᵀJ over a partition, block-Jacobi scaling from it, and J T
  on J's pattern.
"""

from trustls.sparsity.blocks import BlockPartition, find_blocks, pattern_blocks
from trustls.sparsity.check import check_sparsity
from trustls.sparsity.colored import (
    ColoredJacobian,
    ColoredJacobianResult,
    VmapDecision,
    colored_jacobian,
)
from trustls.sparsity.coloring import (
    ORDERINGS,
    ColumnColoring,
    color_columns,
    cyclic_coloring,
)
from trustls.sparsity.found import FoundSparsity, find_pattern
from trustls.sparsity.normal_blocks import (
    block_jacobi_scaling,
    normal_diagonal_blocks,
    times_block_diagonal,
)
from trustls.sparsity.pattern import (
    JacobianPattern,
    jacobian_pattern,
    pattern_from_indices,
)

__all__ = [
    "ORDERINGS",
    "BlockPartition",
    "ColoredJacobian",
    "ColoredJacobianResult",
    "ColumnColoring",
    "FoundSparsity",
    "JacobianPattern",
    "VmapDecision",
    "block_jacobi_scaling",
    "check_sparsity",
    "color_columns",
    "colored_jacobian",
    "cyclic_coloring",
    "find_blocks",
    "find_pattern",
    "jacobian_pattern",
    "normal_diagonal_blocks",
    "pattern_blocks",
    "pattern_from_indices",
    "times_block_diagonal",
]
