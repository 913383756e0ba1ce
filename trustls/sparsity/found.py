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
thousands apart). Stages K = 4, 8, 16 each cost 2K products; a row is done
at the first stage where none of its pairs collides, and the search stops
when every row is done (a tridiagonal J at K = 4, the five-point stencil at
K = 16 at the latest), or gives up when the last stage leaves collisions (a
dense J, after 56 products). A stage holds its 2K seeds and products, 2K(n + m)
numbers; one of more than 2²⁴ (128 MB in float64) is not run, and the search
gives up there. This is group testing
with the column index carried in the products' values, in the spirit of
the probing of Griewank & Mitev (2002), who find patterns from products with
structured seeds.

**Coloring.** A row told apart at stage K has its columns in distinct
classes mod K, hence mod every multiple of K, so j ↦ j mod 16 colors any
pattern found; `trustls.sparsity.coloring.cyclic_coloring` takes the fewest
cyclic colors that are valid (3 for a tridiagonal J, 6 for the five-point
stencil on a 316 × 316 grid), vectorized, and the greedy coloring runs only
for the union of several searches when no cyclic coloring fits.

**Verification.** A nonzero can hide: J_ij = 0 at the point of the search
although r_i depends on x_j elsewhere (a start at x = 0), or a collision
decodes to a valid index by accident. A pattern that misses an entry makes
the colored J wrong, and J v ≠ J_colored v for a random v with probability 1
(`trustls.sparsity.check`). So every colored J is checked at its point with
one more product, J v for a Gaussian v: where it disagrees, the search runs
again at that point, its pattern joined to the old one; after
``MAX_SEARCHES`` searches the solve goes back to matrix-free products. The
Gauss-Newton model is therefore built from the exact J at every point; only
the route to it changes.

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
from trustls.sparsity.coloring import cyclic_coloring
from trustls.sparsity.pattern import JacobianPattern, pattern_from_indices

__all__ = ["FIND_FROM", "MAX_SEARCHES", "SEARCH_AFTER", "STAGES", "FoundSparsity", "disagreeing_rows", "find_pattern"]

# Stages of the search: the numbers K of column classes.
STAGES = (4, 8, 16)
# Searches per solve (the first, and repeats where a check failed) before going matrix-free.
MAX_SEARCHES = 3
# `GaussNewtonModel` searches from this many variables on, after a linearization whose
# matrix-free products reached SEARCH_AFTER (its module docstring).
FIND_FROM = 1024
SEARCH_AFTER = 128
# Largest number of elements the seeds and products of one stage may hold.
_STAGE_ELEMENTS = 2**24

Products = Callable[[Tensor], Tensor]


