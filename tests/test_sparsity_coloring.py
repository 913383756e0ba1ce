"""`trustls.sparsity.coloring`: valid colorings, the greedy bounds, and the known optima.

For random patterns (with repeated rows and columns, so that twins are
merged) every ordering must give a coloring in which no two columns of one
color share a row, with lower_bound ≤ colors ≤ max degree + 1 (greedy),
≤ degeneracy + 1 for smallest-last, and "best" no worse than any ordering.
Banded patterns need exactly their bandwidth, bundle adjustment 12.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import trustls.sparsity.coloring as coloring_module
from trustls.sparsity.coloring import ORDERINGS, ColumnColoring, color_columns, cyclic_coloring
from trustls.sparsity.pattern import JacobianPattern, jacobian_pattern

GREEDY = [o for o in ORDERINGS if o != "best"]


def banded(n: int, width: int, m: int | None = None) -> JacobianPattern:
    """Rows i = 0..n-1 with columns i - width//2 .. i + width//2 (clipped)."""
    rows = torch.arange(n).repeat_interleave(width)
    cols = rows + torch.arange(width).repeat(n) - width // 2
    keep = (cols >= 0) & (cols < n)
    return JacobianPattern(rows[keep], cols[keep], (n, n))


def _intersection_graph(dense: torch.Tensor) -> torch.Tensor:
    shared = (dense.double().T @ dense.double()) > 0
    shared.fill_diagonal_(False)
    return shared


def _degeneracy(adjacency: torch.Tensor) -> int:
    alive = torch.ones(adjacency.shape[0], dtype=torch.bool)
    worst = 0
    while alive.any():
        degrees = (adjacency & alive).sum(1).masked_fill(~alive, adjacency.shape[0] + 1)
        v = int(degrees.argmin())
        worst = max(worst, int(degrees[v]))
        alive[v] = False
    return worst


def _assert_valid(coloring: ColumnColoring, dense: torch.Tensor) -> None:
    for color in range(coloring.n_colors):
        assert int(dense[:, coloring.colors == color].sum(1).max()) <= 1
    assert coloring.conflicts(dense).numel() == 0


@st.composite
def patterns(draw):
    m, n = draw(st.integers(1, 25)), draw(st.integers(1, 25))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    dense = torch.rand(m, n, generator=generator) < draw(st.floats(0.0, 0.6))
    if draw(st.booleans()):  # twins: repeated columns and rows
        dense = dense[:, torch.randint(0, n, (n,), generator=generator)]
        dense = dense[torch.randint(0, m, (m,), generator=generator)]
    return dense


@settings(derandomize=True, max_examples=80, deadline=None)
@given(patterns())
def test_every_ordering_gives_a_valid_coloring_within_the_greedy_bounds(dense):
    adjacency = _intersection_graph(dense)
    max_degree = int(adjacency.sum(1).max())
    lower_bound = int(dense.sum(1).max())
    counts = {}
    for ordering in ORDERINGS:
        coloring = color_columns(dense, ordering)
        _assert_valid(coloring, dense)
        assert coloring.lower_bound == lower_bound
        assert max(lower_bound, 1) <= coloring.n_colors <= max_degree + 1
        assert int(coloring.colors.max()) == coloring.n_colors - 1
        counts[ordering] = coloring.n_colors
    assert counts["smallest-last"] <= _degeneracy(adjacency) + 1
    assert counts["best"] <= min(counts[o] for o in GREEDY)


@settings(derandomize=True, max_examples=80, deadline=None)
@given(patterns(), st.integers(1, 30))
def test_cyclic_coloring_is_the_fewest_valid_cyclic_colors(dense, largest):
    def cyclic_valid(c):
        colors = torch.arange(dense.shape[1]) % c
        return all(bool((dense[:, colors == k].sum(1) <= 1).all()) for k in range(c))

    lower_bound = int(dense.sum(1).max())
    coloring = cyclic_coloring(dense, largest)
    valid = [c for c in range(max(lower_bound, 1), largest + 1) if cyclic_valid(c)]
    if coloring is None:
        assert valid == []
    else:
        assert coloring.method == "cyclic" and coloring.n_colors == valid[0] and coloring.lower_bound == lower_bound
        _assert_valid(coloring, dense)


