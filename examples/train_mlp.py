"""Train an MLP on scikit-learn's digits with Adam and with TrustRegionOptimizer.

The data set (1,797 8×8 images of handwritten digits, 10 classes) ships with
scikit-learn, so the example runs offline. The network 64-128-128-10 (tanh)
is trained by cross-entropy: Adam minimizes ``F.cross_entropy(net(X), y)``,
and `TrustRegionOptimizer` the same mean cross-entropy through the
generalized Gauss-Newton model, ``GaussNewtonModel(loss="cross_entropy")``,
its closure returning ``(net(X), y)``.

Every method gets the same wall-clock budget and the same data order: Adam
with a small learning-rate grid on mini-batches of 64, and
`TrustRegionOptimizer` with ``SteihaugCG(max_iter=50)`` on batches of
``--tr-batch`` samples (default: the whole training set, 1,437, with
``max_trials=None``: a full-batch trust-region solve; see docs/training.md).
After each epoch the full training loss and the test accuracy are evaluated
(off the clock). The script prints a summary table and writes a PNG with the
training loss against wall time and against epoch.

Run:  python examples/train_mlp.py [--budget 15] [--tr-batch 1437] [--out train_mlp.png]
Needs the ``examples`` extra: ``pip install trustls[examples]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from tqdm import tqdm  # noqa: E402

from trustls import GaussNewtonModel, SteihaugCG, TrustRegion  # noqa: E402
from trustls.optim import TrustRegionOptimizer  # noqa: E402


def load(seed: int = 0):
    digits = load_digits()
    X = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))
    train, test = order[:1437], order[1437:]
    return X[train], y[train], X[test], y[test]


def network(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 128), torch.nn.Tanh(), torch.nn.Linear(128, 10)
    )


def train(name, make_step, net, data, budget, batch, progress):
    X, y, X_test, y_test = data
    history = {"time": [0.0], "epoch": [0], "cost": [], "accuracy": []}
    stats = []

    def evaluate():
        with torch.no_grad():
            history["cost"].append(float(torch.nn.functional.cross_entropy(net(X), y)))
            history["accuracy"].append(float((net(X_test).argmax(1) == y_test).float().mean()))

    evaluate()
    clock, epoch = 0.0, 0
    bar = tqdm(total=budget, desc=f"{name:<28}", unit="s", bar_format="{l_bar}{bar}| {n:.1f}/{total:.0f} s {postfix}",
               disable=not progress)
    while clock < budget:
        order = torch.randperm(len(X), generator=torch.Generator().manual_seed(epoch))
        start = time.perf_counter()
        for i in range(0, len(X), batch):
            index = order[i : i + batch]
            info = make_step(X[index], y[index])
            if info is not None:
                stats.append(info)
        elapsed = time.perf_counter() - start
        clock += elapsed
        epoch += 1
        history["time"].append(clock)
        history["epoch"].append(epoch)
        evaluate()
        bar.update(min(elapsed, budget - bar.n))
        bar.set_postfix_str(f"epoch {epoch}, cost {history['cost'][-1]:.4f}")
    bar.close()
    history["stats"] = stats
    return history


def adam(lr):
    def build(net):
        opt = torch.optim.Adam(net.parameters(), lr=lr)

        def step(xb, yb):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xb), yb).backward()
            opt.step()

        return step

    return build


def trust_region(x_scale, full_batch):
    def build(net):
        method = TrustRegion(GaussNewtonModel(loss="cross_entropy"), solver=SteihaugCG(max_iter=50), x_scale=x_scale)
        opt = TrustRegionOptimizer(net.parameters(), method, max_trials=None if full_batch else 1)

        def step(xb, yb):
            opt.step(lambda: (net(xb), yb))
            return opt.last

        return step

    return build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=15.0, help="training seconds per method")
    parser.add_argument("--batch", type=int, default=64, help="Adam's batch")
    parser.add_argument("--tr-batch", type=int, default=1437, help="the trust region's batch (1437: full batch)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="train_mlp.png")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load()
    methods = {f"Adam lr={lr:g}": adam(lr) for lr in (1e-3, 3e-3, 1e-2, 3e-2)}
    full = args.tr_batch >= len(data[0])
    methods["TrustRegion CG(50)"] = trust_region(None, full)  # Jacobi scaling, the default with CG
    methods["TrustRegion CG(50), x_scale=1"] = trust_region(1.0, full)
    results = {}
    for name, build in methods.items():
        net = network()
        batch = args.tr_batch if name.startswith("Trust") else args.batch
        results[name] = train(name, build(net), net, data, args.budget, batch, not args.no_progress)

    print(f"\n{args.budget:g} s of training per method, batches of {args.batch} (Adam) and {args.tr_batch} "
          f"(trust region), {args.threads} thread(s)\n")
    print("| method | epochs | final train loss | best train loss | test accuracy | epochs to loss < 0.02 |"
          " CG iterations | accepted |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, h in results.items():
        reach = next((e for e, c in zip(h["epoch"], h["cost"]) if c < 0.02), None)
        stats = h["stats"]
        cg = f"{statistics.mean(s.inner_iterations for s in stats):.1f}" if stats else "—"
        accepted = f"{sum(s.accepted for s in stats) / len(stats):.0%}" if stats else "—"
        print(f"| {name} | {h['epoch'][-1]} | {h['cost'][-1]:.2e} | {min(h['cost']):.2e} | {h['accuracy'][-1]:.3f} | "
              f"{reach if reach is not None else '—'} | {cg} | {accepted} |")

    figure, (by_time, by_epoch) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for name, h in results.items():
        style = "-" if name.startswith("Trust") else "--"
        by_time.plot(h["time"], h["cost"], style, label=name)
        by_epoch.plot(h["epoch"], h["cost"], style, label=name)
    for axis, label in ((by_time, "wall time of training (s)"), (by_epoch, "epoch")):
        axis.set_yscale("log")
        axis.set_xlabel(label)
        axis.set_ylabel("training loss (cross-entropy)")
        axis.grid(True, which="both", alpha=0.3)
    by_epoch.set_xscale("log")
    by_time.legend(fontsize=8)
    figure.suptitle("MLP 64-128-128-10 on scikit-learn digits")
    figure.savefig(args.out, dpi=120)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
