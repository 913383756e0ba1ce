"""Communication per CG iteration of data-parallel TrustRegionOptimizer, against the product it completes.

Each CG iteration of a data-parallel step makes one curvature product on each
rank's shard (J̃ₖᵀJ̃ₖv) and one all-reduce of its n values (`trustls.distributed`).
This script measures both on the MLP 784-1024-256-10 (n = 1,068,810, float32)
with ``--batch`` samples per rank, medians of ``--repeats``, and a whole
optimizer step (CG capped at 10) for reference.

Run:  torchrun --nproc-per-node 2 benchmarks/distributed.py [--batch 1280] [--repeats 15]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # measure this checkout's trustls
sys.path.insert(0, str(ROOT / "benchmarks"))
from _memory import mlp  # noqa: E402

from trustls import GaussNewtonModel, SteihaugCG, TrustRegion, TrustRegionOptimizer  # noqa: E402
from trustls._closure_model import ClosureContext, ClosureModel  # noqa: E402
from trustls.distributed import DataParallel  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1280, help="samples per rank")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=5))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    net = mlp((784, 1024, 256, 10), torch.Generator().manual_seed(0))
    params = list(net.parameters())
    n = sum(p.numel() for p in params)
    generator = torch.Generator().manual_seed(1 + rank)
    X = torch.randn(args.batch, 784, generator=generator)
    y = torch.randint(0, 10, (args.batch,), generator=generator)

    model = ClosureModel(GaussNewtonModel(loss="cross_entropy"))
    with torch.enable_grad():
        outputs = net(X)
    loss, products = model.linearize_outputs(outputs, y, params, torch.float32, lean=True)
    lin = model.assemble(torch.zeros(n), loss, products, ClosureContext(tuple(outputs.shape)), None)
    v = torch.randn(n, generator=torch.Generator().manual_seed(2))
    product = median_seconds(lambda: lin.operator.matvec(v), args.repeats)
    buffer = torch.randn(n)
    reduce = median_seconds(lambda: dist.all_reduce(buffer), args.repeats)

    method = TrustRegion(GaussNewtonModel(loss="cross_entropy"), solver=SteihaugCG(max_iter=10), x_scale=1.0)
    opt = TrustRegionOptimizer(net.parameters(), method, data_parallel=DataParallel())
    opt.step(lambda: (net(X), y))  # first step: the one-time checks
    step = median_seconds(lambda: opt.step(lambda: (net(X), y)), max(3, args.repeats // 3))
    if rank == 0:
        print(f"torch {torch.__version__}, gloo, {world} ranks on one machine, 1 thread each; MLP 784-1024-256-10, "
              f"n = {n:,}, float32, {args.batch} samples per rank")
        print("\n| per CG iteration | ms | ratio to the product |")
        print("|---|---:|---:|")
        print(f"| curvature product on one rank's shard | {1e3 * product:.1f} | 1.00 |")
        print(f"| all-reduce of the n-vector ({4 * n / 2**20:.1f} MiB) | {1e3 * reduce:.1f} | {reduce / product:.2f} |")
        print(f"\nwhole step (x_scale=1, 10 CG iterations): {1e3 * step:.0f} ms")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