def test_the_five_point_stencil_colors_cyclically_with_one_color_above_its_bound():
    n = 316  # 99,856 variables, as in benchmarks/user_problems.py: j mod 5 puts j - 316 with j - 1
    i = torch.arange(n * n)
    rows = torch.cat([i, i[i % n > 0], i[i % n < n - 1], i[i >= n], i[i < n * n - n]])
    cols = torch.cat([i, i[i % n > 0] - 1, i[i % n < n - 1] + 1, i[i >= n] - n, i[i < n * n - n] + n])
    pattern = JacobianPattern(*_row_major(rows, cols, n * n), (n * n, n * n))
    coloring = cyclic_coloring(pattern, 16)
    assert (coloring.n_colors, coloring.lower_bound) == (6, 5)
    assert coloring.conflicts(pattern).numel() == 0


def _row_major(rows, cols, n):
    keys = torch.unique(rows * n + cols)
    return keys // n, keys % n


def test_largest_first_orders_by_degree():
    # Column 2 shares rows with every other column: it must be colored first, with color 0.
    dense = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert color_columns(dense, "largest-first").colors[2] == 0


@pytest.mark.parametrize("n, width", [(100_000, 3), (10_000, 1), (10_000, 2), (10_000, 5), (10_000, 11)])
def test_banded_patterns_need_their_bandwidth(n, width):
    pattern = banded(n, width)
    coloring = color_columns(pattern)
    assert coloring.n_colors == coloring.lower_bound == width
    assert coloring.method == "cyclic"
    assert coloring.conflicts(pattern).numel() == 0


@pytest.mark.parametrize("ordering", GREEDY)
def test_tridiagonal_greedy_orderings_find_three_colors(ordering):
    pattern = banded(2_000, 3)
    coloring = color_columns(pattern, ordering)
    assert coloring.n_colors == 3 and coloring.method == ordering
    assert coloring.conflicts(pattern).numel() == 0


