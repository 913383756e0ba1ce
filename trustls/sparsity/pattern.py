"""The sparsity pattern of a Jacobian: which residuals depend on which variables.

scipy's ``least_squares(jac_sparsity=...)`` takes an ``(m, n)`` matrix whose
nonzero entries mark the (residual, variable) pairs that may have a nonzero
derivative; trustls takes the same argument in every form a user is likely
to hold it:

* a torch sparse tensor (COO, CSR or CSC): every *stored* entry is
  structural, whatever its value, so an explicitly stored zero still marks
  a possible nonzero (the structure, not the values, is what a sparse
  format records; scipy's coloring reads it the same way);
* a dense torch tensor, bool or numeric: its nonzero entries are structural,
  whatever their values, as scipy reads a dense ``jac_sparsity`` (``A != 0``
  in ``group_columns``), so a Jacobian computed at one point serves as its
  own pattern; NaN is refused, as a statement about neither;
* a numpy array, under the same rule as a dense tensor;
* any object with a ``tocoo()`` method returning ``row``, ``col`` and
  ``shape`` (scipy's sparse matrices and arrays, duck-typed: trustls never
  imports scipy); stored entries are structural, as for torch sparse tensors.

`jacobian_pattern` normalizes all of them to a `JacobianPattern`: unique
(row, column) pairs sorted row-major, as int64 tensors on the CPU (the
pattern is configuration; what is built from it per evaluation moves to the
evaluation's device), and the shape ``(m, n)``. A row with no entry is a residual that depends on no variable (a
zero row of J, a constant residual); a column with no entry is a variable
that no residual depends on (a zero column of J: the Gauss-Newton step leaves
it where it is). Both are valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor

from trustls.sparsity.twins import identical_sets, stable_order

try:
    import numpy
except ImportError:  # numpy is optional; only a numpy array needs it
    numpy = None

__all__ = ["JacobianPattern", "jacobian_pattern", "pattern_from_indices"]

_ACCEPTED = (
    "a torch sparse tensor, a dense bool or 0/1 torch tensor, a numpy array, "
    "or an object with a tocoo() method (a scipy sparse matrix)"
)

@dataclass(frozen=True, eq=False)
class JacobianPattern:
    """The structural nonzeros of an ``(m, n)`` Jacobian, unique and sorted row-major.

    Attributes:
        rows: int64 row indices, nondecreasing.
        cols: int64 column indices, increasing within a row.
        shape: ``(m, n)``: residuals, variables.
        cache: structures derived from the pattern alone, computed once (its
            column blocks: `trustls.sparsity.pattern_blocks`).

    Examples:
        >>> import torch
        >>> P = jacobian_pattern(torch.tensor([[1, 1, 0], [0, 1, 1]]))
        >>> P.rows, P.cols, P.shape
        (tensor([0, 0, 1, 1]), tensor([0, 1, 1, 2]), (2, 3))
    """

    rows: Tensor
    cols: Tensor
    shape: tuple[int, int]
    cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        m, n = self.shape
        for name, index in (("rows", self.rows), ("cols", self.cols)):
            if not isinstance(index, Tensor) or index.dtype != torch.int64 or index.ndim != 1:
                raise TypeError(f"JacobianPattern.{name} must be a 1-D int64 tensor, got {_describe(index)}")
        if self.rows.shape != self.cols.shape:
            raise ValueError(f"JacobianPattern.rows and .cols must have the same length, "
                             f"got {self.rows.numel()} and {self.cols.numel()}")
        _check_indices(self.rows, self.cols, m, n)
        keys = self.rows * n + self.cols
        if keys.numel() > 1 and not bool((keys[1:] > keys[:-1]).all()):
            raise ValueError("JacobianPattern entries must be unique and sorted row-major; "
                             "build it with jacobian_pattern()")

    @property
    def nnz(self) -> int:
        """The number of structural nonzeros."""
        return self.rows.numel()

    def row_counts(self) -> Tensor:
        """Structural nonzeros per row, shape ``(m,)``."""
        return torch.bincount(self.rows, minlength=self.shape[0])

    @cached_property
    def column_order(self) -> Tensor:
        """The stable permutation that sorts the entries by column (rows stay ascending within a column)."""
        return stable_order(self.cols, self.shape[1])

    @cached_property
    def column_classes(self) -> tuple[Tensor, Tensor]:
        """`identical_sets` of the columns: ``(classes, first)``, columns with identical row sets alike."""
        order = self.column_order
        return identical_sets(self.cols.index_select(0, order), self.rows.index_select(0, order), *self.shape[::-1])

    def column_counts(self) -> Tensor:
        """Structural nonzeros per column, shape ``(n,)``."""
        return torch.bincount(self.cols, minlength=self.shape[1])

    def to_dense(self) -> Tensor:
        """The pattern as a dense ``(m, n)`` bool tensor (tests and small problems)."""
        dense = torch.zeros(self.shape, dtype=torch.bool, device=self.rows.device)
        dense[self.rows, self.cols] = True
        return dense

    def check_shape(self, m: int, n: int) -> None:
        """Raise `ValueError` unless the pattern is ``(m, n)``: m residuals, n variables.

        Called at the first evaluation, when m (the residual's length) is known.
        """
        if self.shape != (m, n):
            raise ValueError(f"jac_sparsity must have shape (m, n) = (len(fun(x)), len(x)) = {(m, n)}, "
                             f"got {self.shape}")


def jacobian_pattern(jac_sparsity: object) -> JacobianPattern:
    """Normalize a user's ``jac_sparsity`` to a `JacobianPattern` (see the module docstring).

    Args:
        jac_sparsity: the ``(m, n)`` pattern in any accepted form; a
            `JacobianPattern` is returned as is.

    Raises:
        TypeError: for an unsupported type, or dense values that are neither bool nor numeric.
        ValueError: for a pattern that is not 2-D, has a zero dimension, has
            indices outside its shape, or dense NaN values.

    Examples:
        >>> import torch
        >>> jacobian_pattern(torch.eye(3, dtype=torch.bool).to_sparse()).cols
        tensor([0, 1, 2])
    """
    if isinstance(jac_sparsity, JacobianPattern):
        return jac_sparsity
    if isinstance(jac_sparsity, Tensor):
        if jac_sparsity.layout == torch.strided:
            return _from_dense(jac_sparsity)
        rows, cols, shape = _sparse_tensor_indices(jac_sparsity)
    elif callable(getattr(jac_sparsity, "tocoo", None)):
        rows, cols, shape = _tocoo_indices(jac_sparsity)
    elif hasattr(jac_sparsity, "__array__") and hasattr(jac_sparsity, "dtype"):
        array = numpy.asarray(jac_sparsity)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"jac_sparsity as a numpy array must be bool or numeric, got dtype {array.dtype}")
        if array.dtype.kind == "f" and array.dtype.itemsize > 8:  # long double: torch has no such dtype
            array = array.astype(numpy.float64)
        elif not array.dtype.isnative:  # big-endian: torch reads native byte order only
            array = array.astype(array.dtype.newbyteorder("="))
        return _from_dense(torch.from_numpy(numpy.ascontiguousarray(array)))
    else:
        raise TypeError(f"jac_sparsity must be {_ACCEPTED}; got {type(jac_sparsity).__name__}")
    return _from_indices(rows, cols, shape)


def _from_dense(dense: Tensor) -> JacobianPattern:
    _check_shape_2d(tuple(dense.shape))
    if dense.dtype != torch.bool:
        if dense.is_complex():
            raise TypeError(f"jac_sparsity as a dense tensor must be bool or real numeric, got {dense.dtype}")
        bad = dense.isnan() if dense.is_floating_point() else None
        if bad is not None and bool(bad.any()):
            i, j = (int(k) for k in bad.nonzero()[0])
            raise ValueError(f"jac_sparsity as a dense tensor must mark structure by nonzero entries, "
                             f"got nan at ({i}, {j})")
    rows, cols = (dense != 0).nonzero(as_tuple=True)  # row-major, unique
    return JacobianPattern(rows.to("cpu", torch.int64), cols.to("cpu", torch.int64), tuple(dense.shape))


def _sparse_tensor_indices(tensor: Tensor) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    shape = tuple(tensor.shape)
    _check_shape_2d(shape)
    # Read the stored indices directly: their values are ignored, and a
    # coalesce or a layout conversion would trust indices not checked yet.
    if tensor.layout == torch.sparse_coo:
        if tensor.sparse_dim() != 2:  # a hybrid tensor: rows or whole blocks of dense values
            raise TypeError(
                f"jac_sparsity as a torch sparse COO tensor must have 2 sparse dimensions (no dense ones), got "
                f"sparse_dim {tensor.sparse_dim()} and dense_dim {tensor.dense_dim()}"
            )
        indices = tensor.indices() if tensor.is_coalesced() else tensor._indices()
        return indices[0], indices[1], shape
    if tensor.layout == torch.sparse_csr:
        rows = _expand_compressed(tensor.crow_indices(), tensor.col_indices().numel(), "crow_indices")
        return rows, tensor.col_indices(), shape
    if tensor.layout == torch.sparse_csc:
        cols = _expand_compressed(tensor.ccol_indices(), tensor.row_indices().numel(), "ccol_indices")
        return tensor.row_indices(), cols, shape
    raise TypeError(f"jac_sparsity as a torch sparse tensor must be COO, CSR or CSC, got layout {tensor.layout}")


def _expand_compressed(pointers: Tensor, nnz: int, name: str) -> Tensor:
    pointers = pointers.to(torch.int64)
    steps = pointers.diff()
    if int(pointers[0]) != 0 or int(pointers[-1]) != nnz or bool((steps < 0).any()):
        raise ValueError(f"jac_sparsity's {name} must rise from 0 to the number of entries ({nnz}), "
                         f"got {pointers.tolist() if pointers.numel() <= 8 else 'an invalid array'}")
    return torch.repeat_interleave(torch.arange(steps.numel(), device=pointers.device), steps)


def _tocoo_indices(matrix: object) -> tuple[Tensor, Tensor, tuple[int, ...]]:
    coo = matrix.tocoo()
    shape = tuple(int(s) for s in coo.shape)
    _check_shape_2d(shape)
    rows, cols = (torch.as_tensor(coo.row), torch.as_tensor(coo.col))
    for name, index in (("row", rows), ("col", cols)):
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise TypeError(f"jac_sparsity.tocoo().{name} must hold integers, got {index.dtype}")
    return rows, cols, shape


def pattern_from_indices(rows: Tensor, cols: Tensor, shape: tuple[int, int]) -> JacobianPattern:
    """The pattern with entries at ``(rows[k], cols[k])`` (any order, duplicates allowed).

    Examples:
        >>> import torch
        >>> pattern_from_indices(torch.tensor([1, 0, 1]), torch.tensor([0, 2, 0]), (2, 3)).rows
        tensor([0, 1])
    """
    for name, index in (("rows", rows), ("cols", cols)):
        if not isinstance(index, Tensor) or index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise TypeError(f"jac_sparsity's {name} must be an integer tensor, got {_describe(index)}")
    if rows.shape != cols.shape:
        raise ValueError(f"jac_sparsity's rows and cols must have the same shape, "
                         f"got {tuple(rows.shape)} and {tuple(cols.shape)}")
    _check_shape_2d(tuple(shape))
    return _from_indices(rows, cols, tuple(shape))


def _from_indices(rows: Tensor, cols: Tensor, shape: tuple[int, ...]) -> JacobianPattern:
    m, n = shape
    rows, cols = rows.to("cpu", torch.int64).reshape(-1), cols.to("cpu", torch.int64).reshape(-1)
    _check_indices(rows, cols, m, n)
    keys = rows * n + cols
    # Patterns built row by row (and coalesced tensors) arrive sorted: checking
    # is O(nnz), where unique would sort them again.
    if keys.numel() <= 1 or bool((keys[1:] > keys[:-1]).all()):
        # Copies: the pattern must not change if the caller's indices do.
        return JacobianPattern(rows.clone(), cols.clone(), (m, n))
    keys = torch.unique(keys)  # sorts the row-major keys and drops duplicates
    return JacobianPattern(torch.div(keys, n, rounding_mode="floor"), keys % n, (m, n))


def _check_shape_2d(shape: tuple[int, ...]) -> None:
    if len(shape) != 2:
        raise ValueError(f"jac_sparsity must be 2-D (m residuals by n variables), got shape {shape}")
    if 0 in shape:
        raise ValueError(f"jac_sparsity must have at least one row and one column, got shape {shape}")


def _check_indices(rows: Tensor, cols: Tensor, m: int, n: int) -> None:
    for name, index, bound in (("row", rows, m), ("column", cols, n)):
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= bound):
            raise ValueError(f"jac_sparsity's {name} indices must lie in [0, {bound}), "
                             f"got range [{int(index.min())}, {int(index.max())}]")


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
