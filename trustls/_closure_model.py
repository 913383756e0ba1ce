"""The model that `TrustRegionOptimizer` hands the controller: a loss of a closure's outputs.

`TrustRegion` asks its model for evaluations at trial points and for
linearizations (`trustls.models.base`). In the optimizer the point is the
parameters of a module and the function a closure, so the linearization is
built here from `ClosureProducts` rather than by `GaussNewtonModel.linearize`,
with the same objective, the one of the method's `GaussNewtonModel`: for the
outputs z and the loss L (least squares, or a generalized Gauss-Newton loss
such as cross-entropy; `trustls.losses`),

    cost = L(z),   g = Jᵀ∇L,   B = J̃ᵀJ̃,   J̃ = S J,   H_L = SᵀS,

as `GaussNewtonModel` defines them (Schraudolph 2002; Martens 2020, §8).
With a `Reducer` (data parallelism, `trustls.distributed`) each rank holds
its shard's J̃ₖ, the cost and the gradient are summed over ranks once per
linearization, and each product J̃ᵀ(J̃v) = Σₖ J̃ₖᵀ(J̃ₖv) once per product.

Memory (one step of a large network is dominated by the autograd graphs and
a few vectors of length n): `ClosureJacobian` applies a diagonal scaling T
in place on the fresh vector of each Jᵀu, and `ScratchScaling` scales the
gradient in place, since the optimizer never reads the unscaled gradient
after the subproblem is posed (`TrustRegion.step` reads it only for its
``verbose=2`` line, which then shows the scaled one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from trustls._closure import ClosureProducts
from trustls.distributed import Reducer, bits_float, float_bits
from trustls.function import split_outputs
from trustls.losses import (
    CrossEntropy,
    Loss,
    LossLinearization,
    SquaredError,
)
from trustls.models.base import CurvatureModel, Evaluation, Linearization
from trustls.models.gauss_newton import GaussNewtonModel
from trustls.operators.base import LinearOperator, power_of_two
from trustls.operators.column_norms import diluted_column_norms
from trustls.operators.dense import NormalOperator
from trustls.operators.output import OutputFactor
from trustls.scaling import DiagonalScaling

__all__ = ["ClosureContext", "ClosureJacobian", "ClosureModel", "ScratchScaling", "loss_terms", "status_word"]


def loss_terms(loss: Loss, outputs: Tensor) -> tuple[str | None, int]:
    """``(reduction, count)``: how the loss reduces, and over how many terms (for global means across ranks)."""
    if isinstance(loss, CrossEntropy):  # a term per sample, the classes along dim 1
        return loss.reduction, outputs.numel() // outputs.shape[1 if outputs.ndim >= 2 else 0]
    return getattr(loss, "reduction", None), outputs.numel()  # elementwise (least squares, robust: no reduction)


def status_word(loss: Loss, outputs: Tensor, cost: Tensor, n: int, radius: float) -> list:
    """This rank's status word after its linearization (the layout `agree_on_linearization` reads)."""
    reduction, count = loss_terms(loss, outputs)
    if reduction not in (None, "sum", "mean"):
        raise TypeError(f"data_parallel cannot reduce a loss with reduction={reduction!r} across ranks")
    shape = tuple(outputs.shape)
    return [n, outputs.numel(), count, int(reduction == "mean"), math.prod(shape[1:]), len(shape), float_bits(cost),
            float_bits(radius)]


class _WeightedFactor(OutputFactor):
    """c·S for a factor S and a number c (√ of a shard's weight in a global mean)."""

    def __init__(self, factor: OutputFactor | None, weight: float, shape, dtype, device):
        super().__init__(shape, dtype, device)
        self.factor, self.weight = factor, weight
        if factor is not None and factor.diagonal is not None:
            self.diagonal = weight * factor.diagonal

    def matvec(self, v: Tensor) -> Tensor:
        return self.weight * (v if self.factor is None else self.factor.matvec(v))

    def rmatvec(self, u: Tensor) -> Tensor:
        return self.weight * (u if self.factor is None else self.factor.rmatvec(u))


