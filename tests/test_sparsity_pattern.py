"""`trustls.sparsity.pattern`: every form of ``jac_sparsity`` gives the same sorted pattern.

Torch sparse tensors (COO, coalesced or not, with duplicates and explicit
zeros; CSR; CSC), dense bool and 0/1 tensors, numpy arrays and scipy sparse
matrices (through ``tocoo()``) must all normalize to the unique row-major
entries of the pattern; bad patterns raise errors naming ``jac_sparsity``;
`trustls.sparsity.twins.identical_sets` matches exact grouping, even when
every hash collides.
"""

import numpy as np
import pytest
import scipy.sparse
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trustls.sparsity.pattern import JacobianPattern, jacobian_pattern, pattern_from_indices
from trustls.sparsity.twins import _classes, _set_keys, identical_sets, stable_order

DENSE = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)  # row 1, column 3 empty
ROWS, COLS = torch.tensor([0, 0, 2, 2]), torch.tensor([0, 2, 0, 1])


def _forms():
    coo = DENSE.to_sparse()
    # Uncoalesced, shuffled, with a duplicate entry and an explicit zero value.
    indices = torch.tensor([[2, 0, 2, 0, 2], [1, 2, 0, 0, 1]])
    raw = torch.sparse_coo_tensor(indices, torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0]), (3, 4), check_invariants=False)
    return {
        "dense bool": DENSE,
        "dense int 0/1": DENSE.to(torch.int64),
        "dense float 0/1": DENSE.to(torch.float32),
        "torch coo": coo,
        "torch coo uncoalesced": raw,
        "torch csr": DENSE.to_sparse_csr(),
        "torch csc": DENSE.to_sparse_csc(),
        "numpy bool": DENSE.numpy(),
        "numpy int": DENSE.numpy().astype(np.int8),
        "scipy coo": scipy.sparse.coo_matrix(DENSE.numpy().astype(int)),
        "scipy csr": scipy.sparse.csr_matrix(DENSE.numpy().astype(int)),
        "scipy lil": scipy.sparse.lil_matrix(DENSE.numpy().astype(int)),
        "scipy csc array": scipy.sparse.csc_array(DENSE.numpy().astype(int)),
        "pattern": JacobianPattern(ROWS, COLS, (3, 4)),
    }


@pytest.mark.parametrize("form", sorted(_forms()))
def test_every_form_gives_the_sorted_pattern(form):
    pattern = jacobian_pattern(_forms()[form])
    assert pattern.shape == (3, 4)
    assert torch.equal(pattern.rows, ROWS) and torch.equal(pattern.cols, COLS)
    assert pattern.rows.dtype == pattern.cols.dtype == torch.int64
    assert torch.equal(pattern.to_dense(), DENSE)


def test_stored_zeros_are_structural():
    """Values are ignored: an explicitly stored zero still marks a possible nonzero."""
    zeros = torch.sparse_coo_tensor(torch.tensor([[0, 1], [1, 0]]), torch.zeros(2), (2, 2), check_invariants=False)
    assert jacobian_pattern(zeros).nnz == 2
    assert jacobian_pattern(scipy.sparse.coo_matrix(([0.0, 0.0], ([0, 1], [1, 0])), shape=(2, 2))).nnz == 2


def test_dense_nonzero_values_are_structural_as_in_scipy():
    """A Jacobian computed at one point is its own pattern (scipy: ``A != 0``); found by a bug hunt."""
    J = torch.tensor([[2.5, 0.0, -1e-300, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 7.0, 0.0, 0.0]], dtype=torch.float64)
    for form in (J, J.numpy()):
        assert torch.equal(jacobian_pattern(form).to_dense(), J != 0)
    # and with scipy, whose coloring reads the same structure
    assert jacobian_pattern(J).nnz == scipy.sparse.csr_matrix(J.numpy()).nnz


