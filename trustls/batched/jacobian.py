"""The batch's residual function, evaluated with its Jacobians in one vectorized call.

``fun`` maps a batch of points X of shape (K, n) to residuals of shape
(K, m), row b depending on X[b] only. The Jacobian of the whole map is then
block diagonal, and one Jacobian-vector product with the tangent that is
e_j in every row,

    V_j = 1 ⊗ e_jᵀ   (every row of V_j is e_j),   (J V_j)[b] = J_b e_j,

gives column j of every problem's Jacobian at once. ``torch.func.vmap`` over
the n tangents V_1, …, V_n turns the n products into one call of ``fun``
whose primal output is the residual itself (forward mode; Griewank & Walther
2008, ch. 3). When n > m the m cotangents U_i = 1 ⊗ e_iᵀ give the rows
instead, from one reverse-mode pullback (``torch.func.vjp``) vmapped over
them. A function that ``vmap`` cannot batch (``.item()``, data-dependent
Python control flow, in-place writes into captured tensors) is detected at
the first evaluation and the products are then taken one tangent at a time,
n calls of ``fun`` (or one call and m pullbacks) instead of one, with a
`BatchedJacobianWarning`. A model with ``jacobian=`` skips differentiation:
``jacobian(X)`` returns the (K, m, n) stack itself.

Row independence is the contract that makes this correct, and it is not
checked: a ``fun`` that mixes rows (a mean over the batch, a batch norm)
gets the Jacobian of the whole map summed into the wrong blocks.

With ``compact=True`` the function is called as ``fun(X, rows)`` where
``rows`` is an int64 tensor of the problems' indices in the batch and X
holds only those rows, so per-problem data can be indexed (``data[rows]``)
and finished problems cost nothing.

References:
    A. Griewank and A. Walther, "Evaluating Derivatives", 2nd ed., SIAM, 2008.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from trustls.function import split_outputs

__all__ = ["BatchFunction", "BatchedJacobianWarning", "Evaluation"]


class BatchedJacobianWarning(UserWarning):
    """``torch.func.vmap`` could not batch ``fun``: Jacobians are computed one tangent at a time."""


@dataclass(frozen=True)
class Evaluation:
    """``fun`` and its Jacobians at K points.

    Attributes:
        outputs: ``(K, m)``, the flattened outputs of each problem, detached.
        targets: ``(K, m)`` targets ``fun`` returned beside the outputs, or ``None``.
        columns: ``(n, K, m)``: ``columns[j, b]`` is column j of J_b.
    """

    outputs: Tensor
    targets: Tensor | None
    columns: Tensor


class BatchFunction:
    """``fun(X)`` (or ``fun(X, rows)``) counted, argument-protected and checked, with its Jacobians.

    Args:
        fun: the batched residual function (module docstring).
        batch: B, the number of problems.
        compact: call ``fun(X, rows)`` with the rows of the problems evaluated.
        jacobian: the model's ``jacobian``, called like ``fun``, returning
            ``(K, m, n)``; ``None`` for automatic differentiation.

    Attributes:
        calls: calls of ``fun`` so far (each on a whole batch or its compacted rows).
        mode: ``"forward"``, ``"reverse"``, ``"jacobian"``, or with ``"-loop"``
            appended once ``vmap`` failed; fixed at the first evaluation.

    Examples:
        >>> t = torch.linspace(0, 1, 5, dtype=torch.float64)
        >>> f = BatchFunction(lambda X: X[:, :1] * torch.exp(-X[:, 1:] * t), batch=2)
        >>> e = f.evaluate(torch.tensor([[1.0, 0.0], [2.0, 1.0]], dtype=torch.float64), torch.arange(2))
        >>> e.columns.shape, f.mode
        (torch.Size([2, 2, 5]), 'forward')
    """

    def __init__(
        self, fun: Callable[..., Any], batch: int, *, compact: bool = False, jacobian: Callable[..., Any] | None = None
    ):
        if not callable(fun):
            raise TypeError(f"fun must be callable, got {type(fun).__name__}")
        self.fun, self.batch, self.compact, self.jacobian = fun, batch, compact, jacobian
        self.calls = 0
        self.mode: str | None = None
        self.shape: tuple[int, ...] | None = None  # a problem's outputs, fixed at the first call

    def __call__(self, X: Tensor, rows: Tensor) -> tuple[Tensor, Tensor | None]:
        """The outputs ``(K, m)`` and targets at the rows ``rows`` (X holds them, or the whole batch)."""
        self.calls += 1  # a call that raises was still made
        version = X._version
        value = self.fun(X, rows) if self.compact else self.fun(X)
        if X._version != version:
            raise ValueError(
                "fun must not modify its argument in place (x was changed during the call): "
                "compute on a copy, e.g. x = x.clone(), or with out-of-place operations"
            )
        outputs, targets = split_outputs(value)
        self._check(outputs, X)
        if targets is not None and targets.shape != outputs.shape:
            raise ValueError(
                f"fun must return targets of the outputs' shape {tuple(outputs.shape)}, got {tuple(targets.shape)}"
            )
        flat = outputs.reshape(outputs.shape[0], -1)
        return flat, None if targets is None else targets.reshape(flat.shape)

    def _check(self, outputs: Tensor, X: Tensor) -> None:
        if not outputs.is_floating_point():
            raise TypeError(f"fun must return a floating tensor, got dtype {outputs.dtype}")
        if outputs.dtype != X.dtype:
            raise TypeError(f"fun must return a tensor of x's dtype {X.dtype}, got {outputs.dtype}")
        if outputs.ndim < 2 or outputs.shape[0] != X.shape[0]:
            raise ValueError(
                f"fun must return one row of outputs per problem, shape ({X.shape[0]}, m), "
                f"got shape {tuple(outputs.shape)}"
            )
        if self.shape is not None and tuple(outputs.shape[1:]) != self.shape:
            raise ValueError(
                f"fun must return outputs of constant shape (K, {', '.join(map(str, self.shape))}), "
                f"got {tuple(outputs.shape)}"
            )
        self.shape = tuple(outputs.shape[1:])

    def evaluate(self, X: Tensor, rows: Tensor) -> Evaluation:
        """``fun`` and its Jacobians at the rows ``rows`` (all of X unless compact; see the module docstring)."""
        if self.mode is None:
            return self._first(X, rows)
        if self.mode == "jacobian":
            return self._explicit(X, rows)
        if self.mode.endswith("-loop"):
            return self._looped(X, rows)
        return self._vmapped(X, rows)

    def _first(self, X: Tensor, rows: Tensor) -> Evaluation:
        """The first evaluation, which fixes the mode (module docstring).

        It runs in forward mode, since m is not known before it: n tangents
        where m cotangents would have done, once.
        """
        if self.jacobian is not None:
            self.mode = "jacobian"
            return self._explicit(X, rows)
        self.mode = "forward"
        try:
            evaluation = self._vmapped(X, rows)
        except RuntimeError as error:
            # vmap could not batch fun. If the loop fails too, its error is
            # raised, with this one as its context.
            self.mode = "forward-loop"
            evaluation = self._looped(X, rows)
            warnings.warn(
                f"torch.func.vmap could not batch fun ({str(error).splitlines()[0]}); the Jacobians are computed "
                "with one tangent (or cotangent) per call of fun instead",
                BatchedJacobianWarning,
                stacklevel=5,
            )
        if X.shape[1] > evaluation.outputs.shape[1]:  # fewer residuals than variables: rows by reverse mode
            self.mode = self.mode.replace("forward", "reverse")
        return evaluation

    def _split(self, rows: Tensor):
        # torch.func's auxiliary outputs must be tensors or containers of them: () stands for no targets.
        def outputs_and_targets(Z: Tensor):
            outputs, targets = self(Z, rows)
            return outputs, (() if targets is None else targets)

        return outputs_and_targets

    def _vmapped(self, X: Tensor, rows: Tensor) -> Evaluation:
        K, n = X.shape
        function = self._split(rows)
        if self.mode == "forward":
            tangents = torch.eye(n, dtype=X.dtype, device=X.device)[:, None, :].expand(n, K, n)
            outputs, columns, targets = torch.func.vmap(lambda v: torch.func.jvp(function, (X,), (v,), has_aux=True))(
                tangents
            )
            # vmap returns the unbatched primal output and targets expanded over the tangents.
            return Evaluation(
                outputs[0].detach(), _targets(targets[0] if isinstance(targets, Tensor) else None), columns.detach()
            )
        outputs, pullback, targets = torch.func.vjp(function, X, has_aux=True)
        m = outputs.shape[1]
        cotangents = torch.eye(m, dtype=X.dtype, device=X.device)[:, None, :].expand(m, K, m)
        (rows_of_J,) = torch.func.vmap(pullback)(cotangents)  # (m, K, n)
        return Evaluation(outputs.detach(), _targets(targets), rows_of_J.detach().permute(2, 1, 0))

    def _looped(self, X: Tensor, rows: Tensor) -> Evaluation:
        K, n = X.shape
        function = self._split(rows)
        eye = torch.eye(n, dtype=X.dtype, device=X.device)
        if self.mode == "forward-loop":
            products = [torch.func.jvp(function, (X,), (eye[j].expand(K, n),), has_aux=True) for j in range(n)]
            outputs, _, targets = products[0]
            columns = torch.stack([product[1] for product in products]).detach()
            return Evaluation(outputs.detach(), _targets(targets), columns)
        outputs, pullback, targets = torch.func.vjp(function, X, has_aux=True)
        m = outputs.shape[1]
        eye = torch.eye(m, dtype=X.dtype, device=X.device)
        rows_of_J = torch.stack([pullback(eye[i].expand(K, m))[0] for i in range(m)])  # (m, K, n)
        return Evaluation(outputs.detach(), _targets(targets), rows_of_J.detach().permute(2, 1, 0))

    def _explicit(self, X: Tensor, rows: Tensor) -> Evaluation:
        with torch.no_grad():
            outputs, targets = self(X, rows)
            J = self.jacobian(X, rows) if self.compact else self.jacobian(X)
        if not isinstance(J, Tensor) or J.layout != torch.strided:
            raise TypeError(f"jacobian must return a dense torch.Tensor in solve_batch, got {type(J).__name__}")
        expected = (X.shape[0], outputs.shape[1], X.shape[1])
        if tuple(J.shape) != expected:
            raise ValueError(f"jacobian must return shape {expected} (K, m, n), got {tuple(J.shape)}")
        if J.dtype != X.dtype:
            raise TypeError(f"jacobian must return a tensor of x's dtype {X.dtype}, got {J.dtype}")
        return Evaluation(outputs, targets, J.detach().permute(2, 0, 1))


def _targets(aux: Any) -> Tensor | None:
    return aux.detach() if isinstance(aux, Tensor) else None
