"""`BatchResult`: the outcome of `TrustRegion.solve_batch`, one entry per problem."""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import Tensor

from trustls.result import Result, Status, _RecordMapping

__all__ = ["BatchResult"]


@dataclass(frozen=True, eq=False, repr=False)
class BatchResult(_RecordMapping):
    """The results of B problems solved together, with `Result`'s field names and a leading batch dimension.

    A frozen record that is also a read-only mapping (``result["x"]``), like
    `Result`. `problem` gives one problem's `Result`; `statuses` and
    `messages` give the `Status` members and their messages.

    Attributes:
        x: ``(B, n)`` solutions, in ``x0``'s dtype and device.
        cost: ``(B,)`` float64 costs at ``x``.
        fun: ``(B, m)`` residuals at ``x`` (the outputs for a robust loss).
        grad: ``(B, n)`` gradients of the costs.
        optimality: ``(B,)`` ‖grad‖∞.
        jac: ``(B, m, n)`` effective Jacobians J̃ at ``x``.
        nfev: ``(B,)`` int64 evaluations of each problem's residual (its
            Jacobian included; `calls` counts the calls of ``fun``).
        njev: ``(B,)`` int64 linearizations.
        nit: ``(B,)`` int64 outer iterations.
        status: ``(B,)`` int64 scipy codes (`Status` values); `success`
            derives from it.
        radius: ``(B,)`` float64 final trust-region radii.
        inner_iterations: ``(B,)`` int64 CG or secular-equation iterations.
        products: ``(B,)`` int64 curvature products.
        initial_cost: ``(B,)`` float64 costs at ``x0``.
        calls: calls of ``fun``, each on the batch (or on the active rows
            with ``compact=True``).

    Examples:
        >>> import torch
        >>> from trustls import GaussNewtonModel, TrustRegion
        >>> y = torch.tensor([[1.0, 2.0], [3.0, 5.0]], dtype=torch.float64)
        >>> x0 = torch.zeros(2, 2, dtype=torch.float64)
        >>> result = TrustRegion(GaussNewtonModel()).solve_batch(lambda x: x - y, x0)
        >>> result.success.tolist(), result.statuses[0].name, result.problem(1).x
        ([True, True], 'GTOL', tensor([3., 5.], dtype=torch.float64))
    """

    x: Tensor
    cost: Tensor
    fun: Tensor
    grad: Tensor
    optimality: Tensor
    jac: Tensor
    nfev: Tensor
    njev: Tensor
    nit: Tensor
    status: Tensor
    radius: Tensor
    inner_iterations: Tensor
    products: Tensor
    initial_cost: Tensor
    calls: int

    _extra = ("success",)

    @property
    def success(self) -> Tensor:
        """``(B,)`` bool: a convergence test stopped the problem's solve (status > 0)."""
        return self.status > 0

    @property
    def statuses(self) -> tuple[Status, ...]:
        """The `Status` of each problem."""
        return tuple(Status(code) for code in self.status.tolist())

    @property
    def messages(self) -> tuple[str, ...]:
        """The message of each problem's `Status`."""
        return tuple(status.message for status in self.statuses)

    def problem(self, index: int) -> Result:
        """Problem ``index``'s `Result` (``active_mask`` all zeros: solve_batch has no bounds)."""
        given = index
        try:  # any integer: np.int64, a 0-d integer tensor (fit.cost.argmax()), as Python's indexing takes them
            index = operator.index(index) if not isinstance(index, bool) else None
        except TypeError:
            index = None
        if index is None or not -self.x.shape[0] <= index < self.x.shape[0]:
            raise IndexError(f"index must be an int in [-{self.x.shape[0]}, {self.x.shape[0]}), got {given!r}")
        return Result(
            x=self.x[index],
            cost=float(self.cost[index]),
            fun=self.fun[index],
            grad=self.grad[index],
            optimality=float(self.optimality[index]),
            jac=self.jac[index],
            active_mask=torch.zeros(self.x.shape[1], dtype=torch.int64, device=self.x.device),
            nfev=int(self.nfev[index]),
            njev=int(self.njev[index]),
            nit=int(self.nit[index]),
            status=Status(int(self.status[index])),
            radius=float(self.radius[index]),
            inner_iterations=int(self.inner_iterations[index]),
            products=int(self.products[index]),
            initial_cost=float(self.initial_cost[index]),
        )

    def __repr__(self) -> str:
        codes, counts = torch.unique(self.status, return_counts=True)
        summary = ", ".join(f"{Status(code).name}: {count}" for code, count in zip(codes.tolist(), counts.tolist()))
        return (
            f"BatchResult(problems={self.x.shape[0]}, succeeded={int(self.success.sum())}, statuses={{{summary}}}, "
            f"nfev_max={int(self.nfev.max())}, calls={self.calls})"
        )
