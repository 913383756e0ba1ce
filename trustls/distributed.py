"""Data-parallel trust-region steps over ``torch.distributed``: one shard of the batch per rank.

With the batch split into shards k = 1, …, K (one per rank) the cost is the
sum of the shards' costs, f(x) = Σₖ fₖ(x), and so are its gradient and its
(generalized) Gauss-Newton curvature:

    g = Σₖ Jₖᵀ∇Lₖ,    B v = Σₖ J̃ₖᵀ(J̃ₖ v),

where Jₖ and J̃ₖ = Sₖ Jₖ are the Jacobian and the effective Jacobian of
shard k's outputs (`trustls.operators.output`). Each rank evaluates its
shard and computes its own terms with its own autograd graph;
`TrustRegionOptimizer(..., data_parallel=DataParallel())` sums them across
ranks. After every sum all ranks hold the same bits, so the rest of the
iteration (CG's dot products and step lengths, the ratio test, the radius
update, the termination tests) runs redundantly on every rank and every
rank takes the same step with the same radius and status, without further
communication (``docs/training.md``, "Several processes").

What is communicated, per step:

* at the linearization: one *status word* per rank (below) with the shard's
  cost and output count, then one all-reduce of the n-vector Jₖᵀ∇Lₖ;
* per CG iteration: one all-reduce of the n-vector J̃ₖᵀJ̃ₖv. CG's dot
  products are then computed locally on identical vectors. Reducing dot
  products instead would need the CG vectors themselves distributed (each
  rank owning a slice), which costs a reduce-scatter of Bv plus an
  all-gather of the next direction: the same bytes as one all-reduce, in two
  collectives instead of one;
* per trial: one status word carrying the shard's trial cost;
* at a refresh of the Jacobi scaling (steps 0, 1, 2, 4, 8, …): one
  all-reduce of n per column-norm probe. Each rank takes its rows of the
  probe vector that one process would draw for the whole batch, so the
  estimate equals the single-process one.

Reductions: a loss with ``reduction="sum"`` (and least squares, ½‖r‖²) is
additive over shards. With ``reduction="mean"`` shard k's mean over its cₖ
terms is weighted by cₖ/C, C = Σₖcₖ: the cost is the mean over the whole
batch, not the mean of the shards' means, whatever the shards' sizes.

Failures never hang the other ranks. Before each collective whose size or
meaning depends on what a rank computed, every rank contributes a status
word: whether its closure (or loss, or shape check) raised, and its shapes,
counts and cost. All ranks then see the same table. If any rank failed, the
failing rank re-raises its own exception and every other rank raises
`DistributedStepError` naming the rank and its error, and no further
collective is entered for that step. The parameters stay as they were on
every rank, so training may go on. The status word also carries a
fingerprint of the parameters (an integer sum of their bits), which catches
ranks that do not start from the same parameters, and the radius. A rank
that dies or stops calling ``step`` can only be noticed by the process
group's timeout (``init_process_group(timeout=...)``).

References:
    Dean et al., "Large scale distributed deep networks", NeurIPS 2012
    (data parallelism). Martens, "Deep learning via Hessian-free
    optimization", ICML 2010, §4 (curvature products summed over a batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["DataParallel", "DistributedStepError", "Reducer", "agree_on_linearization", "fingerprint"]


class DistributedStepError(RuntimeError):
    """Another rank failed in the same step; this rank stopped the step cleanly (module docstring)."""


@dataclass(frozen=True)
class DataParallel:
    """Sum the optimizer's terms over the ranks of a ``torch.distributed`` process group.

    Args:
        group: the process group (``None``: the default group, all ranks).

    The process group must be initialized (``torch.distributed.init_process_group``,
    e.g. by ``torchrun``) before the optimizer is built; gloo (CPU tensors)
    and NCCL (CUDA tensors) both work.

    Examples:
        >>> DataParallel()
        DataParallel(group=None)
    """

    group: Any = None

    def reducer(self, device: torch.device) -> Reducer:
        """The `Reducer` over this group for tensors on ``device``."""
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError(
                "data_parallel needs an initialized torch.distributed process group (call "
                "torch.distributed.init_process_group, or run under torchrun), got none"
            )
        return Reducer(self.group, device)


def float_bits(value: float | Tensor) -> Tensor:
    """A float64 value as the int64 that holds its bits (exchanged exactly by an integer sum)."""
    tensor = value if isinstance(value, Tensor) else torch.tensor(float(value))
    return tensor.detach().to(torch.float64).reshape(1).view(torch.int64)[0]


def bits_float(bits: int) -> float:
    """Inverse of `float_bits` for one value read on the host."""
    return float(torch.tensor([bits], dtype=torch.int64).view(torch.float64)[0])


def fingerprint(x: Tensor) -> Tensor:
    """Two int64 sums of x's bits (wrapping): equal on every rank iff, almost surely, x is.

    Integer sums are exact and associative, so they do not depend on how a
    device orders the reduction, unlike a floating sum.
    """
    words = x.detach().reshape(-1)
    words = words.view(torch.int32) if words.element_size() % 4 == 0 else words.view(torch.int16)
    wide = words.to(torch.int64)
    return torch.stack([wide.sum(), wide.square().sum()])


class Reducer:
    """Collectives of one process group, on one device: sums and status words.

    `TrustRegionOptimizer` builds it from `DataParallel`; the single-process
    optimizer uses none.
    """

    def __init__(self, group: Any, device: torch.device):
        self.group = group
        self.device = torch.device(device)
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def __repr__(self) -> str:
        return f"Reducer(rank={self.rank}, world_size={self.world_size}, device={self.device})"

    def all_reduce(self, tensor: Tensor) -> Tensor:
        """Σ over ranks, in place; returns ``tensor``."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)
        return tensor

    def exchange(self, where: str, error: BaseException | None, word: list[Tensor | int], size: int) -> list[list[int]]:
        """Every rank's status word, after a step phase that may have failed on some rank.

        ``word`` is this rank's list of ``size`` int64 values (0-d tensors or
        ints; use `float_bits` for floats), not read when ``error`` is set. One
        all-reduce of a (world size, 1 + size) int64 table, each rank filling
        its row. If any rank's ``error`` is set,
        the messages are gathered and every rank raises: the failing ranks
        their own exception, the others `DistributedStepError`.

        Returns:
            The table, one row per rank, without the failure flag.
        """
        table = torch.zeros(self.world_size, 1 + size, dtype=torch.int64, device=self.device)
        if error is None:
            if len(word) != size:
                raise ValueError(f"word must hold {size} values, got {len(word)}")
            values = [torch.as_tensor(v, dtype=torch.int64, device=self.device) for v in word]
            table[self.rank, 1:] = torch.stack(values)
        else:
            table[self.rank, 0] = 1  # the values of a failed rank are not read
        self.all_reduce(table)
        rows = table.tolist()
        failed = [rank for rank, row in enumerate(rows) if row[0]]
        if failed:
            messages: list[Any] = [None] * self.world_size
            mine = None if error is None else f"{type(error).__name__}: {error}"
            dist.all_gather_object(messages, mine, group=self.group)
            if error is not None:
                raise error
            details = "; ".join(f"rank {rank}: {messages[rank]}" for rank in failed)
            raise DistributedStepError(
                f"{where} failed on rank(s) {failed} ({details}); rank {self.rank} stopped the step too, leaving "
                "the parameters and the optimizer's state as they were"
            )
        return [row[1:] for row in rows]


