"""A sparse matrix from coordinate (COO) triplets, with fast products both ways.

Jacobians of structured problems (bundle adjustment, discretized PDEs, banded
systems) have few nonzeros per row. `SparseOperator` keeps J in compressed
sparse row (CSR) form for ``J v`` and a second CSR copy of Jᵀ for ``Jᵀu``:
building Jᵀ costs one stable sort of the column indices, and saves a scatter
(``index_add``) per product, several times slower on CPU. The sorts live in a
`SparsityPattern` that Jacobians with the same pattern share
(`SparseOperator.with_values`). Duplicate coordinates are summed, as in every
COO format.

The compressed indices are int32 whenever the sizes allow: torch's CPU kernel
then multiplies without converting the indices at every product (measured on
a tridiagonal J, n = 10⁵: 0.25 ms per product against 0.44 ms with int64;
``benchmarks/micro.py --only sparse-product``). The
triplets of a vectorized Jacobian usually arrive as a few sorted runs (one per
diagonal or per block of the formula), or row by row with a little local
disorder; on CPU those are ordered by numpy's stable sort, which merges runs
(timsort) in a fraction of a general sort; other keys by a radix sort
(`trustls._sorting.stable_order`).
"""

from __future__ import annotations

import warnings

import torch

try:
    import numpy
except ImportError:  # numpy is optional: torch's sort is used instead
    numpy = None
from torch import Tensor

from trustls._sorting import stable_order
from trustls.operators.base import LinearOperator

__all__ = ["SparseOperator", "SparsityPattern"]


# Sorted runs up to which numpy's timsort beats torch's sort (measured on 3·10⁵
# int64 keys: 0.3-2.4 ms for 1-3 runs, 5 ms for 10, against 5.5 ms for torch).
_MAX_MERGED_RUNS = 8
# Timsort first sorts chunks of 32-64 keys by insertion, so disorder within
# such a window is nearly free: the runs that matter are those of every
# 32nd key. Row-major triplets of a banded matrix have a descent in their
# column indices at every row but none at that stride (tridiagonal, n = 10⁵:
# 0.9 ms against 5 ms for torch's sort).
_TIMSORT_WINDOW = 32


def _stable_order(keys: Tensor, bound: int) -> Tensor | None:
    """The stable permutation that sorts ``keys`` (all in ``[0, bound)``); ``None`` when sorted."""
    if keys.numel() <= 1:
        return None
    if not bool((keys[1:] < keys[:-1]).any()):
        return None
    if numpy is not None and keys.device.type == "cpu":
        coarse = keys[::_TIMSORT_WINDOW]
        if int((coarse[1:] < coarse[:-1]).sum()) < _MAX_MERGED_RUNS:
            return torch.from_numpy(numpy.argsort(keys.numpy(), kind="stable")).to(torch.int64)
        return stable_order(keys, bound)  # a radix sort
    narrow = keys.to(torch.int32) if bound <= torch.iinfo(torch.int32).max else keys
    return torch.argsort(narrow, stable=True)


def _shape_of(value: object) -> object:
    """What an argument check reports as received: a tensor's shape, else the type's name."""
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


def _crow(rows: Tensor, m: int, dtype: torch.dtype) -> Tensor:
    crow = torch.zeros(m + 1, dtype=dtype, device=rows.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=m), 0)
    return crow