def test_empty_rows_and_columns_are_valid():
    pattern = jacobian_pattern(DENSE)
    assert pattern.row_counts().tolist() == [2, 0, 2]
    assert pattern.column_counts().tolist() == [2, 1, 1, 0]
    assert jacobian_pattern(torch.zeros(2, 3, dtype=torch.bool)).nnz == 0


def test_the_caller_indices_are_copied():
    rows, cols = ROWS.clone(), COLS.clone()
    pattern = pattern_from_indices(rows, cols, (3, 4))
    rows[0] = 1
    assert pattern.rows[0] == 0


def test_pattern_from_indices_sorts_and_drops_duplicates():
    pattern = pattern_from_indices(torch.tensor([2, 0, 2, 0]), torch.tensor([1, 2, 1, 0]), (3, 3))
    assert pattern.rows.tolist() == [0, 0, 2] and pattern.cols.tolist() == [0, 2, 1]


class _FakeCoo:
    """What a scipy matrix's ``tocoo()`` returns, with chosen (possibly bad) fields."""

    def __init__(self, row, col, shape):
        self.row, self.col, self.shape = np.asarray(row), np.asarray(col), shape

    def tocoo(self):
        return self


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (torch.ones(3, dtype=torch.bool), ValueError, r"jac_sparsity must be 2-D .* got shape \(3,\)"),
        (torch.ones(2, 2, 2), ValueError, r"jac_sparsity must be 2-D .* got shape \(2, 2, 2\)"),
        (torch.ones(0, 3), ValueError, r"at least one row and one column, got shape \(0, 3\)"),
        (torch.tensor([[float("nan"), 1.0]]), ValueError, r"structure by nonzero entries, got nan at \(0, 0\)"),
        (torch.ones(2, 2, dtype=torch.complex64), TypeError, r"bool or real numeric, got torch\.complex64"),
        (np.array([[1.0, np.nan]]), ValueError, r"structure by nonzero entries, got nan at \(0, 1\)"),
        (np.array([["a"]]), TypeError, r"numpy array must be bool or numeric, got dtype <U1"),
        ([[1, 0]], TypeError, r"jac_sparsity must be a torch sparse tensor, .*; got list"),
        ("dense", TypeError, r"got str"),
        (_FakeCoo([0, -1], [0, 0], (2, 2)), ValueError, r"row indices must lie in \[0, 2\), got range \[-1, 0\]"),
        (_FakeCoo([0, 1], [0, 5], (2, 2)), ValueError, r"column indices must lie in \[0, 2\), got range \[0, 5\]"),
        (_FakeCoo([0.0], [0], (2, 2)), TypeError, r"tocoo\(\)\.row must hold integers, got torch\.float64"),
        (_FakeCoo([0], [0], (2, 2, 1)), ValueError, r"must be 2-D"),
        (
            torch.sparse_coo_tensor(torch.tensor([[0, 3], [0, 0]]), torch.ones(2), (2, 2), check_invariants=False),
            ValueError,
            r"row indices must lie in \[0, 2\), got range \[0, 3\]",
        ),
        (torch.eye(2).to_sparse_bsr((1, 1)), TypeError, r"must be COO, CSR or CSC, got layout torch\.sparse_bsr"),
        (  # a hybrid COO tensor (found by a hunt: an IndexError)
            torch.sparse_coo_tensor(torch.tensor([[0, 1]]), torch.ones(2, 2), (2, 2), check_invariants=True),
            TypeError,
            r"2 sparse dimensions \(no dense ones\), got sparse_dim 1 and dense_dim 1",
        ),
    ],
    ids=lambda value: None,
)
def test_bad_patterns_are_rejected(bad, error, message):
    with pytest.raises(error, match=message):
        jacobian_pattern(bad)


def test_bad_csr_pointers_are_rejected():
    crow = torch.tensor([0, 2, 1])
    bad = torch.sparse_csr_tensor(crow, torch.tensor([0]), torch.ones(1), (2, 2), check_invariants=False)
    with pytest.raises(ValueError, match=r"crow_indices must rise from 0 to the number of entries \(1\)"):
        jacobian_pattern(bad)


