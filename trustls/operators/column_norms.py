"""Column norms of a matrix-free Jacobian from a few vector-Jacobian products.

Jacobi scaling (``x_scale="jac"``) needs c_j = ‖J e_j‖ for every column j of
an (m, n) Jacobian that exists only through its products. n JVPs give c
exactly; for large n, c² = diag(JᵀJ) is estimated from K VJPs Jᵀz.

Random probes (Hutchinson 1989; Bekas, Kokiopoulou & Saad 2007). For z with
independent ±1 entries, E[(Jᵀz)_j²] = Σ_i J_ij², and averaging K probes
leaves the cross terms J_ij J_i'j z_i z_i' (rows i ≠ i' sharing column j)
with a relative error of order √(2/K) per column, whatever the structure of
J. That noise costs more than it seems: the scale T = diag(1/c) then varies
at random between columns that should be scaled alike, and the spectrum of
TJᵀJT spreads. With 32 probes on extended Rosenbrock (n = 10⁴) CG took 73
iterations against 23 with the exact norms, and 1,741 against 69 on
extended Powell singular (``benchmarks/large_structured.py``).

Dilution (probing). Split the rows into K classes by ``i mod K`` and give
each class its own probe, z_a = σ ⊙ 1[i ≡ a mod K], with one vector σ of
random signs. Then

    Σ_a (Jᵀz_a)_j² = Σ_i J_ij² + Σ_{i ≠ i', i ≡ i' mod K} J_ij J_i'j σ_i σ_i',

so the cross terms of rows in different classes cancel exactly, not only on
average. The estimate is exact for every column whose rows lie in distinct
classes, in particular whenever they lie within K consecutive rows: banded
and block Jacobians with residuals ordered near their variables, which is
how chained, discretized and per-record residuals come out (extended
Rosenbrock, Broyden tridiagonal, a 1-D or N × N grid with N mod K ≠ 0 and
2N mod K ≠ 0, independent fits of up to K points). Collisions left, rows a
multiple of K apart (a residual vector concatenated from groups, say), keep
E[·] = Σ_i J_ij² through σ, with one sign per colliding pair rather than an
average. For a dense J the error is of the order of K random probes.
Dilution is the lattice-QCD name (Foley et al. 2005); Tang & Saad (2012) call
the deterministic part probing. The diagonal of JᵀJ could also be probed
from products JᵀJv with column classes (exact when JᵀJ is banded, for any
row order), but on a dense J that estimate is not a sum of squares: on a
small MLP half of its column estimates came out negative.

Each probe is one VJP, the cost of about half a CG iteration on JᵀJ. The
probes run one by one: a batched ``vmap`` of the K VJPs was slower than the
loop at n = 10⁵ on one CPU thread (extended Rosenbrock and Broyden
tridiagonal; the figures are in the CHANGELOG): the products are
memory-bound there, and K rows at a time leave the cache.

References:
    M. F. Hutchinson, "A stochastic estimator of the trace of the influence
    matrix for Laplacian smoothing splines", Comm. Statist. Simulation
    Comput. 18(3), 1989, pp. 1059-1076.
    C. Bekas, E. Kokiopoulou and Y. Saad, "An estimator for the diagonal of a
    matrix", Appl. Numer. Math. 57, 2007, pp. 1214-1229.
    J. Foley, K. J. Juge, A. Ó Cais, M. Peardon, S. M. Ryan and J.-I. Skullerud,
    "Practical all-to-all propagators for lattice QCD", Comput. Phys.
    Commun. 172, 2005, pp. 145-162.
    J. M. Tang and Y. Saad, "A probing method for computing the diagonal of a
    matrix inverse", Numer. Linear Algebra Appl. 19(3), 2012, pp. 485-501.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from trustls.operators.base import LinearOperator

__all__ = ["diluted_column_norms", "exact_column_norms"]

# The first stage of `diluted_column_norms`: exact for rows that share a
# column within 8 of each other (chained and banded residuals up to 8 rows
# per variable), at the cost of four CG iterations.
_FIRST_STAGE = 8


def exact_column_norms(J: LinearOperator) -> Tensor:
    """‖J e_j‖ for every column, from n JVPs.

    Examples:
        >>> from trustls.operators import DenseOperator
        >>> exact_column_norms(DenseOperator(torch.tensor([[3.0, 0.0], [4.0, 1.0]])))
        tensor([5., 1.])
    """
    eye = torch.eye(J.shape[1], dtype=J.dtype, device=J.device)
    return torch.stack([torch.linalg.vector_norm(J.matvec(e)) for e in eye])


def diluted_column_norms(
    J: LinearOperator, classes: int, generator: torch.Generator, *, rows: tuple[int, int] | None = None
) -> Iterator[Tensor]:
    """Estimated ‖J e_j‖ from diluted Rademacher probes, refined in stages.

    With K = ``classes`` a power of two, the probes are Walsh functions of the
    row index times one vector σ of random signs, w_k[i] = σ_i (−1)^popcount(k & i),
    taken in Sylvester's order: the first P of them (P a power of two) span the
    same space as the P diluted probes σ ⊙ 1[i ≡ a mod P], so
    (1/P) Σ_{k<P} (Jᵀw_k)² is the estimate with P row classes (module
    docstring). The generator yields it after 8, 16, …, K VJPs, each stage
    exact on more Jacobians; a caller that has seen enough stops early, and a
    later stage costs only its new probes. Another K gives one stage of K
    classes. Rows that no class reaches (fewer rows than K) are not probed:
    with K ≥ m the norms are exact.

    Args:
        J: an (m, n) operator; only ``rmatvec`` is called.
        classes: K, the number of row classes and of VJPs.
        generator: the source of σ (seed it for reproducible solves).
        rows: ``(offset, total)`` when J holds rows offset, …, offset + m − 1
            of a Jacobian of ``total`` rows whose ``rmatvec`` sums over all of
            them (data parallelism, `trustls.distributed`): σ and the classes
            are those of the whole Jacobian, so every part draws the same
            estimate as one process would. ``None``: J is whole.

    Examples:
        >>> from trustls.operators import DenseOperator
        >>> J = torch.tensor([[3.0, 0.0, 0.0], [4.0, 1.0, 0.0], [0.0, 2.0, 2.0], [0.0, 0.0, 1.0]])
        >>> list(diluted_column_norms(DenseOperator(J), 2, torch.Generator().manual_seed(0)))  # banded: exact
        [tensor([5.0000, 2.2361, 2.2361])]
    """
    m = J.shape[0]
    offset, total = (0, m) if rows is None else rows
    device = J.device
    signs = torch.randint(0, 2, (total,), generator=generator, device=generator.device)
    signs = signs[offset : offset + m].to(device, J.dtype).mul_(2).sub_(1)
    row_class = torch.arange(offset, offset + m, device=device) % classes  # of each row, over all rows
    squares = torch.zeros(J.shape[1], dtype=J.dtype, device=device)
    if classes & (classes - 1) or classes <= _FIRST_STAGE:
        for a in range(min(classes, total)):
            squares += J.rmatvec(torch.where(row_class == a, signs, 0.0)) ** 2
        yield torch.sqrt(squares)
        return
    for k in range(classes):
        table = torch.tensor([1.0 - 2.0 * (bin(k & a).count("1") % 2) for a in range(classes)], dtype=J.dtype)
        product = J.rmatvec(signs * table.to(device).index_select(0, row_class))
        squares.addcmul_(product, product)
        stage = k + 1
        if stage >= _FIRST_STAGE and stage & (stage - 1) == 0:
            yield torch.sqrt(squares / stage)
