"""The one place tests talk to scipy: ``scipy.optimize.least_squares`` on torch residuals."""

import numpy as np
import scipy.optimize
import torch


def scipy_least_squares(residual, x0, *, jacobian="jacfwd", **options):
    """scipy's trf with an exact Jacobian (``torch.func.jacfwd``, or ``jacobian="jacrev"``), on float64 arrays."""
    jacobian = getattr(torch.func, jacobian)(residual)

    def fun(x):
        return residual(torch.from_numpy(x)).detach().numpy()

    def jac(x):
        return jacobian(torch.from_numpy(x)).detach().numpy()

    return scipy.optimize.least_squares(fun, x0.detach().numpy().astype(np.float64), jac=jac, method="trf", **options)
