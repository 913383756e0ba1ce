"""A Jacobian the user computes (``GaussNewtonModel(jacobian=...)``, scipy's ``jac=``), as an operator.

``jacobian(x)`` may return a dense tensor, a torch sparse tensor (COO or CSR)
or any `LinearOperator`; `jacobian_operator` turns it into an (m, n) operator
and checks it, naming ``jacobian``, before any product runs. ``jacobian`` is
called with grad enabled (a hand-written Jacobian may run
``torch.autograd.grad`` through ``fun``), so a tensor J is detached here: it is
data, and a graph kept with it would hold its memory across the solve.

A sparse J becomes a `SparseOperator`, whose sorted structure (and what is
derived from it: the column blocks of block-Jacobi scaling, the Schur
complement's plan) costs sorts of its indices. A user's ``jacobian`` usually
returns the same pattern at every point, built the same way, so a solve keeps
the last one (`SparseStructure`): when the next J stores its entries at the
same indices, in the same order (one comparison of the index arrays), only its
values are new (`SparseOperator.with_values`). A J whose stored entries repeat
a coordinate (an uncoalesced COO tensor with duplicates) is coalesced instead,
at every point: its duplicates are summed before any column norm or block is
taken from it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trustls.operators.base import LinearOperator
from trustls.operators.dense import DenseOperator
from trustls.operators.sparse import SparseOperator

__all__ = ["SparseStructure", "is_plain_sparse", "jacobian_operator"]


def is_plain_sparse(J: object) -> bool:
    """Whether J is a 2-D torch sparse tensor without dense dimensions (the sparse J a `SparseOperator` holds)."""
    return (
        isinstance(J, Tensor)
        and J.layout != torch.strided
        and J.ndim == 2
        and not (J.layout == torch.sparse_coo and J.dense_dim() != 0)
    )


class SparseStructure:
    """The last sparse J of a solve, kept so that a J with the same stored indices reuses its structure.

    Examples:
        >>> import torch
        >>> structure = SparseStructure()
        >>> J = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).to_sparse()
        >>> first = jacobian_operator(J, 2, torch.zeros(2), structure)
        >>> second = jacobian_operator(3 * J, 2, torch.zeros(2), structure)
        >>> second.pattern is first.pattern, second.to_dense()
        (True, tensor([[3., 0.],
                [0., 6.]]))
    """

    def __init__(self) -> None:
        self.keys: tuple[Tensor, ...] | None = None
        self.operator: SparseOperator | None = None

    def operator_for(self, J: Tensor) -> SparseOperator:
        """J (a 2-D torch sparse tensor, not hybrid) as a `SparseOperator`, on the kept structure when it fits."""
        keys, rows, cols, values = _stored_entries(J)
        if self.operator is not None and self.operator.shape == tuple(J.shape) and _same(keys, self.keys):
            return self.operator.with_values(values)
        coalesced = J.to_sparse_coo().coalesce()
        if coalesced._nnz() != values.numel():  # repeated coordinates: summed here, every time
            coalesced_rows, coalesced_cols = coalesced.indices()
            return SparseOperator(coalesced_rows, coalesced_cols, coalesced.values(), tuple(J.shape))
        operator = SparseOperator(rows, cols, values, tuple(J.shape))
        self.keys, self.operator = keys, operator
        return operator


def _stored_entries(J: Tensor) -> tuple[tuple[Tensor, ...], Tensor, Tensor, Tensor]:
    """The index arrays J stores (what identifies its structure), and its entries as triplets in stored order."""
    if J.layout == torch.sparse_csr:
        crow, cols = J.crow_indices(), J.col_indices()
        rows = torch.repeat_interleave(torch.arange(J.shape[0], device=J.device), crow.diff())
        return (crow, cols), rows, cols, J.values()
    if J.layout == torch.sparse_csc:
        ccol, rows = J.ccol_indices(), J.row_indices()
        cols = torch.repeat_interleave(torch.arange(J.shape[1], device=J.device), ccol.diff())
        return (ccol, rows), rows, cols, J.values()
    coo = J if J.layout == torch.sparse_coo else J.to_sparse_coo()  # block layouts: their entries, one by one
    indices = coo._indices()  # as stored: coalescing would sort them at every point
    return (indices,), indices[0], indices[1], coo._values()


def _same(keys: tuple[Tensor, ...], kept: tuple[Tensor, ...] | None) -> bool:
    return kept is not None and len(keys) == len(kept) and all(
        a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
        for a, b in zip(keys, kept)
    )


def jacobian_operator(J: object, m: int, x: Tensor, structure: SparseStructure | None = None) -> LinearOperator:
    """What a user's ``jacobian(x)`` returned, as an (m, n) operator on x's dtype and device, or an error
    naming ``jacobian`` (a J of another dtype or device would fail later inside a product).

    A sparse J reuses the structure ``structure`` kept from the solve's last one when it fits
    (module docstring); ``None``: a fresh structure."""
    if isinstance(J, Tensor):
        J = J.detach()
        if J.ndim != 2 or (J.layout != torch.strided and not is_plain_sparse(J)):
            raise ValueError(f"jacobian must return a 2-D J of shape {(m, x.shape[0])}, got a {J.ndim}-D tensor "
                             f"of shape {tuple(J.shape)}" + (" with dense dimensions" if J.ndim == 2 else ""))
        if not J.is_floating_point():
            raise TypeError(f"jacobian must return J of x's dtype {x.dtype}, got {J.dtype}")
        if J.layout == torch.strided:
            J = DenseOperator(J)
        else:
            J = (SparseStructure() if structure is None else structure).operator_for(J)
    if not isinstance(J, LinearOperator):
        raise TypeError(f"jacobian must return a Tensor or a LinearOperator, got {type(J).__name__}")
    if J.shape != (m, x.shape[0]):
        raise ValueError(f"jacobian must return shape {(m, x.shape[0])}, got {J.shape}")
    if J.dtype != x.dtype:
        raise TypeError(f"jacobian must return J of x's dtype {x.dtype}, got {J.dtype}")
    if J.device != x.device:
        raise ValueError(f"jacobian must return J on x's device {x.device}, got {J.device}")
    return J
