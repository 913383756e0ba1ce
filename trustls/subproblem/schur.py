"""Levenberg-Marquardt steps by Schur-complement elimination (Ceres' ITERATIVE_SCHUR).

PROVISIONAL DOCSTRING.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from trustls.operators.base import LinearOperator, ScaledOperator
from trustls.operators.diagonal import BlockDiagonalOperator
from trustls.operators.sparse import SparseOperator
from trustls.sparsity.blocks import BlockPartition
from trustls.sparsity.normal_blocks import BlockSlots, block_slots, slot_gram, slot_rows, times_block_diagonal
from trustls.subproblem.base import Step, SubproblemSolver

__all__ = ["IterativeSchur"]

# A step whose model decrease is below this fraction of the Cauchy point's is
# replaced by the Cauchy point. The exact damped step always achieves 4/9 of
# it (module docstring), so only an inaccurate reduced solve triggers it.
_CAUCHY_FRACTION = 0.25


@dataclass(frozen=True, eq=False)
class _Coupling:
    """The rows shared by a group of free blocks and a group of eliminated blocks.

    Row k of the join is a pair (free slot, eliminated slot) on the same row of
    J; ``pair`` numbers the distinct (free block, eliminated block) pairs.
    """

    free_group: int
    eliminated_group: int
    free_slot: Tensor
    eliminated_slot: Tensor
    pair: Tensor
    pair_free_block: Tensor
    pair_eliminated_block: Tensor


@dataclass(frozen=True, eq=False)
class _SchurPlan:
    """What the elimination needs from a sparsity pattern and a partition (cached on the pattern)."""

    free_slots: tuple[BlockSlots, ...]
    eliminated_slots: tuple[BlockSlots, ...]
    free_columns: Tensor  # the variables of F, in their local (group, block, position) order
    eliminated_columns: Tensor
    free_template: SparseOperator  # J_F on its local columns (values replaced per Jacobian)
    free_entries: Tensor  # positions in J.values of J_F's stored entries
    eliminated_template: SparseOperator
    eliminated_entries: Tensor
    couplings: tuple[_Coupling, ...]
    free_diagonal: tuple[Tensor, Tensor]  # CSR (crow, col) of the block diagonal over F
    eliminated_diagonal: tuple[Tensor, Tensor]


def _block_diagonal_csr(shapes: list[tuple[int, int]], device: torch.device) -> tuple[Tensor, Tensor]:
    """CSR indices of a block-diagonal matrix whose values are its blocks flattened in order."""
    cols, lengths, offset = [], [], 0
    for count, size in shapes:
        start = offset + size * torch.arange(count, device=device)
        cols.append((start.view(count, 1, 1) + torch.arange(size, device=device).view(1, 1, size))
                    .expand(count, size, size).reshape(-1))
        lengths.append(torch.full((count * size,), size, device=device))
        offset += count * size
    index = torch.int32 if sum(c * s * s for c, s in shapes) <= torch.iinfo(torch.int32).max else torch.int64
    crow = torch.zeros(offset + 1, dtype=index, device=device)
    crow[1:] = torch.cumsum(torch.cat(lengths), 0)
    return crow, torch.cat(cols).to(index)


def _sub_operator(J: SparseOperator, entries: Tensor, local: Tensor, n: int) -> SparseOperator:
    rows, cols = J.pattern.rows.index_select(0, entries), local.index_select(0, J.pattern.cols.index_select(0, entries))
    return SparseOperator(rows, cols, J.values.index_select(0, entries), (J.shape[0], n))


def _build_plan(J: SparseOperator, partition: BlockPartition) -> _SchurPlan:
    m, n = J.shape
    if partition.n != n:
        raise ValueError(f"partition must cover the {n} variables of J, it covers {partition.n}")
    eliminated = sorted(set(partition.eliminated))
    if not eliminated or any(not 0 <= i < len(partition.groups) for i in eliminated):
        raise ValueError(
            f"partition.eliminated must name at least one of the {len(partition.groups)} groups, "
            f"got {partition.eliminated!r}"
        )
    free = [i for i in range(len(partition.groups)) if i not in eliminated]
    if not free:
        raise ValueError("partition.eliminated must leave at least one group of blocks free")
    slots = block_slots(J.pattern, partition.groups)
    free_slots = tuple(slots[i] for i in free)
    eliminated_slots = tuple(slots[i] for i in eliminated)
    # No row may meet two eliminated blocks: then the eliminated part of JᵀJ is block diagonal.
    rows_met = torch.bincount(torch.cat([s.slot_row for s in eliminated_slots]), minlength=m)
    if bool((rows_met > 1).any()):
        row = int(torch.nonzero(rows_met > 1)[0])
        raise ValueError(
            f"partition.eliminated must name groups whose blocks share no row of J, "
            f"got row {row} in {int(rows_met[row])} eliminated blocks"
        )
    device = J.device
    free_columns = torch.cat([partition.groups[i].reshape(-1) for i in free])
    eliminated_columns = torch.cat([partition.groups[i].reshape(-1) for i in eliminated])
    local = torch.empty(n, dtype=torch.int64, device=device)
    local[free_columns] = torch.arange(free_columns.numel(), device=device)
    local[eliminated_columns] = torch.arange(eliminated_columns.numel(), device=device)
    is_eliminated = torch.zeros(n, dtype=torch.bool, device=device)
    is_eliminated[eliminated_columns] = True
    entry_eliminated = is_eliminated.index_select(0, J.pattern.cols)
    eliminated_entries = torch.nonzero(entry_eliminated).squeeze(1)
    free_entries = torch.nonzero(~entry_eliminated).squeeze(1)
    couplings = []
    for a, fs in enumerate(free_slots):
        for b, es in enumerate(eliminated_slots):
            row_to_slot = torch.full((m,), -1, dtype=torch.int64, device=device)
            row_to_slot[es.slot_row] = torch.arange(es.n_slots, device=device)
            partner = row_to_slot.index_select(0, fs.slot_row)
            free_slot = torch.nonzero(partner >= 0).squeeze(1)
            if free_slot.numel() == 0:
                continue
            eliminated_slot = partner.index_select(0, free_slot)
            count = es.columns.shape[0]
            key = fs.slot_block.index_select(0, free_slot) * count + es.slot_block.index_select(0, eliminated_slot)
            pairs, pair = torch.unique(key, return_inverse=True)
            couplings.append(_Coupling(a, b, free_slot, eliminated_slot, pair, pairs // count, pairs % count))
    return _SchurPlan(
        free_slots,
        eliminated_slots,
        free_columns,
        eliminated_columns,
        _sub_operator(J, free_entries, local, free_columns.numel()),
        free_entries,
        _sub_operator(J, eliminated_entries, local, eliminated_columns.numel()),
        eliminated_entries,
        tuple(couplings),
        _block_diagonal_csr([tuple(s.columns.shape) for s in free_slots], device),
        _block_diagonal_csr([tuple(s.columns.shape) for s in eliminated_slots], device),
    )


def _plan(J: SparseOperator, partition: BlockPartition) -> _SchurPlan:
    key = ("schur_plan", id(partition))
    hit = J.pattern.cache.get(key)
    if hit is not None and hit[0] is partition:
        return hit[1]
    plan = _build_plan(J, partition)
    J.pattern.cache[key] = (partition, plan)
    return plan


def sparse_jacobian(J: LinearOperator) -> SparseOperator:
    """The Jacobian of a (scaled) linearization as a `SparseOperator`.

    A `ScaledOperator` ``J T`` with J sparse and T diagonal or block diagonal
    (what `Linearization.scaled` makes) is multiplied out on J's pattern
    (`times_block_diagonal`).
    """
    if isinstance(J, SparseOperator):
        return J
    if isinstance(J, ScaledOperator) and not J.left and isinstance(J.operator, SparseOperator):
        if isinstance(J.scale, Tensor):
            return J.operator.scale_columns(J.scale)
        if isinstance(J.scale, BlockDiagonalOperator):
            return times_block_diagonal(J.operator, J.scale)
    raise TypeError(
        "IterativeSchur needs a sparse Jacobian: a SparseOperator (GaussNewtonModel(jacobian=...) returning one), "
        f"possibly scaled by a diagonal or BlockDiagonalOperator; got {J!r}"
    )


def _damped_inverse(blocks: Tensor, damping: float) -> Tensor:
    """(B + damping·I)⁻¹ per block, with a jitter for blocks that are still singular.

    A block that Cholesky refuses (singular: a variable no residual depends
    on, or λ = 0 on a rank-deficient block) is shifted by √eps times its
    largest diagonal entry, or by 1 where that is 0, as `trustls.scaling` does.
    """
    size = blocks.shape[-1]
    eye = torch.eye(size, dtype=blocks.dtype, device=blocks.device)
    shifted = blocks + damping * eye
    L, info = torch.linalg.cholesky_ex(shifted)
    if bool((info != 0).any()):
        d = torch.diagonal(blocks, dim1=1, dim2=2).amax(dim=1)
        jitter = torch.where(d > 0, math.sqrt(torch.finfo(blocks.dtype).eps) * d, torch.ones_like(d))
        failed = (info != 0).to(blocks.dtype)
        L, info = torch.linalg.cholesky_ex(shifted + (failed * jitter)[:, None, None] * eye)
    return torch.cholesky_inverse(L)


@dataclass(eq=False)
class _Prepared:
    gradient: Tensor
    gradient_norm: float
    free_gradient: Tensor
    eliminated_gradient: Tensor
    free: SparseOperator  # J_F
    eliminated: SparseOperator  # J_E
    free_blocks: list[Tensor]  # diagonal blocks of J_FᵀJ_F
    eliminated_blocks: list[Tensor]  # diagonal blocks of J_EᵀJ_E
    couplings: list[Tensor]  # per _Coupling: (pairs, free size, eliminated size) blocks of J_FᵀJ_E
    plan: _SchurPlan
    forcing: float  # η: the reduced system is solved to ‖r‖ ≤ η‖b‖
    cauchy_curvature: float  # ‖J g‖²


def _forcing_term(eta_max: float, g_norm: float, reference: float | None, eps: float) -> float:
    """η = min(η_max, max(ρ, ε/ρ)), ρ = ‖g‖/‖g‖_ref (`SteihaugCG`'s forcing term)."""
    if reference is None or not math.isfinite(reference) or reference <= g_norm:
        rho = 1.0
    else:
        rho = g_norm / reference
    floor = eps / rho if rho > 0.0 else math.inf
    return min(eta_max, max(rho, floor))


@dataclass(frozen=True)
class IterativeSchur(SubproblemSolver):
    """Levenberg-Marquardt steps from an implicit Schur complement and preconditioned CG.

    PROVISIONAL.
    """

    partition: BlockPartition
    forcing: float = 0.1
    max_iter: int | None = None

    default_x_scale: ClassVar[str] = "jac"

    def __post_init__(self):
        if not isinstance(self.partition, BlockPartition):
            raise TypeError(f"partition must be a BlockPartition, got {type(self.partition).__name__}")
        if not isinstance(self.forcing, (int, float)) or isinstance(self.forcing, bool) or not 0 < self.forcing < 1:
            raise ValueError(f"forcing must be a number in (0, 1), got {self.forcing!r}")
        if self.max_iter is not None and (
            isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1
        ):
            raise ValueError(f"max_iter must be a positive int or None, got {self.max_iter!r}")

    def prepare(self, linearization, gradient_reference: float | None = None) -> _Prepared:
        J = sparse_jacobian(linearization.jacobian)
        plan = _plan(J, self.partition)
        values = J.values
        free_rows = [slot_rows(values, s) for s in plan.free_slots]
        eliminated_rows = [slot_rows(values, s) for s in plan.eliminated_slots]
        couplings = []
        for c in plan.couplings:
            a = free_rows[c.free_group].index_select(0, c.free_slot)
            b = eliminated_rows[c.eliminated_group].index_select(0, c.eliminated_slot)
            outer = (a[:, :, None] * b[:, None, :]).reshape(a.shape[0], -1)
            n_pairs = c.pair_free_block.shape[0]
            W = torch.zeros(n_pairs, outer.shape[1], dtype=values.dtype, device=values.device)
            couplings.append(W.index_add_(0, c.pair, outer).view(n_pairs, a.shape[1], b.shape[1]))
        g = linearization.gradient
        g_norm = float(torch.linalg.vector_norm(g))
        eta = _forcing_term(self.forcing, g_norm, gradient_reference, torch.finfo(g.dtype).eps)
        Jg = J.matvec(g)
        return _Prepared(
            gradient=g,
            gradient_norm=g_norm,
            free_gradient=g.index_select(0, plan.free_columns),
            eliminated_gradient=g.index_select(0, plan.eliminated_columns),
            free=plan.free_template.with_values(values.index_select(0, plan.free_entries)),
            eliminated=plan.eliminated_template.with_values(values.index_select(0, plan.eliminated_entries)),
            free_blocks=[slot_gram(r, s) for r, s in zip(free_rows, plan.free_slots)],
            eliminated_blocks=[slot_gram(r, s) for r, s in zip(eliminated_rows, plan.eliminated_slots)],
            couplings=couplings,
            plan=plan,
            forcing=eta,
            cauchy_curvature=float(torch.dot(Jg, Jg)),
        )

    def _preconditioner(self, prep: _Prepared, inverses: list[Tensor], damping: float) -> list[Tensor]:
        """The Schur-Jacobi blocks: the diagonal blocks of S over F, inverted."""
        blocks = [B.clone() for B in prep.free_blocks]
        for c, W in zip(prep.plan.couplings, prep.couplings):
            V = torch.bmm(W, inverses[c.eliminated_group].index_select(0, c.pair_eliminated_block))
            update = torch.bmm(V, W.transpose(1, 2))
            target = blocks[c.free_group]
            target.view(target.shape[0], -1).index_add_(0, c.pair_free_block, update.reshape(update.shape[0], -1),
                                                        alpha=-1.0)
        return [_damped_inverse(B, damping) for B in blocks]

    def solve(self, prepared: _Prepared, radius: float) -> Step:
        prep = prepared
        g, g_norm = prep.gradient, prep.gradient_norm
        if g_norm == 0.0:
            return Step(torch.zeros_like(g), 0.0, 0.0, False, 0, 0, "zero_gradient")
        damping = g_norm / radius if math.isfinite(radius) else 0.0
        plan = prep.plan
        inverses = [_damped_inverse(B, damping) for B in prep.eliminated_blocks]
        n_E = plan.eliminated_columns.shape[0]
        n_F = plan.free_columns.shape[0]
        E_inverse = torch.sparse_csr_tensor(*plan.eliminated_diagonal, torch.cat([B.reshape(-1) for B in inverses]),
                                            (n_E, n_E), check_invariants=False)
        M_inverse = torch.sparse_csr_tensor(
            *plan.free_diagonal,
            torch.cat([B.reshape(-1) for B in self._preconditioner(prep, inverses, damping)]),
            (n_F, n_F),
            check_invariants=False,
        )
        J_E, J_F = prep.eliminated, prep.free

        def schur(v: Tensor) -> Tensor:
            u = J_F.matvec(v)
            u = u - J_E.matvec(E_inverse @ J_E.rmatvec(u))
            return J_F.rmatvec(u) + damping * v

        # Reduced right-hand side: −(g_F − J_FᵀJ_E (C + λI)⁻¹ g_E).
        b = J_F.rmatvec(J_E.matvec(E_inverse @ prep.eliminated_gradient)) - prep.free_gradient
        x = torch.zeros_like(b)
        r = b
        tolerance = prep.forcing * float(torch.linalg.vector_norm(b))
        max_iter = 2 * n_F if self.max_iter is None else self.max_iter
        iterations = 0
        reason = "max_iter"
        if tolerance == 0.0:
            reason = "converged"
        else:
            z = M_inverse @ r
            d = z
            rz = float(torch.dot(r, z))
            for iterations in range(1, max_iter + 1):
                Sd = schur(d)
                kappa = float(torch.dot(d, Sd))
                if not kappa > 0.0:  # rounding (S ⪰ λI) or overflow
                    reason = "negative_curvature"
                    break
                alpha = rz / kappa
                x = x + alpha * d
                r = r - alpha * Sd
                if float(torch.linalg.vector_norm(r)) <= tolerance:
                    reason = "converged"
                    break
                z = M_inverse @ r
                rz_next = float(torch.dot(r, z))
                d = z + (rz_next / rz) * d
                rz = rz_next
        u = J_F.matvec(x)
        p_E = -(E_inverse @ (prep.eliminated_gradient + J_E.rmatvec(u)))
        Jp = u + J_E.matvec(p_E)
        p = torch.empty_like(g)
        p.index_copy_(0, plan.free_columns, x).index_copy_(0, plan.eliminated_columns, p_E)
        p_norm = float(torch.linalg.vector_norm(p))
        products = iterations + 2
        if not math.isfinite(p_norm):
            return Step(p, math.inf, 0.0, False, iterations, products, "non_finite")
        if p_norm > radius:
            # An inexact reduced solve may overshoot ‖g‖/λ = Δ: pull back along the
            # ray, where m(tp) ≤ t·m(p) by convexity.
            t = radius / p_norm
            p, Jp, p_norm, reason = p * t, Jp * t, radius, "boundary"
        predicted = -float(torch.dot(g, p) + 0.5 * torch.dot(Jp, Jp))
        tau = radius / g_norm
        if prep.cauchy_curvature > 0.0:
            tau = min(tau, g_norm * g_norm / prep.cauchy_curvature)
        cauchy = tau * g_norm * g_norm - 0.5 * tau * tau * prep.cauchy_curvature
        if not predicted >= _CAUCHY_FRACTION * cauchy:
            p, p_norm, predicted, reason = -tau * g, tau * g_norm, cauchy, "cauchy"
        return Step(p, p_norm, predicted, damping > 0.0, iterations, products, reason)
