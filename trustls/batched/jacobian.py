"""The batch's residual function, evaluated with its Jacobians from one call.

``fun`` maps a batch of points X of shape (K, n) to residuals of shape
(K, m), row b depending on X[b] only. The Jacobian of the whole map is then
block diagonal, and one Jacobian-vector product with the tangent that is
e_j in every row,

    V_j = 1 ⊗ e_jᵀ   (every row of V_j is e_j),   (J V_j)[b] = J_b e_j,

gives column j of every problem's Jacobian at once; likewise one
vector-Jacobian product with the cotangent U_i = 1 ⊗ e_iᵀ gives row i of
every J_b. All products come from the autograd graph of one call of ``fun``
(`trustls.operators.ResidualGraph`): a VJP is one backward pass, and a JVP is
one backward pass through the graph of the linear map u ↦ Jᵀu, recorded once
per evaluation (the double-backward trick; Pearlmutter 1994). Forward mode
(n JVPs after the recording pass) is used when n ≤ m, reverse mode (m VJPs)
otherwise (Griewank & Walther 2008, ch. 3). ``fun`` itself is never
vmapped, so random draws, ``.item()`` and data-dependent Python control flow
inside it are harmless; a backward that autograd cannot differentiate
(``once_differentiable``) makes forward mode fall back to reverse mode, with a
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
    B. A. Pearlmutter, "Fast exact multiplication by the Hessian", Neural
    Computation 6(1), 1994.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from trustls._start import NO_AUTOGRAD_PATH
from trustls.function import call_unmodified, check_outputs, split_outputs
from trustls.operators.product_fallback import error_reason
from trustls.operators.residual_graph import ResidualGraph

__all__ = ["BatchFunction", "BatchedJacobianWarning", "Evaluation"]


class BatchedJacobianWarning(UserWarning):
    """The backward of ``fun`` is not differentiable: the Jacobians come from reverse mode (m passes)."""


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
        mode: ``"forward"`` (n JVPs), ``"reverse"`` (m VJPs) or ``"jacobian"``;
            fixed at the first evaluation.

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
        value = call_unmodified(self.fun, X, rows) if self.compact else call_unmodified(self.fun, X)
        outputs, targets = split_outputs(value)
        self._check(outputs, X)
        if targets is not None and targets.shape != outputs.shape:
            raise ValueError(
                f"fun must return targets of the outputs' shape {tuple(outputs.shape)}, got {tuple(targets.shape)}"
            )
        flat = outputs.reshape(outputs.shape[0], -1)
        return flat, None if targets is None else targets.reshape(flat.shape)

    def _check(self, outputs: Tensor, X: Tensor) -> None:
        check_outputs(outputs, X)  # floating, on x's dtype and device, as for one problem
        if outputs.ndim < 2 or outputs.shape[0] != X.shape[0]:
            raise ValueError(
                f"fun must return one row of outputs per problem, shape ({X.shape[0]}, m), "
                f"got shape {tuple(outputs.shape)}"
            )
        if outputs[0].numel() == 0:
            raise ValueError(f"outputs must be non-empty for each problem, got shape {tuple(outputs.shape)}")
        if self.shape is not None and tuple(outputs.shape[1:]) != self.shape:
            raise ValueError(
                f"fun must return outputs of constant shape (K, {', '.join(map(str, self.shape))}), "
                f"got {tuple(outputs.shape)}"
            )
        self.shape = tuple(outputs.shape[1:])

    def evaluate(self, X: Tensor, rows: Tensor) -> Evaluation:
        """``fun`` and its Jacobians at the rows ``rows`` (all of X unless compact; see the module docstring)."""
        if self.mode is None and self.jacobian is not None:
            self.mode = "jacobian"
        if self.mode == "jacobian":
            return self._explicit(X, rows)
        leaf = X.detach().requires_grad_()
        with torch.enable_grad():
            outputs, targets = self(leaf, rows)
        graph = ResidualGraph(leaf, outputs)
        if self.mode is None and not graph.depends_on_x:  # the first evaluation, as `solve` checks it
            raise ValueError(NO_AUTOGRAD_PATH)
        K, m = outputs.shape
        n = X.shape[1]
        if self.mode is None:
            self.mode = "forward" if n <= m else "reverse"
        columns = None
        if self.mode == "forward":
            try:
                graph.prepare_jvp()
                eye = torch.eye(n, dtype=X.dtype, device=X.device)
                columns = torch.stack([graph.jvp(eye[j].expand(K, n)) for j in range(n)])  # (n, K, m)
            except (RuntimeError, NotImplementedError) as error:
                # A backward that autograd cannot differentiate, marked or found in the passes.
                self.mode = "reverse"
                warnings.warn(
                    f"trustls could not use forward mode ({error_reason(error)}); the Jacobians come "
                    f"from {m} backward passes per evaluation instead of {n}",
                    BatchedJacobianWarning,
                    stacklevel=4,
                )
        if columns is None:
            eye = torch.eye(m, dtype=X.dtype, device=X.device)
            rows_of_J = torch.stack([graph.vjp(eye[i].expand(K, m)) for i in range(m)])  # (m, K, n)
            columns = rows_of_J.permute(2, 1, 0)
        return Evaluation(outputs.detach(), None if targets is None else targets.detach(), columns.detach())

    def _explicit(self, X: Tensor, rows: Tensor) -> Evaluation:
        with torch.no_grad():
            outputs, targets = self(X, rows)
        # With grad enabled, as `GaussNewtonModel.linearize` calls it: a jacobian may differentiate fun
        # itself (torch.autograd.grad row by row); J is data, and detached.
        with torch.enable_grad():
            J = self.jacobian(X, rows) if self.compact else self.jacobian(X)
        J = J.detach() if isinstance(J, Tensor) else J
        if not isinstance(J, Tensor) or J.layout != torch.strided:
            raise TypeError(f"jacobian must return a dense torch.Tensor in solve_batch, got {type(J).__name__}")
        expected = (X.shape[0], outputs.shape[1], X.shape[1])
        if tuple(J.shape) != expected:
            raise ValueError(f"jacobian must return shape {expected} (K, m, n), got {tuple(J.shape)}")
        if J.dtype != X.dtype:
            raise TypeError(f"jacobian must return a tensor of x's dtype {X.dtype}, got {J.dtype}")
        if J.device != X.device:
            raise ValueError(f"jacobian must return J on x's device {X.device}, got {J.device}")
        return Evaluation(outputs, targets, J.detach().permute(2, 0, 1))
