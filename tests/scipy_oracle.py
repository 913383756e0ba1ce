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


def scipy_robust_loss(f, J, loss, f_scale):
    """scipy's robust loss at residuals ``f`` (float64 numpy) with Jacobian ``J``.

    Returns ``(cost, rho, J_scaled, f_scaled)``: the cost ½C²Σρ, the (3, m)
    array scipy's loss function returns (ρ scaled by C², ρ′, ρ″ divided by
    C²), and ``scale_for_robust_loss_function``'s J and f, as ``trf`` uses them.
    """
    from scipy.optimize._lsq.common import scale_for_robust_loss_function
    from scipy.optimize._lsq.least_squares import construct_loss_function

    loss_function = construct_loss_function(f.size, loss, f_scale)
    if loss_function is None:  # "linear"
        return 0.5 * float(f @ f), None, J, f
    cost = loss_function(f, cost_only=True)
    rho = np.array(loss_function(f), copy=True)  # built-in losses reuse one buffer
    J_scaled, f_scaled = scale_for_robust_loss_function(J.copy(), f.copy(), rho.copy())
    return cost, rho, J_scaled, f_scaled


def scipy_curve_fit(model, xdata, ydata, p0, **options):
    """scipy's curve_fit on a torch model ``model(x, *params)``, with its exact Jacobian (torch.func.jacfwd).

    ``xdata`` and ``ydata`` are numpy arrays; ``p0`` is required because the
    wrapper's signature ``f(x, *params)`` hides the parameter count from scipy.
    """

    def f(x, *params):
        return model(torch.from_numpy(np.asarray(x)), *torch.tensor(params, dtype=torch.float64)).detach().numpy()

    def jac(x, *params):
        x = torch.from_numpy(np.asarray(x))
        J = torch.func.jacfwd(lambda p: model(x, *p))(torch.tensor(params, dtype=torch.float64))
        return J.detach().numpy()

    if np.ndim(options.get("sigma")) == 0 and options.get("sigma") is not None:
        # scipy's Jacobian wrapper fails on a 0-d sigma ("expected square matrix");
        # a one-element sigma means the same to its residual wrapper and works.
        options["sigma"] = np.full(1, options["sigma"], dtype=np.float64)
    return scipy.optimize.curve_fit(f, xdata, ydata, p0=np.asarray(p0, dtype=np.float64), jac=jac, **options)


def scipy_least_squares_sparse(residual, x0, jac_sparsity, **options):
    """scipy's trf from ``residual`` alone, with finite differences grouped by ``jac_sparsity``.

    What a scipy user with a sparsity pattern runs (``jac="2-point"``, the
    default); ``jac_sparsity`` is a dense bool tensor, a numpy array or a scipy sparse matrix.
    """
    if isinstance(jac_sparsity, torch.Tensor):
        pattern = jac_sparsity.numpy()
    elif hasattr(jac_sparsity, "tocoo"):  # a scipy sparse pattern, as scipy takes it
        pattern = jac_sparsity
    else:
        pattern = np.asarray(jac_sparsity)

    def fun(x):
        return residual(torch.from_numpy(x)).detach().numpy()

    x0 = x0.detach().numpy().astype(np.float64)
    return scipy.optimize.least_squares(fun, x0, jac_sparsity=pattern, method="trf", **options)


def scipy_make_strictly_feasible(x, lb, ub, rstep=1e-10):
    """scipy's ``make_strictly_feasible`` (optimize._lsq.common), on numpy arrays: test data as scipy builds it."""
    from scipy.optimize._lsq.common import make_strictly_feasible

    return make_strictly_feasible(x, lb, ub, rstep=rstep)


def scipy_cl_scaling_vector(x, g, lb, ub):
    """scipy's Coleman-Li scaling vector v (``CL_scaling_vector``) at x for the gradient g, on numpy arrays."""
    from scipy.optimize._lsq.common import CL_scaling_vector

    return CL_scaling_vector(x, g, lb, ub)[0]
