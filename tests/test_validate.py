"""The NIST self-check (``python -m trustls.validate``): the hard problems, the table, the arguments."""

import dataclasses
import doctest
import math
import re
import subprocess
import sys

import pytest

from trustls import Status, validate
from trustls.validate import PASS_LRE, ValidationRow

# NIST's "higher difficulty" problems, solved from start 1 (the one farther from the minimum).
HIGHER = ["MGH09", "Thurber", "BoxBOD", "Rat42", "MGH10", "Eckerle4", "Rat43", "Bennett5"]

@pytest.mark.parametrize("solver", ["cg", "lstsq"])
@pytest.mark.parametrize("name", HIGHER)
def test_higher_difficulty_from_start_1(solver, name):
    (row,) = validate.run([solver], [name], starts=[1])
    assert (row.problem, row.start, row.solver) == (name, 1, solver)
    # Measured LRE (b, RSS) from start 1, lstsq | cg: MGH09 7.5 | 7.5, Thurber 8.1 | 7.6,
    # BoxBOD 8.8 | 9.0, Rat42 9.2 | 11, MGH10 10.9 | 10.9, Eckerle4 9.6 | 10.5,
    # Rat43 9.0 | 8.5, Bennett5 11 | 11. Digits past ~7 depend on rounding (thread count).
    assert row.lre >= PASS_LRE, row


def test_rows_score_parameters_and_rss():
    rows = validate.run(["lstsq"], ["Misra1a"])
    assert [(row.problem, row.start, row.solver) for row in rows] == [("Misra1a", 1, "lstsq"), ("Misra1a", 2, "lstsq")]
    for row in rows:
        assert row.lre == min(row.lre_params, row.lre_rss)
        assert 0 <= row.lre <= 11 and row.lre >= PASS_LRE and row.passed
        assert row.nfev > 1 and row.seconds > 0
        assert isinstance(row.status, Status) and row.status.success
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field"):
        rows[0].lre = 11.0


def test_options_replace_the_defaults():
    (loose,) = validate.run(["lstsq"], ["Misra1a"], starts=[1], xtol=1e-4)
    (tight,) = validate.run(["lstsq"], ["Misra1a"], starts=[1])
    assert loose.nfev < tight.nfev and loose.lre < tight.lre


def test_summarize_counts_passes_means_and_totals():
    def row(solver, lre_params, lre_rss, nfev):
        return ValidationRow("X", 1, solver, lre_params, lre_rss, min(lre_params, lre_rss), nfev, 0.5, Status.XTOL)

    rows = [row("cg", 10.0, 3.0, 10), row("cg", 8.0, 11.0, 20), row("lstsq", 5.0, 11.0, 7)]
    cg, lstsq = validate.summarize(rows)
    assert (cg.solver, cg.runs, cg.passed, cg.passed_params, cg.total_nfev) == ("cg", 2, 1, 2, 30)
    assert cg.mean_lre == pytest.approx(5.5) and cg.mean_lre_params == pytest.approx(9.0)
    assert cg.seconds == pytest.approx(1.0)
    assert (lstsq.runs, lstsq.passed, lstsq.passed_params, lstsq.mean_lre) == (1, 0, 0, 5.0)
    table = validate.format_table(rows)
    assert table.splitlines()[2].split()[5] == "3.00<"  # a failed run is marked


def test_main_prints_the_table_and_the_summary(capsys):
    assert validate.main(["--problem", "Misra1a"]) == 0
    out = capsys.readouterr().out
    assert "xtol=1e-15" in out and "ftol=None" in out and "gtol=None" in out
    lines = [line.split() for line in out.splitlines()]
    runs = [line for line in lines if line[:1] == ["Misra1a"]]
    assert [(line[1], line[2]) for line in runs] == [("1", "cg"), ("1", "lstsq"), ("2", "cg"), ("2", "lstsq")]
    summary = {line[0]: line for line in lines if line[:1] in (["cg"], ["lstsq"])}
    assert summary["cg"][1] == summary["lstsq"][1] == "2/2"
    assert math.isclose(float(summary["lstsq"][3]), sum(float(line[5]) for line in runs[1::2]) / 2, abs_tol=0.006)


def test_main_solver_problem_and_tolerance(capsys):
    assert validate.main(["--solver", "lstsq", "--problem", "DanWood", "--problem", "BoxBOD", "--tol", "1e-10"]) == 0
    out = capsys.readouterr().out
    assert "xtol=1e-10" in out
    runs = [line.split() for line in out.splitlines() if line.startswith(("DanWood", "BoxBOD"))]
    assert [(line[0], line[2]) for line in runs] == [("DanWood", "lstsq")] * 2 + [("BoxBOD", "lstsq")] * 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--solver", "qr"], r"argument --solver: invalid choice: 'qr'"),
        (["--problem", "Nope"], r"--problem must be one of Misra1a, .*, Bennett5; got Nope"),
        (["--tol", "-1"], r"argument --tol: must be a finite non-negative number, got '-1'"),
        (["--tol", "tight"], r"argument --tol: must be a number, got 'tight'"),
        (["--max-nfev", "0"], r"argument --max-nfev: must be a positive integer, got '0'"),
        (["--threads", "two"], r"argument --threads: must be a positive integer, got 'two'"),
        (["--bogus"], r"unrecognized arguments: --bogus"),
    ],
)
def test_main_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit, match="^2$"):
        validate.main(argv)
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m trustls.validate")
    assert re.search(message, err), err


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"solvers": "cg"}, TypeError, r"solvers must be a sequence of solver names, not a str; got 'cg'"),
        ({"solvers": ["qr"]}, ValueError, r"solvers must be a non-empty sequence of \['cg', 'gltr', 'lstsq'\]; got \('qr',\)"),
        ({"solvers": []}, ValueError, r"solvers must be a non-empty sequence of \['cg', 'gltr', 'lstsq'\]; got \(\)"),
        ({"names": "Misra1a"}, TypeError, r"names must be a sequence of problem names, not a str; got 'Misra1a'"),
        ({"names": ["Misra1a", "nope"]}, ValueError, r"names must be among Misra1a, .*, Bennett5; got 'nope'"),
        ({"starts": [3]}, ValueError, r"starts must be a non-empty sequence of 1 and/or 2, got \(3,\)"),
        ({"xtol": -1.0}, ValueError, r"xtol must be a finite non-negative number or None, got -1.0"),
    ],
)
def test_run_argument_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        validate.run(**{"names": ["DanWood"], **kwargs})


def test_the_self_check_needs_neither_scipy_nor_matplotlib():
    code = "import sys, trustls.validate; print(sorted(m for m in ('scipy', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_docstring_examples():
    result = doctest.testmod(validate, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
