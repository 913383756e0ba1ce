"""The user's function as trustls calls it: counted, argument-protected, outputs checked.

`CountedFunction` wraps ``fun(x, *args, **kwargs)`` so that

* every call is counted (``nfev`` is the number of calls trustls made,
  including those inside Jacobian computations; a call under
  ``torch.func.vmap`` is one call), on a `CallTally` that the functions of a
  solve's steps share: products built at one step (those of
  ``GaussNewtonModel(products="vjp+jvp")``, say, whose JVPs call ``fun``
  again) keep that step's function and are called at the next, and their
  calls count where they happen. While a tally is capped (`CountedFunction.capped`,
  around what may call ``fun`` through products: the subproblem solve, the
  linearization, the scale's column norms) a call past the cap raises
  `BudgetExhausted` instead of running, so ``max_nfev`` bounds those calls too;
* a function that modifies its argument in place is caught: the argument's
  version counter (bumped by every in-place operation, also under
  ``torch.no_grad()``) is compared before and after the call, at no copy;
  otherwise the iterate, which is the argument, would silently move away
  from the point whose cost was measured. Where x is the leaf that autograd
  differentiates, torch refuses the write itself, inside ``fun``; that error
  (which does not say which leaf: x, or a tensor of fun's own that requires
  grad) is raised again as the same ``ValueError``, chained to torch's;
* a ``fun`` written with numpy, which autograd cannot differentiate, gets a
  trustls ``TypeError`` in place of torch's "Can't call numpy() on Tensor
  that requires grad. Use tensor.detach().numpy() instead": that advice
  would cut x out of J;
* the first call, at x0, watches for values computed from x that ``fun``
  reads as Python numbers (``.item()``, ``float()``, ``int()``,
  ``.tolist()``), through a ``torch.overrides.TorchFunctionMode``. Autograd
  cannot follow such a number: where it enters the residual, J misses its
  dependence on x, and a variable reached only that way has a zero column,
  so it never moves while the solve reports convergence. For control flow
  (``if x[0].item() > 0``) the read is harmless. So when a read was seen,
  one VJP with a seeded Gaussian cotangent u finds the zero columns
  ((Jᵀu)_j = Σ_i u_i J_ij is zero for a nonzero column with probability 0),
  and a ``UserWarning`` names the read and those variables. Later calls run
  without the mode, at no cost; a value that enters the residual beside a
  differentiable path to the same variable leaves a nonzero but wrong column,
  which this test cannot see;
* the value is split into outputs and optional targets (`split_outputs`):
  a tensor, a list of tensors (stacked), or a tuple ``(outputs, targets)``
  for models whose loss compares outputs with targets.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = [
    "HALF",
    "BudgetExhausted",
    "CallTally",
    "CountedFunction",
    "HalfPrecision",
    "call_unmodified",
    "check_outputs",
    "round_to",
    "split_outputs",
]

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
        return outputs, targets.detach()  # data, not a function of x (`check_targets_are_data`)
    if isinstance(value, list) and value and all(isinstance(v, Tensor) for v in value):
        parts = [v.reshape(()) if v.numel() == 1 else v for v in value]
        if len({tuple(p.shape) for p in parts}) > 1:
            shapes = ", ".join(str(tuple(v.shape)) for v in value[:4]) + (", ..." if len(value) > 4 else "")
            raise ValueError(
                f"{name} must return a list of one-element tensors (or of tensors of one shape), got shapes "
                f"[{shapes}]: join groups of residuals into one vector, torch.cat([r.reshape(-1) for r in parts])"
            )
        return torch.stack(parts), None
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


class BudgetExhausted(Exception):
    """A call of ``fun`` refused because it would pass the cap of a capped `CallTally` (``max_nfev``).

    Not a ``RuntimeError``: nothing that falls back from torch's errors may take it for one.
    """


class CallTally:
    """The running count of one solve's calls of its function (module docstring).

    Attributes:
        count: calls so far.
        cap: while set, the count no call may pass (`CountedFunction.capped`).
        per_evaluation: calls one evaluation with its graph took at the solve's
            start (two for ``products="linearize"``, which traces ``fun`` once more),
        per_linearization: and the linearization after it (one for a dense J after a
            ``torch.func`` evaluation, or for the gradient's VJP with ``products="fresh"``):
            what a trial reserves of the budget for its evaluation and linearization.
    """

    def __init__(self) -> None:
        self.count = 0
        self.cap: int | None = None
        self.per_evaluation = 1
        self.per_linearization = 0

    def __repr__(self) -> str:
        return (
            f"CallTally(count={self.count}, cap={self.cap}, per_evaluation={self.per_evaluation}, "
            f"per_linearization={self.per_linearization})"
        )


class CountedFunction:
    """``fun(x, *args, **kwargs)`` with its calls counted and its argument protected.

    ``calls`` counts the calls of the shared ``tally`` since this function was
    made: its own and those of earlier functions of the same solve.

    Examples:
        >>> import torch
        >>> f = CountedFunction(lambda x, c: c * x, args=(2.0,))
        >>> f(torch.ones(2)), f.calls
        (tensor([2., 2.]), 1)
    """

    def __init__(
        self,
        fun: Callable[..., Any],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        watch: bool = False,
        tally: CallTally | None = None,
    ):
        if not callable(fun):
            raise TypeError(f"fun must be callable, got {type(fun).__name__}")
        self.fun = fun
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.tally = CallTally() if tally is None else tally
        self._start = self.tally.count
        self.watch = watch  # watch the first call for host reads: a solve's first evaluation, at x0

    @property
    def calls(self) -> int:
        """The calls of the tally since this function was made."""
        return self.tally.count - self._start

    @contextmanager
    def capped(self, calls: int | None) -> Iterator[None]:
        """Within the block, a call through the tally that would take `calls` past ``calls`` raises
        `BudgetExhausted` instead of running (``None``: no cap). The cap is the tally's, so calls
        through earlier functions of the solve (their products) are refused too."""
        tally, cap = self.tally, self.tally.cap
        tally.cap = None if calls is None else self._start + calls
        try:
            yield
        finally:
            tally.cap = cap

    def __call__(self, x: Tensor) -> Any:
        tally = self.tally
        if tally.cap is not None and tally.count >= tally.cap:
            raise BudgetExhausted(f"max_nfev: {tally.count} calls made, the cap is {tally.cap}")
        first = self.watch and tally.count == self._start
        tally.count += 1  # a call that raises was still made
        if not first:
            return call_unmodified(self.fun, x, *self.args, **self.kwargs)
        reads = _HostReads()  # the first call of a solve only (module docstring)
        with reads:
            value = call_unmodified(self.fun, x, *self.args, **self.kwargs)
        if reads.read is not None:
            _warn_frozen(value, x, *reads.read)
        check_targets_are_data(value, x)
        return value


_IN_PLACE = "fun must not modify its argument in place"
_HOW_IN_PLACE = "compute on a copy, e.g. x = x.clone(), or with out-of-place operations"
# torch's messages (torch/csrc/autograd), for a write into the leaf x or a view of it, and for numpy().
_LEAF_WRITE = "leaf Variable that requires grad is being used in an in-place operation"
_NUMPY_READ = "Can't call numpy() on Tensor that requires grad"


def call_unmodified(fun: Callable[..., Any], x: Tensor, *args: Any, **kwargs: Any) -> Any:
    """``fun(x, ...)``, refused if it modified ``x`` in place (its version counter moved, or torch
    refused the write into x, the leaf autograd differentiates), or converted x to numpy."""
    version = x._version
    try:
        value = fun(x, *args, **kwargs)
    except RuntimeError as error:
        if x.requires_grad and x.is_leaf and _LEAF_WRITE in str(error):
            raise ValueError(
                f"{_IN_PLACE} (torch refused an in-place write into a leaf tensor that requires grad: x, or a "
                f"tensor of fun's own): {_HOW_IN_PLACE}"
            ) from error
        if x.requires_grad and _NUMPY_READ in str(error):
            raise TypeError(
                "fun must compute with torch operations on its tensor argument, got a conversion to numpy of a "
                "tensor that requires grad (x or one computed from it, e.g. by x.numpy(), np.asarray, or a numpy "
                "function such as np.exp applied to it), which autograd cannot differentiate (detaching it "
                "would cut x out of J): write fun with torch operations (torch.exp rather than numpy.exp), or "
                "pass a Jacobian (least_squares' jac=, GaussNewtonModel(jacobian=...)), with which fun is not "
                "differentiated and may use numpy"
            ) from error
        raise
    if x._version != version:
        raise ValueError(f"{_IN_PLACE} (x was changed during the call): {_HOW_IN_PLACE}")
    return value


# The reads of a tensor's value as Python numbers, by the name a warning gives them. numpy() is not
# among them: on a tensor that requires grad torch refuses it (`call_unmodified`).
_HOST_READS = {
    Tensor.item: "Tensor.item()",
    Tensor.__float__: "float()",
    Tensor.__int__: "int()",
    Tensor.tolist: "Tensor.tolist()",
}
_TORCH_DIR = os.path.dirname(torch.__file__)


class _HostReads(TorchFunctionMode):
    """Notes the first read, as Python numbers, of a tensor that requires grad (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.read: tuple[str, str] | None = None  # (the call, where in fun)

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if self.read is None and func in _HOST_READS and args and getattr(args[0], "requires_grad", False):
            self.read = (_HOST_READS[func], _caller())
        return func(*args, **(kwargs or {}))


def _differentiated_leaf(x: Tensor) -> bool:
    """Whether x is the leaf that autograd differentiates in this call (not under ``torch.no_grad()`` or a
    ``torch.func`` transform, whose x is a wrapper): then one backward pass from the outputs reaches it."""
    return x.requires_grad and x.is_leaf and not torch._C._functorch.is_functorch_wrapped_tensor(x)


def check_targets_are_data(value: object, x: Tensor) -> None:
    """Refuse ``(outputs, targets)`` whose targets depend on x: a second group of residuals.

    Targets are detached (`split_outputs`): data such as a teacher network's
    outputs. Targets computed from x are not data but residuals, which would
    then never move: ``(x[:2] - 1, x[2:] - 2)`` left x[2:] where it was and
    reported success (found by a bug hunt). At a call where x is the leaf
    autograd differentiates (not under a ``torch.func`` transform or
    ``torch.no_grad()``) and the targets have a graph (detached data, the
    usual targets, cost nothing), one backward pass through that graph tells
    whether they reach x.
    """
    if not (isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], Tensor)):
        return
    targets = value[1]
    if targets.grad_fn is None or not targets.is_floating_point() or not _differentiated_leaf(x):
        return
    (reached,) = torch.autograd.grad(targets.sum(), x, retain_graph=True, allow_unused=True)
    if reached is not None:
        raise ValueError(
            "fun must return (outputs, targets) with targets that do not depend on x, got targets computed from "
            "x: to return several groups of residuals, join them into one vector, torch.cat([r1, r2])"
        )