def test_rectangular_band_with_gaps_is_not_cyclic_but_optimal():
    # Rows {2i, 2i+1, 2i+3}: within a window of 4 > 3 entries, so j mod 3 may collide; greedy still finds 3.
    n = 200
    rows = torch.arange(n // 2 - 2).repeat_interleave(3)
    cols = 2 * rows + torch.tensor([0, 1, 3]).repeat(n // 2 - 2)
    pattern = JacobianPattern(rows, cols, (n // 2 - 2, n))
    coloring = color_columns(pattern)
    assert coloring.method != "cyclic" and coloring.n_colors == 3
    assert coloring.conflicts(pattern).numel() == 0


def test_twin_blocks_take_consecutive_free_colors():
    # Block-diagonal with dense 2x3 blocks, plus a column shared by all rows: 3 + 1 colors.
    blocks = torch.block_diag(*[torch.ones(2, 3)] * 4)
    dense = torch.cat([blocks, torch.ones(8, 1)], 1) != 0
    coloring = color_columns(dense)
    assert coloring.n_colors == coloring.lower_bound == 4
    _assert_valid(coloring, dense)


def test_large_graphs_skip_the_edge_by_edge_orderings(monkeypatch):
    dense = torch.rand(30, 20, generator=torch.Generator().manual_seed(0)) < 0.3
    monkeypatch.setattr(coloring_module, "_MAX_ORDERING_EDGES", 0)
    coloring = color_columns(dense)
    assert coloring.method in ("largest-first", "natural")
    assert coloring.n_colors == min(color_columns(dense, o).n_colors for o in ("largest-first", "natural"))


def test_large_intersection_graphs_fall_back_to_the_natural_order(monkeypatch):
    monkeypatch.setattr(coloring_module, "_MAX_GRAPH_PAIRS", 10)
    dense = torch.rand(30, 20, generator=torch.Generator().manual_seed(0)) < 0.3
    coloring = color_columns(dense)
    assert coloring.method == "natural"
    _assert_valid(coloring, dense)


def test_empty_pattern_uses_one_idle_color():
    coloring = color_columns(torch.zeros(3, 4, dtype=torch.bool))
    assert coloring.n_colors == 1 and coloring.lower_bound == 0 and coloring.colors.tolist() == [0] * 4


def test_more_than_64_colors():
    dense = torch.ones(2, 100, dtype=torch.bool)  # one dense row: every column its own color
    for ordering in GREEDY:
        coloring = color_columns(dense, ordering)
        assert coloring.n_colors == 100 and sorted(coloring.colors.tolist()) == list(range(100))
    dense = torch.cat([torch.ones(1, 70), torch.eye(70)]).repeat(1, 2) != 0  # twins of 2 columns, 140 colors
    coloring = color_columns(dense, "natural")
    assert coloring.n_colors == 140
    _assert_valid(coloring, dense)


def test_seeds_are_the_color_indicators():
    coloring = color_columns(banded(10, 3))
    seeds = coloring.seeds(torch.float32)
    assert seeds.shape == (3, 10) and seeds.dtype == torch.float32
    assert torch.equal(seeds.argmax(0), coloring.colors) and torch.equal(seeds.sum(0), torch.ones(10))


def test_conflicts_finds_rows_with_a_repeated_color():
    dense = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    bad = ColumnColoring(torch.tensor([0, 1, 1]), 2, 2, "natural")
    assert bad.conflicts(jacobian_pattern(dense)).tolist() == [1]


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"ordering must be one of \['best', 'largest-first', .*\], got 'random'"):
        color_columns(torch.eye(2), "random")
    with pytest.raises(ValueError, match=r"colors must lie in \[0, n_colors\) = \[0, 2\), got range \[0, 2\]"):
        ColumnColoring(torch.tensor([0, 2]), 2, 1, "natural")
    with pytest.raises(ValueError, match=r"lower_bound must lie in \[0, n_colors\] = \[0, 2\], got 3"):
        ColumnColoring(torch.tensor([0, 1]), 2, 3, "natural")
    with pytest.raises(TypeError, match="colors must be a 1-D int64 tensor"):
        ColumnColoring(torch.tensor([0.0]), 1, 1, "natural")


@settings(derandomize=True, max_examples=80, deadline=None)
@given(patterns())
def test_a_row_coloring_is_valid_needs_no_more_colors_and_gives_j(dense):
    """`ColoredJacobian.row_coloring`: where there is one, no two rows of a color share a column, it
    has at most the columns' colors, and J comes back from the products uᵀJ; there is none exactly
    where it could not do with as few colors (a column's rows outnumber the column colors) or the
    pattern is empty, or the greedy coloring of the rows needed more."""
    from trustls.sparsity.colored import ColoredJacobian

    colored = ColoredJacobian(dense)
    rows = colored.row_coloring
    if dense.sum() == 0 or int(dense.sum(0).max()) > colored.n_colors:
        assert rows is None
        return
    if rows is None:  # the greedy coloring of Jᵀ needed more colors than J's columns
        assert color_columns(dense.T.contiguous()).n_colors > colored.n_colors
        return
    assert rows.n_colors <= colored.n_colors
    assert rows.conflicts(dense.T.contiguous()).numel() == 0  # a coloring of the columns of Jᵀ
    J = torch.where(dense, torch.rand(dense.shape, generator=torch.Generator().manual_seed(1),
                                      dtype=torch.float64) + 0.5, 0.0)
    x = torch.zeros(dense.shape[1], dtype=torch.float64)
    by_rows = colored.from_row_products(colored.row_seeds(x.new_zeros(dense.shape[0])) @ J, x)
    torch.testing.assert_close(by_rows.to_dense(), J, rtol=0, atol=0)
