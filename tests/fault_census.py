"""Tally the contract violations of a fault test over many examples, without stopping at the first.

pytest stops a hypothesis test at its first failing example; while many faults stand, this
driver shows all of them. It runs the body of one fault test over ``N`` derandomized
examples, groups the failures by message (numbers blanked) and prints counts, one example
each, the pass rates by fault, dtype and solver, and the slowest examples::

    OMP_NUM_THREADS=1 python tests/fault_census.py solve 600
    OMP_NUM_THREADS=1 python tests/fault_census.py resume 300
    OMP_NUM_THREADS=1 python tests/fault_census.py optim 300 --no-nfev

``--no-nfev`` switches off the nfev accounting of the contract, to see what else fails.
Run it from the repository root (it imports ``trustls`` from there).
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import re
import sys
import time
import warnings

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import fault_contract  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

TESTS = {
    "solve": ("test_faults", "test_solve_keeps_the_contract", "SOLVE_STRATEGIES"),
    "resume": ("test_faults", "test_an_exception_from_fun_leaves_a_resumable_state", "RESUME_STRATEGIES"),
    "optim": ("test_faults_optim", "test_optimizer_keeps_the_contract", "STRATEGIES"),
}


def key(message: str) -> str:
    """The violations of a message, numbers blanked, as one sorted line."""
    lines = set()
    for line in message.splitlines():
        if line.startswith(("Failing test case", "You can reproduce")):
            break
        line = re.sub(r"; a refusal is .*", "", line)
        line = re.sub(r"-?\d+(\.\d+)?(e[-+]?\d+)?", "#", line)
        lines.add(line[:230])
    return " | ".join(sorted(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("test", choices=sorted(TESTS))
    parser.add_argument("examples", type=int)
    parser.add_argument("--no-nfev", action="store_true", help="leave nfev = calls ≤ max_nfev out of the contract")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.no_nfev:
        violations = fault_contract.result_violations
        fault_contract.result_violations = lambda *a, **k: violations(*a, **{**k, "calls": None})
    module_name, test_name, strategies_name = TESTS[args.test]
    module = __import__(module_name)
    body, strategies = getattr(module, test_name).hypothesis.inner_test, getattr(module, strategies_name)

    tally, example, by_tag, times = collections.Counter(), {}, collections.defaultdict(lambda: [0, 0]), []

    def run(**kw):
        tag = (getattr(kw.get("fault"), "kind", "-"), str(kw.get("dtype")).replace("torch.", ""),
               str(kw.get("solver", kw.get("max_trials", "-"))))  # fmt: skip
        began = time.perf_counter()
        try:
            body(**kw)
            outcome = "PASS"
        except AssertionError as error:
            outcome = key(str(error))
        except Exception as error:  # noqa: BLE001 (a crash of the test itself is tallied too)
            outcome = f"UNCAUGHT {type(error).__name__}: {str(error)[:120]}"
        times.append((time.perf_counter() - began, kw, outcome == "PASS"))
        tally[outcome] += 1
        example.setdefault(outcome, kw)
        by_tag[tag][outcome != "PASS"] += 1

    options = settings(derandomize=True, database=None, deadline=None, max_examples=args.examples,
                       phases=[Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
    given(**strategies)(options(run))()
    passing = [t for t, _, passed in times if passed]
    print(f"{args.test}: {len(times)} examples, {sum(t for t, _, _ in times):.1f} s; the {len(passing)} passing ones "
          f"{sum(passing):.1f} s (median {sorted(passing)[len(passing) // 2] if passing else 0:.3f} s)")
    for outcome, count in tally.most_common():
        print(f"{count:5d}  {outcome}")
        if outcome != "PASS":
            print(f"       e.g. {example[outcome]}")
    for axis, name in enumerate(["fault", "dtype", "solver or max_trials"]):
        totals = collections.defaultdict(lambda: [0, 0])
        for tag, (passed, failed) in by_tag.items():
            totals[tag[axis]][0] += passed
            totals[tag[axis]][1] += failed
        print(f"by {name}: " + ", ".join(f"{k} {p}/{p + f} pass" for k, (p, f) in sorted(totals.items())))
    for seconds, kw, _ in sorted(times, key=lambda item: -item[0])[:5]:
        print(f"slow {seconds:.2f} s {kw}")


if __name__ == "__main__":
    main()
