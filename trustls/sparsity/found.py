r"""J's sparsity pattern found from Jacobian-vector products, for a residual given without one.

A user who writes only ``fun`` in torch gives no ``jac_sparsity``, yet the
residuals of large problems (discretized differential equations, chained
test functions, many independent fits) each depend on a few variables. This
module finds which from a few JVPs, so that `GaussNewtonModel` can compute
the exact sparse J by coloring (`trustls.sparsity.colored`) and let CG run on
sparse products instead of automatic-differentiation passes.

**Decoding.** Split the columns into K classes by j mod K and give column j
a weight w_j drawn uniformly from [1, 2) and an index k_j = ⌊j/K⌋ + 1 within
its class. For each class a two products,

    y_a = J s_a,   s_a = w ⊙ 1[j ≡ a],       z_a = J t_a,   t_a = s_a ⊙ k,

give, in a row i with exactly one nonzero J_ij in class a,

    y_{a,i} = w_j J_ij,   z_{a,i} = k_j w_j J_ij,   so   z_{a,i} / y_{a,i} = k_j,

an integer that names the column j = (k_j − 1)K + a. A row with two or more
nonzeros in class a gives the weighted mean of their indices instead, which
the random weights make a non-integer, or an index outside the class, with
probability 1: such a (row, class) pair is a *collision*. Rounding is
allowed for with a relative tolerance of 2¹⁰ eps on the ratio; the search
runs in float64 only (in float32 that tolerance cannot tell indices in the
thousands apart).

**Stages.** K = 4, 7, 11, 13, 17, 19, each 2K products. An entry is found at
the first stage where it is alone in its class, and its term w_j J_ij = y_{a,i}
is then known; a row is *explained* when the terms of its entries found so far
reproduce its products y at every stage run (a collided class is the sum of
its entries' terms). The search stops when every row is explained: a
tridiagonal J at K = 4 (8 products), a band of width 7 at K = 7, the
five-point stencil on a 316 × 316 grid at K = 11 (44). Mixing even and odd,
mostly prime, moduli serves stencils whose strides are multiples of small
numbers (a 64 × 64 grid's j ± 64 share j's class mod 4 and j ± 1's mod 7, and
are told apart mod 11), and since an entry need only be alone at one stage,
every 2-D five-point stencil with 32 ≤ N ≤ 2000, every 3-D seven-point stencil
with 11 ≤ N ≤ 100, all but 15 of the 2-D nine-point stencils with
32 ≤ N ≤ 1000, and every band up to width 13 are found. The search gives up
when no entry at all is alone after K = 7 (a dense J, or bands of width 14 or
more: 22 products spent), or when rows are left unexplained after the last
stage (142 products). Memory: the classes of a stage are taken in batches
whose seeds and products, 2(n + m) numbers per class, fit within 2²⁵ numbers
(256 MB in float64) beside what the search keeps: the entries found and each
stage's collided products (a row's sum over the entries of a class), sparse,
with what is left of each once the terms of the entries found are taken out;
later stages decode only in rows not yet explained, and take a new entry's
terms out of the earlier stages' products it belongs to. This is group
testing with the column index carried in the products' values, in the
spirit of the probing of Griewank & Mitev (2002), who find patterns from
products with structured seeds.

**Coloring.** `trustls.sparsity.coloring.cyclic_coloring` takes the fewest valid cyclic
colors up to `MAX_COLORS` = 32 (3 for a tridiagonal J, 6 for the five-point
stencil on a 316 × 316 grid), vectorized, and the greedy coloring runs only
where no cyclic coloring fits (after a repair that added a dense column,
say). A pattern that needs more than 32 colors (a repair that added a dense
row) is given up: each later point would cost that many products.

**Verification.** A nonzero can hide: J_ij = 0 at the point of the search
although r_i depends on x_j elsewhere (a start at x = 0); the pattern can
move with x (``torch.where`` choosing a neighbor); and an entry below the
decoding's rounding tolerance relative to its row (a global parameter
entering every row with a tiny coefficient) decodes as part of a row's
other entry in its class. A pattern that misses an entry makes the colored J
wrong, and J v ≠ J_colored v for a random v with probability 1
(`trustls.sparsity.check`). So every colored J is checked at its point both
ways: J v for a random v row by row, against the scale of each row's
terms, and Jᵀu for a random u column by column, against the scale of each
column's terms (a tiny entry that is negligible in its row is not in its
column); v and u are uniform in [½, 3⁄2), so that every entry weighs at
least ½ in them. Where up to `REPAIR_UP_TO` = 16 rows and columns disagree, each is
recomputed exactly by one product (a VJP with e_i for a row, a JVP with e_j
for a column) and its nonzeros join the pattern; where more disagree, the
search runs again at that point and its pattern joins the old one. After
`MAX_SEARCHES` searches and repairs the solve goes back to matrix-free
products. The Gauss-Newton model is therefore built from the exact J at
every point, up to entries negligible (√eps) in both their row and their
column; only the route to it changes.

References:
    A. R. Curtis, M. J. D. Powell and J. K. Reid, "On the estimation of sparse
    Jacobian matrices", IMA J. Appl. Math. 13, 1974, pp. 117-119.
    A. Griewank and C. Mitev, "Detecting Jacobian sparsity patterns by
    Bayesian probing", Math. Program. 93, 2002, pp. 1-25.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from trustls.operators.sparse import SparseOperator
from trustls.sparsity.colored import ColoredJacobian
from trustls.sparsity.coloring import color_columns, cyclic_coloring
from trustls.sparsity.pattern import JacobianPattern, pattern_from_indices

__all__ = [
    "FIND_FROM",
    "MAX_COLORS",
    "MAX_SEARCHES",
    "REPAIR_UP_TO",
    "SEARCH_AFTER",
    "STAGES",
    "FoundSparsity",
    "disagreeing_rows",
    "find_pattern",
]

# Stages of the search: the numbers K of column classes (odd ones for strides that are powers of two).
STAGES = (4, 7, 11, 13, 17, 19)
# Searches and repairs per solve (the first search, then one per failed check) before going matrix-free.
MAX_SEARCHES = 4
# A failed check repairs up to this many rows and columns, one exact product each; more: a new search.
REPAIR_UP_TO = 16
# Colors beyond which the found pattern is given up: each later point would cost that many products.
MAX_COLORS = 32
# `GaussNewtonModel` searches from this many variables on, after a linearization whose
# matrix-free products reached SEARCH_AFTER (its module docstring).
FIND_FROM = 1024
SEARCH_AFTER = 128
# Largest number of elements a batch of seeds and products, with what the search keeps, may hold.
_STAGE_ELEMENTS = 2**25

Products = Callable[[Tensor], Tensor]


def find_pattern(products: Products, n: int, m: int, *, generator: torch.Generator,
                 stages: tuple[int, ...] = STAGES) -> tuple[JacobianPattern | None, int, str | None]:
    """Search J's pattern from products J S for ``(k, n)`` seeds S (module docstring).

    Args:
        products: ``S ↦ (J Sᵀ)ᵀ``, shape ``(k, m)`` for seeds of shape ``(k, n)``, float64.
        n: J's columns.
        m: J's rows.
        generator: draws the weights (on the products' device).
        stages: the numbers K of column classes, increasing.

    Returns:
        ``(pattern, spent, reason)``: the pattern found (``None`` when the search
        gave up), the products spent, and why it gave up (``None`` if it did not).

    Examples:
        >>> import torch
        >>> J = torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 3.0, 4.0, 0.0], [0.0, 0.0, 0.0, 5.0]], dtype=torch.float64)
        >>> pattern, spent, _ = find_pattern(lambda S: S @ J.T, 4, 3, generator=torch.Generator())
        >>> pattern.rows.tolist(), pattern.cols.tolist(), spent
        ([0, 0, 1, 1, 2], [0, 1, 1, 2, 3], 8)
    """
    device = generator.device
    j = torch.arange(n, device=device)
    w = 1.0 + torch.rand(n, generator=generator, dtype=torch.float64, device=device)
    tolerance = 2**10 * torch.finfo(torch.float64).eps
    found: list[tuple[Tensor, Tensor, Tensor]] = []  # per stage, the entries found there: rows, cols, terms
    # Per stage, the collided pairs of rows then unexplained: K, sorted keys a·m + i, their y, and y
    # less the terms of the entries found in them so far, with the size of those terms.
    collided: list[tuple[int, Tensor, Tensor, Tensor, Tensor]] = []
    active = torch.ones(m, dtype=torch.bool, device=device)  # the rows not yet explained
    spent = 0
    for K in stages:
        # Classes per batch of products: their seeds and products fit the bound beside what is kept.
        held = 3 * sum(r.numel() for r, _, _ in found) + 4 * sum(pairs[1].numel() for pairs in collided)
        batch = (_STAGE_ELEMENTS - held) // (2 * (n + m))
        if batch < 1:
            return None, spent, (f"the search's products for {n} variables and {m} residuals "
                                 f"exceed its memory bound at {K} classes")
        index = torch.div(j, K, rounding_mode="floor") + 1
        keys, ys, new_rows, new_cols, new_terms = [], [], [], [], []
        for first in range(0, K, batch):
            classes = torch.arange(first, min(K, first + batch), device=device)
            seeds = torch.where(j % K == classes[:, None], w, 0.0)
            out = products(torch.cat([seeds, seeds * index]))
            spent += 2 * classes.numel()
            y, z = out[: classes.numel()], out[classes.numel():]
            ratio = z / torch.where(y != 0, y, 1.0)
            k = ratio.round()
            column = (k - 1) * K + classes[:, None]
            alone = (y != 0) & (k >= 1) & (column < n) & ((ratio - k).abs() <= tolerance * k)
            a, i = torch.nonzero(alone & active, as_tuple=True)
            new_rows.append(i)
            new_cols.append(column[a, i].long())
            new_terms.append(y[a, i])  # w_j J_ij, the same at every stage
            a, i = torch.nonzero(((y != 0) | (z != 0)) & ~alone & active, as_tuple=True)
            keys.append(classes[a] * m + i)  # ascending: by class, then row
            ys.append(y[a, i])
        rows, cols, terms = torch.cat(new_rows), torch.cat(new_cols), torch.cat(new_terms)
        # An entry of a row still unexplained was found at an earlier stage exactly when it was alone
        # there, that is, when its pair was not among that stage's collided ones.
        new = torch.ones_like(rows, dtype=torch.bool)
        for K_s, keys_s, *_ in collided:
            new &= _positions(keys_s, (cols % K_s) * m + rows, K_s * m)[1]
        found.append((rows[new], cols[new], terms[new]))
        y = torch.cat(ys)
        collided.append((K, torch.cat(keys), y, y.clone(), torch.zeros_like(y)))
        # Entries' terms leave the collided products they belong to (this stage's products all the
        # entries found, earlier stages' the new ones); a row is explained when what is left of each
        # of its collided products is rounding.
        active = torch.zeros(m, dtype=torch.bool, device=device)
        for s, (K_s, keys_s, y_s, left_s, size_s) in enumerate(collided):
            entries = found if s == len(collided) - 1 else found[-1:]
            rows = torch.cat([r for r, _, _ in entries])
            cols, terms = torch.cat([c for _, c, _ in entries]), torch.cat([t for *_, t in entries])
            at, hit = _positions(keys_s, (cols % K_s) * m + rows, K_s * m)
            left_s.index_add_(0, at[hit], -terms[hit])
            size_s.index_add_(0, at[hit], terms[hit].abs())
            wrong = ~(left_s.abs() <= tolerance * (size_s + y_s.abs()))
            active[keys_s[wrong] % m] = True
        if not bool(active.any()):
            return pattern_from_indices(torch.cat([r for r, _, _ in found]), torch.cat([c for _, c, _ in found]),
                                        (m, n)), spent, None
        if K >= 7 and sum(r.numel() for r, _, _ in found) == 0:
            return None, spent, f"no variable is alone in its class of {K} in any residual (J looks dense)"
    left = int(active.sum())
    return None, spent, f"{left} of {m} rows depend on variables that {len(stages)} stages do not tell apart"


def _positions(sorted_keys: Tensor, keys: Tensor, bound: int) -> tuple[Tensor, Tensor]:
    """Where each of ``keys`` (in [0, bound)) is in ``sorted_keys``, and whether it is there at all:
    by a table of ``bound`` entries where that is small, else by binary search."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(keys), torch.zeros_like(keys, dtype=torch.bool)
    if bound <= _STAGE_ELEMENTS:
        table = torch.full((bound,), -1, dtype=torch.int64, device=keys.device)
        table[sorted_keys] = torch.arange(sorted_keys.numel(), device=keys.device)
        at = table[keys]
        hit = at >= 0
        return at.clamp_(min=0), hit
    at = torch.searchsorted(sorted_keys, keys).clamp_(max=sorted_keys.numel() - 1)
    return at, sorted_keys[at] == keys


