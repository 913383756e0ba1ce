"""`TrustRegionState`: the explicit, frozen state of one trust-region solve."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from trustls.bounds import Bounds
from trustls.function import CallTally
from trustls.models.base import Linearization
from trustls.result import IterationInfo, Status
from trustls.scaling import Scaling

__all__ = ["TrustRegionState"]


@dataclass(frozen=True)
class TrustRegionState:
    """The state of one solve: returned by `TrustRegion.init`, advanced by `TrustRegion.step`.

    Attributes:
        x: the current point, in the working dtype (float32 for half-precision
            ``x0``, whose values it always holds exactly).
        linearization: the model linearized at ``x`` (``None`` after a step
            taken with ``relinearize=False``).
        radius: the trust-region radius Δ, in the scaled variables.
        scaling: T at ``x`` (`trustls.scaling`); after a step that ends the
            solve, T of the previous point, since T serves the next subproblem only.
        solver_state: what the subproblem solver carries from point to point.
        context: the model's per-solve working state (`CurvatureModel.start`).
        dtype: the dtype of ``x0``, which the result takes.
        initial_cost: the cost at ``x0``.
        bounds: the box (`trustls.bounds.Bounds`), or ``None``.
        nfev, njev, nit, inner_iterations, products: counters (`Result`).
        status: the `Status` that stopped the solve, ``None`` while running.
        last: the `IterationInfo` of the last trial.
        noise_step: the bound on the next uphill step at the noise floor
            (`trustls.decision.trial_decision`; inf while none was taken).
        cut: a non-finite trial cut the radius and no interior step has been
            taken since: ``ftol`` and ``xtol`` do not stop boundary steps
            (`trustls.trial`).
        tally: the solve's running count of calls of its function, shared by
            the states of one solve (`trustls.function.CallTally`): the steps
            take their ``nfev`` from it.
    """

    x: Tensor
    linearization: Linearization | None
    radius: float
    scaling: Scaling
    solver_state: Any
    context: Any
    dtype: torch.dtype
    initial_cost: float
    bounds: Bounds | None = None
    nfev: int = 0
    njev: int = 1
    nit: int = 0
    inner_iterations: int = 0
    products: int = 0
    status: Status | None = None
    last: IterationInfo | None = None
    noise_step: float = math.inf
    cut: bool = False
    tally: CallTally = field(default_factory=CallTally, compare=False, repr=False)
