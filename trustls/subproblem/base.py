"""The trust-region subproblem and the interface of its solvers.

At an iterate the controller asks for an approximate solution of

    min_p  m(p) = gᵀp + ½ pᵀBp    subject to  ‖p‖ ≤ Δ,                (TR)

where g = Jᵀr is the gradient of the cost ½‖r‖² and B = JᵀJ its Gauss-Newton
curvature (Nocedal & Wright 2006, ch. 4). The predicted reduction of a step is
``−m(p)``; solvers compute it from quantities of the step itself rather than as
a difference of two large squares.

Solvers split their work as *prepare once, solve many* (lineax's pattern):
`SubproblemSolver.prepare` runs once per accepted point (factorize J, say),
`SubproblemSolver.solve` once per trial radius, reusing the preparation
across the rejected radii of one iteration (scipy's trf does the same with
its SVD).

A solver owns what it carries from point to point (CG's forcing reference):
`SubproblemSolver.prepare` takes the solver's state from the previous point
and `SubproblemSolver.state` returns it after this point's solves; the
controller keeps it in its state without reading it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

if TYPE_CHECKING:
    from trustls.models.base import Linearization

__all__ = ["Step", "SubproblemSolver", "boundary_step_length"]


@dataclass(frozen=True)
class Step:
    """An approximate solution of the trust-region subproblem.

    Attributes:
        step: the step ``p`` (in the variables the subproblem was posed in).
        norm: ``‖p‖``, a float or a 0-d tensor (solvers report what they hold
            without reading a device value).
        predicted_reduction: ``−(gᵀp + ½ pᵀBp)``, the model's decrease, a
            float or a 0-d tensor.
        hits_boundary: whether the step lies on the trust-region boundary.
        iterations: inner iterations spent (CG iterations, secular-equation
            iterations).
        products: operator products spent.
        reason: why the solver stopped, in a word (``"converged"``,
            ``"boundary"``, ``"negative_curvature"``, ``"max_iter"``,
            ``"gauss_newton"``, ``"secular"``, ``"zero_gradient"``).
    """

    step: Tensor
    norm: float | Tensor
    predicted_reduction: float | Tensor
    hits_boundary: bool
    iterations: int
    products: int
    reason: str


class SubproblemSolver(abc.ABC):
    """Interface of trust-region subproblem solvers.

    Attributes:
        requires_jacobian: whether `prepare` needs the dense Jacobian matrix
            (``Linearization.jacobian_matrix``); when false the solver works with
            operator products only.
        default_x_scale: the variable scaling `TrustRegion` uses with this
            solver when ``x_scale=None``.
    """

    requires_jacobian: ClassVar[bool] = False
    default_x_scale: ClassVar[float | str] = 1.0

    @abc.abstractmethod
    def prepare(self, linearization: Linearization, state: Any = None) -> Any:
        """Do the work shared by all trial radii at one point.

        ``state`` is what `state` returned at the previous point of the solve
        (``None`` at the first). `SteihaugCG`'s state is the largest ‖g‖ met
        so far in the subproblem's variables, against which it measures its
        forcing term, so that its tolerance does not depend on the units of r.
        """

    @abc.abstractmethod
    def solve(self, prepared: Any, radius: float) -> Step:
        """Solve (TR) for ``radius`` using what `prepare` returned."""

    def state(self, prepared: Any) -> Any:
        """The solver's state after the solves at this point, for the next `prepare`."""
        return None


def boundary_step_length(p: Tensor, d: Tensor, radius: float) -> Tensor:
    """The τ ≥ 0 with ‖p + τd‖ = radius, for ‖p‖ ≤ radius and d ≠ 0 (0 on the sphere for a tangent d).

    Solves ‖d‖²τ² + 2pᵀd τ + (‖p‖² − Δ²) = 0 for its non-negative root. The
    product of the roots is (‖p‖² − Δ²)/‖d‖² ≤ 0, so the positive root is
    computed from whichever formula avoids cancellation (as in scipy's
    ``intersect_trust_region``).

    Examples:
        >>> import torch
        >>> boundary_step_length(torch.zeros(2), torch.tensor([3.0, 4.0]), 10.0)
        tensor(2.)
    """
    dd = torch.dot(d, d)
    pd = torch.dot(p, d)
    c = torch.clamp(radius**2 - torch.dot(p, p), min=0.0)
    root = torch.sqrt(pd * pd + dd * c)
    # pd ≥ 0: -pd + root cancels, use c / (pd + root); pd < 0: no cancellation. pd + root = 0
    # only for p on the sphere with d tangent to it (c = 0): τ = 0.
    return torch.where(pd >= 0, c / torch.where(pd + root > 0, pd + root, 1.0), (root - pd) / dd)
