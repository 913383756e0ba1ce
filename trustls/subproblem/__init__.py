"""Trust-region subproblem solvers: Steihaug-Toint CG, the exact dense solver, the Schur complement."""

from trustls.subproblem.base import Step, SubproblemSolver, boundary_step_length
from trustls.subproblem.dense_lstsq import DenseLstsq, secular_step
from trustls.subproblem.lanczos import GLTR
from trustls.subproblem.schur import IterativeSchur
from trustls.subproblem.steihaug_cg import SteihaugCG

__all__ = [
    "SOLVERS",
    "DenseLstsq",
    "GLTR",
    "IterativeSchur",
    "SteihaugCG",
    "Step",
    "SubproblemSolver",
    "boundary_step_length",
    "resolve_solver",
    "secular_step",
]

SOLVERS: dict[str, type[SubproblemSolver]] = {
    "cg": SteihaugCG, "gltr": GLTR, "lstsq": DenseLstsq, "schur": IterativeSchur,
}


def resolve_solver(solver: str | SubproblemSolver) -> SubproblemSolver:
    """``"cg"`` → ``SteihaugCG()``, ``"gltr"`` → ``GLTR()``, ``"lstsq"`` → ``DenseLstsq()``, ``"schur"`` → ``IterativeSchur()``;
    instances pass through.

    Examples:
        >>> resolve_solver("cg")
        SteihaugCG(max_iter=None, forcing=0.001, path_memory=None, exact_up_to=32)
    """
    if isinstance(solver, SubproblemSolver):
        return solver
    if isinstance(solver, str):
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {sorted(SOLVERS)} or a SubproblemSolver, got {solver!r}")
        return SOLVERS[solver]()
    raise TypeError(
        f"solver must be a str (one of {sorted(SOLVERS)}) or a SubproblemSolver, got {type(solver).__name__}"
    )
