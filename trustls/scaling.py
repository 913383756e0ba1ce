"""Scaling of the trust region: scipy's ``x_scale``, Jacobi and block-Jacobi.

The trust region ‖T⁻¹p‖ ≤ Δ is a sphere in the variables z = T⁻¹x, and
solving the subproblem there with CG is CG preconditioned by M = (TTᵀ)⁻¹
with the trust region in the matching M-norm (Steihaug 1983, §3; Conn,
Gould & Toint 2000, §5.1.6). The choices, selected by `TrustRegion`'s
``x_scale``:

* a number or a tensor: T = diag(x_scale), fixed (scipy's ``x_scale``);
* ``"jac"``: T = diag(1/‖J e_j‖) with the running maximum of the column norms
  (Moré 1978, §6; MINPACK and scipy): Jacobi preconditioning,
  M = diag(JᵀJ) up to the running maximum. When the norms are estimated (a
  matrix-free J with many variables), T = I instead while they lie within a
  small factor of each other (`JacobiScale`, `UniformScaling`);
* `BlockJacobi`: T = L⁻ᵀ with LLᵀ the block diagonal of JᵀJ over a partition
  of the variables into blocks (camera and point parameters in bundle
  adjustment): block-Jacobi preconditioning, recomputed at every
  linearization, the preconditioner of Ceres' iterative solvers (Agarwal et
  al. 2010). The blocks are computed from a dense or sparse Jacobian.

The policies are here; the changes of variables T they return (`Scaling` and
its kinds) and their interface `ScalePolicy` are in `trustls.scale_maps`,
`BlockJacobi` in `trustls.block_jacobi`; this module re-exports them.

References:
    J. J. Moré, "The Levenberg-Marquardt algorithm: implementation and
    theory", Numerical Analysis, LNM 630, Springer, 1978, pp. 105-116.
    T. Steihaug, "The conjugate gradient method and trust regions in large
    scale optimization", SIAM J. Numer. Anal. 20(3), 1983, pp. 626-637.
    A. van der Sluis, "Condition numbers and equilibration of matrices",
    Numer. Math. 14, 1969, pp. 14-23.
    S. Agarwal, N. Snavely, S. M. Seitz and R. Szeliski, "Bundle adjustment in
    the large", ECCV 2010, pp. 29-42.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from trustls.block_jacobi import BlockJacobi
from trustls.losses import SquaredError
from trustls.models.base import Linearization
from trustls.operators.sparse import SparseOperator
from trustls.scale_maps import (
    BlockScaling,
    DiagonalScaling,
    IdentityScaling,
    ScalePolicy,
    Scaling,
    UniformScaling,
)
from trustls.sparsity.blocks import pattern_blocks
from trustls.sparsity.normal_blocks import running_block_jacobi_scaling

__all__ = [
    "BlockJacobi",
    "BlockScaling",
    "DiagonalScaling",
    "FixedScale",
    "IdentityScaling",
    "JacobiScale",
    "ScalePolicy",
    "Scaling",
    "UniformScaling",
    "resolve_x_scale",
]


@dataclass(frozen=True, eq=False)
class FixedScale(ScalePolicy):
    """T = diag(x_scale), fixed (scipy's numeric ``x_scale``); 1 means no scaling.

    Examples:
        >>> FixedScale(1.0).value
        1.0
    """

    value: float | Tensor

    def check(self, x: Tensor) -> None:
        if isinstance(self.value, Tensor) and self.value.shape != x.shape:
            raise ValueError(f"x_scale must have x0's shape {tuple(x.shape)}, got shape {tuple(self.value.shape)}")

    def scaling(self, model, linearization, previous, iteration) -> Scaling:
        if previous is not None:
            return previous
        x = linearization.x
        if isinstance(self.value, Tensor):
            return DiagonalScaling(self.value.to(dtype=x.dtype, device=x.device))
        return IdentityScaling() if self.value == 1.0 else DiagonalScaling(torch.full_like(x, self.value))




def _is_uniform(scaling: Scaling | None) -> bool:
    """A `UniformScaling`, or the diagonal of one restored by the optimizer (a stride-0 ones)."""
    return isinstance(scaling, DiagonalScaling) and scaling.diagonal.ndim == 1 and scaling.diagonal.stride(0) == 0


@dataclass(frozen=True, kw_only=True)
class JacobiScale(ScalePolicy):
    """``x_scale="jac"``: T = diag(1/c) with c the running maximum of J's column norms.

    MINPACK keeps the largest column norm seen so far (Moré 1978, §6); since
    1/x is monotone, also in rounded arithmetic, the running maximum of c is
    exactly the running minimum of T, so T alone carries it and no second
    n-vector is kept. A variable no residual depends on yet is scaled by 1, as
    in scipy. Column norms a stored J gives exactly are recomputed at every
    point.

    Column norms the model can only estimate (a matrix-free J with more than
    32 variables: `GaussNewtonModel.column_norm_estimates`, 8 to K VJPs, each
    about half a CG iteration) first decide whether scaling is worth them.
    While the largest estimated norm is within ``uniform_spread`` of the
    smallest nonzero one, T = I (`UniformScaling`): over such a spread the
    scales T = I and Jacobi's change the condition number of B by a factor
    ``uniform_spread``² at most, and the products of the estimates and of its
    refreshes are saved. The first stage of the estimate (8 VJPs) settles a
    well-scaled J; the decision is checked again at iterations 8, 64, 512, …
    Otherwise T is Jacobi's from the full estimate, refreshed at iterations
    0, 1, 2, 4, 8, … A refresh stops at the first stage that reproduced the
    full estimate to 1 % in every column (``SETTLED``) when it was last made
    in full: a stage of P probes is exact when no two rows sharing a column
    lie a multiple of P apart, which the full estimate shows and no pair of
    stages alone can (rows 16 apart are off by the same cross terms with 8
    and 16 probes), and J's pattern seldom changes between points, so a
    banded J is refreshed with 8 VJPs instead of K, and a J the full estimate
    itself leaves noisy with all K. The full estimate is made again at
    iteration 1, since entries that vanish at x₀ (products of variables that
    start at zero) make a pattern look sparser there than it is, and at 8, 64,
    512, …, where a pattern that changed shows; a refresh takes the most
    stages any of them needed. After T = I it is T = max c / c, which
    keeps the largest column's units and so the meaning of the radius (its
    refreshes keep the running maximum in those units). Jacobi's loss on a well-scaled J is bounded (the Jacobi-scaled B is within a factor q of the
    best diagonal scaling's condition number, q the nonzeros of a row of B;
    van der Sluis 1969), T = I's on a badly scaled one is not: the decision
    errs towards Jacobi, and ``uniform_spread`` = 4 only declares well scaled
    what T = I cannot make much worse.

    With ``blocks`` (the default for ``"jac"``), least squares (the model's
    loss `SquaredError`) and a sparse J whose columns
    fall into blocks of identical row sets (a camera's nine parameters, a
    point's three: `trustls.sparsity.find_blocks`, found once per pattern), T
    is block-Jacobi over those blocks instead, T = L⁻ᵀ with LLᵀ = B_k + μ·D_k
    for each diagonal block B_k of JᵀJ and D_k its diagonal (Agarwal et al.
    2010), kept at its running maximum (below): the same preconditioner for
    blocks of one column, a far better one for larger blocks
    (`docs/sparse.md`). It is recomputed at every point.

    The floor μ = 10⁻² (``BLOCK_FLOOR``). The region ‖T⁻¹p‖ ≤ Δ is, within a
    block, the model's own curvature norm (pᵀB_k p)^½. A trust region in the
    curvature norm of its model loses what makes it a trust region: its
    solutions −(B + λB)⁻¹g are all multiples of the Gauss-Newton step, with
    no turn towards −g, so along a nearly singular block's near-null
    direction (two nearly collinear columns: close rates in a sum of
    exponentials) the steps are Gauss-Newton's, long where the linear model
    is poor, and ``ftol`` stopped such a fit 1 % above its minimum, reporting
    success. With Jacobi's D_k as the reference, the floor bounds the
    region's elongation along any direction to 1/√μ = 10 times Jacobi's,
    uniformly in the point, as the scaled trust-region theory asks of its
    scalings (bounded with bounded inverses; Moré 1983), while a block
    whose Jacobi-normalized eigenvalues lie well above μ keeps its factor
    almost unchanged. D_k is the running maximum over the solve's points of
    the squared column norms, as Jacobi's T keeps the running maximum of the
    norms: the bound then holds against the running Jacobi scale, and a
    column that falls to nothing (a regime of a soft maximum that dies out)
    keeps the scale it had instead of an unbounded one, along which the steps
    ran to 10³⁰ and ``xtol`` stopped away from the minimum (found by a hunt).
    (`BlockJacobi`, chosen explicitly, keeps its own ``damping``.)

    With another loss T stays diagonal, Jacobi's on J̃ = S J as in scipy: the
    blocks of J̃ carry the loss's curvature at the point, which scipy's robust
    losses change by up to 1/EPS between points (Huber's S is √EPS past
    ``f_scale``), and a metric that follows it led a shared-offset Huber fit
    to stop with ``ftol`` at cost 0.833, where Jacobi's T reaches 0.003574
    (found by a hunt).

    Args:
        blocks: block-Jacobi over the column blocks of a sparse J.
        uniform_spread: largest ratio of estimated column norms that counts as
            well scaled; 1 turns the decision off (Jacobi unless the norms are
            all equal), ``math.inf`` keeps T = I.

    Examples:
        >>> JacobiScale(), JacobiScale(blocks=False).diagonal
        (JacobiScale(blocks=True, uniform_spread=4.0), True)
    """

    blocks: bool = True
    uniform_spread: float = 4.0

    def __post_init__(self):
        if (
            isinstance(self.uniform_spread, bool)
            or not isinstance(self.uniform_spread, (int, float))
            or not 1 <= self.uniform_spread <= math.inf
        ):
            raise ValueError(f"uniform_spread must be a number of at least 1, got {self.uniform_spread!r}")
        object.__setattr__(self, "uniform_spread", float(self.uniform_spread))

    @property
    def diagonal(self) -> bool:  # box bounds need a diagonal T
        return not self.blocks

    def scaling(self, model, linearization, previous, iteration) -> Scaling:
        if self.blocks and isinstance(getattr(model, "loss", None), SquaredError):
            partition = _sparse_blocks_of(linearization)
            if partition is not None:
                return _running_block_jacobi(linearization.jacobian, partition, previous)
        if isinstance(previous, BlockScaling):
            previous = None
        uniform = _is_uniform(previous)
        if not model.column_norms_are_estimated(linearization):
            # Exact norms after T = I (a J whose pattern was found mid-solve): the largest column's units.
            norms = model.column_norms(linearization)
            return _jacobi_after_uniform(norms) if uniform else _running_jacobi(norms, previous)
        if previous is not None and not _refresh(iteration, uniform):
            return UniformScaling(linearization.x) if uniform else previous
        jacobi = previous is not None and not uniform
        learned = getattr(previous, "estimate_stages", None)  # None: a T restored without it
        full = not jacobi or learned is None or iteration == 1 or _refresh(iteration, uniform=True)
        if not full:  # a refresh: the stages that gave the full estimate
            for count, norms in enumerate(_estimates(model, linearization), 1):
                if count == learned:
                    break
            return _running_jacobi(norms, previous)
        # The full estimate: also after Jacobi's T at iteration 1 (x0 may hide entries, zero there)
        # and 8, 64, 512, … (a pattern that changed). After T = I decide after each stage: a
        # well-scaled J stops at the first, a badly scaled one gets the full estimate.
        estimates = []
        for norms in _estimates(model, linearization):
            estimates.append(norms)
            if jacobi:
                continue
            smallest_positive = torch.where(norms > 0, norms, math.inf).amin()
            largest, smallest = torch.stack([norms.amax(), smallest_positive]).tolist()  # one read
            if largest == 0.0 or math.isfinite(largest) and largest <= self.uniform_spread * smallest:
                return UniformScaling(norms)
        settled = _settled_stages(estimates)
        if jacobi:  # the most stages any full estimate needed: entries that appeared may come back
            scaling = _running_jacobi(norms, previous)
            settled = max(settled, learned or 0)
        else:
            scaling = _jacobi_after_uniform(norms, largest) if uniform else _running_jacobi(norms, None)
        scaling.estimate_stages = settled
        return scaling


BLOCK_FLOOR = 1e-2  # μ of JacobiScale's automatic block-Jacobi scaling (its docstring)


def _estimates(model, linearization: Linearization):
    """The stages of the model's column-norm estimate (`GaussNewtonModel.column_norm_estimates`), or
    its column norms as the one stage of a model without stages."""
    stages = getattr(model, "column_norm_estimates", None)
    return stages(linearization) if stages is not None else iter([model.column_norms(linearization)])


def _running_block_jacobi(J: SparseOperator, partition, previous: Scaling | None) -> BlockScaling:
    """Block-Jacobi T from LLᵀ = B_k + μ·D_k, D_k the running maximum of the squared column norms."""
    kept = previous.references if isinstance(previous, BlockScaling) else None
    return BlockScaling(*running_block_jacobi_scaling(J, partition, BLOCK_FLOOR, kept))


def _refresh(iteration: int, uniform: bool) -> bool:
    """Jacobi T at iterations 0, 1, 2, 4, 8, …; T = I at 8, 64, 512, … (`JacobiScale`)."""
    power_of_two = iteration & (iteration - 1) == 0
    if not uniform:
        return power_of_two
    return iteration >= 8 and power_of_two and (iteration.bit_length() - 1) % 3 == 0


# How closely an early stage of the column-norm estimate must reproduce the full one, column by
# column, for `JacobiScale`'s refreshes to stop at it.
SETTLED = 1e-2


def _settled_stages(estimates: list[Tensor]) -> int:
    """The fewest stages of an estimate whose norms are within `SETTLED` of the last stage's in every
    column (`JacobiScale`), one read per stage compared."""
    last = estimates[-1]
    for count, norms in enumerate(estimates[:-1], 1):
        if bool(((norms - last).abs() <= SETTLED * last).all()):
            return count
    return len(estimates)


def _jacobi_after_uniform(norms: Tensor, largest: float | None = None) -> DiagonalScaling:
    """T = max c / c after T = I: Jacobi's scale in the largest column's units, which the radius kept."""
    largest = float(norms.amax()) if largest is None else largest
    if not math.isfinite(largest) or largest == 0.0:
        return _running_jacobi(norms, None)
    scale = largest / norms
    return DiagonalScaling(scale.masked_fill_(~torch.isfinite(scale), 1.0), unit=largest)


def _running_jacobi(norms: Tensor, previous: Scaling | None) -> DiagonalScaling:
    """T = u/c, the running minimum with the previous diagonal T; a zero column is scaled by 1.

    u is the previous T's unit (1 unless T followed T = I: `JacobiScale`), so
    that the minimum compares T's in the same units.
    """
    if isinstance(previous, DiagonalScaling):
        unit = previous.unit
        scale = unit * torch.reciprocal(norms)  # inf for a column of zeros
        diagonal = torch.minimum(scale, previous.diagonal)  # finite: previous is
        return DiagonalScaling(diagonal, unit, previous.estimate_stages)
    scale = torch.reciprocal(norms)
    return DiagonalScaling(scale.masked_fill_(~torch.isfinite(scale), 1.0))


def _sparse_blocks_of(linearization: Linearization):
    """The column blocks of a sparse J when some has more than one column, else ``None``."""
    J = linearization.jacobian
    if not isinstance(J, SparseOperator):
        return None
    partition = pattern_blocks(J)
    return partition if any(group.shape[1] > 1 for group in partition.groups) else None


def resolve_x_scale(x_scale: object) -> ScalePolicy | None:
    """The `ScalePolicy` for scipy's ``x_scale``; ``None`` stays ``None`` (the solver's default).

    Accepts ``"jac"``, a positive number, a 1-D sequence of positive numbers
    (a list, a numpy array or a tensor), or a `ScalePolicy` such as `BlockJacobi`.

    Examples:
        >>> resolve_x_scale("jac"), resolve_x_scale(2)
        (JacobiScale(blocks=True, uniform_spread=4.0), FixedScale(value=2.0))
    """
    rule = "x_scale must be 'jac', a positive number, a 1-D sequence of positive numbers, a BlockJacobi or None"
    if x_scale is None or isinstance(x_scale, ScalePolicy):
        return x_scale
    if isinstance(x_scale, str):
        if x_scale != "jac":
            raise ValueError(f"{rule}, got {x_scale!r}")
        return JacobiScale()
    if isinstance(x_scale, bool):
        raise ValueError(f"{rule}, got {x_scale!r}")
    if isinstance(x_scale, (int, float)):
        if not 0 < x_scale < math.inf:
            raise ValueError(f"{rule}, got {x_scale!r}")
        return FixedScale(float(x_scale))
    if not isinstance(x_scale, Tensor):
        try:
            x_scale = torch.as_tensor(x_scale, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{rule}, got {type(x_scale).__name__}") from None
    if x_scale.ndim == 0:
        return resolve_x_scale(float(x_scale))
    if x_scale.ndim != 1 or not x_scale.is_floating_point() and x_scale.dtype.is_complex:
        raise ValueError(f"{rule}, got a tensor of shape {tuple(x_scale.shape)}")
    x_scale = x_scale if x_scale.is_floating_point() else x_scale.to(torch.float64)
    if not bool(torch.isfinite(x_scale).all()) or not bool((x_scale > 0).all()):
        raise ValueError("x_scale must have finite positive entries, got a tensor with entries that are not")
    return FixedScale(x_scale.detach().clone())  # a copy: the configuration is frozen, whatever the caller's tensor does