def _csr(crow: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    return torch.sparse_csr_tensor(crow, cols, values, shape, check_invariants=False)


def _spend_csr_warnings() -> None:
    # torch warns once per process when it first builds a CSR tensor (CSR
    # support is in beta; some versions add that invariant checks are off).
    # Spending those warnings here, silenced, spares `_csr` a catch_warnings
    # block, about 25 µs per tensor: a fifth of `with_values` at n = 10⁴.
    one = torch.tensor([0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _csr(one, one[:1], torch.ones(1), (1, 1))


_spend_csr_warnings()


def _check_column_order(order: Tensor, cols: Tensor) -> None:
    """Raise unless ``order`` is the stable permutation of the entries that sorts ``cols`` (O(entries)):
    a permutation, ``cols`` nondecreasing along it, and entries of one column in their own order."""
    count = cols.numel()
    rule = f"column_order must be the stable int64 permutation of the {count} entries that sorts cols"
    if not isinstance(order, Tensor) or order.dtype != torch.int64 or order.shape != cols.shape:
        got = f"shape {tuple(order.shape)} {order.dtype}" if isinstance(order, Tensor) else type(order).__name__
        raise ValueError(f"{rule}, got {got}")
    if order.device != cols.device:
        raise ValueError(f"{rule}, on cols' device {cols.device}, got a tensor on {order.device}")
    if not count:
        return
    valid = bool(((order >= 0) & (order < count)).all()) and bool((torch.bincount(order, minlength=count) == 1).all())
    if valid:
        ordered = cols.index_select(0, order)
        same = ordered[1:] == ordered[:-1]
        valid = bool((ordered[1:] >= ordered[:-1]).all()) and bool((order[1:] > order[:-1])[same].all())
    if not valid:
        raise ValueError(f"{rule}, got one that is not")


class SparsityPattern:
    """The index structure of a sparse matrix, shared by matrices with the same pattern.

    Holds the permutations that order the triplets by row (for J) and by
    column (for Jᵀ), ``None`` where they already are, and the compressed
    index arrays (int32 when the sizes allow), so that a new Jacobian
    with the same pattern (`SparseOperator.with_values`) costs two gathers
    instead of two sorts. Derived structures (block plans) are cached here.
    """

    def __init__(self, rows: Tensor, cols: Tensor, shape: tuple[int, int], *, column_order: Tensor | None = None):
        m, n = shape
        self.rows, self.cols, self.shape = rows, cols, (m, n)
        # int32 compressed indices when every index and offset fits.
        index = torch.int32 if max(m, n, rows.numel()) <= torch.iinfo(torch.int32).max else torch.int64
        self.row_order = _stable_order(rows, m)
        self.crow = _crow(rows, m, index)
        self.cols_by_row = (cols if self.row_order is None else cols.index_select(0, self.row_order)).to(index)
        if column_order is None or cols.numel() <= 1 or not bool((cols[1:] < cols[:-1]).any()):
            self.col_order = _stable_order(cols, n)  # None when sorted
        else:
            self.col_order = column_order
        self.ccol = _crow(cols, n, index)
        self.rows_by_col = (rows if self.col_order is None else rows.index_select(0, self.col_order)).to(index)
        self.cache: dict = {}


class SparseOperator(LinearOperator):
    """The ``(m, n)`` matrix with entries ``values`` at ``(rows, cols)``.

    Args:
        rows: int64 row indices.
        cols: int64 column indices, as many as ``rows``.
        values: floating tensor of the same length.
        shape: ``(m, n)``.
        column_order: the stable permutation that sorts ``cols``, when the
            caller holds it already (a `JacobianPattern`'s): one sort saved.
            It is checked (a permutation that orders ``cols``).

    Examples:
        >>> import torch
        >>> A = SparseOperator(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([2.0, 3.0]), (2, 2))
        >>> A @ torch.tensor([1.0, 1.0]), A.rmatvec(torch.tensor([1.0, 0.0]))
        (tensor([2., 3.]), tensor([0., 2.]))
    """

    is_matrix_free = False

    def __init__(
        self, rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int], *, column_order: Tensor | None = None
    ):
        for name, index in (("rows", rows), ("cols", cols)):
            if not isinstance(index, Tensor) or index.dtype != torch.int64 or index.ndim != 1:
                raise TypeError(f"{name} must be a 1-D int64 tensor, got {getattr(index, 'dtype', type(index).__name__)}")
        if not isinstance(values, Tensor) or not values.is_floating_point() or values.ndim != 1:
            raise TypeError("values must be a 1-D floating tensor")
        if not rows.shape == cols.shape == values.shape:
            raise ValueError(
                f"rows, cols and values must have the same length, got {rows.numel()}, {cols.numel()}, {values.numel()}"
            )
        super().__init__(shape, values.dtype, values.device)
        if column_order is not None:
            _check_column_order(column_order, cols)
        self._set(SparsityPattern(rows, cols, self.shape, column_order=column_order), values)

    def _set(self, pattern: SparsityPattern, values: Tensor) -> None:
        m, n = self.shape
        self.pattern = pattern
        self.rows, self.cols, self.values = pattern.rows, pattern.cols, values
        by_row = values if pattern.row_order is None else values.index_select(0, pattern.row_order)
        by_col = values if pattern.col_order is None else values.index_select(0, pattern.col_order)
        self.matrix = _csr(pattern.crow, pattern.cols_by_row, by_row, (m, n))
        self.transpose = _csr(pattern.ccol, pattern.rows_by_col, by_col, (n, m))

    def __deepcopy__(self, memo: dict) -> SparseOperator:
        # torch cannot deep-copy sparse CSR tensors (their storage is not accessible): copy the values,
        # share the pattern, which is immutable.
        return self.with_values(self.values.clone())

    def with_values(self, values: Tensor) -> SparseOperator:
        """The matrix with this one's sparsity pattern and new ``values`` (no sorting).

        Examples:
            >>> import torch
            >>> A = SparseOperator(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([2.0, 3.0]), (2, 2))
            >>> A.with_values(torch.tensor([1.0, 1.0])).to_dense()
            tensor([[0., 1.],
                    [1., 0.]])
        """
        if not isinstance(values, Tensor) or values.shape != self.values.shape:
            raise ValueError(f"values must be a tensor of shape {tuple(self.values.shape)}, got {_shape_of(values)}")
        operator = object.__new__(SparseOperator)
        LinearOperator.__init__(operator, self.shape, values.dtype, values.device)
        operator._set(self.pattern, values)
        return operator

    def scale_columns(self, scale: Tensor) -> SparseOperator:
        """``A diag(scale)``: the values times ``scale`` at their columns, on the same pattern.

        Examples:
            >>> import torch
            >>> A = SparseOperator(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([2.0, 3.0]), (2, 2))
            >>> A.scale_columns(torch.tensor([10.0, 100.0])).to_dense()
            tensor([[  0., 200.],
                    [ 30.,   0.]])
        """
        if not isinstance(scale, Tensor) or scale.shape != (self.shape[1],):
            raise ValueError(f"scale must be a tensor of shape ({self.shape[1]},), got {_shape_of(scale)}")
        return self.with_values(self.values * scale.index_select(0, self.cols))

    @classmethod
    def from_tensor(cls, matrix: Tensor) -> SparseOperator:
        """From a torch sparse tensor (COO or CSR) of two dimensions."""
        coo = matrix.to_sparse_coo().coalesce()
        rows, cols = coo.indices()
        return cls(rows, cols, coo.values(), tuple(coo.shape))

    def matvec(self, v: Tensor) -> Tensor:
        return self.matrix @ v

    def rmatvec(self, u: Tensor) -> Tensor:
        return self.transpose @ u

    def to_dense(self) -> Tensor:
        return self.matrix.to_dense()

    def column_norms(self) -> Tensor:
        """Euclidean norms of the columns, exactly, from the nonzeros."""
        squares = torch.zeros(self.shape[1], dtype=self.dtype, device=self.device)
        return torch.sqrt(squares.index_add_(0, self.cols, self.values * self.values))
