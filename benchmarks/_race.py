"""Races of optimizers on the tasks of `_tasks`: same data order, same wall-time budget, off-clock evaluation.

Protocol (``benchmarks/training.py --only convergence``):

* methods: Adam over a grid of learning rates on the task's mini-batches,
  ``torch.optim.LBFGS`` (strong Wolfe line search, history 10, 5 iterations
  per call; full batch, or batches of 5,000 on the synthetic task), and
  `TrustRegionOptimizer` with the task's `GaussNewtonModel` loss and the
  same settings on every task: ``SteihaugCG(max_iter=CG)``, the whole
  training set as its batch when it has at most 2,048 samples (a full-batch
  solve, ``max_trials=None``), else batches of 2,048 with one trial each
  (``max_trials=1``);
* seeds: the seed fixes the network's initialization and the order of the
  mini-batches, the same for every method. The Adam grid runs on seed 0;
  its best learning rate (lowest final training loss) then runs on the
  other seeds as well;
* clock: only the optimizer steps are timed; every budget/40 seconds of
  clock (budget/20 on the synthetic task) the training loss and the test
  metric are measured off the clock;
* outcome per run: the final training loss, the final test metric, and the
  clock time at which the training loss first reached a target (the median
  final training loss of the best Adam).
"""

from __future__ import annotations

import math
import time

import torch

from trustls import GaussNewtonModel, SteihaugCG, TrustRegion, TrustRegionOptimizer

LBFGS_BATCH = 5_000
# trustls' batch: the whole training set up to this many samples (then with
# max_trials=None, a full-batch solve), else mini-batches of this size.
TRUSTLS_BATCH = 2_048


def adam(lr: float):
    def build(task, net):
        opt = torch.optim.Adam(net.parameters(), lr=lr)

        def step(A, B):
            opt.zero_grad(set_to_none=True)
            loss = task.scalar(net, A, B)
            loss.backward()
            opt.step()

        return step

    return build


def lbfgs(task, net):
    opt = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=5, history_size=10, line_search_fn="strong_wolfe")

    def step(A, B):
        def closure():
            opt.zero_grad(set_to_none=True)
            loss = task.scalar(net, A, B)
            loss.backward()
            return loss

        opt.step(closure)

    return step


def trustls(cg_iterations: int):
    def build(task, net):
        method = TrustRegion(GaussNewtonModel(loss=task.loss), solver=SteihaugCG(max_iter=cg_iterations))
        full_batch = batch_of(task, "trustls") >= task.size
        opt = TrustRegionOptimizer(net.parameters(), method, max_trials=None if full_batch else 1)

        def step(A, B):
            opt.step(lambda: task.closure(net, A, B))

        return step

    return build


def batch_of(task, method: str) -> int:
    if method == "L-BFGS":
        return task.size if task.batch is None else min(task.size, LBFGS_BATCH)
    if method == "trustls":
        return task.size if task.batch is None or task.size <= TRUSTLS_BATCH else TRUSTLS_BATCH
    return task.batch or task.size


def race(task, method: str, build, seed: int) -> dict:
    """One run: train until the clock passes the budget; the history of (time, epoch, loss, metric)."""
    net = task.network(seed)
    step = build(task, net)
    X, Y = task.data["X"], task.data["Y"]
    size, batch = task.size, batch_of(task, method)
    generator = torch.Generator().manual_seed(seed)
    history = {"time": [0.0], "epoch": [0.0], "loss": [task.train_loss(net)], "metric": [task.test_metric(net)]}
    clock, samples, next_evaluation = 0.0, 0, task.budget / task.evaluations
    while clock < task.budget:
        order = torch.randperm(size, generator=generator) if batch < size else torch.arange(size)
        for start in range(0, size - batch + 1, batch):
            index = order[start : start + batch]
            A, B = X[index], Y[index]
            begin = time.perf_counter()
            step(A, B)
            clock += time.perf_counter() - begin
            samples += batch
            if clock >= next_evaluation or clock >= task.budget:
                history["time"].append(clock)
                history["epoch"].append(samples / size)
                history["loss"].append(task.train_loss(net))
                history["metric"].append(task.test_metric(net))
                next_evaluation += task.budget / task.evaluations
                if not math.isfinite(history["loss"][-1]) or clock >= task.budget:
                    break
        if not math.isfinite(history["loss"][-1]):
            break
    history.update(method=method, seed=seed, batch=batch)
    return history


