"""Micro-benchmarks behind the per-operation figures in the docs, in one run.

Sections:

``bal-jacobian``
    The 31,843 BAL Jacobian blocks (2x12 each) in closed form
    (`trustls.problems.bal.projection_jacobian`) against two batched autograd
    VJPs of the projection, the method it replaced.
``sparse-product``
    One product J v with the tridiagonal J of Broyden tridiagonal
    (n = 10⁵) as a CSR tensor with int32 indices (what `SparseOperator`
    builds) against int64 indices.
``cg``
    One Steihaug-CG iteration on Broyden tridiagonal's Jacobi-scaled sparse
    linearization (n = 10⁴ and 10⁵): the default (no stored path for a stored
    matrix) against the stored path kept (``path_memory=2**22``), and the two
    sparse products alone.

``dense-jacobian``
    One dense Jacobian of small styled problems (`trustls.problems.styled`),
    the evaluation included: ``torch.func.jacfwd`` and ``jacrev`` against
    each route of `trustls.models.dense_jacobian` and the route its shape rule takes.

``backward``
    One backward pass through a kept graph of small styled problems, single
    and vmapped over the rows of the identity (all of J): through
    ``torch.autograd.grad`` and ``torch.func.vmap`` against the direct calls
    of `trustls.operators.backward`.

``small-products``
    The Gauss-Newton product JᵀJ v on small styled problems, per product
    method of `trustls.operators.implicit`: the linearization with its first
    product, and one more product.

``bal-setup``
    What ``least_squares(fun, x0, jac_sparsity=P)`` spends on BAL
    problem-49 before its first step completes (a callback stops it there):
    the whole, and the one-time structures alone (the coloring, the column
    blocks, the colored J's sparse structure, the Schur structure).

Medians of interleaved repeats. Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/micro.py [--only bal-jacobian,sparse-product,cg,dense-jacobian,backward,small-products,bal-setup]
        [--clock cpu]   (process CPU time: robust on a machine shared with other jobs)
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from trustls import GaussNewtonModel, SteihaugCG  # noqa: E402
from trustls.models.dense_jacobian import ROUTES, DenseJacobian  # noqa: E402
from trustls.operators import JacobianOperator, NormalOperator, ResidualGraph, SparseOperator, jacobian_products  # noqa: E402
from trustls.problems import bal, styled  # noqa: E402
from trustls.problems.structured import broyden_tridiagonal  # noqa: E402
from trustls.scaling import resolve_x_scale  # noqa: E402


CLOCK = time.perf_counter  # --clock cpu: time.process_time


def medians(functions: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, the functions interleaved."""
    for f in functions.values():
        f()
    samples = {name: [] for name in functions}
    for _ in range(repeats):
        for name, f in functions.items():
            start = CLOCK()
            f()
            samples[name].append(CLOCK() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def bal_jacobian(repeats: int) -> None:
    problem = bal.load_bal()
    cameras, points = problem._gathered(problem.x0)
    q = torch.cat((cameras, points), dim=1)

    def autograd():
        _, pullback = torch.func.vjp(lambda q: bal._project(q[:, :9], q[:, 9:]), q)
        selectors = torch.eye(2, dtype=q.dtype).unsqueeze(1).expand(2, q.shape[0], 2)
        return torch.func.vmap(pullback)(selectors)[0]

    t = medians({"closed form": lambda: bal.projection_jacobian(cameras, points), "autograd": autograd}, repeats)
    print(f"\n## BAL Jacobian blocks ({problem.n_observations:,} observations)\n")
    print(f"closed form {1e3 * t['closed form']:.1f} ms, two batched autograd VJPs {1e3 * t['autograd']:.1f} ms "
          f"(ratio {t['autograd'] / t['closed form']:.1f})")


def sparse_product(repeats: int) -> None:
    n = 10**5
    problem = broyden_tridiagonal(n)
    rows, cols, values = problem.jacobian_coo(problem.x0)
    J = SparseOperator(rows, cols, values, (n, n)).matrix
    wide = torch.sparse_csr_tensor(J.crow_indices().long(), J.col_indices().long(), J.values(), (n, n),
                                   check_invariants=True)
    v = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = medians({"int32": lambda: J @ v, "int64": lambda: wide @ v}, repeats)
    print(f"\n## One CSR product J v, Broyden tridiagonal n = {n:,}\n")
    print(f"int32 indices {1e3 * t['int32']:.3f} ms, int64 indices {1e3 * t['int64']:.3f} ms")


def cg(repeats: int) -> None:
    print("\n## One Steihaug-CG iteration, Broyden tridiagonal, Jacobi-scaled sparse J\n")
    print("| n | default (no path) | path kept | two sparse products |")
    print("|---:|---:|---:|---:|")
    for n in (10**4, 10**5):
        problem = broyden_tridiagonal(n)

        def jacobian(x, problem=problem, n=n):
            return SparseOperator(*problem.jacobian_coo(x), (n, n))

        model = GaussNewtonModel(jacobian=jacobian)
        x = 0.5 * problem.x0
        lin = model.linearize(problem.residual, x)
        scaled = resolve_x_scale("jac").scaling(model, lin, None, 0).transform(lin)
        solvers = {"default": SteihaugCG(forcing=1e-9, max_iter=40),
                   "path": SteihaugCG(forcing=1e-9, max_iter=40, path_memory=2**22)}
        iterations = solvers["default"].solve(solvers["default"].prepare(scaled, None), 1e9).iterations
        calls = {name: (lambda s=s: s.solve(s.prepare(scaled, None), 1e9)) for name, s in solvers.items()}
        calls["products"] = lambda: scaled.operator.matvec(scaled.gradient)
        t = medians(calls, repeats)
        print(f"| {n:,} | {1e6 * t['default'] / iterations:.0f} µs | {1e6 * t['path'] / iterations:.0f} µs | "
              f"{1e6 * t['products']:.0f} µs |")


def dense_jacobian(repeats: int) -> None:
    print("\n## One dense Jacobian, the evaluation included (ms)\n")
    print("| problem | m | n | one evaluation | jacfwd | jacrev | " + " | ".join(ROUTES) + " | chosen |")
    print("|---|---:|---:|---:|---:|---:|" + "---:|" * (len(ROUTES) + 1))
    names = ("rosenbrock_stack", "chebyquad_trig", "bard_loop", "osborne_2_loop", "exponential_decay",
             "gaussian_peaks", "logistic_loop")
    for name in names:
        problem = styled.get(name)
        fun, x = problem.residual, problem.x0
        chooser = DenseJacobian()  # the route by the shape, as in a solve
        calls = {"evaluation": lambda: fun(x), "jacfwd": lambda: torch.func.jacfwd(fun)(x),
                 "jacrev": lambda: torch.func.jacrev(fun)(x)}
        try:
            torch.func.jacfwd(fun)(x)
        except RuntimeError:  # random numbers drawn inside fun: vmap of fun refuses them
            del calls["jacfwd"]
        for route in ROUTES:
            calls[route] = lambda route=route: DenseJacobian(route)(fun, x)
        calls["chosen"] = lambda: chooser(fun, x)
        t = medians(calls, repeats)
        cells = [f"{1e3 * t[key]:.3f}" if key in t else "raises" for key in ("evaluation", "jacfwd", "jacrev")]
        cells += [f"{1e3 * t[route]:.3f}" for route in ROUTES]
        chosen = chooser(fun, x).route
        cells.append(f"{1e3 * t['chosen']:.3f} ({chosen})")
        print(f"| {name} | {problem.m} | {problem.n} | " + " | ".join(cells) + " |")


def backward(repeats: int) -> None:
    from trustls.operators.backward import _direct, _direct_batched

    def public(outputs, inputs, cotangent):
        return torch.autograd.grad(outputs, inputs, cotangent, retain_graph=True, materialize_grads=True)[0]

    print("\n## One backward pass through a kept graph (µs): public functions / direct calls\n")
    print("| problem | m | n | single | public / direct | vmapped over m rows | public / direct |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in ("exponential_decay", "gaussian_peaks", "chebyquad_trig", "osborne_2_loop", "bard_loop"):
        problem = styled.get(name)
        graph = ResidualGraph.evaluate(problem.residual, problem.x0)
        r, x = graph.residual, graph.x
        eye = torch.eye(r.shape[0], dtype=r.dtype)
        t = medians({
            "public": lambda: public(r, x, eye[0]), "direct": lambda: _direct(r, x, eye[0]),
            "public vmap": lambda: torch.func.vmap(lambda u: public(r, x, u))(eye),
            "direct vmap": lambda: _direct_batched(r, x, eye),
        }, repeats)  # fmt: skip
        print(f"| {name} | {problem.m} | {problem.n} | {1e6 * t['public']:.0f} / {1e6 * t['direct']:.0f} | "
              f"{t['public'] / t['direct']:.2f} | {1e6 * t['public vmap']:.0f} / {1e6 * t['direct vmap']:.0f} | "
              f"{t['public vmap'] / t['direct vmap']:.2f} |")


def small_products(repeats: int) -> None:
    methods = ("autograd", "vjp+double-backward")
    print("\n## Gauss-Newton products on small problems (ms): linearization + first product / one product\n")
    print("| problem | m | n | " + " | ".join(methods) + " |")
    print("|---|---:|---:|" + "---:|" * len(methods))
    for name in ("rosenbrock_stack", "chebyquad_trig", "osborne_2_loop", "exponential_decay", "gaussian_peaks"):
        problem = styled.get(name)
        fun, x = problem.residual, problem.x0
        v = torch.ones_like(x)
        calls = {}
        for method in methods:
            operator = NormalOperator(JacobianOperator(jacobian_products(fun, x, method), x.numel()))
            operator.matvec(v)
            calls[f"{method}:first"] = (
                lambda m=method: NormalOperator(JacobianOperator(jacobian_products(fun, x, m), x.numel())).matvec(v)
            )
            calls[f"{method}:product"] = lambda op=operator: op.matvec(v)
        t = medians(calls, repeats)
        cells = [f"{1e3 * t[f'{m}:first']:.3f} / {1e3 * t[f'{m}:product']:.3f}" for m in methods]
        print(f"| {name} | {problem.m} | {problem.n} | " + " | ".join(cells) + " |")


def bal_setup(repeats: int) -> None:
    from trustls import least_squares
    from trustls.sparsity import ColoredJacobian, pattern_blocks
    from trustls.sparsity.pattern import jacobian_pattern
    from trustls.subproblem.schur_structure import schur_blocks

    problem = bal.load_bal()
    pattern = problem.jacobian_sparsity()

    def first_step():
        def stop(result):
            raise StopIteration

        least_squares(problem.residual, problem.x0, jac_sparsity=problem.jacobian_sparsity(), ftol=1e-4, callback=stop)

    normalized = jacobian_pattern(pattern)
    values = torch.ones(normalized.nnz, dtype=torch.float64)
    partition = pattern_blocks(jacobian_pattern(pattern))

    def structure():
        fresh = jacobian_pattern(pattern)
        SparseOperator(fresh.rows, fresh.cols, values, fresh.shape, column_order=fresh.column_order)

    t = medians({
        "to the first step": first_step,
        "coloring": lambda: ColoredJacobian(pattern),
        "blocks": lambda: pattern_blocks(jacobian_pattern(pattern)),
        "J's sparse structure": structure,
        "Schur structure": lambda: schur_blocks(SparseOperator(normalized.rows, normalized.cols, values,
                                                               normalized.shape), partition),
    }, repeats)
    print("\n## least_squares(fun, x0, jac_sparsity=P) on BAL problem-49, up to its first step\n")
    print(" | ".join(f"{name} {1e3 * seconds:.0f} ms" for name, seconds in t.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="bal-jacobian,sparse-product,cg,dense-jacobian,backward,small-products,bal-setup")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {args.clock} clock")
    sections = args.only.split(",")
    if "bal-jacobian" in sections:
        bal_jacobian(args.repeats)
    if "sparse-product" in sections:
        sparse_product(args.repeats)
    if "cg" in sections:
        cg(args.repeats)
    if "dense-jacobian" in sections:
        dense_jacobian(args.repeats)
    if "backward" in sections:
        backward(args.repeats)
    if "small-products" in sections:
        small_products(args.repeats)
    if "bal-setup" in sections:
        bal_setup(min(args.repeats, 5))


if __name__ == "__main__":
    main()