class ClosureJacobian(LinearOperator):
    """J̃ T: the effective Jacobian of this rank's outputs, scaled on the right by T = diag(scale).

    ``matvec`` maps to this rank's outputs; ``rmatvec`` takes this rank's
    outputs and returns the sum over ranks, Σₖ T J̃ₖᵀuₖ, so that the normal
    operator J̃ᵀJ̃ costs one reduction per product.
    """

    def __init__(
        self,
        products: ClosureProducts,
        factor: OutputFactor | None,
        shape: tuple[int, ...],
        n: int,
        *,
        scale: Tensor | None = None,
        reducer: Reducer | None = None,
        rows: tuple[int, ...] = (),
    ):
        residual = products.residual
        super().__init__((residual.numel(), n), products.dtype, residual.device)
        self.products, self.factor, self.outputs_shape = products, factor, tuple(shape)
        self.scale, self.reducer = scale, reducer
        # Every rank's number of rows, in rank order (for probes over all of them).
        self.rows = rows or (residual.numel(),)

    def scale_columns(self, scale: Tensor) -> ClosureJacobian:
        combined = scale if self.scale is None else self.scale * scale
        return ClosureJacobian(
            self.products, self.factor, self.outputs_shape, self.shape[1], scale=combined, reducer=self.reducer,
            rows=self.rows,
        )

    def matvec(self, v: Tensor) -> Tensor:
        Jv = self.products.jvp(v if self.scale is None else v * self.scale)
        if self.factor is None:
            return Jv
        return self.factor.matvec(Jv.reshape(self.outputs_shape)).reshape(-1)

    def local_rmatvec(self, u: Tensor) -> Tensor:
        """T J̃ₖᵀu for this rank's rows only."""
        if self.factor is not None:
            u = self.factor.rmatvec(u.reshape(self.outputs_shape)).reshape(-1)
        out = self.products.vjp(u)  # a fresh vector: scaled in place
        return out if self.scale is None else out.mul_(self.scale)

    def rmatvec(self, u: Tensor) -> Tensor:
        out = self.local_rmatvec(u)
        return out if self.reducer is None else self.reducer.all_reduce(out)

    def balanced_rmatvec(self, u: Tensor) -> Tensor:
        """`rmatvec` with this rank's product taken at a power of two of its own u (exactly scaled back)
        before the sum over ranks: `PowerOfTwoBalanced`'s rule for half precision, rank by rank."""
        c = power_of_two(u)
        out = self.local_rmatvec(u / c).mul_(c)
        return out if self.reducer is None else self.reducer.all_reduce(out)


@dataclass
class ClosureContext:
    """What the model knows about the current step: the outputs' shape, the ranks' weights and rows."""

    shape: tuple[int, ...]
    weight: float = 1.0  # this rank's
    weights: tuple[float, ...] = (1.0,)  # every rank's, in rank order
    rows: tuple[int, ...] = ()  # every rank's number of outputs, in rank order


