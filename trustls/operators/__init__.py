"""Linear operators: dense matrices and matrix-free Jacobian and Gauss-Newton products."""

from trustls.operators.base import LinearOperator, ScaledOperator
from trustls.operators.dense import DenseOperator, NormalOperator
from trustls.operators.diagonal import BlockDiagonalOperator, DiagonalOperator
from trustls.operators.sparse import SparseOperator, SparsityPattern
from trustls.operators.implicit import (
    DEFAULT_PRODUCT_METHOD,
    PRODUCT_METHODS,
    GaussNewtonOperator,
    JacobianOperator,
    JacobianProducts,
    ProductFallback,
    jacobian_products,
)
from trustls.operators.residual_graph import ResidualGraph

__all__ = [
    "BlockDiagonalOperator",
    "DiagonalOperator",
    "DEFAULT_PRODUCT_METHOD",
    "PRODUCT_METHODS",
    "DenseOperator",
    "GaussNewtonOperator",
    "JacobianOperator",
    "JacobianProducts",
    "LinearOperator",
    "NormalOperator",
    "ProductFallback",
    "ResidualGraph",
    "ScaledOperator",
    "SparseOperator",
    "SparsityPattern",
    "jacobian_products",
]
