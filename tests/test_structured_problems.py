"""Tests for the large sparse-structured problems: the COO Jacobian is exact."""

from __future__ import annotations

import pytest
import torch

from trustls.problems import mgh, structured

FACTORIES = {
    "extended_rosenbrock": structured.extended_rosenbrock,
    "broyden_tridiagonal": structured.broyden_tridiagonal,
}
CASES = [("extended_rosenbrock", 6), ("broyden_tridiagonal", 6), ("broyden_tridiagonal", 7)]


def assemble(rows, cols, values, shape):
    return torch.zeros(shape, dtype=values.dtype).index_put((rows, cols), values, accumulate=True)


def points(p):
    g = torch.Generator().manual_seed(0)
    return [p.x0, torch.randn(p.n, generator=g, dtype=torch.float64)]


@pytest.mark.parametrize(("kind", "n"), CASES)
def test_fields(kind, n):
    p = FACTORIES[kind](n)
    assert p.name == f"{kind}_{n}"
    assert (p.n, p.m) == (n, n)
    assert p.x0.dtype == torch.float64
    assert p.x0.shape == (n,)
    assert p.residual(p.x0).shape == (p.m,)


@pytest.mark.parametrize(("kind", "n"), CASES)
@pytest.mark.parametrize("point", [0, 1], ids=["x0", "random"])
def test_coo_jacobian_equals_autograd(kind, n, point):
    p = FACTORIES[kind](n)
    x = points(p)[point]
    rows, cols, values = p.jacobian_coo(x)
    assert rows.dtype == cols.dtype == torch.int64
    assert values.dtype == x.dtype
    assert rows.shape == cols.shape == values.shape
    torch.testing.assert_close(
        assemble(rows, cols, values, (p.m, p.n)),
        torch.func.jacrev(p.residual)(x),
        rtol=0,
        atol=1e-14,
    )


@pytest.mark.parametrize(("kind", "n"), CASES)
def test_coo_pattern_has_no_repeated_entries(kind, n):
    p = FACTORIES[kind](n)
    rows, cols, _ = p.jacobian_coo(p.x0)
    flat = rows * p.n + cols
    assert flat.unique().numel() == flat.numel()
    expected_nnz = 3 * n // 2 if kind == "extended_rosenbrock" else 3 * n - 2
    assert flat.numel() == expected_nnz


@pytest.mark.parametrize(("kind", "n"), CASES)
def test_coo_matches_sparse_tensor_matvec(kind, n):
    p = FACTORIES[kind](n)
    x = points(p)[1]
    rows, cols, values = p.jacobian_coo(x)
    indices = torch.stack([rows, cols])
    J = torch.sparse_coo_tensor(indices, values, (p.m, p.n), check_invariants=True)
    v = torch.linspace(-1, 1, p.n, dtype=torch.float64)
    _, Jv = torch.func.jvp(p.residual, (x,), (v,))
    torch.testing.assert_close(J @ v, Jv)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_agrees_with_mgh_at_n_10(kind):
    p, q = FACTORIES[kind](10), mgh.get(kind)
    torch.testing.assert_close(p.x0, q.x0)
    for x in points(p):
        torch.testing.assert_close(p.residual(x), q.residual(x), rtol=0, atol=0)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_large_n(kind):
    n = 10**5
    p = FACTORIES[kind](n)
    r = p.residual(p.x0)
    assert r.shape == (n,)
    assert torch.isfinite(r).all()
    rows, cols, values = p.jacobian_coo(p.x0)
    assert rows.shape == cols.shape == values.shape
    assert int(rows.max()) == n - 1 and int(cols.max()) == n - 1


@pytest.mark.parametrize(("kind", "n"), CASES)
def test_float32(kind, n):
    p = FACTORIES[kind](n)
    x = p.x0.to(torch.float32)
    assert p.residual(x).dtype == torch.float32
    assert p.jacobian_coo(x)[2].dtype == torch.float32


@pytest.mark.parametrize(("kind", "n"), CASES)
def test_on_device(kind, n, device):
    p = FACTORIES[kind](n)
    x = points(p)[1]
    r = p.residual(x.to(device))
    rows, cols, values = p.jacobian_coo(x.to(device))
    assert r.device.type == rows.device.type == cols.device.type == values.device.type == device.type
    torch.testing.assert_close(r.cpu(), p.residual(x))
    torch.testing.assert_close(values.cpu(), p.jacobian_coo(x)[2])


def test_known_values():
    broyden = structured.broyden_tridiagonal(10)
    assert float(broyden.residual(torch.full((10,), -1.0)).square().sum()) == 21.0
    p = structured.extended_rosenbrock(4)
    assert float(p.residual(torch.ones(4)).abs().max()) == 0.0


@pytest.mark.parametrize("n", [3, 7, 99])
def test_extended_rosenbrock_rejects_odd_n(n):
    with pytest.raises(ValueError, match=rf"`n` must be even for extended Rosenbrock .*, got {n}$"):
        structured.extended_rosenbrock(n)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_rejects_small_n(kind):
    with pytest.raises(ValueError, match=r"`n` must be at least 2, got 0"):
        FACTORIES[kind](0)


@pytest.mark.parametrize("kind", sorted(FACTORIES))
@pytest.mark.parametrize("n", [6.0, True, "6"])
def test_rejects_non_int_n(kind, n):
    with pytest.raises(TypeError, match=r"`n` must be an int, got"):
        FACTORIES[kind](n)


@pytest.mark.parametrize(("kind", "n"), CASES)
def test_coo_values_differentiate_with_autograd(kind, n):
    # The second derivatives: the values are differentiable in x, as in the formulas.
    p = FACTORIES[kind](n)
    x = points(p)[1].clone().requires_grad_(True)
    rows, cols, values = p.jacobian_coo(x)
    (grad,) = torch.autograd.grad(values.sum(), x)
    expected = torch.func.jacrev(lambda y: p.jacobian_coo(y)[2].sum())(x.detach())
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-14)
    slope = -20.0 if kind == "extended_rosenbrock" else -4.0
    assert bool((grad[0::2] == slope).all())