def disagreeing_rows(jacobian: SparseOperator, v: Tensor, exact: Tensor, rtol: float | None = None, *,
                     transpose: bool = False, absolute: SparseOperator | None = None) -> Tensor:
    """The rows where J_colored v differs from the exact J v beyond rounding (`trustls.sparsity.check`).

    Each row is compared with the scale (|J_colored| |v|)_i + |(J v)_i| of its
    own terms, at relative tolerance ``rtol`` (default √eps of the dtype); a
    non-finite J v disagrees. With ``transpose``, the same for Jᵀ: the columns
    where J_coloredᵀ v differs from the exact Jᵀ v. ``absolute``: |J_colored|,
    when the caller checks both ways.

    Examples:
        >>> import torch
        >>> J = SparseOperator(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([2.0, 3.0]), (2, 2))
        >>> disagreeing_rows(J, torch.ones(2), torch.tensor([2.0, 4.0]))
        tensor([1])
    """
    absolute = jacobian.with_values(jacobian.values.abs()) if absolute is None else absolute
    if transpose:
        colored, scale = jacobian.rmatvec(v), absolute.rmatvec(v.abs())
    else:
        colored, scale = jacobian.matvec(v), absolute.matvec(v.abs())
    tolerance = (torch.finfo(exact.dtype).eps ** 0.5 if rtol is None else rtol) * (scale + exact.abs())
    return torch.nonzero(~((exact - colored).abs() <= tolerance)).flatten()


