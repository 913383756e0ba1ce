"""Self-check on the 27 NIST StRD nonlinear regression problems: ``python -m trustls.validate``.

Solves every problem of :mod:`trustls.problems.nist` from both of NIST's starting
points with each subproblem solver and scores the answer by the log relative error
(LRE; McCullough 1998): the number of significant digits that agree with NIST's
certified values, at most the 11 that NIST certifies. A row's LRE is the smaller of
the parameters' LRE (their minimum) and the LRE of the residual sum of squares
RSS = 2·cost; a run passes at LRE ≥ 6.

Tolerances. The library's defaults (1e-8) stop near 4-5 correct digits, so the
self-check uses its own, one setting for every problem (`DEFAULT_OPTIONS`):

* ``ftol=None``: an error δ in the parameters changes the cost by ~½‖Jδ‖², and
  evaluating the residual in float64 perturbs the cost by ~10⁻¹⁴ of itself, so on
  ill-conditioned or large-residual problems (ENSO, MGH09, Roszman1) ftol=1e-15
  stops with parameters still wrong at 10⁻⁷.
* ``gtol=None``: ‖Jᵀr‖∞ < gtol is absolute, not scale-invariant, and the certified
  RSS ranges from 10⁻²⁵ (Lanczos1) to 10⁴ (Rat43).
* ``xtol=1e-15`` (≈ 4.5 eps): stop when a step changes x by less than 10⁻¹⁵‖x‖, or
  when the radius shrinks below the rounding of x because no step decreases the
  cost any more (also reported as ``XTOL``).
* ``x_scale="jac"`` for both solvers (Moré 1978): unscaled CG fails on the problems
  whose parameters differ by 10⁶ in size, and unscaled ``"lstsq"`` stops early on
  Nelson from start 1 (see ``docs/validation.md``).
* ``max_nfev=3000``: Bennett5 and MGH17 from start 1 need 1000-2100 evaluations.

Float64 bounds the digits: the residuals carry rounding errors of ~eps·|model|, and
Gauss-Newton iterated from NIST's values settles 10.3-11 digits from them. Lanczos1's
RSS, 1.4·10⁻²⁵ from residuals of 10⁻¹³ against data of order 1, is computable to
about 3 digits only, whatever the solver.

References:
    B. D. McCullough, "Assessing the reliability of statistical software: Part I",
    The American Statistician 52(4), 1998, pp. 358-366.
    NIST/ITL Statistical Reference Datasets, https://www.itl.nist.gov/div898/strd/
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trustls.api import least_squares
from trustls.problems import nist
from trustls.result import Status

__all__ = [
    "DEFAULT_OPTIONS", "PASS_LRE", "Summary", "ValidationRow", "format_summary", "format_table", "main", "run",
    "summarize",
]

DEFAULT_OPTIONS: dict[str, object] = {
    "ftol": None,
    "xtol": 1e-15,
    "gtol": None,
    "x_scale": "jac",
    "max_nfev": 3000,
}
"""The solve options of the self-check; see the module docstring for each choice."""

# The solvers of the self-check: the NIST problems are small and dense (no Schur structure).
DENSE_SOLVERS = ("cg", "gltr", "lstsq")

PASS_LRE = 6.0
"""A run passes with at least this many correct digits (the issue's target)."""


@dataclass(frozen=True)
class ValidationRow:
    """One solve: a problem from one start with one solver, scored against NIST.

    Attributes:
        problem: NIST's name, e.g. ``"Misra1a"``.
        start: 1 or 2, NIST's starting point.
        solver: ``"cg"`` or ``"lstsq"``.
        lre_params: correct digits of the parameters (the minimum over them).
        lre_rss: correct digits of the residual sum of squares, 2·cost.
        lre: ``min(lre_params, lre_rss)``.
        nfev: residual evaluations.
        seconds: wall-clock time of the solve.
        status: why the solve stopped.
    """

    problem: str
    start: int
    solver: str
    lre_params: float
    lre_rss: float
    lre: float
    nfev: int
    seconds: float
    status: Status

    @property
    def passed(self) -> bool:
        """Whether the run reached `PASS_LRE` digits."""
        return self.lre >= PASS_LRE

    @property
    def certified(self) -> bool:
        """Whether the parameters reached `PASS_LRE` digits: what the command's exit status checks.

        The RSS is not required: Lanczos1's certified RSS, 1.4e-25, lies below what
        float64 residuals resolve, so no solver reaches it (docs/validation.md).
        """
        return self.lre_params >= PASS_LRE


def _check_names(names: Iterable[str] | None) -> tuple[str, ...]:
    if names is None:
        return nist.names()
    if isinstance(names, str):
        raise TypeError(f"names must be a sequence of problem names, not a str; got {names!r}")
    names = tuple(names)
    unknown = [name for name in names if name not in nist.names()]
    if unknown:
        raise ValueError(f"names must be among {', '.join(nist.names())}; got {', '.join(map(repr, unknown))}")
    return names


def _check_solvers(solvers: Iterable[str]) -> tuple[str, ...]:
    if isinstance(solvers, str):
        raise TypeError(f"solvers must be a sequence of solver names, not a str; got {solvers!r}")
    solvers = tuple(solvers)
    unknown = [s for s in solvers if s not in DENSE_SOLVERS]
    if not solvers or unknown:
        raise ValueError(f"solvers must be a non-empty sequence of {list(DENSE_SOLVERS)}; got {solvers!r}")
    return solvers


def run(
    solvers: Sequence[str] = ("cg", "lstsq"),
    names: Sequence[str] | None = None,
    *,
    starts: Sequence[int] = (1, 2),
    **trust_region_options: Any,
) -> list[ValidationRow]:
    """Solve the NIST problems from NIST's starts with each solver and score the answers.

    Args:
        solvers: subproblem solver names (``"cg"``, ``"lstsq"``).
        names: NIST problem names (default all 27, in NIST's order).
        starts: which of NIST's two starting points, 1 and/or 2.
        **trust_region_options: options of `trustls.least_squares` that replace
            `DEFAULT_OPTIONS`, e.g. ``xtol=1e-12``.

    Returns:
        One `ValidationRow` per problem × start × solver, in that order.

    Raises:
        TypeError: ``solvers`` or ``names`` is a single str rather than a sequence.
        ValueError: an unknown solver, problem name or start.

    Examples:
        >>> rows = run(solvers=["lstsq"], names=["Misra1a"])
        >>> [(row.start, row.lre >= 6) for row in rows]
        [(1, True), (2, True)]
    """
    solvers = _check_solvers(solvers)
    names = _check_names(names)
    starts = tuple(starts)
    if not starts or any(start not in (1, 2) for start in starts):
        raise ValueError(f"starts must be a non-empty sequence of 1 and/or 2, got {starts!r}")
    options = {**DEFAULT_OPTIONS, **trust_region_options}
    rows = []
    for name in names:
        problem = nist.load(name)
        for start in starts:
            x0 = problem.starts[start - 1]
            for solver in solvers:
                began = time.perf_counter()
                result = least_squares(problem.residual, x0, solver=solver, **options)
                seconds = time.perf_counter() - began
                lre_params = nist.lre(result.x, problem.certified_params)
                lre_rss = nist.lre(2.0 * result.cost, problem.certified_rss)
                rows.append(
                    ValidationRow(name, start, solver, lre_params, lre_rss, min(lre_params, lre_rss),
                                  result.nfev, seconds, result.status)
                )  # fmt: skip
    return rows


@dataclass(frozen=True)
class Summary:
    """Totals of one solver's rows (see `summarize`).

    Attributes:
        solver: the solver's name.
        runs: rows of this solver.
        passed: rows with LRE ≥ `PASS_LRE`.
        passed_params: rows whose parameters alone reach `PASS_LRE`.
        mean_lre: mean of the rows' LRE.
        mean_lre_params: mean of the rows' parameter LRE.
        total_nfev, seconds: sums over the rows.
    """

    solver: str
    runs: int
    passed: int
    passed_params: int
    mean_lre: float
    mean_lre_params: float
    total_nfev: int
    seconds: float


def summarize(rows: Sequence[ValidationRow]) -> list[Summary]:
    """Per solver, in order of appearance: passes (LRE ≥ 6, and the parameters alone), mean LRE, totals."""
    summaries = []
    for solver in dict.fromkeys(row.solver for row in rows):
        mine = [row for row in rows if row.solver == solver]
        summaries.append(
            Summary(
                solver=solver,
                runs=len(mine),
                passed=sum(row.passed for row in mine),
                passed_params=sum(row.lre_params >= PASS_LRE for row in mine),
                mean_lre=math.fsum(row.lre for row in mine) / len(mine),
                mean_lre_params=math.fsum(row.lre_params for row in mine) / len(mine),
                total_nfev=sum(row.nfev for row in mine),
                seconds=math.fsum(row.seconds for row in mine),
            )
        )
    return summaries


def format_table(rows: Sequence[ValidationRow]) -> str:
    """The rows as a fixed-width table; failed runs are marked ``<``."""
    header = (
        f"{'problem':<10}{'start':>5}  {'solver':<7}{'LRE b':>7}{'LRE RSS':>8}{'LRE':>7}{'nfev':>7}{'ms':>9}  status"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        mark = " " if row.passed else "<"
        lines.append(
            f"{row.problem:<10}{row.start:>5}  {row.solver:<7}{row.lre_params:>7.2f}{row.lre_rss:>8.2f}"
            f"{row.lre:>6.2f}{mark}{row.nfev:>7}{1e3 * row.seconds:>9.1f}  {row.status.name}"
        )
    return "\n".join(lines)


def format_summary(rows: Sequence[ValidationRow]) -> str:
    """One line per solver: passes, mean LRE, total nfev and time."""
    header = f"{'solver':<7}{'LRE>=6':>9}{'b only':>9}{'mean LRE':>10}{'mean b':>8}{'nfev':>8}{'seconds':>9}"
    lines = [header, "-" * len(header)]
    for s in summarize(rows):
        lines.append(
            f"{s.solver:<7}{f'{s.passed}/{s.runs}':>9}{f'{s.passed_params}/{s.runs}':>9}{s.mean_lre:>10.2f}"
            f"{s.mean_lre_params:>8.2f}{s.total_nfev:>8}{s.seconds:>9.1f}"
        )
    return "\n".join(lines)


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite non-negative number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trustls.validate",
        description="Solve the 27 NIST StRD nonlinear regression problems from both starts and print "
        "the digits that agree with NIST's certified values (LRE, at most 11).",
    )
    parser.add_argument("--solver", action="append", choices=DENSE_SOLVERS,
                        help="subproblem solver; repeat for several (default: cg and lstsq)")
    parser.add_argument("--problem", action="append", metavar="NAME",
                        help="NIST problem name, e.g. Misra1a; repeat for several (default: all 27)")
    parser.add_argument("--tol", type=_tolerance, default=DEFAULT_OPTIONS["xtol"],
                        help="xtol, the relative step tolerance (default %(default)g; ftol and gtol stay off)")
    parser.add_argument("--max-nfev", type=_positive_int, default=DEFAULT_OPTIONS["max_nfev"],
                        help="evaluation budget per solve (default %(default)d)")
    parser.add_argument("--threads", type=_positive_int, default=None,
                        help="torch.set_num_threads before solving (default: torch's); the last digits "
                        "of ill-conditioned fits depend on rounding, hence on the thread count")
    return parser  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trustls.validate [--solver S] [--problem NAME] [--tol T] [--max-nfev N] [--threads N]``.

    Prints the table and a summary per solver. Returns 0 when every run's
    parameters reach `PASS_LRE` correct digits (`ValidationRow.certified`), else
    1, so that CI can run it as a check; the failing runs are named last.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    names = args.problem
    if names is not None:
        unknown = [name for name in names if name not in nist.names()]
        if unknown:
            parser.error(f"--problem must be one of {', '.join(nist.names())}; got {', '.join(unknown)}")
    solvers = tuple(dict.fromkeys(args.solver)) if args.solver else ("cg", "lstsq")
    options = {"xtol": args.tol, "max_nfev": args.max_nfev}
    settings = {**DEFAULT_OPTIONS, **options}
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print("NIST StRD nonlinear regression: digits agreeing with the certified values (LRE, at most 11)")
    print("options: " + ", ".join(f"{key}={value!r}" for key, value in settings.items()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); LRE = min(LRE b, LRE RSS); "
          f"'<' marks LRE < {PASS_LRE:g}\n")
    # The first solve pays torch.func's one-time setup (~1 s); keep it out of the timings.
    run(solvers, ["DanWood"], **options)
    rows = run(solvers, names, **options)
    print(format_table(rows))
    print()
    print(format_summary(rows))
    failed = [row for row in rows if not row.certified]
    if failed:
        names = ", ".join(f"{row.problem} start {row.start} ({row.solver}, {row.lre_params:.2f})" for row in failed)
        print(f"\nFAILED: parameters below {PASS_LRE:g} correct digits in {len(failed)} run(s): {names}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
