"""Factorizations of a batch of small Jacobians: Householder QR, then a one-sided Jacobi SVD of R.

A batched solve factors the effective Jacobians J̃_b (m × n, one per
problem) once per accepted point. torch's batched ``linalg.svd`` runs one
LAPACK call per matrix on the CPU (and cuSOLVER's batched Jacobi SVD only up
to 32 × 32 on CUDA), so a batch of 10⁴ matrices of 50 × 3 pays a per-call
overhead several times the arithmetic. The factorization here splits the
work so that the batch dimension is the vectorized one:

1. Householder QR of the augmented [J̃ f̃] by ``torch.geqrf`` (LAPACK per
   matrix on the CPU, in place in a buffer the solve reuses; on CUDA cuBLAS's
   batched QR for small matrices), forming no Q: J̃ = Q R with R of k × n,
   k = min(m, n), and the last column gives h = Qₖᵀ f̃, the residual's
   coordinates in range(J̃) (Golub 1965; Björck 1996, §2.4.1). The normal
   equations are never formed: R carries J̃'s condition number, not its
   square.
2. a one-sided Jacobi SVD of the small R (Hestenes 1958; Demmel & Veselić
   1992): plane rotations of column pairs, RV = W, until the columns of W
   are orthogonal to working precision; then σ_j = ‖W e_j‖ and, with
   U = W diag(σ)⁻¹, J̃ = (QU) diag(σ) Vᵀ. Every rotation acts on all
   problems at once, and a problem whose columns are already orthogonal
   rotates by the identity. One-sided Jacobi is backward stable, and
   often more accurate than the bidiagonal SVD for the small singular
   values (Demmel & Veselić 1992).

The gradient's coordinates of the exact step, s_i·u_iᵀf̃, come out of W
without a division: s_i u_iᵀ h = (W e_i)ᵀ h.

The rotation for columns a, b (Rutishauser's formulas; Golub & Van Loan
2013, §8.6.3) with α = ‖a‖², β = ‖b‖², γ = aᵀb is

    ζ = (β − α) / (2γ),   t = sign(ζ) / (|ζ| + √(1 + ζ²)),
    c = 1/√(1 + t²),      s = c·t,
    a ← c·a − s·b,        b ← s·a + c·b,

which makes aᵀb = 0 and is the smaller of the two rotation angles (|t| ≤ 1),
so that the sweeps converge quadratically once the columns are nearly
orthogonal.

Range. The sweeps work on squared column norms, which overflow once an entry
passes about 10¹⁵⁴ in float64 (1.8·10¹⁹ in float32) and underflow below the
reciprocals: the orthogonality test then held for every pair, no rotation ran,
and column norms were taken for singular values. Each matrix is therefore
first multiplied by the power of two that brings its largest entry into
[1, 2), and σ and W are scaled back: exact, so that a matrix whose entries
are of moderate size is factored bit for bit as before.

References:
    G. H. Golub, "Numerical methods for solving linear least squares
    problems", Numer. Math. 7, 1965, pp. 206-216.
    M. R. Hestenes, "Inversion of matrices by biorthogonalization and related
    results", J. SIAM 6(1), 1958, pp. 51-90.
    J. Demmel and K. Veselić, "Jacobi's method is more accurate than QR",
    SIAM J. Matrix Anal. Appl. 13(4), 1992, pp. 1204-1245.
    Å. Björck, "Numerical Methods for Least Squares Problems", SIAM, 1996.
    G. H. Golub and C. F. Van Loan, "Matrix Computations", 4th ed., 2013.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trustls.batched.fields import dot

__all__ = ["jacobi_svd", "triangular_factor"]

# Cyclic sweeps converge quadratically; 30 is far beyond what a well-scaled
# small matrix needs (about 6 in float64), a cap against a sweep that stalls.
MAX_SWEEPS = 30


def triangular_factor(
    columns: Tensor, residual: Tensor | None = None, *, workspace: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """R of J̃ = QR and h = Qₖᵀ f̃, for a batch of Jacobians given by their columns.

    Args:
        columns: ``(K, n, m)``: ``columns[b, j]`` is column j of J̃_b.
        residual: ``(K, m)`` f̃, or ``None``.
        workspace: a contiguous tensor of at least K·c·m elements (c = n, or
            n + 1 with ``residual``) that LAPACK factors in place, so that a
            solve reuses one buffer instead of mapping fresh memory at every
            iteration; ``None`` allocates one.

    Returns:
        ``(R, h)`` in the batch-last layout of `trustls.batched`: R of shape
        ``(k, n, K)`` (upper trapezoidal, k = min(m, n)) and h of shape
        ``(k, K)`` (``None`` without ``residual``).

    Examples:
        >>> J = torch.tensor([[[3.0, 0.0], [4.0, 5.0]]], dtype=torch.float64)  # one J, m = n = 2
        >>> R, h = triangular_factor(J.transpose(1, 2), torch.tensor([[1.0, 2.0]], dtype=torch.float64))
        >>> # R's first row is ±(‖J e₁‖, q₁ᵀJ e₂), and r₁₁h₁ = (J e₁)ᵀf
        >>> R[0, :, 0].abs(), float(R[0, 0, 0] * h[0, 0])
        (tensor([5., 4.], dtype=torch.float64), 11.0)
    """
    K, n, m = columns.shape
    k = min(m, n)
    c = n if residual is None else n + 1
    if workspace is None:
        workspace = torch.empty(K * c * m, dtype=columns.dtype, device=columns.device)
    # (K, c, m) with contiguous columns is the column-major layout LAPACK reads;
    # geqrf leaves R in the upper triangle of its first rows and forms no Q.
    stacked = workspace[: K * c * m].view(K, c, m)
    stacked[:, :n] = columns
    if residual is not None:
        stacked[:, n] = residual
    rows = min(m, c)
    tau = torch.empty(K, rows, dtype=columns.dtype, device=columns.device)
    torch.geqrf(stacked.transpose(1, 2), out=(stacked.transpose(1, 2), tau))
    # The strictly lower part of geqrf's rows holds the Householder vectors: masked out batch-last.
    upper = torch.ones(rows, c, dtype=torch.bool, device=columns.device).triu()[:, :, None]
    R = stacked.transpose(1, 2)[:, :rows].permute(1, 2, 0) * upper
    if residual is None:
        return R[:k].contiguous(), None
    return R[:k, :n].contiguous(), R[:k, n].contiguous()


def jacobi_svd(A: Tensor, *, tolerance: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One-sided Jacobi SVD of a batch of small matrices: A V = W with orthogonal columns.

    Args:
        A: ``(k, n, K)``, K matrices of k × n (batch-last).
        tolerance: rotate until |aᵀb| ≤ tolerance·‖a‖‖b‖ for every pair of
            columns of every matrix (default: k·eps of A's dtype).

    Returns:
        ``(sigma, V, W)``: the singular values ‖W e_j‖ in decreasing order
        ``(n, K)``, the right singular vectors ``(n, n, K)`` as columns, and
        W = A V ``(k, n, K)`` with its columns in the same order.

    Examples:
        >>> A = torch.tensor([[2.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
        >>> sigma, V, W = jacobi_svd(A[:, :, None])
        >>> torch.allclose(sigma[:, 0], torch.linalg.svdvals(A)), torch.allclose(A @ V[..., 0], W[..., 0])
        (True, True)
    """
    k, n, K = A.shape
    if tolerance is None:
        tolerance = max(k, 1) * torch.finfo(A.dtype).eps
    tiny = torch.finfo(A.dtype).tiny
    # Each matrix in units where its largest entry lies in [1, 2): a power of two (module docstring).
    largest = A.abs().amax(dim=(0, 1)) if A.numel() else A.new_ones(K)
    usable = torch.isfinite(largest) & (largest > 0)
    # 2^(e−1) with largest in [2^(e−1), 2^e): the largest entry then lies in [1, 2), and the unit stays
    # finite for the largest finite entries (2^e itself overflows when e is the dtype's maximum).
    unit = torch.ldexp(torch.ones_like(largest), torch.frexp(torch.where(usable, largest, 1.0)).exponent - 1)
    A = A / unit
    # Column j is [column j of W; column j of V], a (k + n, K) tensor: a rotation
    # of columns p, q of W and of V is one rotation of the two.
    eye = torch.eye(n, dtype=A.dtype, device=A.device)
    columns = [torch.cat([A[:, j], eye[:, j, None].expand(n, K)]) for j in range(n)]
    pairs = [(p, q) for p in range(n - 1) for q in range(p + 1, n)]
    # ‖a‖², ‖b‖² are carried through the rotations: they become α − tγ and β + tγ
    # (Golub & Van Loan 2013, §8.5.2), two operations instead of two dot products.
    squares = [dot(column[:k], column[:k]) for column in columns]
    for _ in range(MAX_SWEEPS if pairs else 0):
        orthogonal = torch.ones(K, dtype=torch.bool, device=A.device)
        for p, q in pairs:
            gamma = dot(columns[p][:k], columns[q][:k])
            # A matrix with NaN or inf entries never becomes orthogonal: it must not keep the others sweeping.
            bound = tolerance * torch.sqrt(squares[p]) * torch.sqrt(squares[q])
            orthogonal &= (gamma.abs() <= bound) | ~torch.isfinite(gamma)
        # One read per sweep: stop when every pair of every matrix is orthogonal.
        if bool(orthogonal.all()):
            break
        for p, q in pairs:
            a, b = columns[p], columns[q]
            alpha, beta, gamma = squares[p], squares[q], dot(a[:k], b[:k])
            # t = 1/(ζ + sign(ζ)√(1 + ζ²)) with ζ = (β − α)/(2γ), written without
            # dividing by γ: 0 for γ = 0, ±1 for α = β.
            difference = beta - alpha
            twice = 2 * gamma
            sign = torch.where(difference >= 0, 1.0, -1.0)
            t = twice * sign / (difference.abs() + torch.hypot(difference, twice)).clamp_min(tiny)
            c = torch.rsqrt(1 + t * t)
            s = c * t
            columns[p], columns[q] = torch.addcmul(c * a, s, b, value=-1.0), torch.addcmul(s * a, c, b)
            shift = t * gamma
            squares[p], squares[q] = alpha - shift, beta + shift
    X = torch.stack(columns)  # (n, k + n, K)
    sigma, order = torch.sort(torch.sqrt((X[:, :k] * X[:, :k]).sum(1)), dim=0, descending=True)
    X = torch.gather(X, 0, order[:, None, :].expand(n, k + n, K))
    return sigma * unit, X[:, k:].transpose(0, 1), X[:, :k].transpose(0, 1) * unit
