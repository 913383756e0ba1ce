"""The four training tasks of ``benchmarks/training.py --only convergence``.

Each task gives its data (made once, offline), a network per seed, how a
batch's objective is written for Adam and L-BFGS (a scalar loss) and for
trustls (the closure's return value), and how the training loss and the test
metric are measured (off the clock):

``digits``
    scikit-learn's ``load_digits`` (1,437 training and 360 test images),
    MLP 64-128-128-10 (tanh), cross-entropy, batches of 64, float32.
``synthetic``
    ``make_classification`` with 784 features (60 informative), 10 classes,
    50,000 samples (45,000 train, 5,000 test), MLP 784-1024-256-10 (tanh,
    1.07M parameters), cross-entropy, batches of 256, float32. The training
    loss is measured on a fixed 2,000-sample subset of the training set, 20
    times per run (the others: 40).
``fit``
    a full-batch scientific fit: a tanh MLP 1-32-32-1 (1,153 parameters) to
    y = sin(4πx)·exp(−x) + x/2 on 256 points of [0, 1], least squares
    (½ mean squared error), float64; the test set is 1,000 points between.
``regression``
    ``make_friedman1`` without noise (10 features, 5,000 training and 1,000
    test samples, standardized target), MLP 10-256-256-128-1 (tanh, 101,633
    parameters), least squares (½ mean squared error), batches of 256,
    float32.
``poisson`` (not in the default set)
    a physics-informed network for −u″ = f on [0, 1] with u(0) = u(1) = 0,
    exact solution u = sin(2πx) + ½ sin(8πx): an MLP 1-256-256-128-1 (tanh,
    99,329 parameters) whose residuals are u″ + f at 256 collocation points
    and 10·u at the two boundary points, least squares, full batch, float64;
    the test metric is the relative L2 error of u on 1,000 points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F


TITLES = {
    "digits": "MLP 64-128-128-10 on scikit-learn digits, cross-entropy (Adam: batches of 64; L-BFGS and trustls: "
              "full batch)",
    "synthetic": "MLP 784-1024-256-10 on make_classification, 45,000 samples, cross-entropy (Adam: batches of 256; "
                 "trustls: 2,048; L-BFGS: 5,000)",
    "fit": "tanh MLP 1-32-32-1 fitted to 256 points, least squares, full batch, float64",
    "regression": "MLP 10-256-256-128-1 on Friedman #1, 5,000 samples, least squares (Adam: batches of 256; "
                  "trustls: 2,048; L-BFGS: full batch)",
    "poisson": "physics-informed MLP 1-256-256-128-1 for −u″ = f (99,329 parameters), full batch, float64",
}


def mlp(widths, dtype, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers).to(dtype)


@dataclass
class Task:
    name: str
    title: str
    dtype: torch.dtype
    batch: int | None  # None: full batch
    budget: float  # seconds of training per run
    loss: str  # GaussNewtonModel's loss: "cross_entropy" or "linear"
    metric: str  # name of the test metric
    widths: tuple[int, ...]
    data: dict[str, Any]
    scalar: Callable  # (net, X, Y) -> scalar loss, for Adam and L-BFGS
    closure: Callable  # (net, X, Y) -> what a trustls closure returns
    train_loss: Callable  # (net) -> float
    test_metric: Callable  # (net) -> float
    adam_lrs: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    evaluations: int = 40  # off-clock measurements per run

    def network(self, seed: int) -> torch.nn.Module:
        return mlp(self.widths, self.dtype, seed)

    @property
    def size(self) -> int:
        return len(self.data["X"])


def _classification(name, title, X, y, Xt, yt, widths, batch, budget, train_subset=None, evaluations=40):
    sub = slice(None) if train_subset is None else slice(0, train_subset)

    def train_loss(net):
        with torch.no_grad():
            return float(F.cross_entropy(net(X[sub]).double(), y[sub]))

    def accuracy(net):
        with torch.no_grad():
            return float((net(Xt).argmax(1) == yt).double().mean())

    return Task(
        name, title, torch.float32, batch, budget, "cross_entropy", "test accuracy", widths,
        {"X": X, "Y": y}, lambda net, A, a: F.cross_entropy(net(A), a), lambda net, A, a: (net(A), a),
        train_loss, accuracy, evaluations=evaluations,
    )


def digits(budget: float) -> Task:
    from sklearn.datasets import load_digits

    data = load_digits()
    X = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    train, test = order[:1437], order[1437:]
    return _classification("digits", TITLES["digits"],
                           X[train], y[train], X[test], y[test], (64, 128, 128, 10), 64, budget)


def synthetic(budget: float) -> Task:
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=50_000, n_features=784, n_informative=60, n_redundant=40, n_classes=10,
                               n_clusters_per_class=2, class_sep=1.5, random_state=0)
    X = torch.tensor(X, dtype=torch.float32)
    X = (X - X.mean(0)) / X.std(0)
    y = torch.tensor(y)
    return _classification("synthetic", TITLES["synthetic"], X[:45_000], y[:45_000], X[45_000:], y[45_000:],
                           (784, 1024, 256, 10), 256, budget, train_subset=2_000, evaluations=20)


def fit(budget: float) -> Task:
    x = torch.linspace(0, 1, 256, dtype=torch.float64)[:, None]
    xt = torch.rand(1000, 1, generator=torch.Generator().manual_seed(7), dtype=torch.float64)

    def target(t):
        return torch.sin(4 * math.pi * t) * torch.exp(-t) + 0.5 * t

    Y, Yt = target(x), target(xt)

    def cost(net, A, B):  # ½ mean squared error, the cost trustls minimizes as ½‖r‖²
        return 0.5 * (net(A) - B).square().mean()

    def train_loss(net):
        with torch.no_grad():
            return float(cost(net, x, Y))

    def rmse(net):
        with torch.no_grad():
            return float((net(xt) - Yt).square().mean().sqrt())

    return Task("fit", TITLES["fit"],
                torch.float64, None, budget, "linear", "test RMSE", (1, 32, 32, 1), {"X": x, "Y": Y},
                cost, lambda net, A, B: (net(A) - B).reshape(-1) / math.sqrt(len(A)), train_loss, rmse)


def poisson(budget: float) -> Task:
    x = ((torch.arange(256, dtype=torch.float64) + 0.5) / 256)[:, None]
    xt = torch.linspace(0, 1, 1000, dtype=torch.float64)[:, None]
    w1, w2 = 2 * math.pi, 8 * math.pi

    def exact(t):
        return torch.sin(w1 * t) + 0.5 * torch.sin(w2 * t)

    f = w1**2 * torch.sin(w1 * x) + 0.5 * w2**2 * torch.sin(w2 * x)  # −u″
    boundary = torch.tensor([[0.0], [1.0]], dtype=torch.float64)

    def residual(net, A, B):
        with torch.enable_grad():
            t = A.clone().requires_grad_()
            u = net(t)
            du = torch.autograd.grad(u.sum(), t, create_graph=True)[0]
            d2u = torch.autograd.grad(du.sum(), t, create_graph=True)[0]
        interior = (d2u + B) / math.sqrt(len(A))
        return torch.cat([interior.reshape(-1), 10.0 * net(boundary).reshape(-1)])

    def cost(net, A, B):
        r = residual(net, A, B)
        return 0.5 * r.square().sum()

    def train_loss(net):
        return float(cost(net, x, f).detach())

    def relative_error(net):
        with torch.no_grad():
            return float((net(xt) - exact(xt)).norm() / exact(xt).norm())

    return Task("poisson", TITLES["poisson"], torch.float64, None, budget, "linear", "relative L2 error", (1, 256, 256, 128, 1),
                {"X": x, "Y": f}, cost, residual, train_loss, relative_error)


def regression(budget: float) -> Task:
    from sklearn.datasets import make_friedman1

    X, y = make_friedman1(n_samples=6_000, n_features=10, noise=0.0, random_state=0)
    X = torch.tensor(X, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.float32)[:, None]
    y = (y - y[:5_000].mean()) / y[:5_000].std()
    train, test = slice(0, 5_000), slice(5_000, None)

    def cost(net, A, B):
        return 0.5 * (net(A) - B).square().mean()

    def train_loss(net):
        with torch.no_grad():
            return float(cost(net, X[train], y[train]))

    def rmse(net):
        with torch.no_grad():
            return float((net(X[test]) - y[test]).square().mean().sqrt())

    return Task("regression", TITLES["regression"],
                torch.float32, 256, budget, "linear", "test RMSE", (10, 256, 256, 128, 1),
                {"X": X[train], "Y": y[train]}, cost, lambda net, A, B: (net(A) - B).reshape(-1) / math.sqrt(len(A)),
                train_loss, rmse)


TASKS = {"digits": digits, "synthetic": synthetic, "fit": fit, "poisson": poisson, "regression": regression}
