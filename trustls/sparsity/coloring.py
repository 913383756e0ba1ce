r"""Column coloring: which columns of a sparse Jacobian one JVP can recover together.

If no two columns of a set S share a row, the product J v_S with the seed
v_S = Σ_{j∈S} e_j holds every nonzero of those columns separately:
(J v_S)_i = J_ij for the only j ∈ S with (i, j) in the pattern. Partitioning
the columns into such sets (Curtis, Powell & Reid 1974) costs one JVP per
set instead of one per column. The partition is a coloring of the *column
intersection graph* (columns adjacent when they share a row), equivalently a
distance-2 coloring of the columns in the bipartite row/column graph, and
the fewest sets is its chromatic number (Coleman & Moré 1983), NP-hard in
general.

Lower bound. The columns of one row pairwise share that row: they form a
clique, so they need distinct colors and χ ≥ k = max_i |{j : (i, j) in the
pattern}|, the largest row count (`ColumnColoring.lower_bound`). A coloring
reaching it is optimal; bundle adjustment's (9 + 3 = 12) does.

Cyclic colorings (CPR 1974). The coloring j ↦ j mod c is valid exactly
when no two columns of a row differ by a multiple of c. If the columns of
every row lie within k consecutive columns, j mod k is valid (two columns of
one color are k or more apart) and therefore optimal; stencils whose rows
reach far columns (the five-point stencil's j ± N) need a c above k, but
often only just (`cyclic_coloring` tests c = k, k + 1, … vectorized, one
count of the keys (i, j mod c) each).

Upper bound. Sequential greedy coloring (CPR's method, in the graph form of
Coleman & Moré 1983) visits the columns in some order and gives each the
smallest color none of its colored neighbors has; a column with d neighbors
sees at most d colors, so at most max_j d_j + 1 colors are used. The order
matters; Coleman & Moré study

* largest-first (LF): columns by decreasing degree (Welsh & Powell 1967);
* smallest-last (SL): repeatedly remove a column of smallest degree from
  what remains and color in the reverse order of removal (Matula, Marble &
  Isaacson 1972); each column then has at most δ colored neighbors, δ the
  degeneracy, so SL uses at most δ + 1 colors;
* incidence-degree (ID): next, a column with the most already-ordered
  neighbors.

``ordering="best"`` (the default) takes the cyclic coloring with c = k when
it is valid, else runs LF and the natural order, then SL and ID, stopping as soon
as one reaches the lower bound, and keeps the fewest colors. What it tries
is bounded by cost: SL and ID walk the graph's edges one by one (a heap of
degrees), so they run only on graphs of at most ``_MAX_ORDERING_EDGES``
edges; and when the intersection graph itself would be too large to build
(a dense row of length L alone gives L² pairs), only the natural order,
which needs no graph, is used.

Implementation. Nothing is done per edge in Python. Columns with the same
row set (*twins*: a camera's nine parameters) are mutually adjacent with
the same neighbors, so they are merged into one block of weight s that
takes the s smallest free colors at once: that is sequential greedy with the
twins consecutive in the order. Rows with the same column set impose the
same constraint and are merged too (bundle adjustment's u and v rows).
Greedy then keeps, per merged row, the set of colors used in it as a Python
integer bit set: a block's forbidden colors are the OR of its rows' sets,
its colors the lowest zero bits, O(entries of the merged pattern) integer
operations in all, with no limit on the number of colors. The degrees of
LF, SL and ID count columns (a block's weight), and are computed from the
merged intersection graph, built vectorized.

References:
    A. R. Curtis, M. J. D. Powell, J. K. Reid, "On the estimation of sparse
    Jacobian matrices", J. Inst. Math. Appl. 13 (1974) 117-119.
    T. F. Coleman, J. J. Moré, "Estimation of sparse Jacobian matrices and
    graph coloring problems", SIAM J. Numer. Anal. 20 (1983) 187-209.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from functools import reduce
from operator import or_

import torch
from torch import Tensor

from trustls.sparsity.pattern import JacobianPattern, jacobian_pattern
from trustls.sparsity.twins import identical_sets

__all__ = ["ORDERINGS", "ColumnColoring", "color_columns", "cyclic_coloring"]

ORDERINGS = ("best", "largest-first", "smallest-last", "incidence-degree", "natural")

# Pairs of the merged intersection graph (Σ over merged rows of their length
# squared) up to which "best" builds the graph (vectorized; about 0.5 s at
# the bound), and adjacency entries up to which it also runs SL and ID (a
# Python heap operation per entry; about 0.3 s each at the bound).
_MAX_GRAPH_PAIRS = 2_000_000
_MAX_ORDERING_EDGES = 250_000
# Bins (rows times colors) up to which `cyclic_coloring` counts keys with bincount rather than a sort.
_MAX_CYCLIC_BINS = 2**26


@dataclass(frozen=True, eq=False)
class ColumnColoring:
    """A partition of the columns such that no two columns of one color share a row.

    Attributes:
        colors: ``(n,)`` int64 color of each column, in ``[0, n_colors)``.
        n_colors: the number of colors (JVPs per Jacobian).
        lower_bound: the largest row count of the pattern, below which no coloring goes.
        method: what produced it: ``"cyclic"`` (j mod c, `cyclic_coloring`),
            or the greedy ordering (one of `ORDERINGS` other than ``"best"``).

    Examples:
        >>> import torch
        >>> coloring = color_columns(torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]))
        >>> coloring.colors.tolist(), coloring.n_colors, coloring.lower_bound
        ([0, 1, 0, 1], 2, 2)
    """

    colors: Tensor
    n_colors: int
    lower_bound: int
    method: str

    def __post_init__(self) -> None:
        if not isinstance(self.colors, Tensor) or self.colors.dtype != torch.int64 or self.colors.ndim != 1:
            raise TypeError(f"colors must be a 1-D int64 tensor, got {getattr(self.colors, 'dtype', type(self.colors))}")
        if self.colors.numel() and not (0 <= int(self.colors.min()) and int(self.colors.max()) < self.n_colors):
            raise ValueError(f"colors must lie in [0, n_colors) = [0, {self.n_colors}), "
                             f"got range [{int(self.colors.min())}, {int(self.colors.max())}]")
        if not 0 <= self.lower_bound <= self.n_colors:
            raise ValueError(f"lower_bound must lie in [0, n_colors] = [0, {self.n_colors}], got {self.lower_bound}")

    def seeds(self, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> Tensor:
        """The ``(n_colors, n)`` seed matrix: row c is the indicator of the columns of color c."""
        seeds = torch.zeros(self.n_colors, self.colors.numel(), dtype=dtype, device=device)
        columns = torch.arange(self.colors.numel(), device=device)
        seeds[self.colors.to(device), columns] = 1
        return seeds

    def conflicts(self, pattern: object) -> Tensor:
        """The rows of ``pattern`` holding two columns of one color (empty for a valid coloring)."""
        pattern = jacobian_pattern(pattern)
        keys = pattern.rows * self.n_colors + self.colors.to(pattern.rows.device)[pattern.cols]
        unique, counts = torch.unique(keys, return_counts=True)
        return torch.unique(torch.div(unique[counts > 1], self.n_colors, rounding_mode="floor"))


def color_columns(jac_sparsity: object, ordering: str = "best") -> ColumnColoring:
    """Color the columns of a sparsity pattern by sequential greedy coloring (see the module docstring).

    Args:
        jac_sparsity: the ``(m, n)`` pattern, in any form `jacobian_pattern` accepts.
        ordering: one of `ORDERINGS`.

    Returns:
        The coloring; ``coloring.n_colors`` JVPs recover J.

    Examples:
        >>> import torch
        >>> tridiagonal = torch.eye(6) + torch.eye(6).roll(1, 1).triu() + torch.eye(6).roll(-1, 1).tril()
        >>> color_columns(tridiagonal != 0).n_colors
        3
    """
    if ordering not in ORDERINGS:
        raise ValueError(f"ordering must be one of {list(ORDERINGS)}, got {ordering!r}")
    pattern = jacobian_pattern(jac_sparsity)
    lower_bound = int(pattern.row_counts().max()) if pattern.nnz else 0
    if ordering == "best":
        cyclic = cyclic_coloring(pattern, max(lower_bound, 1))
        if cyclic is not None:
            return cyclic
    merged = _MergedPattern(pattern, lower_bound)
    if ordering == "natural" or (ordering == "best" and merged.pairs > _MAX_GRAPH_PAIRS):
        return merged.coloring(list(range(merged.n_blocks)), "natural")
    degrees, neighbors = merged.intersection_graph()
    if ordering != "best":
        return merged.coloring(_ORDERS[ordering](merged, degrees, neighbors), ordering)
    best = None
    names = ["largest-first", "natural"]
    if len(neighbors[1]) <= _MAX_ORDERING_EDGES:
        names += ["smallest-last", "incidence-degree"]
    for name in names:
        order = list(range(merged.n_blocks)) if name == "natural" else _ORDERS[name](merged, degrees, neighbors)
        coloring = merged.coloring(order, name)
        if best is None or coloring.n_colors < best.n_colors:
            best = coloring
        if best.n_colors == best.lower_bound:
            break
    return best


class _MergedPattern:
    """The pattern with twin columns merged into weighted blocks and identical rows merged."""

    def __init__(self, pattern: JacobianPattern, lower_bound: int):
        rows, cols = pattern.rows.cpu(), pattern.cols.cpu()
        m, n = pattern.shape
        self.n, self.lower_bound = n, lower_bound
        self.blocks, first_col = (t.cpu() for t in pattern.column_classes)  # shared with `find_blocks`
        row_classes, first_row = identical_sets(rows, cols, m, n)
        self.n_blocks, self.n_rows = first_col.numel(), first_row.numel()
        self.sizes = torch.bincount(self.blocks, minlength=self.n_blocks)
        # One entry per (merged row, block): those of each class's first row and first column.
        first_row_of, first_col_of = first_row.index_select(0, row_classes), first_col.index_select(0, self.blocks)
        keep = (rows == first_row_of.index_select(0, rows)) & (cols == first_col_of.index_select(0, cols))
        # Row-major order survives: classes are numbered by their first member.
        self.row_of, self.block_of = row_classes[rows[keep]], self.blocks[cols[keep]]
        lengths = torch.bincount(self.row_of, minlength=self.n_rows)
        self.pairs = int((lengths * lengths).sum())
        by_block = torch.argsort(self.block_of, stable=True)
        self.rows_of_block = self.row_of[by_block].tolist()
        self.block_pointers = [0] + torch.cumsum(torch.bincount(self.block_of, minlength=self.n_blocks), 0).tolist()

    def intersection_graph(self) -> tuple[list[int], tuple[list[int], list[int]]]:
        """Degrees (in columns) of the blocks, and the merged graph's adjacency lists (pointers, neighbors)."""
        row_of, block_of = self.row_of, self.block_of
        lengths = torch.bincount(row_of, minlength=self.n_rows)
        starts = torch.cumsum(lengths, 0) - lengths
        # Every ordered pair of entries of one merged row: entry e is paired with
        # the lengths[row_of[e]] entries of its row, starting at starts[row_of[e]].
        per_entry = lengths[row_of]
        left = torch.repeat_interleave(torch.arange(row_of.numel()), per_entry)
        offsets = torch.arange(left.numel()) - torch.repeat_interleave(torch.cumsum(per_entry, 0) - per_entry, per_entry)
        a, b = block_of[left], block_of[starts[row_of[left]] + offsets]
        distinct = a != b
        keys = torch.unique(a[distinct] * self.n_blocks + b[distinct])
        source, target = torch.div(keys, self.n_blocks, rounding_mode="floor"), keys % self.n_blocks
        degrees = torch.zeros(self.n_blocks, dtype=torch.int64).index_add_(0, source, self.sizes[target])
        degrees += self.sizes - 1
        pointers = [0] + torch.cumsum(torch.bincount(source, minlength=self.n_blocks), 0).tolist()
        return degrees.tolist(), (pointers, target.tolist())

    def coloring(self, order: list[int], ordering: str) -> ColumnColoring:
        """Sequential greedy coloring of the blocks in ``order``, each block taking its size's lowest free colors."""
        rows_of_block, pointers, sizes = self.rows_of_block, self.block_pointers, self.sizes.tolist()
        used = [0] * self.n_rows  # per merged row: the bit set of the colors used in it
        bits_of_block = [0] * self.n_blocks
        lookup = used.__getitem__
        for block in order:
            rows = rows_of_block[pointers[block] : pointers[block + 1]]
            forbidden = reduce(or_, map(lookup, rows), 0)
            bits = ~forbidden & (forbidden + 1)  # the lowest free color
            for _ in range(sizes[block] - 1):
                forbidden |= bits
                bits |= ~forbidden & (forbidden + 1)
            bits_of_block[block] = bits
            for row in rows:
                used[row] |= bits
        n_colors = reduce(or_, bits_of_block, 0).bit_length()
        return ColumnColoring(self._column_colors(bits_of_block, n_colors), n_colors, self.lower_bound, ordering)

    def _column_colors(self, bits_of_block: list[int], n_colors: int) -> Tensor:
        if int(self.sizes.max()) == 1:
            return torch.tensor([bits.bit_length() - 1 for bits in bits_of_block], dtype=torch.int64)[self.blocks]
        # A block's colors, ascending, go to its columns, ascending: the set
        # bits listed block by block, then color by color.
        if n_colors < 63:
            bits = torch.tensor(bits_of_block, dtype=torch.int64)
            flat = torch.nonzero((bits.unsqueeze(1) >> torch.arange(n_colors)) & 1)[:, 1]
        else:
            flat = []
            for bits in bits_of_block:
                while bits:
                    low = bits & -bits
                    flat.append(low.bit_length() - 1)
                    bits ^= low
            flat = torch.tensor(flat, dtype=torch.int64)
        columns = torch.argsort(self.blocks, stable=True)
        colors = torch.empty(self.n, dtype=torch.int64)
        colors[columns] = flat
        return colors