def test_direct_construction_is_validated():
    with pytest.raises(ValueError, match="unique and sorted row-major"):
        JacobianPattern(torch.tensor([1, 0]), torch.tensor([0, 0]), (2, 1))
    with pytest.raises(TypeError, match=r"rows must be a 1-D int64 tensor, got a torch\.int32 tensor"):
        JacobianPattern(torch.tensor([0], dtype=torch.int32), torch.tensor([0]), (1, 1))


def test_check_shape_names_the_rule():
    with pytest.raises(ValueError, match=r"jac_sparsity must have shape \(m, n\) = \(len\(fun\(x\)\), len\(x\)\) "
                                         r"= \(4, 4\), got \(3, 4\)"):
        jacobian_pattern(DENSE).check_shape(4, 4)


def _exact_classes(owners, members, count):
    sets = [tuple(members[owners == o].tolist()) for o in range(count)]
    first: dict = {}
    classes = []
    for o, key in enumerate(sets):
        key = key if key else ("empty", o)  # empty sets are never grouped
        classes.append(first.setdefault(key, len(first)))
    return classes


@st.composite
def _duplicated_patterns(draw):
    m, n = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31))
    generator = torch.Generator().manual_seed(seed)
    dense = torch.rand(m, n, generator=generator) < draw(st.floats(0.0, 0.7))
    # Repeat some columns and rows, so that classes have several members.
    dense = dense[:, torch.randint(0, n, (n,), generator=generator)]
    dense = dense[torch.randint(0, m, (m,), generator=generator)]
    return jacobian_pattern(dense)


@settings(derandomize=True, max_examples=60, deadline=None)
@given(_duplicated_patterns(), st.booleans())
def test_identical_sets_match_exact_grouping(pattern, colliding):
    """Columns (and rows) grouped by hash equal exact grouping; with all-zero weights every hash collides."""
    m, n = pattern.shape
    order = pattern.column_order
    owners, members = pattern.cols[order], pattern.rows[order]
    if colliding:
        classes, first = _classes(owners, members, n, *_set_keys(owners, members, n, torch.zeros(m, dtype=torch.int64)))
    else:
        classes, first = identical_sets(owners, members, n, m)
    assert classes.tolist() == _exact_classes(owners, members, n)
    assert torch.equal(classes[first], torch.arange(first.numel()))
    rows, _ = identical_sets(pattern.rows, pattern.cols, m, n)
    assert rows.tolist() == _exact_classes(pattern.rows, pattern.cols, m)


@pytest.mark.parametrize("bound", [7, 2**16 + 3, 2**20])
def test_stable_order_is_a_stable_sort(bound, generator):
    keys = torch.randint(0, bound, (5000,), generator=generator)
    assert torch.equal(stable_order(keys, bound), torch.argsort(keys, stable=True))


@pytest.mark.parametrize("name", ["pattern", "twins", "coloring", "colored", "check", "blocks"])
def test_docstring_examples_run(name):
    import doctest
    import importlib

    module = importlib.import_module(f"trustls.sparsity.{name}")
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0


@pytest.mark.parametrize("dtype", [np.longdouble, ">f8", ">i4", "<f2"])
def test_numpy_patterns_of_any_float_width_and_byte_order(dtype):
    # Found by a hunt: a long double or big-endian array (read from a FITS or HDF5 file) failed in torch.
    pattern = jacobian_pattern(np.array([[1, 0, 2], [0, 0, 3]], dtype=dtype))
    assert pattern.rows.tolist() == [0, 0, 1] and pattern.cols.tolist() == [0, 2, 2]


def test_a_ragged_list_pattern_is_refused_naming_jac_sparsity():
    from trustls import least_squares

    with pytest.raises(ValueError, match=r"jac_sparsity given as a list must be a rectangular \(m, n\) array"):
        least_squares(lambda x: x**2 - 2, np.ones(3), jac_sparsity=[[1, 0, 0], [0, 1]])
