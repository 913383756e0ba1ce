"""Shared fixtures: the devices to run on and a seeded random generator."""

import pytest
import torch

# CPU always, CUDA when present (STYLE.md, Tests).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SEED = 20240611


@pytest.fixture(params=[pytest.param(d, marks=pytest.mark.cuda) if d == "cuda" else d for d in DEVICES])
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture
def generator() -> torch.Generator:
    """A CPU generator with a fixed seed: draw on the CPU, then move to the device."""
    return torch.Generator().manual_seed(SEED)
