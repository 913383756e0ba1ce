"""Elementwise helpers that take tensors or Python numbers alike.

The decide phase (`trustls.decision`, `trustls.radius`, `trustls.termination`)
is written once, elementwise: on tensors it runs on the device without a host
read (0-d for one problem, ``(B,)`` for a batch), and on Python floats it runs
on the host, where a 0-d tensor operation costs several microseconds of
dispatch and a float operation a few tens of nanoseconds. Both are IEEE
float64 arithmetic with the same operations in the same order, so they give the
same bits.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["as_int", "isfinite", "where"]


def where(condition, a, b):
    """``torch.where(condition, a, b)`` for tensors; ``a if condition else b`` for Python values."""
    if isinstance(condition, Tensor) or isinstance(a, Tensor) or isinstance(b, Tensor):
        return torch.where(torch.as_tensor(condition), a, b)
    return a if condition else b


def isfinite(x):
    """``torch.isfinite`` for a tensor, `math.isfinite` for a number."""
    return torch.isfinite(x) if isinstance(x, Tensor) else math.isfinite(x)


def as_int(flag):
    """A boolean tensor as int64, a Python bool as int."""
    return flag.to(torch.int64) if isinstance(flag, Tensor) else int(flag)