class ClosureModel(CurvatureModel):
    """The method's `GaussNewtonModel` seen through a closure, optionally summed over ranks."""

    def __init__(self, model: GaussNewtonModel, reducer: Reducer | None = None):
        self.model, self.loss, self.reducer = model, model.loss, reducer

    def __repr__(self) -> str:
        return f"ClosureModel({self.model!r}, reducer={self.reducer!r})"

    def linearize_outputs(
        self, outputs: Tensor, targets: Tensor | None, params: list[Tensor], dtype: torch.dtype, *, lean: bool
    ) -> tuple[LossLinearization, ClosureProducts]:
        """This rank's loss linearization and products at the closure's outputs (no communication;
        the outputs were checked by `trustls._closure.check_closure_outputs`)."""
        loss = self.loss.linearize(outputs.detach().to(dtype), targets)
        products = ClosureProducts(outputs, params, at=loss.gradient, dtype=dtype, lean=lean)
        return loss, products

    def assemble(
        self, x: Tensor, loss: LossLinearization, products: ClosureProducts, context: ClosureContext, cost: float | None
    ) -> Linearization:
        """The linearization at x: this rank's terms weighted, the gradient summed over ranks.

        ``cost`` is the total over ranks (read from the status words), or
        ``None`` in one process, where the loss's own value is the cost.
        """
        gradient = products.gradient
        weight = context.weight
        if weight != 1.0:
            gradient.mul_(weight)
        if self.reducer is not None:
            self.reducer.all_reduce(gradient)
        factor = loss.factor
        if weight != 1.0:
            factor = _WeightedFactor(factor, math.sqrt(weight), context.shape, products.dtype, x.device)
        jacobian = ClosureJacobian(
            products, factor, context.shape, x.shape[0], reducer=self.reducer, rows=context.rows
        )
        least_squares = isinstance(self.loss, SquaredError)
        residual = loss.residual.reshape(-1) if least_squares else products.residual
        value = loss.value if cost is None else torch.tensor(cost, dtype=torch.float64, device=x.device)
        return Linearization(
            x=x, residual=residual, cost=value, gradient=gradient, operator=NormalOperator(jacobian),
            jacobian=jacobian, whitened_residual=residual if least_squares else None,
        )

    # -- what the controller calls ------------------------------------------

    def evaluate(self, fun: Callable[..., Any], x: Tensor, context: Any = None, *, keep: bool = True) -> Evaluation:
        """The cost at a trial point: this rank's loss, summed over ranks (weighted for global means)."""
        error = value = None
        try:
            outputs, targets = split_outputs(fun(x), "closure")
            outputs = outputs.detach()
            value = self.loss.value(outputs, targets)
        except Exception as caught:  # handed to every rank, then re-raised here (trustls.distributed)
            if self.reducer is None:
                raise
            error = caught
        if self.reducer is not None:
            word = [float_bits(value) if error is None else 0]
            table = self.reducer.exchange("the trial evaluation", error, word, size=1)
            total = sum(w * bits_float(row[0]) for w, row in zip(context.weights, table))
            value = torch.tensor(total, dtype=torch.float64, device=x.device)
        return Evaluation(x, outputs, targets, value)

    def linearize(self, fun, at, context=None, *, dense=False) -> Linearization:
        raise NotImplementedError("TrustRegionOptimizer linearizes its closure itself (ClosureModel.assemble)")

    def column_norms_are_estimated(self, linearization: Linearization) -> bool:
        return self.model.column_norms_are_estimated(linearization)

    def column_norms(self, linearization: Linearization) -> Tensor:
        """Column norms of J̃ over all ranks, equal to `GaussNewtonModel.column_norms` on the whole batch."""
        *_, norms = self.column_norm_estimates(linearization)
        return norms

    def column_norm_estimates(self, linearization: Linearization) -> Iterator[Tensor]:
        """`GaussNewtonModel.column_norm_estimates` over all ranks: the same stages one process draws."""
        J = linearization.jacobian
        if self.reducer is None or not isinstance(J, ClosureJacobian):
            yield from self.model.column_norm_estimates(linearization)
            return
        if not self.column_norms_are_estimated(linearization):
            eye = torch.eye(J.shape[1], dtype=J.dtype, device=J.device)
            squares = torch.stack([torch.dot(Je, Je) for Je in (J.matvec(e) for e in eye)])
            yield torch.sqrt(self.reducer.all_reduce(squares))
            return
        rows, rank = J.rows, self.reducer.rank
        generator = torch.Generator(device=J.device).manual_seed(0)
        yield from diluted_column_norms(J, self.model.column_norm_probes, generator,
                                        rows=(sum(rows[:rank]), sum(rows)))


class ScratchScaling(DiagonalScaling):
    """T = diag(d) that scales the optimizer's gradient in place (module docstring).

    The optimizer hands it to `TrustRegion.step` only, which transforms the
    linearization once; `TrustRegion.start` and `TrustRegion.relinearized`
    (the gradient test, the scale policy) see the plain `DiagonalScaling`.
    """

    def transform(self, linearization: Linearization) -> Linearization:
        J = linearization.jacobian
        if not isinstance(J, ClosureJacobian):
            return super().transform(linearization)
        scaled = J.scale_columns(self.diagonal)
        return replace(
            linearization, gradient=linearization.gradient.mul_(self.diagonal), jacobian=scaled,
            operator=NormalOperator(scaled),
        )
