"""What a loss adds to a Gauss-Newton product on a network: J̃ᵀJ̃v = Jᵀ(Sᵀ(S(Jv))) against JᵀJv.

An MLP 784-256-10 (tanh) at batch 256 on random data, matrix-free products
(``"vjp+double-backward"``, the default). For each loss: the time of one
curvature product, and of ``loss.linearize`` (value, ∇L, S), both as ratios
to the least-squares product JᵀJv measured in the same run. Medians of
interleaved repeats. Run from the repository root::

    OMP_NUM_THREADS=1 python benchmarks/loss_overhead.py
"""

from __future__ import annotations

import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from trustls.losses import BinaryCrossEntropyWithLogits, Cauchy, CrossEntropy, SquaredError  # noqa: E402
from trustls.operators import JacobianOperator, NormalOperator, effective_jacobian, jacobian_products  # noqa: E402

BATCH, SIZES = 256, (784, 256, 10)
REPEATS = 60


def main() -> None:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(BATCH, SIZES[0], generator=generator)
    labels = torch.randint(0, SIZES[-1], (BATCH,), generator=generator)
    shapes = [(w_out, w_in) for w_in, w_out in zip(SIZES, SIZES[1:])]
    n = sum(o * i + o for o, i in shapes)
    x = 0.05 * torch.randn(n, generator=generator)

    def net(x):
        h, offset = inputs, 0
        for layer, (w_out, w_in) in enumerate(shapes):
            W = x[offset : offset + w_out * w_in].view(w_out, w_in)
            offset += w_out * w_in
            h = h @ W.T + x[offset : offset + w_out]
            offset += w_out
            if layer < len(shapes) - 1:
                h = torch.tanh(h)
        return h.reshape(-1)

    products = jacobian_products(net, x)
    outputs = products.residual.view(BATCH, SIZES[-1])
    J = JacobianOperator(products, n)
    cases = {
        "squared error (S = I)": (SquaredError(), None),
        "cross-entropy (softmax S)": (CrossEntropy(), labels),
        "bce with logits (diagonal S)": (
            BinaryCrossEntropyWithLogits(), torch.rand(BATCH, SIZES[-1], generator=generator)
        ),
        "cauchy (diagonal S)": (Cauchy(f_scale=0.5), None),
    }
    operators = {name: NormalOperator(effective_jacobian(J, loss.linearize(outputs, t).factor))
                 for name, (loss, t) in cases.items()}
    v = torch.randn(n, generator=generator)
    for B in operators.values():  # warm up (records the double-backward graph)
        B @ v
    product_times = {name: [] for name in cases}
    linearize_times = {name: [] for name in cases}
    for _ in range(REPEATS):
        for name, (loss, t) in cases.items():
            start = time.perf_counter()
            operators[name] @ v
            product_times[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            loss.linearize(outputs, t)
            linearize_times[name].append(time.perf_counter() - start)
    base = statistics.median(product_times["squared error (S = I)"])
    print(f"MLP {'-'.join(map(str, SIZES))}, batch {BATCH}, n = {n}; JᵀJv median {base * 1e3:.2f} ms")
    print(f"{'loss':<30} {'product / JᵀJv':>15} {'linearize / JᵀJv':>17}")
    for name in cases:
        print(f"{name:<30} {statistics.median(product_times[name]) / base:>15.3f} "
              f"{statistics.median(linearize_times[name]) / base:>17.3f}")


if __name__ == "__main__":
    main()
