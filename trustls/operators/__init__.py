"""Linear operators: dense matrices and matrix-free Jacobian and Gauss-Newton products."""

from trustls.operators.base import LinearOperator, PowerOfTwoBalanced, ScaledOperator
from trustls.operators.dense import DenseOperator, NormalOperator
from trustls.operators.diagonal import (
    BlockDiagonalOperator,
    DiagonalOperator,
    ShiftedOperator,
)
from trustls.operators.implicit import (
    DEFAULT_PRODUCT_METHOD,
    PRODUCT_METHODS,
    JacobianOperator,
    JacobianProducts,
    ProductFallback,
    jacobian_products,
)
from trustls.operators.output import (
    BlockFactor,
    DiagonalFactor,
    EffectiveJacobianOperator,
    OutputFactor,
    SoftmaxFactor,
    effective_jacobian,
    effective_jacobian_matrix,
)
from trustls.operators.residual_graph import ResidualGraph
from trustls.operators.sparse import SparseOperator, SparsityPattern

__all__ = [
    "BlockDiagonalOperator",
    "BlockFactor",
    "DiagonalFactor",
    "EffectiveJacobianOperator",
    "OutputFactor",
    "SoftmaxFactor",
    "effective_jacobian",
    "effective_jacobian_matrix",
    "DiagonalOperator",
    "DEFAULT_PRODUCT_METHOD",
    "PRODUCT_METHODS",
    "DenseOperator",
    "JacobianOperator",
    "JacobianProducts",
    "LinearOperator",
    "NormalOperator",
    "PowerOfTwoBalanced",
    "ProductFallback",
    "ResidualGraph",
    "ScaledOperator",
    "ShiftedOperator",
    "SparseOperator",
    "SparsityPattern",
    "jacobian_products",
]