def check_agreement(table: list[list[int]], columns: dict[str, int], rank: int) -> None:
    """Raise ``ValueError`` when ranks disagree on a value that must be the same everywhere."""
    for name, column in columns.items():
        values = [row[column] for row in table]
        if len(set(values)) != 1:
            shown = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
            raise ValueError(f"data_parallel needs the same {name} on every rank, got {shown} (seen on rank {rank})")


# The status word after a linearization: two fingerprint sums of x, then `status_word`'s entries.
_WORD = ("fingerprint", "second fingerprint", "n", "rows", "count", "mean", "per sample", "ndim", "cost", "radius")
_AGREE = {"parameters (bits of the flattened parameters)": 0, "parameters (second sum)": 1,
          "number of parameters": 2, "reduction": 5, "output size per sample": 6, "number of output dimensions": 7,
          "trust radius": 9}  # fmt: skip


def agree_on_linearization(reducer: Reducer, error: BaseException | None, word: list) -> tuple[tuple, tuple, float]:
    """Exchange the status words of a linearization: every rank fails together, or all agree.

    Returns:
        Every rank's weight (cₖ/C for a mean, 1 for a sum) and number of
        outputs, in rank order, and the total cost Σₖ wₖ fₖ, the same on every rank.
    """
    table = reducer.exchange("the linearization (closure, loss and products)", error, word, size=len(_WORD))
    check_agreement(table, _AGREE, reducer.rank)
    total = sum(row[4] for row in table)
    weights = tuple(row[4] / total if row[5] else 1.0 for row in table)
    rows = tuple(row[3] for row in table)
    cost = sum(w * bits_float(row[8]) for w, row in zip(weights, table))
    return weights, rows, cost
