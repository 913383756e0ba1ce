"""When ``torch.func`` cannot run a residual: classic autograd instead, and one warning per solve.

``torch.func`` transforms refuse some functions that classic autograd
differentiates: an autograd.Function without ``setup_context`` (every
transform), without ``jvp`` (forward mode), ``.item()`` under the tracing of
``torch.func.linearize``, forward-mode AD of sparse products. A product
method of `trustls.operators.implicit` built on ``torch.func`` may fail while
linearizing or at its first product; `with_fallback` then builds the
``"autograd"`` products instead (one more call of ``fun`` when the failure
came after the method's own call) and says so once.

A `ProductFallback` is the memory of one solve: the model passes the same one
to every linearization, so that a method that failed is not tried again (no
wasted call of ``fun``) and the warning is not repeated. Errors are never
swallowed: if the ``"autograd"`` products fail as well, that error propagates.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["ProductFallback", "error_reason", "warn_once", "with_fallback"]


class ProductFallback:
    """A solve's memory of the product routes that could not run.

    Attributes:
        reason: torch's error (first line) that ruled ``torch.func`` out, or ``None``.
        rows_reason: the error that ruled out J v by double backward (then J v
            comes from J built by m VJPs), or ``None``.
        warned: whether this solve has warned already (one warning per solve).

    Examples:
        >>> ProductFallback()
        ProductFallback(reason=None, rows_reason=None)
    """

    def __init__(self):
        self.reason: str | None = None
        self.rows_reason: str | None = None
        self.warned = False

    def __repr__(self) -> str:
        return f"ProductFallback(reason={self.reason!r}, rows_reason={self.rows_reason!r})"


def error_reason(error: Exception) -> str:
    """The first line of torch's error message (its type's name when it has none): what a warning names."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def warn_once(memo: ProductFallback, what: str, error: Exception, instead: str) -> str:
    """Warn that trustls could not do ``what`` (unless this solve warned already); return the reason."""
    reason = error_reason(error)
    if not memo.warned:
        memo.warned = True
        warnings.warn(
            f"trustls could not {what} ({type(error).__name__}: {reason}); it computes the products {instead} "
            "for the rest of this solve (exact, possibly slower)",
            UserWarning,
            stacklevel=4,
        )
    return reason


def with_fallback(build, fun, x: Tensor, method: str, memo: ProductFallback, autograd):
    """``build(fun, x)``, switching to ``autograd(fun, x, memo)`` on the first error of ``torch.func``."""

    def fall_back(error: Exception):
        memo.reason = warn_once(memo, f"use torch.func for the {method!r} products", error, "with classic autograd")
        with torch.enable_grad():
            return autograd(fun, x, memo)

    if memo.reason is not None:
        return autograd(fun, x, memo)
    try:
        products = build(fun, x)
    except (RuntimeError, NotImplementedError) as error:
        return fall_back(error)
    replacement: list = []

    def guarded(product: Callable[[Tensor], Tensor], name: str) -> Callable[[Tensor], Tensor]:
        # torch.func fails lazily in some methods (a JVP by forward mode at the first product).
        def call(vector: Tensor) -> Tensor:
            if not replacement:
                try:
                    return product(vector)
                except (RuntimeError, NotImplementedError) as error:
                    replacement.append(fall_back(error))
            return getattr(replacement[0], name)(vector)

        return call

    return dataclasses.replace(products, jvp=guarded(products.jvp, "jvp"), vjp=guarded(products.vjp, "vjp"))
