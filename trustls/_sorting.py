"""Stable sorts of small nonnegative integer keys, as the sparse structures need them.

On the CPU, numpy's stable sort of 16-bit keys is a radix sort, O(len): one
pass per 16 bits of the keys' bound (least significant first) is several
times faster than a comparison sort of int64 keys (torch's ``argsort``),
which remains the fallback (other devices, no numpy, keys beyond 2³²).
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import numpy
except ImportError:  # numpy is optional: torch's sort is used instead
    numpy = None

__all__ = ["stable_order", "unique_with_inverse"]


def stable_order(keys: Tensor, bound: int) -> Tensor:
    """The stable permutation sorting ``keys`` (all in ``[0, bound)``).

    On the CPU, numpy's stable sort of 16-bit keys is a radix sort, O(len):
    one pass per 16 bits of ``bound`` (least significant first) is several
    times faster than a comparison sort of the int64 keys.
    """
    if numpy is None or keys.device.type != "cpu" or bound > 2**32:
        return torch.argsort(keys, stable=True)
    values = keys.numpy()
    order = numpy.argsort((values & 0xFFFF).astype(numpy.uint16), kind="stable")
    if bound > 2**16:
        order = order[numpy.argsort((values[order] >> 16).astype(numpy.uint16), kind="stable")]
    return torch.from_numpy(order).to(torch.int64)


def unique_with_inverse(keys: Tensor, bound: int | None = None) -> tuple[Tensor, Tensor]:
    """``torch.unique(keys, return_inverse=True)`` of a 1-D int64 tensor, faster on the CPU.

    With ``bound`` (keys in ``[0, bound)``, up to 2³²) the sort is `stable_order`'s
    radix sort; without, numpy's sort of the int64 keys; either is several
    times faster than torch's on the CPU. Other devices use torch's.

    Examples:
        >>> unique_with_inverse(torch.tensor([5, 2, 5, 7]), bound=8)
        (tensor([2, 5, 7]), tensor([1, 0, 1, 2]))
    """
    if numpy is None or keys.device.type != "cpu":
        return torch.unique(keys, return_inverse=True)
    if bound is not None and bound <= 2**32:
        order = stable_order(keys, bound)
    else:
        order = torch.from_numpy(numpy.argsort(keys.numpy()))
    ordered = keys.index_select(0, order)
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    inverse = torch.empty_like(order)
    inverse[order] = torch.cumsum(first, 0) - 1
    return ordered[first], inverse
