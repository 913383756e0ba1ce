"""Linear operators: dense matrices and matrix-free Jacobian and Gauss-Newton products."""

from trustls.operators.base import LinearOperator, ScaledOperator
from trustls.operators.dense import DenseOperator, NormalOperator
from trustls.operators.sparse import SparseOperator
from trustls.operators.implicit import (
    DEFAULT_PRODUCT_METHOD,
    PRODUCT_METHODS,
    GaussNewtonOperator,
    JacobianOperator,
    JacobianProducts,
    jacobian_products,
)

__all__ = [
    "DEFAULT_PRODUCT_METHOD",
    "PRODUCT_METHODS",
    "DenseOperator",
    "GaussNewtonOperator",
    "JacobianOperator",
    "JacobianProducts",
    "LinearOperator",
    "NormalOperator",
    "ScaledOperator",
    "SparseOperator",
    "jacobian_products",
]
