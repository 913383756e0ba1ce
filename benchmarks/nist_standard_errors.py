"""Standard errors on the 27 NIST StRD problems: trustls.curve_fit against NIST's certified values and scipy.

Every problem is fitted from NIST's start 1 and start 2 by ``trustls.curve_fit``
(its defaults: the exact solver "lstsq" with ``x_scale="jac"``) and by
``scipy.optimize.curve_fit`` (its default "lm", given the exact Jacobian from
``torch.func.jacfwd``), both with ``ftol = xtol = gtol = TOL``. Each answer is scored
by the log relative error (McCullough 1998; at most 11 digits) of the parameters
and of the standard errors √diag(pcov) against NIST's certified values. For trustls
the standard errors are also computed matrix-free (`trustls.covariance`, CG on JᵀJ
through J's products) at its solution.

A fit that fails (scipy raises RuntimeError, or lands elsewhere) scores 0. Prints a
markdown table and the total time of each library's curve_fit calls (one thread, same run).

Run:  python benchmarks/nist_standard_errors.py [--tol 1e-13]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import scipy.optimize
import torch

import trustls
from trustls.covariance import standard_errors
from trustls.operators import JacobianOperator, jacobian_products
from trustls.problems import nist


def model_of(problem: nist.NistProblem):
    def f(x, *b):
        return problem.model(torch.stack(b) if isinstance(b[0], torch.Tensor) else torch.tensor(b))

    return f


def trustls_fit(problem, start, tol):
    f = model_of(problem)
    try:
        popt, pcov = trustls.curve_fit(f, None, problem.response, p0=start, ftol=tol, xtol=tol, gtol=tol)
    except RuntimeError:
        return None
    return popt, pcov.diagonal().sqrt()


def matrix_free_errors(problem, popt):
    """The standard errors at trustls' solution from CG on JᵀJ, J through its products only."""
    operator = JacobianOperator(jacobian_products(lambda b: problem.model(b) - problem.response, popt), popt.shape[0])
    cost = 0.5 * float((problem.model(popt) - problem.response).square().sum())
    return standard_errors(operator, cost)


def scipy_fit(problem, start, tol):
    def f(_, *b):
        return problem.model(torch.tensor(b, dtype=torch.float64)).numpy()

    def jac(_, *b):
        return torch.func.jacfwd(problem.model)(torch.tensor(b, dtype=torch.float64)).numpy()

    y = problem.response.numpy()
    try:
        popt, pcov = scipy.optimize.curve_fit(
            f, np.zeros(y.size), y, p0=start.numpy(), jac=jac, ftol=tol, xtol=tol, gtol=tol
        )
    except RuntimeError:
        return None
    return torch.from_numpy(popt), torch.from_numpy(np.sqrt(np.diag(pcov)))


def digits(fit, problem):
    if fit is None:
        return "fail", "fail"
    return f"{nist.lre(fit[0], problem.certified_params):.1f}", f"{nist.lre(fit[1], problem.certified_std):.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tol", type=float, default=1e-13)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # scipy's OptimizeWarning on failed covariances; the table shows them
    trustls_fit(nist.load("Misra1a"), nist.load("Misra1a").starts[1], args.tol)  # torch.func's one-time warm-up
    seconds = {"trustls": 0.0, "scipy": 0.0}
    print("| problem | start | trustls params | trustls s.e. | trustls s.e. (CG) | scipy params | scipy s.e. |")
    print("|---|---|---|---|---|---|---|")
    for name in nist.names():
        problem = nist.load(name)
        for k, start in enumerate(problem.starts, start=1):
            began = time.perf_counter()
            ours = trustls_fit(problem, start, args.tol)
            seconds["trustls"] += time.perf_counter() - began
            began = time.perf_counter()
            theirs = scipy_fit(problem, start, args.tol)
            seconds["scipy"] += time.perf_counter() - began
            cg = (
                "fail"
                if ours is None
                else f"{nist.lre(matrix_free_errors(problem, ours[0]), problem.certified_std):.1f}"
            )
            print(
                f"| {name} | {k} | {' | '.join(digits(ours, problem))} | {cg} | {' | '.join(digits(theirs, problem))} |"
            )
    ratio = seconds["trustls"] / seconds["scipy"]
    print(
        f"\ntotal time of the curve_fit calls: trustls {seconds['trustls']:.2f} s, scipy {seconds['scipy']:.2f} s, ratio {ratio:.2f}"
    )


if __name__ == "__main__":
    main()
