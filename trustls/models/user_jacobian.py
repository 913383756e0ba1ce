"""A Jacobian the user computes (``GaussNewtonModel(jacobian=...)``, scipy's ``jac=``), as an operator.

``jacobian(x)`` may return a dense tensor, a torch sparse tensor (COO or CSR)
or any `LinearOperator`; `jacobian_operator` turns it into an (m, n) operator
and checks it, naming ``jacobian``, before any product runs. ``jacobian`` is
called with grad enabled (a hand-written Jacobian may run
``torch.autograd.grad`` through ``fun``), so a tensor J is detached here: it is
data, and a graph kept with it would hold its memory across the solve.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trustls.operators.base import LinearOperator
from trustls.operators.dense import DenseOperator
from trustls.operators.sparse import SparseOperator

__all__ = ["jacobian_operator"]


def jacobian_operator(J: object, m: int, x: Tensor) -> LinearOperator:
    """What a user's ``jacobian(x)`` returned, as an (m, n) operator on x's dtype and device, or an error
    naming ``jacobian`` (a J of another dtype or device would fail later inside a product)."""
    if isinstance(J, Tensor):
        J = J.detach()
        if J.ndim != 2 or (J.layout == torch.sparse_coo and J.dense_dim() != 0):
            raise ValueError(f"jacobian must return a 2-D J of shape {(m, x.shape[0])}, got a {J.ndim}-D tensor "
                             f"of shape {tuple(J.shape)}" + (" with dense dimensions" if J.ndim == 2 else ""))
        if not J.is_floating_point():
            raise TypeError(f"jacobian must return J of x's dtype {x.dtype}, got {J.dtype}")
        J = SparseOperator.from_tensor(J) if J.layout != torch.strided else DenseOperator(J)
    if not isinstance(J, LinearOperator):
        raise TypeError(f"jacobian must return a Tensor or a LinearOperator, got {type(J).__name__}")
    if J.shape != (m, x.shape[0]):
        raise ValueError(f"jacobian must return shape {(m, x.shape[0])}, got {J.shape}")
    if J.dtype != x.dtype:
        raise TypeError(f"jacobian must return J of x's dtype {x.dtype}, got {J.dtype}")
    if J.device != x.device:
        raise ValueError(f"jacobian must return J on x's device {x.device}, got {J.device}")
    return J
