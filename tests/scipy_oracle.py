"""The one place tests talk to scipy: ``scipy.optimize.least_squares`` on torch residuals."""

import numpy as np
import scipy.optimize
import torch


def scipy_least_squares(residual, x0, **options):
    """scipy's trf with an exact Jacobian (torch.func.jacfwd), on float64 numpy arrays."""
    jacobian = torch.func.jacfwd(residual)

    def fun(x):
        return residual(torch.from_numpy(x)).detach().numpy()

    def jac(x):
        return jacobian(torch.from_numpy(x)).detach().numpy()

    return scipy.optimize.least_squares(fun, x0.detach().numpy().astype(np.float64), jac=jac, method="trf", **options)


def scipy_least_squares_sparse(residual, x0, jac_sparsity, **options):
    """scipy's trf from ``residual`` alone, with finite differences grouped by ``jac_sparsity``.

    What a scipy user with a sparsity pattern runs (``jac="2-point"``, the
    default); ``jac_sparsity`` is a dense bool tensor or a numpy array.
    """
    pattern = jac_sparsity.numpy() if isinstance(jac_sparsity, torch.Tensor) else np.asarray(jac_sparsity)

    def fun(x):
        return residual(torch.from_numpy(x)).detach().numpy()

    x0 = x0.detach().numpy().astype(np.float64)
    return scipy.optimize.least_squares(fun, x0, jac_sparsity=pattern, method="trf", **options)
