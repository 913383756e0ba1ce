"""`TrustRegionOptimizer`'s saved state: the controller's state between steps, and its checks at load time.

Between steps the optimizer keeps, under its first parameter, what the next
step needs to continue the solve (`restore`, `save`): the radius, the
diagonal of the scaling, the solver's state and the counters.

A checkpoint is plain data (floats, ints, ``None`` and one tensor), so it
loads with ``torch.load(..., weights_only=True)``. What is checked: the
layout torch's ``Optimizer.state_dict`` writes (one parameter group, state
under the first parameter only), that every entry of the state is present and
of its type, that the radius is a positive finite number, and that the saved
scale and parameter count fit the parameters the optimizer holds now.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from trustls._validation import check_lr, check_max_trials
from trustls.scaling import DiagonalScaling
from trustls.state import TrustRegionState

if TYPE_CHECKING:
    from trustls.models.base import Linearization
    from trustls.trust_region import TrustRegion

__all__ = ["COUNTERS", "STATE_KEYS", "check_state_dict", "restore", "save", "working_scale"]

COUNTERS = ("nit", "nfev", "njev", "inner_iterations", "products")
STATE_KEYS = frozenset(("radius", "scale", "solver_state", "accepted_steps", "scaled_at", "numel", *COUNTERS))

_RULE = "state_dict must come from TrustRegionOptimizer.state_dict()"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_state_dict(
    state_dict: object,
    group_size: int,
    trainable: int,
) -> Tensor | None:
    """Raise ``ValueError``/``TypeError`` unless ``state_dict`` fits the optimizer; return the saved scale.

    Args:
        state_dict: what was passed to ``load_state_dict``.
        group_size: the number of tensors in the optimizer's parameter group.
        trainable: the number of trainable parameters (the length of x).
    """
    if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= state_dict.keys():
        raise ValueError(f"{_RULE}: a mapping with 'state' and 'param_groups', got {type(state_dict).__name__}")
    groups = state_dict["param_groups"]
    if not isinstance(groups, (list, tuple)) or len(groups) != 1 or not isinstance(groups[0], Mapping):
        raise ValueError(f"{_RULE}: exactly one parameter group, got {groups!r:.200}")
    group = groups[0]
    missing = {"params", "max_trials", "lr"} - group.keys()
    if missing:
        raise ValueError(f"{_RULE}: its parameter group lacks {sorted(missing)} (a state dict of another optimizer?)")
    ids = group["params"]
    if not isinstance(ids, (list, tuple)) or len(ids) != group_size:
        count = len(ids) if isinstance(ids, (list, tuple)) else type(ids).__name__
        raise ValueError(f"state_dict holds {count} parameter tensors but the optimizer has {group_size}")
    check_max_trials(group["max_trials"])
    check_lr(group["lr"])
    state = state_dict["state"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{_RULE}: 'state' must be a mapping, got {type(state).__name__}")
    extra = [key for key in state if key != ids[0]]
    if extra:
        raise ValueError(f"{_RULE}: state only under the first parameter ({ids[0]!r}), got state under {extra!r:.200}")
    if ids[0] not in state or not state[ids[0]]:
        return None  # saved before the first step
    entry = state[ids[0]]
    if not isinstance(entry, Mapping) or entry.keys() != STATE_KEYS:
        found = sorted(entry.keys()) if isinstance(entry, Mapping) else type(entry).__name__
        raise ValueError(f"{_RULE}: the state must hold exactly {sorted(STATE_KEYS)}, got {found}")
    radius = entry["radius"]
    if not _is_number(radius) or not math.isfinite(radius) or not radius > 0:
        raise ValueError(f"state_dict's radius must be a positive finite number, got {radius!r}")
    for name in (*COUNTERS, "accepted_steps", "scaled_at", "numel"):
        if not _is_int(entry[name]) or entry[name] < 0:
            raise ValueError(f"state_dict's {name} must be a non-negative int, got {entry[name]!r}")
    reference = entry["solver_state"]
    if reference is not None and (not _is_number(reference) or not reference >= 0):
        raise ValueError(f"state_dict's solver_state must be None or a non-negative number, got {reference!r}")
    if entry["numel"] != trainable:
        raise ValueError(
            f"state_dict belongs to {entry['numel']} trainable parameters but the optimizer has {trainable}: "
            "a checkpoint of another network"
        )
    scale = entry["scale"]
    if scale is None:
        return None
    if not isinstance(scale, Tensor) or not scale.is_floating_point() or scale.shape != (trainable,):
        got = f"shape {tuple(scale.shape)} {scale.dtype}" if isinstance(scale, Tensor) else type(scale).__name__
        raise ValueError(f"state_dict's scale must be None or a floating tensor of shape ({trainable},), got {got}")
    if not bool((torch.isfinite(scale) & (scale > 0)).all()):
        raise ValueError("state_dict's scale must have positive finite entries, got entries that are not")
    return scale.detach().clone() if scale.stride(0) != 0 else scale.detach()[:1].clone().expand(scale.shape)


def working_scale(scale: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The saved scale in the working dtype on the parameters' device, a uniform one kept uniform.

    `JacobiScale` tells its T = I (`UniformScaling`) from the stride-0 diagonal that
    `save` keeps; a copy (``clone``, ``to`` another dtype) would make it a plain
    diagonal of ones, and the resumed run would switch to Jacobi's T at its next
    refresh where the uninterrupted one keeps T = I.
    """
    if scale.stride(0) == 0:
        return scale[:1].to(dtype=dtype, device=device).expand(scale.shape)
    return scale.to(dtype=dtype, device=device)


def restore(method: TrustRegion, saved: dict[str, Any], lin: Linearization, context: Any,
            dtype: torch.dtype) -> TrustRegionState:
    """The controller's state for a step at ``lin``: fresh at the first step, else ``saved`` relinearized."""
    if "radius" not in saved:
        return method.start(lin, context=context, dtype=dtype)
    if saved["numel"] != lin.x.shape[0]:
        raise ValueError(
            f"the optimizer's state belongs to {saved['numel']} parameters but {lin.x.shape[0]} are trainable now: "
            "it belongs to another network (or requires_grad changed)"
        )
    scale = saved["scale"]
    previous = TrustRegionState(
        x=lin.x, linearization=None, radius=saved["radius"],
        scaling=DiagonalScaling(scale) if scale is not None else None,
        solver_state=saved["solver_state"], context=context, dtype=dtype, initial_cost=float(lin.cost),
        **{name: saved[name] for name in COUNTERS},
    )
    if previous.scaling is None:
        previous = dataclasses.replace(previous, scaling=method.scale_policy.scaling(method.model, lin, None, 0))
    # T is updated once per accepted step, as `TrustRegion.solve` updates it once per accepted
    # point: a step after a rejected one (a new batch at the same x) keeps it, so that rejected
    # steps at a count of the refresh schedule do not estimate the column norms again.
    rescale = saved["accepted_steps"] != saved["scaled_at"]
    return method.relinearized(previous, lin, iteration=saved["accepted_steps"], rescale=rescale)


def save(saved: dict[str, Any], state: TrustRegionState) -> None:
    """Keep in ``saved`` what the next step needs of ``state`` (the keys `STATE_KEYS`)."""
    moved = state.last is not None and state.last.accepted
    saved.update(radius=state.radius, scale=getattr(state.scaling, "diagonal", None), solver_state=state.solver_state,
                 numel=state.x.shape[0], accepted_steps=saved.get("accepted_steps", 0) + moved,
                 scaled_at=saved.get("accepted_steps", 0),  # the count this step's T was made at
                 **{name: getattr(state, name) for name in COUNTERS})
