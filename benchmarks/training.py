"""TrustRegionOptimizer on MLPs: product cost, peak memory and time per step against Adam.

Sections (all by default, or pick with ``--only``):

``products``
    MLP 784-512-512-10 (tanh), batch 256, float32, one process, interleaved
    repeats, medians. Units of one gradient evaluation (forward + backward
    of ½‖r‖²): the linearization a step builds (closure with graph, Jᵀr), the
    first Gauss-Newton product (which records the double-backward graph),
    a later product, and the cost per product amortized over a 10-product CG
    solve, (linearization + first + 9 products) / 10.
``step``
    Time per step on the same network and batch: Adam against
    ``TrustRegionOptimizer`` with ``SteihaugCG(max_iter=10)``, interleaved.
``memory``
    MLP 784-1024-256-10 (1.07M parameters), batches 640 / 2,560 / 10,240:
    peak memory of 3 steps above the post-setup baseline, one fresh process
    per optimizer and batch (`benchmarks/_memory.py` explains the method), with
    ``MALLOC_MMAP_THRESHOLD_=65536`` (RSS follows live memory) and with glibc's
    defaults (what a user sees without tuning the allocator).
``torchzero``
    torchzero's ``TrustCG(GaussNewton())``, which builds J (residuals ×
    parameters), on the same 1.07M-parameter MLP at growing batches, each in a
    fresh process whose address space is capped at its setup size plus
    ``--memory-cap-gib`` (default 4): where it runs, its peak memory and time
    per step beside TrustRegionOptimizer's; where J does not fit, "out of
    memory". Skipped when torchzero is not installed.

With ``--device cuda`` the products, step and memory sections run on the GPU;
memory then counts live tensors with ``torch.cuda.max_memory_allocated``.

``convergence``
    Time to a target training loss and the final test metric, per method,
    same data order and wall-time budget, medians over 3 seeds: Adam (best of
    a learning-rate grid), ``torch.optim.LBFGS`` and TrustRegionOptimizer, on
    the tasks of `benchmarks/_tasks.py` (digits, a 1.07M-parameter classifier
    on synthetic data, a full-batch scientific fit, a 100k-parameter
    regression network); protocol in `benchmarks/_race.py`. Writes
    ``docs/img/training_<task>.png`` (loss against wall time and against
    epochs) and ``benchmarks/out/convergence.json`` (not tracked). About 18 minutes on
    one thread.

Run:  python benchmarks/training.py [--only products,step,memory,torchzero,convergence] [--threads 1]
      [--device cuda] [--tasks digits,synthetic,fit,regression] [--seeds 0,1,2] [--cg-iter 50]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's trustls, not an installed one
sys.path.insert(0, str(HERE))
from _memory import mlp  # noqa: E402

from trustls import GaussNewtonModel, SteihaugCG, TrustRegion  # noqa: E402
from trustls._closure import parameter_products  # noqa: E402
from trustls.operators import JacobianOperator, NormalOperator  # noqa: E402
from trustls.optim import TrustRegionOptimizer  # noqa: E402


def timed(fn) -> float:
    # CUDA runs asynchronously: time from an idle device to an idle device.
    cuda = torch.cuda.is_initialized()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def setup(widths, batch, seed=0, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    net = mlp(widths, generator).to(device)
    X = torch.randn(batch, widths[0], generator=generator).to(device)
    Y = torch.randn(batch, widths[-1], generator=generator).to(device)
    return net, X, Y


def products(repeats: int, device: str) -> None:
    net, X, Y = setup((784, 512, 512, 10), 256, device=device)
    params = list(net.parameters())
    n = sum(p.numel() for p in params)
    v = torch.randn(n, generator=torch.Generator().manual_seed(1)).to(device)

    def gradient():
        r = (net(X) - Y).reshape(-1)
        torch.autograd.grad(0.5 * torch.dot(r, r), params)

    def linearize(eager):
        r = (net(X) - Y).reshape(-1)
        prods = parameter_products(r, params, eager=eager)
        prods.vjp(prods.residual)
        return NormalOperator(JacobianOperator(prods, n))

    modes = {"eager": True, "lazy": False}
    samples = {"gradient": []}
    for mode in modes:
        samples.update({f"{mode}:linearization": [], f"{mode}:first product": [], f"{mode}:product": []})
    for _ in range(repeats):
        samples["gradient"].append(timed(gradient))
        for mode, eager in modes.items():
            operator = None

            def build():
                nonlocal operator
                operator = linearize(eager)

            samples[f"{mode}:linearization"].append(timed(build))
            samples[f"{mode}:first product"].append(timed(lambda: operator.matvec(v)))
            samples[f"{mode}:product"].append(timed(lambda: operator.matvec(v)))
    grad = statistics.median(samples["gradient"])
    ratio = {key: statistics.median(values) / grad for key, values in samples.items()}
    print(f"\n## Product cost: MLP 784-512-512-10 (tanh), batch 256, n = {n:,}, float32, device {device}")
    print(f"one gradient evaluation = {1e3 * grad:.2f} ms (median of {repeats}); costs in gradient evaluations\n")
    print("| double-backward graph | linearization (closure + Jᵀr) | first product | product "
          "| per product over a 10-product CG solve |")
    print("|---|---:|---:|---:|---:|")
    for mode in modes:
        lin, first, product = (ratio[f"{mode}:{key}"] for key in ("linearization", "first product", "product"))
        label = "recorded with Jᵀr (eager, the optimizer's)" if modes[mode] else "recorded at the first product (lazy)"
        print(f"| {label} | {lin:.2f} | {first:.2f} | {product:.2f} | {(lin + first + 9 * product) / 10:.2f} |")


def steps(repeats: int, device: str) -> None:
    # A new batch every step, as in training: on one fixed batch the network
    # (n ≫ m) interpolates within a few steps, and later steps are degenerate.
    generator = torch.Generator().manual_seed(2)
    batches = [(torch.randn(256, 784, generator=generator).to(device),
                torch.randn(256, 10, generator=generator).to(device)) for _ in range(repeats)]
    configs = {"Adam": None, 'TrustRegionOptimizer, x_scale="jac" (default)': None, "TrustRegionOptimizer, x_scale=1": 1.0}
    step_functions, samples, iterations = {}, {name: [] for name in configs}, {name: [] for name in configs}
    for name, x_scale in configs.items():
        net, _, _ = setup((784, 512, 512, 10), 256, device=device)
        if name == "Adam":
            adam = torch.optim.Adam(net.parameters(), lr=1e-3)

            def adam_step(X, Y, net=net, adam=adam):
                adam.zero_grad()
                (0.5 * (net(X) - Y).square().sum()).backward()
                adam.step()

            step_functions[name] = adam_step
        else:
            method = TrustRegion(GaussNewtonModel(), solver=SteihaugCG(max_iter=10), x_scale=x_scale)
            opt = TrustRegionOptimizer(net.parameters(), method)

            def tr_step(X, Y, net=net, opt=opt, name=name):
                opt.step(lambda: (net(X) - Y).reshape(-1))
                iterations[name].append(opt.last.inner_iterations)

            step_functions[name] = tr_step
    for X, Y in batches:
        for name, step in step_functions.items():
            samples[name].append(timed(lambda: step(X, Y)))
    adam = statistics.median(samples["Adam"])
    print(f"\n## Time per step: MLP 784-512-512-10 (tanh), batch 256 (a new random batch each step), float32, "
          f"device {device}")
    print(f"\nSteihaugCG(max_iter=10); medians of {repeats} interleaved steps; Jacobi scaling re-estimates its column "
          "norms after accepted steps 0, 1, 2, 4, 8, …\n")
    print("| optimizer | ms per step | ratio to Adam | CG iterations (median) |")
    print("|---|---:|---:|---:|")
    for name, values in samples.items():
        cg = f"{statistics.median(iterations[name]):.0f}" if iterations[name] else "—"
        print(f"| {name} | {1e3 * statistics.median(values):.1f} | {statistics.median(values) / adam:.1f} | {cg} |")


def probe(optimizer, widths, batch, *, mmap: bool, threads: int, cap_gib: float | None = None, x_scale=None,
          device: str = "cpu") -> dict:
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if mmap:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    command = [sys.executable, str(HERE / "_memory.py"), optimizer, "--widths", ",".join(map(str, widths)),
               "--batch", str(batch), "--threads", str(threads), "--device", device]
    if cap_gib is not None:
        command += ["--memory-cap-gib", str(cap_gib)]
    if x_scale is not None:
        command += ["--x-scale", str(x_scale)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def memory(threads: int, device: str) -> None:
    widths = (784, 1024, 256, 10)
    print("\n## Peak memory of 3 steps above the post-setup baseline: MLP 784-1024-256-10 (1,068,810 parameters)")
    print(f"\nOne fresh process per cell; TrustRegionOptimizer with SteihaugCG(max_iter=10); device {device}.\n")
    print('| batch | residuals | allocator | Adam | TR, x_scale=1 | ratio | TR, x_scale="jac" (default) | ratio |'
          " Adam s/step | TR x_scale=1 s/step |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for batch in (640, 2560, 10240):
        # On CUDA the peak is torch.cuda.max_memory_allocated: glibc plays no part.
        for mmap in (True, False) if device == "cpu" else (True,):
            options = {"mmap": mmap, "threads": threads, "device": device}
            adam = probe("adam", widths, batch, **options)
            plain = probe("trustls", widths, batch, x_scale=1.0, **options)
            jac = probe("trustls", widths, batch, **options)
            a, t, j = (r["peak_over_baseline_mib"] for r in (adam, plain, jac))
            label = ("mmap ≥ 64 KiB" if mmap else "glibc default") if device == "cpu" else "CUDA live tensors"
            print(f"| {batch:,} | {batch * 10:,} | {label} | {a:.1f} MiB | {t:.1f} MiB | {t / a:.2f} | {j:.1f} MiB | "
                  f"{j / a:.2f} | {adam['seconds_per_step']:.3f} | {plain['seconds_per_step']:.3f} |", flush=True)


def torchzero(threads: int, cap_gib: float) -> None:
    if importlib.util.find_spec("torchzero") is None:
        print("\n## torchzero: not installed, skipped")
        return
    widths = (784, 1024, 256, 10)
    n = 1_068_810
    print(f"\n## Building J: torchzero TrustCG(GaussNewton()) on MLP 784-1024-256-10, address space capped at +{cap_gib:g} GiB")
    print("\n| batch | residuals | J (float32) | torchzero peak | torchzero s/step | TrustRegionOptimizer peak | TR s/step |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for batch in (16, 64, 256, 2560):
        m = 10 * batch
        tz = probe("torchzero", widths, batch, mmap=True, threads=threads, cap_gib=cap_gib)
        tr = probe("trustls", widths, batch, mmap=True, threads=threads, cap_gib=cap_gib)
        tz_peak = "out of memory" if tz["out_of_memory"] else f"{tz['peak_over_baseline_mib']:.0f} MiB"
        tz_time = "—" if tz["out_of_memory"] else f"{tz['seconds_per_step']:.2f}"
        print(f"| {batch:,} | {m:,} | {m * n * 4 / 1e9:.2f} GB | {tz_peak} | {tz_time} | "
              f"{tr['peak_over_baseline_mib']:.0f} MiB | {tr['seconds_per_step']:.2f} |", flush=True)


def convergence(tasks: str, seeds: str, cg_iterations: int) -> None:
    import _race
    import _tasks

    budgets = {"digits": 10.0, "synthetic": 30.0, "fit": 20.0, "regression": 20.0, "poisson": 20.0}
    seeds = [int(s) for s in seeds.split(",")]
    results = []
    for name in tasks.split(","):
        task = _tasks.TASKS[name](budgets[name])
        print(f"\n## {task.title}: {task.budget:g} s per run, seeds {seeds}", flush=True)
        result = _race.run_task(task, seeds, cg_iterations, log=lambda line: print(line, flush=True))
        rows, verdict = _race.summarize(result)
        result.update(rows=rows, verdict=verdict)
        results.append(result)
        print(f"\ntarget: the best Adam's median final training loss, {verdict['target']:.3e}\n")
        print(f"| method | seeds | final training loss | {task.metric} | epochs | time to target (s) |")
        print("|---|---:|---:|---:|---:|---:|")
        for row in rows:
            reached = f"{row['time_to_target']:.1f}" if math.isfinite(row["time_to_target"]) else "not reached"
            print(f"| {row['method']} | {row['seeds']} | {row['loss']:.3e} | {row['metric']:.4f} | "
                  f"{row['epochs']:.1f} | {reached} ({row['reached']}/{row['seeds']}) |")
        print(f"\ntrustls / best Adam: time to target {verdict['trustls_time']:.1f} s / {verdict['adam_time']:.1f} s, "
              f"final loss ratio (Adam / trustls) {verdict['loss_ratio']:.3g}", flush=True)
        _race.plot(result, HERE.parent / "docs" / "img" / f"training_{name}.png")
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "convergence.json").write_text(json.dumps(results, default=float))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="products,step,memory,torchzero,convergence")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-cap-gib", type=float, default=4.0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (products, step and memory sections)")
    parser.add_argument("--tasks", default="digits,synthetic,fit,regression", help="convergence tasks")
    parser.add_argument("--seeds", default="0,1,2", help="convergence seeds")
    parser.add_argument("--cg-iter", type=int, default=50, help="trustls' CG cap in the convergence section")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores")
    sections = args.only.split(",")
    if "products" in sections:
        products(args.repeats, args.device)
    if "step" in sections:
        steps(args.repeats, args.device)
    if "memory" in sections:
        memory(args.threads, args.device)
    if "torchzero" in sections:
        torchzero(args.threads, args.memory_cap_gib)
    if "convergence" in sections:
        convergence(args.tasks, args.seeds, args.cg_iter)


if __name__ == "__main__":
    main()
