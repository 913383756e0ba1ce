"""Covariance and standard errors of fitted parameters.

Let the data follow y = f(x; β) + ε with independent errors of equal variance σ²
(after whitening by known standard deviations or a known covariance, as
`trustls.curve_fit` does), and let β̂ minimize ½‖r(β)‖², r = f − y. Linearizing r
at β̂, r(β) ≈ r(β̂) + J(β − β̂) with J = ∂r/∂β at β̂, gives the asymptotic
distribution of the estimate

    β̂ − β ~ N(0, σ² (JᵀJ)⁻¹)

(Seber & Wild 1989, §2.1.2; Bates & Watts 1988, §2.3), with σ² estimated by the
residual mean square

    s² = ‖r(β̂)‖² / (m − n) = 2·cost / (m − n)

for m residuals and n parameters. The covariance is ``s² (JᵀJ)⁻¹``, or ``(JᵀJ)⁻¹``
with ``absolute_sigma=True``, when the residuals were already divided by known
standard deviations (σ = 1 then). The standard errors are the square roots of its
diagonal: the "standard deviations" that NIST certifies for its StRD nonlinear
regression problems are these, and ``scipy.optimize.curve_fit`` returns this matrix.

The covariance is computed by one SVD of J (`DenseSVD`: exact, rank-revealing; the
default for a dense J and for an operator J that fits in 2²⁴ entries, which n
products densify) or by CG on JᵀJ, one solve per requested column with two products
with J per iteration (`MatrixFreeCG`: memory O(m + n) per column; the default for
larger operators). For all n columns the SVD is also the cheaper in products (n
against about 2·k·n for k CG iterations), so CG is for what does not fit in memory,
or for a few columns of a large problem. See `trustls.covariance.methods` and
`trustls.covariance.conjugate_gradient` for their numerics and accuracy.

Where the covariance cannot be estimated the result is filled with ``inf`` and a
`CovarianceWarning` says why, as scipy's ``curve_fit`` does: m ≤ n without
``absolute_sigma`` (no degrees of freedom for s²), or a Jacobian or cost with NaN or
inf entries. A rank-deficient J gives the pseudo-inverse and a warning (SVD), or
columns that do not converge and a warning (CG).

References:
    G. A. F. Seber, C. J. Wild, Nonlinear Regression, Wiley, 1989, §2.1.
    D. M. Bates, D. G. Watts, Nonlinear Regression Analysis and Its Applications,
    Wiley, 1988, §2.3.
    NIST/ITL Statistical Reference Datasets, nonlinear regression, "certified values"
    (parameter estimates, their standard deviations, residual sum of squares),
    https://www.itl.nist.gov/div898/strd/
    W. H. Press et al., Numerical Recipes in C, 2nd ed., Cambridge, 1992, §15.4.
"""

from trustls.covariance.estimates import (
    CovarianceEntries,
    covariance,
    covariance_entries,
    standard_errors,
)
from trustls.covariance.methods import CovarianceWarning, DenseSVD, MatrixFreeCG

__all__ = [
    "CovarianceEntries",
    "CovarianceWarning",
    "DenseSVD",
    "MatrixFreeCG",
    "covariance",
    "covariance_entries",
    "standard_errors",
]