def cyclic_coloring(jac_sparsity: object, largest: int) -> ColumnColoring | None:
    """The valid coloring j ↦ j mod c with the fewest colors c ≤ ``largest``, or ``None`` (module docstring).

    c runs from the lower bound up; j mod c is valid when the keys
    (i, j mod c) of the entries are distinct, counted in one ``bincount``
    of m·c bins (a sort beyond 2²⁶ bins).

    Examples:
        >>> import torch
        >>> n = 10  # the five-point stencil on an n x n grid: rows reach j ± 1 and j ± n
        >>> i, j = torch.arange(n * n)[:, None], torch.arange(n * n)[None, :]
        >>> stencil = (j == i) | ((j - i).abs() == n) | (((j - i).abs() == 1) & (i // n == j // n))
        >>> coloring = cyclic_coloring(stencil, 16)
        >>> coloring.n_colors, coloring.lower_bound, coloring.conflicts(stencil).numel()
        (6, 5, 0)
    """
    pattern = jacobian_pattern(jac_sparsity)
    lower_bound = int(pattern.row_counts().max()) if pattern.nnz else 0
    m, n = pattern.shape
    for c in range(max(lower_bound, 1), largest + 1):
        keys = pattern.rows * c + pattern.cols % c
        if m * c <= _MAX_CYCLIC_BINS:
            valid = pattern.nnz == 0 or int(torch.bincount(keys, minlength=m * c).max()) <= 1
        else:
            valid = torch.unique(keys).numel() == pattern.nnz
        if valid:
            return ColumnColoring(torch.arange(n, dtype=torch.int64) % c, c, lower_bound, "cyclic")
    return None