def find_pattern(products: Products, n: int, m: int, *, generator: torch.Generator,
                 stages: tuple[int, ...] = STAGES) -> tuple[JacobianPattern | None, int, str | None]:
    """Search J's pattern from products J S for ``(k, n)`` seeds S (module docstring).

    Args:
        products: ``S ↦ (J Sᵀ)ᵀ``, shape ``(k, m)`` for seeds of shape ``(k, n)``, float64.
        n, m: J's columns and rows.
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
    done = torch.zeros(m, dtype=torch.bool, device=device)
    found_rows, found_cols, spent = [], [], 0
    for K in stages:
        if 2 * K * (n + m) > _STAGE_ELEMENTS:
            return None, spent, f"a stage of {2 * K} products of {n} variables and {m} residuals is too large"
        classes = torch.arange(K, device=device)
        index = torch.div(j, K, rounding_mode="floor") + 1
        seeds = torch.where(j % K == classes[:, None], w, 0.0)  # (K, n)
        out = products(torch.cat([seeds, seeds * index]))
        spent += 2 * K
        y, z = out[:K], out[K:]
        present = (y != 0) | (z != 0)
        ratio = z / torch.where(y != 0, y, 1.0)
        k = ratio.round()
        column = (k - 1) * K + classes[:, None]
        valid = (present & (y != 0) & (k >= 1) & (column < n)
                 & ((ratio - k).abs() <= 2**10 * torch.finfo(torch.float64).eps * k))
        collides = present & ~valid
        a, i = torch.nonzero(valid, as_tuple=True)
        found_rows.append(i)
        found_cols.append(column[a, i].long())
        done |= ~collides.any(0)
        if bool(done.all()):
            pattern = pattern_from_indices(torch.cat(found_rows), torch.cat(found_cols), (m, n))
            return pattern, spent, None
    left = int((~done).sum())
    return None, spent, f"{left} of {m} rows depend on variables that {stages[-1]} classes do not tell apart"


def disagreeing_rows(jacobian: SparseOperator, v: Tensor, exact: Tensor, rtol: float | None = None) -> Tensor:
    """The rows where J_colored v differs from the exact J v beyond rounding (`trustls.sparsity.check`).

    Each row is compared with the scale (|J_colored| |v|)_i + |(J v)_i| of its
    own terms, at relative tolerance ``rtol`` (default √eps of the dtype); a
    non-finite J v disagrees.

    Examples:
        >>> import torch
        >>> J = SparseOperator(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([2.0, 3.0]), (2, 2))
        >>> disagreeing_rows(J, torch.ones(2), torch.tensor([2.0, 4.0]))
        tensor([1])
    """
    colored = jacobian.matvec(v)
    scale = jacobian.with_values(jacobian.values.abs()).matvec(v.abs()) + exact.abs()
    tolerance = (torch.finfo(exact.dtype).eps ** 0.5 if rtol is None else rtol) * scale
    return torch.nonzero(~((exact - colored).abs() <= tolerance)).flatten()


@dataclass(eq=False)
class FoundSparsity:
    """One solve's found pattern: its colored J, the searches made, and whether it gave up.

    Attributes:
        colored: the `ColoredJacobian` of the pattern found so far (``None`` before the first search).
        searches: searches made.
        products: products spent on searches and checks.
        given_up: ``None`` while the found pattern is used; otherwise why the
            solve went back to matrix-free products.

    Examples:
        >>> import torch
        >>> J = torch.tensor([[1.0, 2.0, 0.0, 0.0], [0.0, 3.0, 4.0, 0.0], [0.0, 0.0, 0.0, 5.0]], dtype=torch.float64)
        >>> found = FoundSparsity()
        >>> found.jacobian(lambda S: S @ J.T, torch.zeros(4, dtype=torch.float64), 3).to_dense().tolist()
        [[1.0, 2.0, 0.0, 0.0], [0.0, 3.0, 4.0, 0.0], [0.0, 0.0, 0.0, 5.0]]
    """

    colored: ColoredJacobian | None = None
    searches: int = 0
    products: int = 0
    given_up: str | None = None
    _generator: torch.Generator | None = field(default=None, repr=False)

    def jacobian(self, products: Products, x: Tensor, m: int) -> SparseOperator | None:
        """J at ``x`` on the found pattern, checked by one product; ``None`` once the search gave up.

        Args:
            products: ``S ↦ J Sᵀ`` at ``x`` as in `find_pattern`, in x's dtype (float64).
            x: the point, float64.
            m: J's rows.
        """
        if self.given_up is not None:
            return None
        if self._generator is None:
            self._generator = torch.Generator(device=x.device).manual_seed(0)
        n = x.shape[0]
        while True:
            if self.colored is None or self.colored.shape != (m, n):
                if not self._search(products, n, m, None):
                    return None
            v = torch.randn(n, generator=self._generator, dtype=x.dtype, device=x.device)
            out = products(torch.cat([self.colored.seeds(x), v[None]]))
            self.products += self.colored.n_colors + 1
            J = self.colored.from_products(out[:-1] if self.colored.pattern.nnz else None, x)
            if disagreeing_rows(J, v, out[-1]).numel() == 0:
                return J
            if self.searches >= MAX_SEARCHES:
                self.given_up = f"the pattern changed after {self.searches} searches"
                return None
            if not self._search(products, n, m, self.colored.pattern):
                return None

    def _search(self, products: Products, n: int, m: int, previous: JacobianPattern | None) -> bool:
        self.searches += 1
        pattern, spent, reason = find_pattern(products, n, m, generator=self._generator)
        self.products += spent
        if pattern is None:
            self.given_up = reason
            return False
        if previous is not None:  # entries of the earlier points stay: J's pattern is their union
            pattern = pattern_from_indices(torch.cat([previous.rows, pattern.rows]),
                                           torch.cat([previous.cols, pattern.cols]), (m, n))
        # The last stage's K colors j mod K validly (each row was told apart at a stage dividing it):
        # the fewest cyclic colors up to K, found vectorized, spare the greedy coloring's Python loop.
        coloring = cyclic_coloring(pattern, STAGES[-1])
        self.colored = ColoredJacobian(pattern, "best" if coloring is None else coloring)
        return True
