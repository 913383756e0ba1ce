"""The callables that users pass to `TrustRegion`, as `typing.Protocol`s.

`ResidualFunction` is ``fun``, the residuals r(x) whose ½‖r‖² (or, with a
loss, the model's cost) is minimized; `Callback` is called with an
`IterationInfo` after every trial. Both are importable from
`trustls.trust_region` too.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor

from trustls.result import IterationInfo

__all__ = ["Callback", "ResidualFunction"]


class ResidualFunction(Protocol):
    """``fun(x) -> r``: a 1-D floating tensor x of length n to a 1-D tensor of length m."""

    def __call__(self, x: Tensor, /) -> Tensor: ...


class Callback(Protocol):
    """``callback(info) -> bool | None``: return a true value (or raise `StopIteration`) to stop."""

    def __call__(self, info: IterationInfo, /) -> Any: ...