def _largest_first(merged: _MergedPattern, degrees: list[int], neighbors) -> list[int]:
    return torch.argsort(-torch.tensor(degrees, dtype=torch.int64), stable=True).tolist()


def _smallest_last(merged: _MergedPattern, degrees: list[int], neighbors) -> list[int]:
    # Bucketless Matula-Beck with a lazy heap: stale entries (a degree since
    # lowered, a block removed) are skipped when popped.
    pointers, adjacent = neighbors
    sizes, degree = merged.sizes.tolist(), list(degrees)
    heap = [(d, block) for block, d in enumerate(degree)]
    heapq.heapify(heap)
    removed = [False] * merged.n_blocks
    removal = []
    while heap:
        d, block = heapq.heappop(heap)
        if removed[block] or d != degree[block]:
            continue
        removed[block] = True
        removal.append(block)
        for other in adjacent[pointers[block] : pointers[block + 1]]:
            if not removed[other]:
                degree[other] -= sizes[block]
                heapq.heappush(heap, (degree[other], other))
    return removal[::-1]


def _incidence_degree(merged: _MergedPattern, degrees: list[int], neighbors) -> list[int]:
    # Most already-ordered neighbors (in columns) first; ties to the larger
    # degree, then the lower index. The first block is thus one of largest degree.
    pointers, adjacent = neighbors
    sizes, incidence = merged.sizes.tolist(), [0] * merged.n_blocks
    heap = [(0, -d, block) for block, d in enumerate(degrees)]
    heapq.heapify(heap)
    ordered = [False] * merged.n_blocks
    order = []
    while heap:
        negative, _, block = heapq.heappop(heap)
        if ordered[block] or -negative != incidence[block]:
            continue
        ordered[block] = True
        order.append(block)
        for other in adjacent[pointers[block] : pointers[block + 1]]:
            if not ordered[other]:
                incidence[other] += sizes[block]
                heapq.heappush(heap, (-incidence[other], -degrees[other], other))
    return order


_ORDERS = {
    "largest-first": _largest_first,
    "smallest-last": _smallest_last,
    "incidence-degree": _incidence_degree,
}
