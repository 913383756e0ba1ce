"""scipy's ``least_squares`` inputs as trustls takes them: residuals, Jacobians, patterns, callbacks.

scipy reads what a user's functions return through numpy: ``fun``'s value by
``np.atleast_1d`` (a scalar is one residual), ``jac``'s by ``np.atleast_2d``
(a 1-D array is the one row of a single residual) unless it is a scipy sparse
matrix or ``LinearOperator``; ``jac_sparsity`` by ``np.atleast_2d`` (its
nonzero structure, whatever the values); and it calls
``callback(intermediate_result=...)`` when the callback's only parameter has
that name, ``callback(x)`` otherwise (``_wrap_callback`` in
``scipy/optimize/_optimize.py``). The wrappers here apply the same rules to
torch values, so that code written for scipy runs unchanged once ``fun``
computes with torch. With a callable ``jac`` trustls never differentiates
``fun``, so there ``fun`` may return what scipy reads (a numpy array, a list,
a number): it is converted to x's dtype and device. scipy itself is never
imported: its types are recognized by their methods (``tocoo`` for a sparse
matrix; ``matvec`` and ``rmatvec`` for a ``LinearOperator``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from trustls.models.user_jacobian import SparseStructure, is_plain_sparse
from trustls.operators.base import LinearOperator
from trustls.result import IterationInfo

__all__ = ["UserJacobian", "as_pattern", "residual_function", "scipy_callback"]


def residual_function(
    fun: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any], *, convert: bool = False
) -> Callable[[Tensor], Any]:
    """``x ↦ fun(x, *args, **kwargs)``, with a 0-d tensor read as one residual (scipy's ``atleast_1d``).

    With ``convert`` (a callable ``jac`` was given, so ``fun`` is never
    differentiated) a value other than a tensor (a numpy array, a list, a
    number) becomes a tensor of x's dtype on x's device; one that
    ``torch.as_tensor`` cannot read is left for `trustls.function.split_outputs`
    to refuse, with its message.
    """

    def residual(x: Tensor) -> Any:
        value = fun(x, *args, **kwargs)
        if convert and not isinstance(value, (Tensor, tuple)):
            try:
                value = torch.as_tensor(value, dtype=x.dtype, device=x.device)
            except (TypeError, ValueError, RuntimeError):
                pass  # refused with the reason by split_outputs
        return value.reshape(1) if isinstance(value, Tensor) and value.ndim == 0 else value

    return residual


class _HostOperator(LinearOperator):
    """A scipy ``LinearOperator`` (or anything with ``matvec``, ``rmatvec``, ``shape``) on numpy vectors.

    Its products run on the host in numpy, so each one copies the vector to the
    host and back: that is the cost of an operator written for scipy.
    """

    def __init__(self, operator: Any, like: Tensor):
        super().__init__(tuple(operator.shape), like.dtype, like.device)
        self.operator = operator

    def _apply(self, product: Callable[[Any], Any], v: Tensor) -> Tensor:
        value = product(v.detach().cpu().numpy())
        return torch.as_tensor(value, dtype=self.dtype, device=self.device).reshape(-1)

    def matvec(self, v: Tensor) -> Tensor:
        return self._apply(self.operator.matvec, v)

    def rmatvec(self, u: Tensor) -> Tensor:
        return self._apply(self.operator.rmatvec, u)


def _is_host_operator(value: object) -> bool:
    return all(hasattr(value, name) for name in ("matvec", "rmatvec", "shape")) and not isinstance(value, Tensor)


class UserJacobian:
    """A user's ``jac(x, *args, **kwargs)`` returning J as a tensor (dense or sparse), a `LinearOperator`,
    a numpy array, a scipy sparse matrix or a scipy ``LinearOperator``, converted for `GaussNewtonModel`.

    `probe` evaluates J at ``x0`` before the solve, so that ``least_squares``
    can choose its solver by J's kind as scipy does; the solve's first call at
    ``x0`` then returns that J instead of calling ``jac`` again. A sparse J
    (a torch sparse tensor or a scipy sparse matrix) becomes a `SparseOperator`
    on the structure kept from the last one (`trustls.models.user_jacobian`),
    the probe's included, so that what is derived from its pattern (the blocks
    of block-Jacobi scaling and of ``solver="schur"``) is found once per pattern.
    """

    def __init__(self, jac: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]):
        self.jac, self.args, self.kwargs = jac, tuple(args), dict(kwargs)
        self._probed: tuple[Tensor, Tensor | LinearOperator] | None = None
        self._structure = SparseStructure()

    def probe(self, x0: Tensor) -> Tensor | LinearOperator:
        # With grad enabled, as `GaussNewtonModel.linearize` calls jacobian: a jac may differentiate
        # fun itself (torch.autograd.grad row by row); J is data, so it is detached.
        with torch.enable_grad():
            J = self(x0)
        J = J.detach() if isinstance(J, Tensor) else J
        self._probed = (x0.clone(), J)
        return J

    def __call__(self, x: Tensor) -> Tensor | LinearOperator:
        if self._probed is not None:
            x0, J = self._probed
            self._probed = None  # served once: later points differ, and memory is released
            if x0.dtype == x.dtype and x0.shape == x.shape and torch.equal(x0, x):
                return J
        J = self.convert(self.jac(x, *self.args, **self.kwargs), x)
        return self._structure.operator_for(J.detach()) if is_plain_sparse(J) and J.is_floating_point() else J

    @staticmethod
    def convert(J: Any, x: Tensor) -> Tensor | LinearOperator:
        """J as a tensor or a `LinearOperator` on x's dtype and device (the module docstring's rules)."""
        if isinstance(J, LinearOperator):
            return J
        if hasattr(J, "tocoo"):  # a scipy sparse matrix, duck-typed
            coo = J.tocoo()
            if len(coo.shape) != 2:
                raise ValueError(f"jac must return a sparse matrix of 2 dimensions (m, n), got shape {tuple(coo.shape)}")
            rows, cols = (torch.as_tensor(i, dtype=torch.int64, device=x.device) for i in (coo.row, coo.col))
            values = torch.as_tensor(coo.data, dtype=x.dtype, device=x.device)
            # Checked: indices out of J's shape would otherwise reach the sparse kernels unchecked.
            return torch.sparse_coo_tensor(torch.stack([rows, cols]), values, coo.shape, check_invariants=True)
        if _is_host_operator(J):  # a scipy LinearOperator, duck-typed
            return _HostOperator(J, x)
        if not isinstance(J, Tensor):
            try:
                J = torch.as_tensor(J, dtype=x.dtype, device=x.device)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(
                    "jac must return a tensor, a LinearOperator, an array or a sparse matrix, "
                    f"got {type(J).__name__}"
                ) from None
        if J.layout != torch.strided:
            if J.ndim != 2:
                raise ValueError(f"jac must return a sparse tensor of 2 dimensions (m, n), got shape {tuple(J.shape)}")
            return J
        if J.ndim > 2:
            raise ValueError(f"jac must return an array of at most 2 dimensions, got shape {tuple(J.shape)}")
        return J.reshape(1, -1) if J.ndim < 2 else J  # numpy's atleast_2d: a 1-D J is one row


def as_pattern(jac_sparsity: Any) -> Any:
    """scipy's ``jac_sparsity``: a list or tuple is read as an array, and an array or a dense tensor
    of fewer than 2 dimensions is one residual's row (numpy's ``atleast_2d``). Its nonzero entries
    are the structure, whatever their values (`trustls.sparsity.jacobian_pattern`)."""
    if isinstance(jac_sparsity, (list, tuple)):
        try:
            jac_sparsity = torch.as_tensor(jac_sparsity)
        except (TypeError, ValueError, RuntimeError) as error:  # ragged, or entries that are not numbers
            raise ValueError(
                f"jac_sparsity given as a list must be a rectangular (m, n) array of numbers or bools, got one that "
                f"is not ({error})"
            ) from None
    dense = (
        isinstance(jac_sparsity, Tensor) and jac_sparsity.layout == torch.strided
    ) or type(jac_sparsity).__module__ == "numpy"
    if dense and jac_sparsity.ndim < 2:
        return jac_sparsity.reshape(1, -1)
    return jac_sparsity


def scipy_callback(callback: Callable[..., Any] | None) -> Callable[[IterationInfo], Any] | None:
    """``callback`` called as scipy calls it: with the `IterationInfo` when its only parameter is named
    ``intermediate_result``, else with a copy of x (``_wrap_callback``'s rule)."""
    if callback is None:
        return None
    if not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    try:
        parameters = set(inspect.signature(callback).parameters)
    except (TypeError, ValueError):  # a builtin without a signature: scipy's default, x
        parameters = set()
    if parameters == {"intermediate_result"}:
        return lambda info: callback(intermediate_result=info)
    return lambda info: callback(info.x.clone())
