"""Backward passes through a kept graph, batched or not, without the Python layers around them.

Every J product that trustls takes from a recorded graph (`ResidualGraph`:
VJPs, and JVPs by double backward) is one call of autograd's engine, and k
products at once are that call under ``vmap``, which gives each op of the
backward pass one extra batch dimension (Zou & He 2021). What
``torch.autograd.grad`` and ``torch.func.vmap`` add around the engine call is
argument handling: normalizing the arguments into tuples, checking the
cotangents against the outputs, flattening and unflattening pytrees, checking
the batch sizes. For a graph of a few small ops (a curve fit's residual) that
handling costs more than the pass itself: a vmapped backward over the 50 rows
of a 3-parameter fit's J takes about twice as long through the public
functions as through the calls they make (``benchmarks/micro.py --only
backward``).

This module makes those calls directly: the engine entry that
``torch.autograd.grad`` calls (``torch.autograd.graph._engine_run_backward``,
or ``Variable._execution_engine.run_backward`` on torch versions without it)
and the batching primitives that ``torch.func.vmap`` calls
(``_vmap_increment_nesting``, ``_add_batch_dim``, ``_remove_batch_dim``,
``_vmap_decrement_nesting``), with the same arguments and the same
randomness mode (``"error"``). They are private to torch, so the first use
in a process checks them against the public functions on a small graph:
different values, or any error (a torch version whose private signatures
differ), and this process uses ``torch.autograd.grad`` and
``torch.func.vmap`` instead. The checks that the public functions make and
these calls skip are checks of arguments that trustls builds itself (one
output, one input, a cotangent of the output's dtype); tensor subclasses
(whose ``__torch_function__`` overrides the public functions dispatch) and a
cotangent of another shape than the output (for the public error message)
take the public functions.

Reference:
    R. Zou, H. He et al., "functorch: JAX-like composable function transforms
    for PyTorch", https://github.com/pytorch/functorch, 2021 (the vmap levels
    and batched tensors used here, now ``torch.func``).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = ["backward", "backward_batched"]

try:
    from torch._C._functorch import (
        _add_batch_dim,
        _remove_batch_dim,
        _vmap_decrement_nesting,
        _vmap_increment_nesting,
    )

    _run_engine = getattr(torch.autograd.graph, "_engine_run_backward", None)
    if _run_engine is None:
        _run_engine = torch.autograd.Variable._execution_engine.run_backward
except (ImportError, AttributeError):  # pragma: no cover - torch versions without these entries
    _run_engine = None


def _public(outputs: Tensor, inputs: Tensor, cotangent: Tensor) -> Tensor:
    return torch.autograd.grad(outputs, inputs, cotangent, retain_graph=True, allow_unused=True,
                               materialize_grads=True)[0]


def _direct(outputs: Tensor, inputs: Tensor, cotangent: Tensor) -> Tensor:
    # (outputs, cotangents, keep_graph, create_graph, inputs, allow_unreachable, accumulate_grad):
    # torch.autograd.grad's own call with retain_graph=True and allow_unused=True.
    gradient = _run_engine((outputs,), (cotangent,), True, False, (inputs,), True, False)[0]
    return torch.zeros_like(inputs) if gradient is None else gradient


def _direct_batched(outputs: Tensor, inputs: Tensor, cotangents: Tensor) -> Tensor:
    size = cotangents.shape[0]
    level = _vmap_increment_nesting(size, "error")
    try:
        gradients = _direct(outputs, inputs, _add_batch_dim(cotangents, 0, level))
        return _remove_batch_dim(gradients, level, size, 0)
    finally:
        _vmap_decrement_nesting()


@functools.cache
def _direct_calls_agree() -> bool:
    """Whether the direct calls give the public functions' values here (checked once per process)."""
    if _run_engine is None:  # pragma: no cover - torch versions without these entries
        return False
    try:
        x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
        unused = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
        with torch.enable_grad():
            r = torch.stack([x[0] * x[1], x[2].exp(), x.sum()])
        eye = torch.eye(3, dtype=torch.float64)
        # The public vmap runs first on purpose: its first call also loads functorch's
        # decompositions (batching rules written in Python), which the direct calls use
        # but do not load themselves.
        expected = torch.func.vmap(functools.partial(_public, r, x))(eye)
        return bool(
            torch.equal(_direct_batched(r, x, eye), expected)
            and torch.equal(_direct(r, x, eye[1]), expected[1])
            and torch.equal(_direct(r, unused, eye[0]), torch.zeros(1, dtype=torch.float64))
        )
    except Exception:  # any failure of a private entry means: use the public functions
        return False


def _use_public(outputs: Tensor, inputs: Tensor, cotangents: Tensor, batched: bool) -> bool:
    """Whether to take the public functions: tensor subclasses (whose overrides they dispatch), a
    cotangent of another shape than the outputs (for their error message), or a torch without the
    direct calls."""
    plain = type(outputs) is Tensor and type(inputs) is Tensor and type(cotangents) is Tensor
    shape = cotangents.shape[1:] if batched else cotangents.shape
    return not plain or shape != outputs.shape or not _direct_calls_agree()


def backward(outputs: Tensor, inputs: Tensor, cotangent: Tensor) -> Tensor:
    """The VJP ``cotangentᵀ ∂outputs/∂inputs``, the graph kept; zeros where ``inputs`` is unused.

    Examples:
        >>> import torch
        >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> backward(x**2, x, torch.tensor([1.0, 1.0]))
        tensor([2., 4.])
    """
    if _use_public(outputs, inputs, cotangent, batched=False):
        return _public(outputs, inputs, cotangent)
    return _direct(outputs, inputs, cotangent)


def backward_batched(outputs: Tensor, inputs: Tensor, cotangents: Tensor) -> Tensor:
    """`backward` for each row of ``cotangents`` (shape ``(k, *outputs.shape)``), as one vmapped pass.

    Raises:
        RuntimeError: where an op of the backward pass has no batching rule
            (as ``torch.func.vmap`` does); callers then take the products one by one.

    Examples:
        >>> import torch
        >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> backward_batched(x**2, x, torch.eye(2))
        tensor([[2., 0.],
                [0., 4.]])
    """
    if _use_public(outputs, inputs, cotangents, batched=True):
        return torch.func.vmap(functools.partial(_public, outputs, inputs))(cotangents)
    return _direct_batched(outputs, inputs, cotangents)
