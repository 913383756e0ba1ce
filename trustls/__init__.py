"""trustls: matrix-free trust-region nonlinear least squares for PyTorch.

Minimize ½‖r(x)‖² for any PyTorch residual function r::

    from trustls import TrustRegion, GaussNewtonModel
    result = TrustRegion(GaussNewtonModel(), solver="cg").solve(residuals, x0)
"""

from trustls.api import least_squares
from trustls.batched import BatchedJacobianWarning, BatchResult
from trustls.covariance import CovarianceWarning
from trustls.curve_fit import curve_fit
from trustls.models import CurvatureModel, GaussNewtonModel, Linearization
from trustls.optim import TrustRegionOptimizer
from trustls.radius import RadiusPolicy
from trustls.result import Result, Status
from trustls.scaling import BlockJacobi, JacobiScale
from trustls.subproblem import (
    GLTR,
    DenseLstsq,
    IterativeSchur,
    SteihaugCG,
    SubproblemSolver,
)
from trustls.trust_region import IterationInfo, TrustRegion, TrustRegionState

__version__ = "0.1.0"

__all__ = [
    "BatchResult",
    "BatchedJacobianWarning",
    "BlockJacobi",
    "CovarianceWarning",
    "CurvatureModel",
    "GLTR",
    "DenseLstsq",
    "GaussNewtonModel",
    "IterationInfo",
    "IterativeSchur",
    "JacobiScale",
    "Linearization",
    "RadiusPolicy",
    "Result",
    "Status",
    "SteihaugCG",
    "SubproblemSolver",
    "TrustRegion",
    "TrustRegionOptimizer",
    "TrustRegionState",
    "curve_fit",
    "least_squares",
]
