"""Small dense test problems written the way users write residual functions.

The registry's problems (`trustls.problems.registry`) are vectorized, pure
torch functions: ideal for every transform of ``torch.func``. Users write
otherwise (GitHub issue 10): ``torch.stack`` over scalar expressions, Python
loops over the residuals, ``torch.where`` branches, exp/sin/atan/log of 0-d
tensors, indexing and gathers, data made *inside* ``fun`` from a seeded
``torch.Generator``, and control flow driven by ``.item()``. Those spellings
change which automatic-differentiation route is fast (forward mode through
``torch.func`` decomposes each scalar op in Python) and which fails outright
(random numbers under ``vmap``).

This collection holds 47 such problems with a start and the residual only (no
hand-written Jacobian):

* `trustls.problems.styled.mgh` (and `trustls.problems.styled.mgh_variable`):
  the Moré-Garbow-Hillstrom (1981) problems in other spellings, several at
  other dimensions than the registry's, each equal to the registry's formula;
* `trustls.problems.styled.fits`: curve fits (exponential, Gaussian peaks,
  logistic, Michaelis-Menten, damped sine, ...) with data drawn inside ``fun``.

They are test inputs for the dense Jacobian routes
(`trustls.models.dense_jacobian`) and for ``benchmarks/small_problems.py``;
none carries a certified minimum (tests compare with scipy instead).

Reference:
    J. J. Moré, B. S. Garbow, K. E. Hillstrom, "Testing unconstrained optimization
    software", ACM Transactions on Mathematical Software 7(1), 1981, pp. 17-41.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["STYLES", "StyledProblem", "get", "names", "problems"]

# What each style tag means (a problem may carry several).
STYLES = {
    "stack": "torch.stack of 0-d expressions",
    "loop": "Python loop over residuals or data points",
    "where": "torch.where branches",
    "gather": "indexing with index tensors, gather, slicing",
    "generator": "data drawn inside fun from a seeded torch.Generator",
    "item": "control flow on .item() (or float(...)) of a value",
}


@dataclass(frozen=True, eq=False)
class StyledProblem:
    """A least-squares test problem ``min_x ½‖residual(x)‖²`` in a user's spelling.

    Attributes:
        name: unique key, e.g. ``"chebyquad_trig"``.
        family: ``"mgh"`` or ``"fit"``.
        styles: tags from `STYLES`.
        residual: ``r(x) -> Tensor`` of shape ``(m,)`` for ``x`` of shape ``(n,)``,
            on ``x``'s dtype and device.
        x0: the start, float64.
        source: where the problem comes from.

    Examples:
        >>> p = get("rosenbrock_stack")
        >>> p.m, p.n, p.styles
        (2, 2, ('stack',))
    """

    name: str
    family: str
    styles: tuple[str, ...]
    residual: Callable[[Tensor], Tensor]
    x0: Tensor
    source: str

    def __post_init__(self):
        unknown = set(self.styles) - set(STYLES)
        if unknown:
            raise ValueError(f"styles must be among {sorted(STYLES)}, got {sorted(unknown)}")

    @property
    def n(self) -> int:
        """Number of variables."""
        return self.x0.shape[0]

    @property
    def m(self) -> int:
        """Number of residuals (evaluates the residual once at ``x0``)."""
        with torch.no_grad():
            return self.residual(self.x0).shape[0]


def make(name: str, family: str, styles: str, residual, x0, source: str) -> StyledProblem:
    """A `StyledProblem` from a space-separated style string and a list start."""
    return StyledProblem(name, family, tuple(styles.split()), residual, torch.tensor(x0, dtype=torch.float64), source)


@functools.lru_cache(maxsize=None)
def problems() -> tuple[StyledProblem, ...]:
    """All styled problems: the MGH spellings, then the curve fits.

    Examples:
        >>> len(problems()) >= 40
        True
    """
    from trustls.problems.styled import fits, mgh

    return mgh.problems() + fits.problems()


def names() -> tuple[str, ...]:
    """Names of the styled problems, in collection order."""
    return tuple(p.name for p in problems())


def get(name: str) -> StyledProblem:
    """The styled problem called ``name``.

    Raises:
        ValueError: If ``name`` is not one of :func:`names`.

    Examples:
        >>> get("exponential_decay").n
        3
    """
    for p in problems():
        if p.name == name:
            return p
    raise ValueError(f"name must be one of the styled problems {list(names())}, got {name!r}")
