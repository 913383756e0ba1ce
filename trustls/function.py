"""The user's function as trustls calls it: counted, argument-protected, outputs checked.

`CountedFunction` wraps ``fun(x, *args, **kwargs)`` so that

* every call is counted (``nfev`` is the number of calls trustls made,
  including those inside Jacobian computations; a call under
  ``torch.func.vmap`` is one call);
* a function that modifies its argument in place is caught: the argument's
  version counter (bumped by every in-place operation, also under
  ``torch.no_grad()``) is compared before and after the call, at no copy;
  otherwise the iterate, which is the argument, would silently move away
  from the point whose cost was measured;
* the value is split into outputs and optional targets (`split_outputs`):
  a tensor, a list of tensors (stacked), or a tuple ``(outputs, targets)``
  for models whose loss compares outputs with targets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["HALF", "CountedFunction", "HalfPrecision", "call_unmodified", "check_outputs", "round_to", "split_outputs"]

#: The half-precision dtypes, iterated in float32 on the values they hold.
HALF = (torch.float16, torch.bfloat16)

_HOW = (
    "write fun with torch operations on its tensor argument (torch.exp rather than numpy.exp, "
    "torch.stack of tensors rather than a list of floats) so that trustls can differentiate it"
)


def split_outputs(value: object, name: str = "fun") -> tuple[Tensor, Tensor | None]:
    """``(outputs, targets)`` from what ``fun`` (or a closure, ``name``) returned (see the module docstring)."""
    if isinstance(value, Tensor):
        return value, None
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], Tensor):
        outputs, targets = value
        if targets is None:
            return outputs, None
        if not isinstance(targets, Tensor):
            raise TypeError(f"{name} must return targets as a torch.Tensor or None, got {type(targets).__name__}")
        return outputs, targets.detach()  # data, not a function of x
    if isinstance(value, list) and value and all(isinstance(v, Tensor) for v in value):
        return torch.stack([v.reshape(()) if v.numel() == 1 else v for v in value]), None
    kind = type(value).__name__
    if name != "fun":
        raise TypeError(f"{name} must return the residual vector as a torch.Tensor, got {kind}")
    if type(value).__module__ == "numpy" or isinstance(value, (list, tuple, float, int)):
        raise TypeError(f"fun must return a torch.Tensor computed from x, got {kind}: {_HOW}")
    raise TypeError(f"fun must return a torch.Tensor (or a tuple (outputs, targets) of tensors), got {kind}")


def check_outputs(outputs: Tensor, x: Tensor, expected_shape: tuple[int, ...] | None = None) -> Tensor:
    """Check outputs: floating, on x's dtype and device, and of the shape seen before."""
    if not outputs.is_floating_point():
        raise TypeError(f"fun must return a floating tensor, got dtype {outputs.dtype}")
    if outputs.dtype != x.dtype:
        raise TypeError(f"fun must return a tensor of x's dtype {x.dtype}, got {outputs.dtype}")
    if outputs.device != x.device:
        raise ValueError(f"fun must return a tensor on x's device {x.device}, got {outputs.device}")
    if expected_shape is not None and tuple(outputs.shape) != expected_shape:
        raise ValueError(
            f"fun must return outputs of constant shape {expected_shape}, got shape {tuple(outputs.shape)}"
        )
    return outputs


class CountedFunction:
    """``fun(x, *args, **kwargs)`` with its calls counted and its argument protected.

    Examples:
        >>> import torch
        >>> f = CountedFunction(lambda x, c: c * x, args=(2.0,))
        >>> f(torch.ones(2)), f.calls
        (tensor([2., 2.]), 1)
    """

    def __init__(self, fun: Callable[..., Any], args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None):
        if not callable(fun):
            raise TypeError(f"fun must be callable, got {type(fun).__name__}")
        self.fun = fun
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.calls = 0

    def __call__(self, x: Tensor) -> Any:
        self.calls += 1  # a call that raises was still made
        return call_unmodified(self.fun, x, *self.args, **self.kwargs)


def call_unmodified(fun: Callable[..., Any], x: Tensor, *args: Any, **kwargs: Any) -> Any:
    """``fun(x, ...)``, refused if it modified ``x`` in place (its version counter moved)."""
    version = x._version
    value = fun(x, *args, **kwargs)
    if x._version != version:
        raise ValueError(
            "fun must not modify its argument in place (x was changed during the call): "
            "compute on a copy, e.g. x = x.clone(), or with out-of-place operations"
        )
    return value


def round_to(x: Tensor, dtype: torch.dtype) -> Tensor:
    """x rounded to the values ``dtype`` holds (half precision iterates in float32)."""
    return x.to(dtype).to(x.dtype) if x.dtype != dtype else x


class HalfPrecision:
    """``fun`` on float32 iterates for a half-precision ``x0``: called in ``dtype``, outputs in float32."""

    def __init__(self, fun: Callable[..., Any], dtype: torch.dtype):
        self.fun, self.dtype = fun, dtype

    def __call__(self, x: Tensor) -> Any:
        # fun sees a half-precision copy of x: its in-place changes must be caught on that copy.
        value = call_unmodified(self.fun, x.to(self.dtype))
        # Every form of `split_outputs` (a list of scalars stacks to x0's dtype too) is checked and
        # converted here: the model compares the outputs' dtype with the float32 iterate's.
        outputs, targets = split_outputs(value)
        if outputs.dtype != self.dtype:
            raise TypeError(f"fun must return a tensor of x's dtype {self.dtype}, got {outputs.dtype}")
        outputs = outputs.to(torch.float32)
        return outputs if targets is None else (outputs, targets)
