"""Curve fits written as users write them: data drawn inside ``fun``.

Each residual builds its data on every call from a ``torch.Generator`` seeded
inside the function (the data are identical on every call, run and machine),
so ``vmap`` of the function itself meets a random operation. Three use
``.item()`` to choose a formula, one loops until a series converges, and one
gathers points by an index tensor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from trustls.problems.styled import StyledProblem, make

__all__ = ["problems"]


def _draw(x: Tensor, seed: int, size: int) -> Tensor:
    """Standard normal noise of the given size, from a generator seeded here."""
    # Drawn in float64 whatever x's dtype, so that float32 residuals see the same data.
    generator = torch.Generator(device=x.device).manual_seed(seed)
    return torch.randn(size, generator=generator, dtype=torch.float64, device=x.device).to(x.dtype)


def _grid(x: Tensor, start: float, stop: float, size: int) -> Tensor:
    return torch.linspace(start, stop, size, dtype=x.dtype, device=x.device)


def exponential_decay(x: Tensor) -> Tensor:
    """a exp(-k t) + c on 50 points (the issue's 3-parameter fit)."""
    t = _grid(x, 0, 5, 50)
    y = 2.5 * torch.exp(-1.3 * t) + 0.5 + 0.01 * _draw(x, 1, 50)
    return x[0] * torch.exp(-x[1] * t) + x[2] - y


def biexponential(x: Tensor) -> Tensor:
    """a exp(-k t) + b exp(-l t), 60 points."""
    t = _grid(x, 0, 6, 60)
    y = 3.0 * torch.exp(-2.0 * t) + 1.0 * torch.exp(-0.3 * t) + 0.005 * _draw(x, 2, 60)
    return x[0] * torch.exp(-x[1] * t) + x[2] * torch.exp(-x[3] * t) - y


def gaussian_peaks(x: Tensor) -> Tensor:
    """Two Gaussian peaks on a constant baseline, 100 points, a loop over the peaks."""
    t = _grid(x, 0, 10, 100)
    y = 3.0 * torch.exp(-((t - 3.0) ** 2) / 2.0) + 2.0 * torch.exp(-((t - 7.0) ** 2) / 0.5) + 0.1
    y = y + 0.02 * _draw(x, 3, 100)
    model = x[6] * torch.ones_like(t)
    for k in range(2):
        amplitude, centre, width = x[3 * k], x[3 * k + 1], x[3 * k + 2]
        model = model + amplitude * torch.exp(-((t - centre) ** 2) / width)
    return model - y


def logistic(x: Tensor) -> Tensor:
    """K / (1 + exp(-r (t - t0))), 30 points, one residual per loop iteration."""
    noise = _draw(x, 4, 30)
    out = []
    for i in range(30):
        t = i / 3
        y = 10.0 / (1.0 + math.exp(-1.2 * (t - 4.0))) + 0.05 * noise[i]
        out.append(x[0] / (1 + torch.exp(-x[1] * (t - x[2]))) - y)
    return torch.stack(out)


def michaelis_menten(x: Tensor) -> Tensor:
    """V s / (K + s) on the classic puromycin-like concentrations, as a stack."""
    s = [0.02, 0.02, 0.06, 0.06, 0.11, 0.11, 0.22, 0.22, 0.56, 0.56, 1.10, 1.10]
    v = [76.0, 47.0, 97.0, 107.0, 123.0, 139.0, 159.0, 152.0, 191.0, 201.0, 207.0, 200.0]
    return torch.stack([x[0] * si / (x[1] + si) - vi for si, vi in zip(s, v)])


def damped_sine(x: Tensor) -> Tensor:
    """A exp(-d t) sin(w t + p), 80 points."""
    t = _grid(x, 0, 8, 80)
    y = 2.0 * torch.exp(-0.3 * t) * torch.sin(2.0 * t + 0.5) + 0.02 * _draw(x, 5, 80)
    return x[0] * torch.exp(-x[1] * t) * torch.sin(x[2] * t + x[3]) - y


def lorentzian(x: Tensor) -> Tensor:
    """A lorentzian peak on a baseline that torch.where switches off left of zero."""
    t = _grid(x, -5, 5, 70)
    baseline = torch.where(t > 0, 0.2 * t, torch.zeros_like(t))
    y = 4.0 / (1 + ((t - 0.5) / 0.8) ** 2) + baseline + 0.02 * _draw(x, 6, 70)
    return x[0] / (1 + ((t - x[1]) / x[2]) ** 2) + torch.where(t > 0, x[3] * t, 0.0 * t) - y


def power_law(x: Tensor) -> Tensor:
    """c t^p fitted on a log scale, 25 points."""
    t = _grid(x, 1, 50, 25)
    y = 3.0 * t**0.7 * torch.exp(0.02 * _draw(x, 7, 25))
    return torch.log(x[0]) + x[1] * torch.log(t) - torch.log(y)


def circle(x: Tensor) -> Tensor:
    """Geometric circle fit (centre, radius) to 40 noisy points gathered by index."""
    g = torch.Generator(device=x.device).manual_seed(8)
    angles = 2 * math.pi * torch.rand(40, generator=g, dtype=torch.float64, device=x.device)
    points = torch.stack([1.0 + 2.0 * torch.cos(angles), -0.5 + 2.0 * torch.sin(angles)], dim=1)
    points = (points + 0.02 * torch.randn(40, 2, generator=g, dtype=torch.float64, device=x.device)).to(x.dtype)
    order = torch.argsort(angles)
    px = points.gather(0, order[:, None].expand(-1, 2))
    return torch.sqrt((px[:, 0] - x[0]) ** 2 + (px[:, 1] - x[1]) ** 2) - x[2]


def softplus_item(x: Tensor) -> Tensor:
    """a softplus(b (t - c)), softplus branching on ``.item()`` per point for stability."""
    t = _grid(x, -3, 3, 30)
    y = 1.5 * torch.log1p(torch.exp(2.0 * (t - 0.5))) + 0.02 * _draw(x, 9, 30)
    out = []
    for i in range(30):
        u = x[1] * (t[i] - x[2])
        s = u + torch.log1p(torch.exp(-u)) if u.item() > 0 else torch.log1p(torch.exp(u))
        out.append(x[0] * s - y[i])
    return torch.stack(out)


def series_item(x: Tensor) -> Tensor:
    """a exp(k t) by its Taylor series, summed until the terms stop mattering (``.item()``)."""
    t = _grid(x, 0, 1, 20)
    y = 1.2 * torch.exp(0.8 * t) + 0.01 * _draw(x, 10, 20)
    term, total, k = torch.ones_like(t), torch.ones_like(t), 0
    while (term.abs().max() > 1e-17 * total.abs().max()).item() and k < 60:
        k += 1
        term = term * x[1] * t / k
        total = total + term
    return x[0] * total - y


def hill_item(x: Tensor) -> Tensor:
    """Hill curve V s^h / (K^h + s^h); ``.item()`` picks the Michaelis-Menten form at h = 1."""
    s = _grid(x, 0.1, 5, 25)
    y = 2.0 * s**2.5 / (1.5**2.5 + s**2.5) + 0.01 * _draw(x, 11, 25)
    if x[2].item() == 1.0:
        return x[0] * s / (x[1] + s) - y
    return x[0] * s ** x[2] / (x[1] ** x[2] + s ** x[2]) - y


def gompertz(x: Tensor) -> Tensor:
    """a exp(-b exp(-c t)), 40 points; the inner exponent capped by torch.where against overflow."""
    t = _grid(x, 0, 10, 40)
    y = 5.0 * torch.exp(-2.0 * torch.exp(-0.6 * t)) + 0.03 * _draw(x, 12, 40)
    exponent = -x[2] * t
    exponent = torch.where(exponent < 50.0, exponent, torch.full_like(exponent, 50.0))
    return x[0] * torch.exp(-x[1] * torch.exp(exponent)) - y


def problems() -> tuple[StyledProblem, ...]:
    """The curve fits with their starts."""
    return tuple(
        make(name, "fit", styles, fun, x0, "synthetic, data from a seeded generator inside fun")
        for name, styles, fun, x0 in (
            ("exponential_decay", "generator", exponential_decay, [1.0, 1.0, 0.0]),
            ("biexponential", "generator", biexponential, [1.0, 1.0, 1.0, 0.1]),
            ("gaussian_peaks", "generator loop", gaussian_peaks, [2.5, 3.5, 1.5, 1.5, 6.5, 1.0, 0.0]),
            ("logistic_loop", "generator loop", logistic, [8.0, 1.0, 3.0]),
            ("michaelis_menten_stack", "stack", michaelis_menten, [200.0, 0.1]),
            ("damped_sine", "generator", damped_sine, [1.5, 0.2, 1.9, 0.4]),
            ("lorentzian_where", "generator where", lorentzian, [3.0, 0.0, 1.0, 0.0]),
            ("power_law_log", "generator", power_law, [1.0, 1.0]),
            ("circle_gather", "generator gather", circle, [0.0, 0.0, 1.0]),
            ("softplus_item", "generator item loop", softplus_item, [1.0, 1.0, 0.0]),
            ("series_item", "generator item", series_item, [1.0, 0.5]),
            ("hill_item", "generator item", hill_item, [1.0, 1.0, 1.5]),
            ("gompertz_where", "generator where", gompertz, [4.0, 1.0, 0.5]),
        )
    )
