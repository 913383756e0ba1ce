"""Cost of one Gauss-Newton product JᵀJv for each way of computing it.

For each method of `trustls.operators.PRODUCT_METHODS` this measures the
linearization (what is built once per outer iteration) and one product, and
prints both in units of one gradient evaluation (forward + backward of
½‖r‖²), plus the cost per product amortized over a 10-product CG solve:
(linearization + 10 products) / 10. Medians over interleaved repeats, one
process.

Run:  python benchmarks/products.py [--repeats 15] [--threads 1] [--clock cpu]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from trustls.operators import PRODUCT_METHODS, JacobianOperator, NormalOperator, jacobian_products  # noqa: E402
from trustls.problems import bal  # noqa: E402

CLOCK = time.perf_counter  # --clock cpu: time.process_time, robust on a shared machine


def mlp_problem(widths=(784, 512, 512, 10), batch=256):
    generator = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential()
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        net.append(torch.nn.Linear(a, b))
        if i < len(widths) - 2:
            net.append(torch.nn.Tanh())
    X = torch.randn(batch, widths[0], generator=generator)
    Y = torch.randn(batch, widths[-1], generator=generator)
    names = [name for name, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    sizes = [p.numel() for p in net.parameters()]

    def residual(x):
        params = {name: chunk.view(shape) for name, chunk, shape in zip(names, torch.split(x, sizes), shapes)}
        return (torch.func.functional_call(net, params, (X,)) - Y).reshape(-1)

    x = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    return f"MLP {'-'.join(map(str, widths))}, batch {batch}", residual, x


def bal_problem():
    problem = bal.load_bal()
    return "BAL problem-49-7776", problem.residual, problem.x0


def measure(label, residual, x, repeats):
    def gradient():
        z = x.detach().requires_grad_()
        r = residual(z)
        return torch.autograd.grad(0.5 * torch.dot(r, r), z)[0]

    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    operators = {m: NormalOperator(JacobianOperator(jacobian_products(residual, x, m), x.numel())) for m in PRODUCT_METHODS}
    for op in operators.values():
        op.matvec(v)  # build lazily recorded graphs before timing products
    samples = {key: [] for key in ["gradient", *(f"{m}:product" for m in PRODUCT_METHODS),
                                   *(f"{m}:linearize" for m in PRODUCT_METHODS)]}

    def timed(fn):
        start = CLOCK()
        fn()
        return CLOCK() - start

    for _ in range(repeats):
        samples["gradient"].append(timed(gradient))
        for method, op in operators.items():
            samples[f"{method}:product"].append(timed(lambda: op.matvec(v)))
            samples[f"{method}:linearize"].append(
                timed(lambda: NormalOperator(JacobianOperator(jacobian_products(residual, x, method), x.numel())).matvec(v))
            )
    grad = statistics.median(samples["gradient"])
    print(f"\n{label}: n = {x.numel():,}, one gradient evaluation = {1e3 * grad:.2f} ms")
    print("| method | linearization + first product (gradients) | product (gradients) | per product over a 10-product CG solve (gradients) |")
    print("|---|---:|---:|---:|")
    for method in PRODUCT_METHODS:
        product = statistics.median(samples[f"{method}:product"]) / grad
        setup = statistics.median(samples[f"{method}:linearize"]) / grad - product
        print(f"| {method} | {setup + product:.2f} | {product:.2f} | {(setup + 10 * product) / 10:.2f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s)")
    for label, residual, x in (mlp_problem(), bal_problem()):
        measure(label, residual, x, args.repeats)


if __name__ == "__main__":
    main()