def _probe(size: int, generator: torch.Generator, x: Tensor) -> Tensor:
    """A check's random vector, uniform in [½, 3⁄2): every entry of J enters its row's and its column's
    product with a weight of at least ½ (a Gaussian weight near zero could hide an entry below the
    rounding tolerance)."""
    return torch.rand(size, generator=generator, dtype=x.dtype, device=x.device).add_(0.5)


@dataclass(eq=False)
class FoundSparsity:
    """One solve's found pattern: its colored J, the searches and repairs made, and whether it gave up.

    Attributes:
        colored: the `ColoredJacobian` of the pattern found so far (``None`` before the first search).
        searches: searches and repairs made (at most `MAX_SEARCHES`).
        products: products (J v and Jᵀu) spent on searches, checks and repairs.
        given_up: ``None`` while the found pattern is used; otherwise why the
            solve went back to matrix-free products.

    Examples:
        >>> import torch
        >>> J = torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 3.0, 4.0, 0.0], [0.0, 0.0, 0.0, 5.0]], dtype=torch.float64)
        >>> found = FoundSparsity()
        >>> found.jacobian(lambda S: S @ J.T, lambda u: J.T @ u, torch.zeros(4, dtype=torch.float64), 3).to_dense()
        tensor([[1., 2., 0., 0.],
                [0., 3., 4., 0.],
                [0., 0., 0., 5.]], dtype=torch.float64)
    """

    colored: ColoredJacobian | None = None
    searches: int = 0
    products: int = 0
    given_up: str | None = None
    _generator: torch.Generator | None = field(default=None, repr=False)

    def jacobian(self, products: Products, vjp: Callable[[Tensor], Tensor], x: Tensor, m: int) -> SparseOperator | None:
        """J at ``x`` on the found pattern, checked by one J v and one Jᵀu; ``None`` once the search gave up.

        Args:
            products: ``S ↦ J Sᵀ`` at ``x`` as in `find_pattern`, in x's dtype (float64).
            vjp: ``u ↦ Jᵀu`` at ``x``.
            x: the point, float64.
            m: J's rows.
        """
        if self.given_up is not None:
            return None
        if self._generator is None:
            self._generator = torch.Generator(device=x.device).manual_seed(0)
        n = x.shape[0]
        if self.colored is None and not self._search(products, n, m):
            return None
        while True:
            v = _probe(n, self._generator, x)
            u = _probe(m, self._generator, x)
            out = products(torch.cat([self.colored.seeds(x), v[None]]))
            self.products += self.colored.n_colors + 2
            J = self.colored.from_products(out[:-1] if self.colored.pattern.nnz else None, x)
            absolute = J.with_values(J.values.abs())
            rows = disagreeing_rows(J, v, out[-1], absolute=absolute)
            columns = disagreeing_rows(J, u, vjp(u), transpose=True, absolute=absolute)
            if rows.numel() == 0 and columns.numel() == 0:
                return J
            if self.searches >= MAX_SEARCHES:
                self.given_up = f"J left the pattern found after {self.searches} searches and repairs"
                return None
            repaired = rows.numel() + columns.numel() <= REPAIR_UP_TO
            if not (self._repair(products, vjp, x, m, rows, columns) if repaired else self._search(products, n, m)):
                return None

    def _search(self, products: Products, n: int, m: int) -> bool:
        """Search at this point; join the pattern found to the one in use (False: given up)."""
        self.searches += 1
        pattern, spent, reason = find_pattern(products, n, m, generator=self._generator)
        self.products += spent
        if pattern is None:
            self.given_up = reason
            return False
        return self._use(pattern.rows, pattern.cols, (m, n))

    def _repair(self, products: Products, vjp: Callable[[Tensor], Tensor], x: Tensor, m: int,
                rows: Tensor, columns: Tensor) -> bool:
        """Add the nonzeros of the rows and columns where the check failed, each from one exact product
        (False: given up)."""
        self.searches += 1
        n = x.shape[0]
        found_rows, found_cols = [], []
        for i in rows.tolist():
            e = torch.zeros(m, dtype=x.dtype, device=x.device)
            e[i] = 1.0
            cols = torch.nonzero(vjp(e) != 0).flatten()
            found_rows.append(torch.full_like(cols, i))
            found_cols.append(cols)
        if columns.numel():
            seeds = torch.zeros(columns.numel(), n, dtype=x.dtype, device=x.device)
            seeds[torch.arange(columns.numel(), device=x.device), columns] = 1.0
            for j, column in zip(columns.tolist(), products(seeds)):
                rows_j = torch.nonzero(column != 0).flatten()
                found_rows.append(rows_j)
                found_cols.append(torch.full_like(rows_j, j))
        self.products += rows.numel() + columns.numel()
        return self._use(torch.cat(found_rows), torch.cat(found_cols), (m, n))

    def _use(self, rows: Tensor, cols: Tensor, shape: tuple[int, int]) -> bool:
        """Color the union of the pattern in use and the entries (rows, cols); give up (False) where
        that takes more than `MAX_COLORS` colors."""
        if self.colored is not None:  # entries of the earlier points stay: J's pattern is their union
            previous = self.colored.pattern
            rows, cols = torch.cat([previous.rows, rows.cpu()]), torch.cat([previous.cols, cols.cpu()])
        pattern = pattern_from_indices(rows, cols, shape)
        # The fewest cyclic colors, found vectorized, spare the greedy coloring's Python loop
        # (a pattern that stencils and bands make, and every stage's j mod K colors validly).
        lower_bound = int(pattern.row_counts().max()) if pattern.nnz else 0
        if lower_bound > MAX_COLORS:  # a dense row (repaired): no coloring could pay
            self.given_up = f"a row of J has {lower_bound} nonzeros, more than {MAX_COLORS} colors can hold"
            return False
        coloring = cyclic_coloring(pattern, MAX_COLORS) or color_columns(pattern)
        if coloring.n_colors > MAX_COLORS:
            self.given_up = f"J's pattern needs {coloring.n_colors} colors, more than {MAX_COLORS}"
            return False
        self.colored = ColoredJacobian(pattern, coloring)
        return True
