"""Argument checks shared by the public entry points; messages name the argument, the rule and the value."""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import Tensor

__all__ = [
    "as_tensor_x0",
    "check_choice",
    "check_positive_int",
    "check_positive_number",
    "check_tolerance",
    "check_x0",
    "real_tensor",
]


def as_tensor_x0(x0: object) -> Tensor:
    """``x0`` as scipy reads it: a tensor keeps its floating dtype and device; a number,
    a sequence or a numpy array, or an integer tensor, becomes float64 (a scalar of shape (1,))."""
    if isinstance(x0, Tensor):
        tensor = x0
    else:
        if isinstance(x0, (bool, str, bytes)) or x0 is None:
            raise TypeError(f"x0 must be a tensor, a number or a sequence of numbers, got {type(x0).__name__}")
        tensor = real_tensor("x0", x0, "a tensor, a number or a sequence of numbers", dtype=torch.float64)
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise TypeError(f"x0 must have a real dtype, got {tensor.dtype}")
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.float64)
    return tensor.reshape(1) if tensor.ndim == 0 else tensor


def real_tensor(name: str, value: object, expected: str, **kwargs: object) -> Tensor:
    """``torch.as_tensor(value, **kwargs)`` for real data; anything else raises `TypeError`, which
    says ``name`` must be ``expected`` (or real, for complex data).

    torch casts complex data to a real dtype with only a warning, and warns once per
    process for arrays: a complex array is refused by its dtype, a sequence holding
    numpy complex numbers by numpy's warning, which comes at every conversion, and
    Python complex numbers by torch's own error.
    """
    if getattr(getattr(value, "dtype", None), "kind", None) == "c":  # a numpy array or scalar
        raise TypeError(f"{name} must be real, got {value.dtype}")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Casting complex values to real")
        try:
            return torch.as_tensor(value, **kwargs)
        except Warning:
            raise TypeError(f"{name} must be real, got a sequence of complex numbers") from None
        except (TypeError, ValueError, RuntimeError) as error:
            if "complex" in str(error):
                raise TypeError(f"{name} must be real, got complex numbers") from None
            raise TypeError(f"{name} must be {expected}, got {type(value).__name__}: {error}") from None


def _number(value: object) -> object:
    """A 0-d numpy array or tensor as its Python number (scipy takes ``np.array(1e-8)`` as a
    tolerance); anything else unchanged."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item") and not isinstance(value, numbers.Number):
        try:
            return value.item()
        except (TypeError, ValueError, RuntimeError):
            return value
    return value


def check_x0(x0: object) -> Tensor:
    if not isinstance(x0, Tensor):
        raise TypeError(f"x0 must be a torch.Tensor, got {type(x0).__name__}")
    if not x0.is_floating_point():
        raise TypeError(f"x0 must have a floating dtype, got {x0.dtype}")
    if x0.ndim != 1 or x0.numel() == 0:
        raise ValueError(f"x0 must be a non-empty 1-D tensor, got shape {tuple(x0.shape)}")
    if x0.device.type == "meta":
        raise ValueError("x0 must be on a device that holds data (cpu, cuda, ...), got a tensor on the meta device")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 must be finite, got a tensor with NaN or inf entries")
    return x0


def check_tolerance(name: str, value: object) -> float | None:
    if value is None:
        return None
    value = _number(value)
    # numbers.Real: Python and numpy scalars alike (np.float32 is not a float), bools excluded.
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite non-negative number or None, got {value!r}")
    return float(value)


def check_positive_int(name: str, value: object) -> int | None:
    """``value`` as a Python int: any integer (numbers.Integral, so numpy's np.int64 too, which
    ``max_nfev = 100 * arr.size`` produces and scipy takes) or whole float (``50.0``, which scipy
    also takes), bools excluded, or ``None``."""
    if value is None:
        return None
    value = _number(value)
    whole = isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer()
    )
    if isinstance(value, bool) or not whole or value < 1:
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    return int(value)


def check_positive_number(name: str, value: object) -> float | None:
    if value is None:
        return None
    value = _number(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a positive finite number or None, got {value!r}")
    return float(value)


def check_choice(name: str, value: object, choices: tuple) -> object:
    """The one of ``choices`` that ``value`` equals, as that choice: scipy compares with ``in``, so
    ``verbose=True`` is 1 and ``np.int64(2)`` is 2 there, and here they come back as the ints."""
    try:
        index = choices.index(value)
    except (ValueError, TypeError, RuntimeError):  # RuntimeError: a tensor of several elements
        raise ValueError(
            f"{name} must be {', '.join(map(repr, choices[:-1]))} or {choices[-1]!r}, got {value!r}"
        ) from None
    return choices[index]


def check_lr(lr: object) -> float:
    """`TrustRegionOptimizer`'s ``lr`` as a float: an upper bound on the trust radius, ≥ 0 or inf.

    As in ``torch.optim``, 0 is valid (schedulers reach it: a warm-up from 0,
    ``CosineAnnealingLR`` at ``T_max``; the step then moves nothing) and a
    0-d real tensor is taken as its value. NaN is refused: it is what a
    scheduler that interpolates from ``lr=inf`` computes (inf − inf).
    """
    value = lr
    if isinstance(lr, Tensor) and lr.ndim == 0 and not lr.is_complex() and lr.dtype != torch.bool:
        value = lr.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        hint = ""
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isnan(value):
            hint = (
                "; a scheduler that computes lr from differences of lr (CosineAnnealingLR, SWALR) needs a finite lr "
                "to start from"
            )
        elif isinstance(lr, Tensor) and lr.ndim != 0:
            hint = f"; a tensor lr must be 0-d (one number), got shape {tuple(lr.shape)}"
        raise ValueError(
            f"lr must be a non-negative number or inf (an upper bound on the trust radius), got {lr!r}{hint}"
        )
    return float(value)


def check_max_trials(max_trials: object) -> int | None:
    """`TrustRegionOptimizer`'s ``max_trials`` as a Python int (a whole number), or ``None``."""
    return check_positive_int("max_trials", max_trials)
