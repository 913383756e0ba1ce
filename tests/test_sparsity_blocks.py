"""`trustls.sparsity.blocks.find_blocks`: twin columns grouped by size, row-disjoint groups eliminated.

On random camera/point patterns (with shuffled columns, unobserved points and
repeated rows) the blocks must be exactly the classes of columns with equal
row sets (empty columns alone), the eliminated groups' blocks must pairwise
share no row, and no other group whose blocks are row-disjoint could be
added; on BAL-49 the blocks are the 49 cameras and 7,776 points, the points
eliminated.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trustls.operators import SparseOperator
from trustls.problems.bal import load_bal
from trustls.sparsity.blocks import BlockPartition, find_blocks, pattern_blocks


def _row_sets(rows, cols, n):
    sets = [set() for _ in range(n)]
    for i, j in zip(rows.tolist(), cols.tolist()):
        sets[j].add(i)
    return sets


def _expected_blocks(rows, cols, n):
    classes: dict = {}
    for j, rows_of_j in enumerate(_row_sets(rows, cols, n)):
        key = frozenset(rows_of_j) if rows_of_j else ("empty", j)
        classes.setdefault(key, set()).add(j)
    return {frozenset(block) for block in classes.values()}


def _check_partition(blocks: BlockPartition, rows, cols, m, n):
    found = [frozenset(block.tolist()) for group in blocks.groups for block in group]
    assert sorted(j for block in found for j in block) == list(range(n))  # every column once
    assert set(found) == _expected_blocks(rows, cols, n)
    sizes = [group.shape[1] for group in blocks.groups]
    assert sizes == sorted(sizes, reverse=True)  # by size; a size split into eliminated blocks and the rest
    for group in blocks.groups:  # blocks by first column, columns ascending
        assert torch.equal(group, group.sort(1).values)
        assert torch.equal(group[:, 0], group[:, 0].sort().values)
    row_sets = _row_sets(rows, cols, n)

    def rows_of(g):
        return [set().union(*(row_sets[j] for j in block.tolist())) for block in blocks.groups[g]]

    def disjoint(sets):
        seen: set = set()
        for s in sets:
            if seen & s:
                return False
            seen |= s
        return True

    chosen = [s for g in blocks.eliminated for s in rows_of(g)]
    assert disjoint(chosen)
    for g in set(range(len(blocks.groups))) - set(blocks.eliminated):  # maximal, among groups that touch a row
        sets = rows_of(g)
        assert not any(sets) or not disjoint(sets) or not disjoint(chosen + sets)


@st.composite
def camera_point_patterns(draw):
    cameras, points = draw(st.integers(1, 6)), draw(st.integers(1, 12))
    camera_size, point_size = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    observations = draw(st.integers(0, 30))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    camera = torch.randint(0, cameras, (observations,), generator=generator)
    point = torch.randint(0, points, (observations,), generator=generator)
    rows_per_observation = draw(st.integers(1, 2))
    n = cameras * camera_size + points * point_size
    permutation = torch.randperm(n, generator=generator)
    rows, cols = [], []
    for k in range(observations):
        touched = list(range(camera[k] * camera_size, (camera[k] + 1) * camera_size))
        start = cameras * camera_size + point[k] * point_size
        touched += list(range(start, start + point_size))
        for r in range(rows_per_observation):
            rows += [rows_per_observation * k + r] * len(touched)
            cols += touched
    m = max(rows_per_observation * observations, 1)
    cols = permutation[torch.tensor(cols, dtype=torch.int64)] if cols else torch.zeros(0, dtype=torch.int64)
    return torch.tensor(rows, dtype=torch.int64), cols, m, n


@settings(derandomize=True, max_examples=60, deadline=None)
@given(camera_point_patterns())
def test_random_camera_point_patterns(case):
    rows, cols, m, n = case
    blocks = find_blocks(rows, cols, m, n)
    assert blocks.n == n
    _check_partition(blocks, rows, cols, m, n)


@settings(derandomize=True, max_examples=60, deadline=None)
@given(camera_point_patterns(), st.floats(0.0, 0.6), st.integers(0, 2**31))
def test_pattern_blocks_equal_find_blocks(case, density, seed):
    # pattern_blocks takes a shortcut when no two columns share a row set; the partition
    # must be find_blocks's either way (camera-point patterns have blocks, random ones rarely).
    rows, cols, m, n = case
    generator = torch.Generator().manual_seed(seed)
    random = torch.nonzero(torch.rand(m, n, generator=generator) < density)
    for r, c in ((rows, cols), (random[:, 0], random[:, 1])):
        if r.numel() == 0:
            continue
        J = SparseOperator(r, c, torch.ones(r.numel(), dtype=torch.float64), (m, n))
        expected, got = find_blocks(r, c, m, n), pattern_blocks(J)
        assert [g.tolist() for g in got.groups] == [g.tolist() for g in expected.groups]
        assert got.eliminated == expected.eliminated


def test_blocks_that_share_rows_are_not_eliminated():
    # Two blocks of 2 columns share row 1; the third column's group (size 1) is free.
    rows = torch.tensor([0, 0, 1, 1, 1, 1, 2])
    cols = torch.tensor([0, 1, 0, 1, 2, 3, 4])
    blocks = find_blocks(rows, cols, 3, 5)
    # columns 0,1 (rows {0,1}); 2,3 (rows {1}); 4 (row {2})
    assert [g.tolist() for g in blocks.groups] == [[[0, 1], [2, 3]], [[4]]]
    assert blocks.eliminated == (1,)


def test_empty_columns_are_blocks_of_their_own():
    blocks = find_blocks(torch.tensor([0, 0]), torch.tensor([1, 3]), 1, 5)
    assert [g.tolist() for g in blocks.groups] == [[[1, 3]], [[0], [2], [4]]]


def test_bundle_adjustment_blocks():
    problem = load_bal()
    sparsity = problem.jacobian_sparsity()
    rows, cols = sparsity.indices()
    blocks = find_blocks(rows, cols, problem.n_residuals, problem.n_parameters)
    assert [tuple(g.shape) for g in blocks.groups] == [(49, 9), (7776, 3)]
    assert torch.equal(blocks.groups[0], torch.arange(441).reshape(49, 9))
    assert torch.equal(blocks.groups[1], 441 + torch.arange(7776 * 3).reshape(7776, 3))
    assert blocks.eliminated == (1,)


def test_bad_indices_name_jac_sparsity():
    with pytest.raises(ValueError, match=r"jac_sparsity's column indices must lie in \[0, 2\), got range \[0, 2\]"):
        find_blocks(torch.tensor([0, 0]), torch.tensor([0, 2]), 1, 2)
    with pytest.raises(TypeError, match="jac_sparsity's rows must be an integer tensor"):
        find_blocks(torch.tensor([0.0]), torch.tensor([0]), 1, 1)


def test_variables_nothing_depends_on_are_not_offered_for_elimination():
    """Found by a bug hunt: an empty column alone made least_squares pick the Schur solver (and its
    scaling) for a pattern whose real blocks all share rows."""
    rows = torch.tensor([0, 0, 1, 1, 1, 1, 2, 2])  # blocks {0, 1} on rows 0, 1 and {2, 3} on rows 1, 2
    cols = torch.tensor([0, 1, 0, 1, 2, 3, 2, 3])
    partition = find_blocks(rows, cols, 3, 5)
    assert [g.tolist() for g in partition.groups] == [[[0, 1], [2, 3]], [[4]]] and partition.eliminated == ()


def test_a_size_holding_cameras_and_points_splits_into_points_and_cameras():
    """Found by a bug hunt: blocks were grouped by size only, so cameras and points of three parameters
    each formed one group of blocks sharing rows, and nothing was eliminated."""
    generator = torch.Generator().manual_seed(0)
    cameras, points = 4, 30
    camera = torch.randint(0, cameras, (90,), generator=generator)
    point = torch.arange(90) % points
    rows = torch.arange(90).repeat_interleave(6)
    cols = torch.cat([3 * camera[:, None] + torch.arange(3), 3 * cameras + 3 * point[:, None] + torch.arange(3)], 1)
    partition = find_blocks(rows, cols.flatten(), 90, 3 * (cameras + points))
    assert [tuple(g.shape) for g in partition.groups] == [(points, 3), (cameras, 3)] and partition.eliminated == (0,)
    assert torch.equal(partition.groups[0][:, 0], 3 * cameras + 3 * torch.arange(points))
    _check_partition(partition, rows, cols.flatten(), 90, 3 * (cameras + points))


def test_a_shared_parameter_fit_with_one_parameter_per_curve_eliminates_the_curves():
    curves, length = 50, 20
    rows = torch.arange(curves * length)
    own = rows // length
    partition = find_blocks(torch.cat([rows, rows]), torch.cat([own, torch.full_like(own, curves)]),
                            curves * length, curves + 1)
    assert [g.flatten().tolist() for g in partition.groups] == [list(range(curves)), [curves]]
    assert partition.eliminated == (0,)


@pytest.mark.parametrize("pattern", ["tridiagonal", "rosenbrock"])
def test_patterns_whose_split_would_not_pay_stay_whole(pattern):
    """A banded pattern's first-on-every-row columns are a few at its ends; extended Rosenbrock's
    pairs split one to one: the Schur solver took 3.6 times lsmr's time there. Neither splits."""
    n = 1000
    i = torch.arange(n)
    if pattern == "tridiagonal":
        rows, cols = torch.cat([i, i[1:], i[:-1]]), torch.cat([i, i[:-1], i[1:]])
    else:
        pair = torch.arange(n // 2)
        rows, cols = torch.cat([2 * pair, 2 * pair, 2 * pair + 1]), torch.cat([2 * pair, 2 * pair + 1, 2 * pair])
    partition = find_blocks(rows, cols, n, n)
    assert [tuple(g.shape) for g in partition.groups] == [(n, 1)] and partition.eliminated == ()