def time_to(history: dict, target: float) -> float:
    """The clock time at which the training loss first reached ``target`` (inf if never)."""
    return next((t for t, loss in zip(history["time"], history["loss"]) if loss <= target), math.inf)


def run_task(task, seeds: list[int], cg_iterations: int, log=print) -> dict:
    """Every method's runs on ``task``: the Adam grid on the first seed, then the best Adam, L-BFGS and trustls."""
    runs: dict[str, list[dict]] = {}
    for lr in task.adam_lrs:
        runs[f"Adam lr={lr:g}"] = [race(task, "Adam", adam(lr), seeds[0])]
        log(f"  {task.name} Adam lr={lr:g} seed {seeds[0]}: {runs[f'Adam lr={lr:g}'][0]['loss'][-1]:.3e}")
    best = min(task.adam_lrs, key=lambda lr: runs[f"Adam lr={lr:g}"][0]["loss"][-1])
    for seed in seeds[1:]:
        runs[f"Adam lr={best:g}"].append(race(task, "Adam", adam(best), seed))
    for name, build in (("L-BFGS", lbfgs), ("trustls", trustls(cg_iterations))):
        runs[name] = [race(task, name, build, seed) for seed in seeds]
        log(f"  {task.name} {name}: " + ", ".join(f"{h['loss'][-1]:.3e}" for h in runs[name]))
    return {"task": task.name, "title": task.title, "metric": task.metric, "budget": task.budget,
            "best_adam": f"Adam lr={best:g}", "runs": runs}


def summarize(result: dict) -> tuple[list[dict], dict]:
    """Per method: medians over seeds of the final loss, the test metric, the epochs and the time to the target."""
    import statistics

    runs, best = result["runs"], result["best_adam"]
    target = statistics.median(h["loss"][-1] for h in runs[best])
    rows = []
    for name, histories in runs.items():
        times = [time_to(h, target) for h in histories]
        rows.append({
            "method": name, "seeds": len(histories),
            "loss": statistics.median(h["loss"][-1] for h in histories),
            "metric": statistics.median(h["metric"][-1] for h in histories),
            "epochs": statistics.median(h["epoch"][-1] for h in histories),
            "time_to_target": statistics.median(times), "reached": sum(math.isfinite(t) for t in times),
        })
    trustls_row = next(r for r in rows if r["method"] == "trustls")
    adam_row = next(r for r in rows if r["method"] == best)
    verdict = {"target": target, "trustls_time": trustls_row["time_to_target"],
               "adam_time": adam_row["time_to_target"], "loss_ratio": adam_row["loss"] / trustls_row["loss"]}
    return rows, verdict


def plot(result: dict, path) -> None:
    """Training loss against clock time and against epochs, seed 0 of every method (all seeds faint)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_time, by_epoch) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    colors = {"L-BFGS": "tab:green", "trustls": "tab:red"}
    for index, (name, histories) in enumerate(result["runs"].items()):
        color = colors.get(name, plt.cm.Blues(0.45 + 0.25 * index))
        style = "-" if name in colors else "--"
        for k, h in enumerate(histories):
            label = name if k == 0 else None
            alpha = 1.0 if k == 0 else 0.35
            by_time.plot(h["time"], h["loss"], style, color=color, alpha=alpha, label=label)
            by_epoch.plot(h["epoch"], h["loss"], style, color=color, alpha=alpha)
    for axis, label in ((by_time, "training wall time (s)"), (by_epoch, "epochs")):
        axis.set_yscale("log")
        axis.set_xlabel(label)
        axis.set_ylabel("training loss")
        axis.grid(True, which="both", alpha=0.3)
    by_epoch.set_xscale("symlog", linthresh=1.0)
    by_epoch.set_xlim(left=0)
    by_time.legend(fontsize=8)
    figure.suptitle(result["title"], fontsize=10)
    figure.savefig(path, dpi=110)
    plt.close(figure)
