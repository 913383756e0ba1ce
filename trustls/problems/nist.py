"""The 27 NIST StRD nonlinear regression problems, as torch residual functions.

The NIST Statistical Reference Datasets (StRD) for nonlinear regression are 27
least-squares problems, ranked by NIST as of *lower*, *average* or *higher*
difficulty, each with two starting points and certified results computed by NIST
in 128-bit arithmetic and rounded to 11 significant digits. They are the standard
accuracy test for nonlinear least-squares software (McCullough 1998; scipy, lmfit
and MINPACK are all judged on them).

Conventions. For a problem with data ``(x_k, y_k)`` and model ``f(x; b)`` the
residual is ``r(b) = y - f(x; b)`` and NIST certifies the minimizer ``b*``, its
standard deviations and the residual sum of squares ``RSS = ||r(b*)||^2``. scipy
and trustls report ``cost = ||r||^2 / 2``, so ``RSS = 2 * cost``. Nelson is the one
problem whose model is for ``log(y)``: its :attr:`NistProblem.response` holds
``log(y)`` so that ``residual = response - model`` holds for all 27. Nelson is also
the one problem with two predictors: its ``predictors`` have shape ``(N, 2)``,
every other problem's have shape ``(N,)``.

Accuracy is scored by the log relative error (McCullough 1998),

    LRE(q, c) = -log10(|q - c| / |c|)          (c != 0)
    LRE(q, c) = -log10(|q - c|)                (c == 0)

the number of significant digits of the estimate ``q`` that agree with the
certified value ``c``. It is capped at 11, the digits NIST certifies, and floored
at 0 (no correct digit). :func:`lre` returns the smallest LRE over components.

The files in ``nist_data/`` are NIST's, byte for byte; they are read with
:mod:`importlib.resources`, so they load from an installed wheel too. The
model functions are in `trustls.problems.nist_models`.

References:
    NIST/ITL Statistical Reference Datasets, nonlinear regression,
    https://www.itl.nist.gov/div898/strd/
    B. D. McCullough, "Assessing the reliability of statistical software: Part I",
    The American Statistician 52(4), 1998, pp. 358-366.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import NamedTuple

import torch

from trustls.problems.nist_models import MODELS

__all__ = ["NistProblem", "load", "lre", "names"]

_PACKAGE = "trustls.problems"

# NIST's order on the StRD nonlinear regression page: by difficulty, then as listed.
_NAMES = (
    # lower difficulty
    "Misra1a", "Chwirut2", "Chwirut1", "Lanczos3", "Gauss1", "Gauss2", "DanWood",
    "Misra1b",
    # average difficulty
    "Kirby2", "Hahn1", "Nelson", "MGH17", "Lanczos1", "Lanczos2", "Gauss3",
    "Misra1c", "Misra1d", "Roszman1", "ENSO",
    # higher difficulty
    "MGH09", "Thurber", "BoxBOD", "Rat42", "MGH10", "Eckerle4", "Rat43", "Bennett5",
)  # fmt: skip


@dataclass(frozen=True, eq=False, repr=False)
class NistProblem:
    """One NIST StRD nonlinear regression problem.

    Attributes:
        name: NIST's dataset name, e.g. ``"Misra1a"``.
        difficulty: NIST's level of difficulty: ``"lower"``, ``"average"`` or ``"higher"``.
        predictors: float64, shape ``(N,)``; ``(N, 2)`` for Nelson, the one problem
            with two predictors.
        response: float64, shape ``(N,)``; ``log(y)`` for Nelson, whose model is for ``log(y)``.
        starts: NIST's start 1 and start 2, float64, shape ``(p,)`` each.
        certified_params: certified minimizer, float64, shape ``(p,)``.
        certified_std: certified standard deviations of the parameters, float64, ``(p,)``.
        certified_rss: certified residual sum of squares ``||r||^2`` (``= 2 * cost``).

    Examples:
        >>> problem = load("Misra1a")
        >>> rss = problem.residual(problem.certified_params).square().sum()
        >>> abs(rss.item() / problem.certified_rss - 1) < 1e-9
        True
    """

    name: str
    difficulty: str
    predictors: torch.Tensor
    response: torch.Tensor
    starts: tuple[torch.Tensor, torch.Tensor]
    certified_params: torch.Tensor
    certified_std: torch.Tensor
    certified_rss: float

    def _check(self, b: torch.Tensor) -> None:
        if not isinstance(b, torch.Tensor):
            raise TypeError(f"`b` must be a torch.Tensor, got {type(b).__name__}")
        if not b.is_floating_point():
            raise TypeError(f"`b` must have a floating dtype, got {b.dtype}")
        p = self.certified_params.shape[0]
        if b.shape != (p,):
            raise ValueError(
                f"`b` must have shape ({p},) for {self.name}, got {tuple(b.shape)}; "
                "use torch.func.vmap for a batch of parameter vectors"
            )

    def model(self, b: torch.Tensor) -> torch.Tensor:
        """The model ``f(x; b)`` at every observation.

        Args:
            b: parameters, shape ``(p,)``, any floating dtype and device; the data are
                converted to ``b``'s dtype and device.

        Returns:
            Shape ``(N,)``, ``b``'s dtype and device.

        Raises:
            TypeError: ``b`` is not a tensor of a floating dtype.
            ValueError: ``b`` does not have shape ``(p,)``; batch with ``torch.func.vmap``.

        Examples:
            >>> load("BoxBOD").model(torch.tensor([1.0, 0.0])).abs().max().item()
            0.0
        """
        self._check(b)
        return MODELS[self.name](self.predictors.to(dtype=b.dtype, device=b.device), b)

    def residual(self, b: torch.Tensor) -> torch.Tensor:
        """The residual ``response - model(b)``, shape ``(N,)``, in ``b``'s dtype and device.

        Examples:
            >>> problem = load("DanWood")
            >>> problem.residual(problem.starts[0]).shape
            torch.Size([6])
        """
        model = self.model(b)
        return self.response.to(dtype=b.dtype, device=b.device) - model

    def __repr__(self) -> str:
        n, p = self.response.shape[0], self.certified_params.shape[0]
        return f"NistProblem(name={self.name!r}, difficulty={self.difficulty!r}, N={n}, p={p})"


def names() -> tuple[str, ...]:
    """The 27 problem names in NIST's order: by difficulty (lower, average, higher).

    Examples:
        >>> names()[:3]
        ('Misra1a', 'Chwirut2', 'Chwirut1')
    """
    return _NAMES


def load(name: str) -> NistProblem:
    """Load one problem by its NIST name (case-sensitive, as in :func:`names`).

    The file is parsed once and cached; every call returns fresh tensors, so
    modifying one problem's tensors never affects another ``load``.

    Raises:
        ValueError: ``name`` is not one of :func:`names`.

    Examples:
        >>> problem = load("Rat43")
        >>> problem.difficulty, problem.certified_params.shape
        ('higher', torch.Size([4]))
    """
    if name not in MODELS:
        raise ValueError(f"`name` must be one of {', '.join(_NAMES)}; got {name!r}")
    parsed = _parse(name)
    f64 = functools.partial(torch.tensor, dtype=torch.float64)
    response = f64(parsed.response)
    if name == "Nelson":
        response = torch.log(response)
    return NistProblem(
        name=name,
        difficulty=parsed.difficulty,
        predictors=f64(parsed.predictors),
        response=response,
        starts=(f64(parsed.start1), f64(parsed.start2)),
        certified_params=f64(parsed.certified_params),
        certified_std=f64(parsed.certified_std),
        certified_rss=parsed.certified_rss,
    )


def lre(
    estimate: torch.Tensor | float, certified: torch.Tensor | float, cap: float = 11.0
) -> float:
    """Log relative error: the number of digits of ``estimate`` that agree with ``certified``.

    Per component ``-log10(|q - c| / |c|)``, or ``-log10(|q - c|)`` where ``c == 0``,
    clipped to ``[0, cap]``; a non-finite estimate scores 0. Returns the minimum over
    components (McCullough 1998). This is a reporting function: it copies to the host.

    Args:
        estimate: computed value(s) ``q``.
        certified: certified value(s) ``c``, broadcastable against ``estimate``.
        cap: the most digits to credit; NIST certifies 11.

    Examples:
        >>> round(lre(1.2345678, 1.2345679), 2)
        7.09
        >>> lre(2.0, 2.0)
        11.0
    """
    if not cap > 0:
        raise ValueError(f"`cap` must be > 0, got {cap}")
    # Python floats must not pass through torch's default dtype (float32).
    q, c = (
        x.detach().to(device="cpu", dtype=torch.float64)
        if isinstance(x, torch.Tensor)
        else torch.tensor(x, dtype=torch.float64)
        for x in (estimate, certified)
    )
    q, c = torch.broadcast_tensors(q, c)
    error = (q - c).abs()
    error = torch.where(c == 0, error, error / c.abs())
    digits = (-torch.log10(error)).clamp(0.0, cap)  # error == 0 gives +inf -> cap
    digits = torch.where(torch.isfinite(q), digits, torch.zeros_like(digits))
    return float(digits.min()) if digits.numel() else float(cap)


class _Parsed(NamedTuple):
    difficulty: str
    predictors: tuple  # tuple[float, ...] or, for two predictors, tuple[tuple[float, float], ...]
    response: tuple[float, ...]
    start1: tuple[float, ...]
    start2: tuple[float, ...]
    certified_params: tuple[float, ...]
    certified_std: tuple[float, ...]
    certified_rss: float


def _header_int(pattern: str, text: str, name: str) -> int:
    match = re.search(pattern, text)
    if match is None:
        raise ValueError(f"{name}.dat: no match for {pattern!r}")
    return int(match.group(1))


@functools.lru_cache(maxsize=None)
def _parse(name: str) -> _Parsed:
    text = resources.files(_PACKAGE).joinpath("nist_data", f"{name}.dat").read_text("ascii")
    lines = text.splitlines()
    n_params = _header_int(r"(\d+) Parameters", text, name)
    n_predictors = _header_int(r"(\d+) Predictor", text, name)
    n_obs = _header_int(r"Number of Observations:\s*(\d+)", text, name)
    first = _header_int(r"Data\s+\(lines\s+(\d+)", text, name)
    last = _header_int(r"Data\s+\(lines\s+\d+\s+to\s+(\d+)\)", text, name)
    difficulty = re.search(r"(Lower|Average|Higher) Level of Difficulty", text)
    rss = re.search(r"Residual Sum of Squares:\s*(\S+)", text)
    if difficulty is None or rss is None:
        raise ValueError(f"{name}.dat: no difficulty or residual sum of squares")

    # Parameter lines: "  b1 =   start1   start2   certified   std".
    rows = [m.groups() for m in map(re.compile(r"\s*b(\d+)\s*=(.*)").fullmatch, lines) if m]
    if [int(k) for k, _ in rows] != list(range(1, n_params + 1)):
        raise ValueError(f"{name}.dat: expected parameter lines b1..b{n_params}")
    table = [tuple(map(float, values.split())) for _, values in rows]
    if any(len(row) != 4 for row in table):
        raise ValueError(f"{name}.dat: a parameter line does not hold 4 numbers")

    data = [tuple(map(float, line.split())) for line in lines[first - 1 : last]]
    if len(data) != n_obs or any(len(row) != 1 + n_predictors for row in data):
        raise ValueError(f"{name}.dat: expected {n_obs} rows of {1 + n_predictors} numbers")
    predictors = tuple(row[1] if n_predictors == 1 else row[1:] for row in data)
    start1, start2, certified, std = zip(*table)
    return _Parsed(
        difficulty=difficulty.group(1).lower(),
        predictors=predictors,
        response=tuple(row[0] for row in data),
        start1=start1,
        start2=start2,
        certified_params=certified,
        certified_std=std,
        certified_rss=float(rss.group(1)),
    )