def _caller() -> str:
    """``file:line`` of the innermost frame outside torch and this module: the read in ``fun``."""
    frame = sys._getframe(1)
    while frame is not None and (
        frame.f_code.co_filename.startswith(_TORCH_DIR) or frame.f_code.co_filename == __file__
    ):
        frame = frame.f_back
    return "an unknown line" if frame is None else f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _frozen_variables(value: object, x: Tensor) -> list[int]:
    """The variables whose column of J at x is exactly zero: those (Jᵀu)_j = 0 for a seeded Gaussian u.

    Only for x the autograd leaf of the call (not under a ``torch.func``
    transform, where x is a wrapper) and outputs that reach it; otherwise none.
    """
    if not _differentiated_leaf(x):
        return []
    try:
        outputs, _ = split_outputs(value)
    except TypeError:  # refused with the reason where the outputs are read
        return []
    if not (outputs.requires_grad and outputs.is_floating_point()):
        return []
    generator = torch.Generator(device=outputs.device).manual_seed(0)
    u = torch.randn(outputs.shape, generator=generator, dtype=outputs.dtype, device=outputs.device)
    (column_sums,) = torch.autograd.grad(outputs, x, u, retain_graph=True, allow_unused=True)
    if column_sums is None:  # no path to x at all: refused at the first evaluation
        return []
    return (column_sums == 0).nonzero().reshape(-1).tolist()


def _warn_frozen(value: object, x: Tensor, call: str, where: str) -> None:
    """One `UserWarning` when ``fun`` read a value as a Python number and J has zero columns."""
    frozen = _frozen_variables(value, x)
    if not frozen:
        return
    shown = ", ".join(f"x[{j}]" for j in frozen[:8]) + (f" and {len(frozen) - 8} more" if len(frozen) > 8 else "")
    warnings.warn(
        f"fun read a value computed from x as a Python number ({call} at {where}), and J at x0 is zero in the "
        f"columns of {shown}: autograd cannot differentiate through a Python number, so where that value "
        "enters the residual J misses its dependence on x, and those variables will not move. A read for "
        "control flow (if x[0].item() > 0: ...) is fine; in the residual, use the tensor itself (x[0] rather "
        "than x[0].item() or float(x[0]))",
        UserWarning,
        stacklevel=2,
    )


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
