"""Records of per-problem tensors whose last dimension is the batch, and the batched step.

The batched solvers keep every per-problem quantity batch-last: a vector of
length n for K problems is an (n, K) tensor, a scalar per problem a (K,)
tensor. Reductions over a problem's entries then run over the leading
dimension and are vectorized across the problems, where a reduction over a
short last dimension (n = 3, say) is not: on the CPU, summing a (10⁴, 3)
tensor over its last dimension takes about fifteen times as long as summing
its (3, 10⁴) transpose over the first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["BatchFields", "BatchStep", "dot", "norm"]


def dot(a: Tensor, b: Tensor) -> Tensor:
    """aᵀb per problem for batch-last vectors ``(n, K)``: a ``(K,)`` tensor."""
    return (a * b).sum(0)


def norm(a: Tensor) -> Tensor:
    """‖a‖ per problem for batch-last vectors ``(n, K)``: a ``(K,)`` tensor."""
    return torch.sqrt(dot(a, a))


class BatchFields:
    """A dataclass of tensors whose last dimension indexes the problems."""

    def take(self, rows: Tensor):
        """The record of the problems ``rows`` (an int64 index tensor)."""
        return dataclasses.replace(
            self, **{f.name: getattr(self, f.name).index_select(-1, rows) for f in dataclasses.fields(self)}
        )

    def put(self, rows: Tensor, values) -> None:
        """Write ``values`` (a record of ``len(rows)`` problems) into the problems ``rows``, in place."""
        for f in dataclasses.fields(self):
            getattr(self, f.name).index_copy_(-1, rows, getattr(values, f.name))


@dataclass(frozen=True)
class BatchStep:
    """Trust-region steps of K problems (the batched `trustls.subproblem.Step`).

    Attributes:
        step: ``(n, K)``, the steps in the scaled variables.
        norm: ``(K,)`` float64, ‖step‖.
        predicted_reduction: ``(K,)`` float64, −(gᵀp + ½‖J̃p‖²).
        hits_boundary: ``(K,)`` bool.
        iterations: ``(K,)`` int64, inner iterations (CG or secular).
        products: ``(K,)`` int64, curvature products.
    """

    step: Tensor
    norm: Tensor
    predicted_reduction: Tensor
    hits_boundary: Tensor
    iterations: Tensor
    products: Tensor
