"""Peak memory of a few training steps, measured in this (fresh) process.

Method: build the network and the batch, record the resident set size (RSS),
run ``--steps`` optimizer steps, and report the peak RSS (``ru_maxrss``) minus
that baseline: what the steps added on top of parameters and data, Adam's
moment buffers and ``.grad`` included. Each optimizer must run in its own
process, since ``ru_maxrss`` never decreases; `benchmarks/training.py`
launches one per optimizer. glibc keeps freed blocks below its (adaptive)
mmap threshold in the heap, so peaks would depend on allocation history;
the launcher sets ``MALLOC_MMAP_THRESHOLD_=65536`` so that every tensor above
64 KiB is mapped and unmapped on its own and RSS follows live memory.

With ``--device cuda`` the network, the batch and the steps live on the GPU
and the peak is ``torch.cuda.max_memory_allocated()`` above the allocation
after setup: live tensors exactly, independent of the caching allocator.

``--memory-cap-gib`` limits the address space of the process to its size
after setup plus the cap (``RLIMIT_AS``), so that a method that builds J fails
with an allocation error instead of exhausting a shared machine; the result
then reports ``"out_of_memory": true``.

Run:  MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/_memory.py trustls --widths 784,1024,256,10 --batch 2560
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

# Measure the trustls of this checkout, not an installed one.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def rss_mib() -> float:
    """Current resident set size, from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def address_space_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def mlp(widths, generator):
    import torch

    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(torch.nn.Tanh())
    net = torch.nn.Sequential(*layers)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) / max(1, p.shape[-1]) ** 0.5)
    return net


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("optimizer", choices=["adam", "trustls", "torchzero", "none"])
    parser.add_argument("--widths", default="784,1024,256,10")
    parser.add_argument("--batch", type=int, default=2560)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--cg-iter", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-cap-gib", type=float, default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--x-scale", default=None, help="TrustRegion's x_scale for trustls: a number or 'jac' (default: None)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    widths = [int(w) for w in args.widths.split(",")]
    generator = torch.Generator().manual_seed(0)
    net = mlp(widths, generator).to(args.device)
    X = torch.randn(args.batch, widths[0], generator=generator).to(args.device)
    Y = torch.randn(args.batch, widths[-1], generator=generator).to(args.device)
    cuda = torch.device(args.device).type == "cuda"
    n = sum(p.numel() for p in net.parameters())

    if args.optimizer == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)

        def step():
            opt.zero_grad()
            loss = 0.5 * (net(X) - Y).square().sum()
            loss.backward()
            opt.step()
            return float(loss.detach())
    elif args.optimizer == "trustls":
        from trustls import GaussNewtonModel, SteihaugCG, TrustRegion
        from trustls.optim import TrustRegionOptimizer

        x_scale = args.x_scale if args.x_scale in (None, "jac") else float(args.x_scale)
        method = TrustRegion(
            GaussNewtonModel(), solver=SteihaugCG(max_iter=args.cg_iter), initial_radius=1.0, x_scale=x_scale
        )
        opt = TrustRegionOptimizer(net.parameters(), method)

        def step():
            return opt.step(lambda: (net(X) - Y).reshape(-1))
    elif args.optimizer == "torchzero":
        import torchzero as tz

        opt = tz.Optimizer(net.parameters(), tz.m.TrustCG(tz.m.GaussNewton(), maxiter=args.cg_iter))

        def step():
            residual = opt.step(lambda backward=True: (net(X) - Y).reshape(-1))
            return 0.5 * float(residual.detach().square().sum())
    else:

        def step():
            with torch.no_grad():
                return float(0.5 * (net(X) - Y).square().sum())

    if args.memory_cap_gib is not None:
        cap = address_space_bytes() + int(args.memory_cap_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / 2**20
    else:
        baseline = rss_mib()
    start = time.perf_counter()
    costs, out_of_memory = [], False
    try:
        for _ in range(args.steps):
            costs.append(step())
    except (RuntimeError, MemoryError) as error:
        if "alloc" not in str(error).lower() and not isinstance(error, MemoryError):
            raise
        out_of_memory = True
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / max(1, len(costs))
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib()
    result = {
        "out_of_memory": out_of_memory,
        "optimizer": args.optimizer,
        "widths": widths,
        "batch": args.batch,
        "parameters": n,
        "residuals": args.batch * widths[-1],
        "baseline_mib": round(baseline, 1),
        "device": args.device,
        "peak_over_baseline_mib": round(peak - baseline, 1),
        "seconds_per_step": seconds,
        "costs": costs,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
