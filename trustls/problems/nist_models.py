"""The model functions f(x; b) of the 27 NIST StRD nonlinear regression problems.

Each is written as in the header of its data file, b1 being ``b[0]``, and
`MODELS` maps every problem's name to its model (several problems share one:
Chwirut1 and Chwirut2, the Gauss and the Lanczos problems, Hahn1 and Thurber,
Misra1a and BoxBOD). The models are pure torch functions of b, with no
in-place ops and no branching on values, so autograd, ``torch.func``
transforms (``jacfwd``, ``jacrev``, ``jvp``, ``vjp``) and ``vmap`` over b
all apply. The data, the certified values and the residuals are
`trustls.problems.nist`'s.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ["MODELS", "Model"]


def _exponential_rise(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return b[0] * (1 - torch.exp(-b[1] * x))


def _chwirut(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.exp(-b[0] * x) / (b[1] + b[2] * x)


def _lanczos(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return b[0] * torch.exp(-b[1] * x) + b[2] * torch.exp(-b[3] * x) + b[4] * torch.exp(-b[5] * x)


def _gauss(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (
        b[0] * torch.exp(-b[1] * x)
        + b[2] * torch.exp(-torch.square(x - b[3]) / torch.square(b[4]))
        + b[5] * torch.exp(-torch.square(x - b[6]) / torch.square(b[7]))
    )


def _danwood(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return b[0] * torch.pow(x, b[1])


def _misra1b(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return b[0] * (1 - torch.pow(1 + b[1] * x / 2, -2))


def _kirby2(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (b[0] + x * (b[1] + x * b[2])) / (1 + x * (b[3] + x * b[4]))


def _cubic_over_cubic(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Hahn1 and Thurber; Horner's rule for both polynomials.
    numerator = b[0] + x * (b[1] + x * (b[2] + x * b[3]))
    return numerator / (1 + x * (b[4] + x * (b[5] + x * b[6])))


def _nelson(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Model for log(y); x[:, 0] is time, x[:, 1] temperature.
    return b[0] - b[1] * x[:, 0] * torch.exp(-b[2] * x[:, 1])


def _mgh17(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return b[0] + b[1] * torch.exp(-x * b[3]) + b[2] * torch.exp(-x * b[4])


def _misra1c(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return b[0] * (1 - torch.pow(1 + 2 * b[1] * x, -0.5))


def _misra1d(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return b[0] * b[1] * x / (1 + b[1] * x)


def _roszman1(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return b[0] - b[1] * x - torch.atan(b[2] / (x - b[3])) / math.pi


def _enso(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Angles in radians; the annual cycle has the fixed period of 12 months.
    w = 2 * math.pi * x
    return (
        b[0]
        + b[1] * torch.cos(w / 12) + b[2] * torch.sin(w / 12)
        + b[4] * torch.cos(w / b[3]) + b[5] * torch.sin(w / b[3])
        + b[7] * torch.cos(w / b[6]) + b[8] * torch.sin(w / b[6])
    )  # fmt: skip


def _mgh09(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return b[0] * (x * x + x * b[1]) / (x * x + x * b[2] + b[3])


def _rat42(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return b[0] / (1 + torch.exp(b[1] - b[2] * x))


def _mgh10(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return b[0] * torch.exp(b[1] / (x + b[2]))


def _eckerle4(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (b[0] / b[1]) * torch.exp(-0.5 * torch.square((x - b[2]) / b[1]))


def _rat43(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return b[0] / torch.pow(1 + torch.exp(b[1] - b[2] * x), 1 / b[3])


def _bennett5(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return b[0] * torch.pow(b[1] + x, -1 / b[2])


Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

MODELS: dict[str, Model] = {
    "Misra1a": _exponential_rise,
    "Chwirut2": _chwirut,
    "Chwirut1": _chwirut,
    "Lanczos3": _lanczos,
    "Gauss1": _gauss,
    "Gauss2": _gauss,
    "DanWood": _danwood,
    "Misra1b": _misra1b,
    "Kirby2": _kirby2,
    "Hahn1": _cubic_over_cubic,
    "Nelson": _nelson,
    "MGH17": _mgh17,
    "Lanczos1": _lanczos,
    "Lanczos2": _lanczos,
    "Gauss3": _gauss,
    "Misra1c": _misra1c,
    "Misra1d": _misra1d,
    "Roszman1": _roszman1,
    "ENSO": _enso,
    "MGH09": _mgh09,
    "Thurber": _cubic_over_cubic,
    "BoxBOD": _exponential_rise,
    "Rat42": _rat42,
    "MGH10": _mgh10,
    "Eckerle4": _eckerle4,
    "Rat43": _rat43,
    "Bennett5": _bennett5,
}
