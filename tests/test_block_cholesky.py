"""Cholesky factors of batches of small blocks: the unrolled recurrences against LAPACK."""

import math

import pytest
import torch

import trustls.operators.block_cholesky as block_cholesky_module
from trustls.operators.block_cholesky import (
    block_cholesky,
    lower_triangular_inverse,
    regularized_cholesky,
)

F64 = torch.float64


def spd_blocks(generator, count, size, dtype=F64):
    A = torch.randn(count, size, size + 2, generator=generator, dtype=F64)
    return (A @ A.transpose(1, 2)).to(dtype)


@pytest.fixture(params=["unrolled", "lapack"])
def path(request, monkeypatch):
    bound = 0 if request.param == "unrolled" else 10**9
    monkeypatch.setattr(block_cholesky_module, "_MIN_UNROLLED_COUNT", bound)
    return request.param


@pytest.mark.parametrize("size", [1, 2, 3, 6, 7])
def test_factors_and_inverses_equal_lapack(size, path, generator):
    blocks = spd_blocks(generator, 20, size)
    L, failed = block_cholesky(blocks)
    torch.testing.assert_close(L, torch.linalg.cholesky(blocks), rtol=1e-12, atol=1e-12)
    assert not bool(failed.any())
    torch.testing.assert_close(lower_triangular_inverse(L), torch.linalg.inv(L), rtol=1e-10, atol=1e-10)


def test_failed_blocks_are_reported(path):
    blocks = torch.tensor([[[4.0, 2.0], [2.0, 5.0]], [[1.0, 2.0], [2.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]],
                           [[math.nan, 0.0], [0.0, 1.0]]], dtype=F64)
    _, failed = block_cholesky(blocks)
    assert failed.tolist() == [False, True, True, True]


def test_regularized_cholesky_jitters_only_the_failed_blocks(path, generator):
    regular = spd_blocks(generator, 3, 3)
    singular = torch.zeros(2, 3, 3, dtype=F64)
    singular[0] = torch.outer(torch.ones(3, dtype=F64), torch.ones(3, dtype=F64))  # rank 1
    L = regularized_cholesky(torch.cat([regular, singular]))
    torch.testing.assert_close(L[:3], torch.linalg.cholesky(regular), rtol=1e-12, atol=1e-12)
    jitter = math.sqrt(torch.finfo(F64).eps)  # √eps times the largest diagonal entry, 1
    torch.testing.assert_close(L[3] @ L[3].T, singular[0] + jitter * torch.eye(3, dtype=F64))
    torch.testing.assert_close(L[4], torch.eye(3, dtype=F64))  # a zero block: shifted by 1
    shift = torch.rand(3, 3, generator=generator, dtype=F64)
    expected = torch.linalg.cholesky(regular + torch.diag_embed(shift))
    torch.testing.assert_close(regularized_cholesky(regular, shift), expected)
    expected = torch.linalg.cholesky(regular + 2 * torch.eye(3, dtype=F64))
    torch.testing.assert_close(regularized_cholesky(regular, 2.0), expected)


def test_float32(path, generator):
    blocks = spd_blocks(generator, 10, 3, torch.float32)
    L, failed = block_cholesky(blocks)
    assert L.dtype == torch.float32 and not bool(failed.any())
    torch.testing.assert_close(L @ L.transpose(1, 2), blocks, rtol=1e-5, atol=1e-5)
