"""The output factors and the effective Jacobian J̃ = S J against dense matrices (`trustls.operators.output`).

Each factor is built once and its dense S (from products with the identity)
is the ground truth; J̃ is built from a dense J, a `SparseOperator` and a
matrix-free `JacobianOperator` of a small function whose Jacobian
``torch.func.jacrev`` gives, and compared to ``S_dense @ J_dense`` through
``matvec``, ``rmatvec``, ``to_dense`` and the adjoint identity. Products are
exact, so float64 agreement is to rounding.
"""

import re

import pytest
import torch

from trustls.operators import (
    BlockFactor,
    DenseOperator,
    DiagonalFactor,
    EffectiveJacobianOperator,
    JacobianOperator,
    SoftmaxFactor,
    SparseOperator,
    effective_jacobian,
    effective_jacobian_matrix,
    jacobian_products,
)

F64 = torch.float64
RTOL = 1e-12


def _factor(kind: str, generator: torch.Generator):
    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=F64)

    if kind == "diagonal":
        return DiagonalFactor(randn(4, 3))
    if kind == "softmax":
        p = torch.softmax(2 * randn(4, 3), 1)
        return SoftmaxFactor(p.sqrt() * 0.7, p, dim=1)
    if kind == "softmax-spatial":  # (N, K, d): classes along dimension 1
        p = torch.softmax(2 * randn(2, 3, 2), 1)
        return SoftmaxFactor(p.sqrt(), p, dim=1)
    if kind == "block":
        return BlockFactor(randn(4, 3, 3))
    if kind == "block-dim1":  # blocks along dimension 1 of (2, 3, 2) outputs
        return BlockFactor(randn(2, 2, 3, 3), dim=1)
    raise AssertionError(kind)


FACTORS = ["diagonal", "softmax", "softmax-spatial", "block", "block-dim1"]
N_VARIABLES = 5


def _jacobian(kind: str, m: int, generator: torch.Generator):
    """(operator, dense J) for J of shape (m, N_VARIABLES)."""
    A = torch.randn(m, N_VARIABLES, generator=generator, dtype=F64)
    if kind == "dense":
        return DenseOperator(A), A
    if kind == "sparse":
        mask = torch.rand(m, N_VARIABLES, generator=generator) < 0.4
        rows, cols = mask.nonzero(as_tuple=True)
        J = SparseOperator(rows, cols, A[rows, cols], (m, N_VARIABLES))
        return J, J.to_dense()
    if kind == "matrix-free":
        x = torch.randn(N_VARIABLES, generator=generator, dtype=F64)

        def fun(x):
            return torch.tanh(A @ x) * torch.where(torch.arange(m) % 2 == 0, 1.0, -2.0).to(x)

        return JacobianOperator(jacobian_products(fun, x), N_VARIABLES), torch.func.jacrev(fun)(x)
    raise AssertionError(kind)


@pytest.mark.parametrize("jacobian_kind", ["dense", "sparse", "matrix-free"])
@pytest.mark.parametrize("factor_kind", FACTORS)
def test_effective_jacobian_matches_dense_product(factor_kind, jacobian_kind, generator):
    factor = _factor(factor_kind, generator)
    S = factor.to_dense()
    J, J_dense = _jacobian(jacobian_kind, factor.numel, generator)
    Jt = effective_jacobian(J, factor)
    expected = S @ J_dense
    v = torch.randn(N_VARIABLES, generator=generator, dtype=F64)
    u = torch.randn(factor.numel, generator=generator, dtype=F64)
    scale = float(expected.abs().max())
    torch.testing.assert_close(Jt.to_dense(), expected, rtol=RTOL, atol=RTOL * scale)
    torch.testing.assert_close(Jt.matvec(v), expected @ v, rtol=RTOL, atol=RTOL * scale)
    torch.testing.assert_close(Jt.rmatvec(u), expected.T @ u, rtol=RTOL, atol=RTOL * scale)
    torch.testing.assert_close(torch.dot(Jt.matvec(v), u), torch.dot(v, Jt.rmatvec(u)), rtol=RTOL, atol=0)
    # Columns of a matrix (strided vectors) and @ with a matrix.
    U = torch.randn(factor.numel, 2, generator=generator, dtype=F64)
    torch.testing.assert_close(Jt.rmatvec(U[:, 1]), expected.T @ U[:, 1], rtol=RTOL, atol=RTOL * scale)
    V = torch.randn(2, N_VARIABLES, generator=generator, dtype=F64).T
    torch.testing.assert_close(Jt @ V, expected @ V, rtol=RTOL, atol=RTOL * scale)


@pytest.mark.parametrize(
    "factor_kind, jacobian_kind, expected",
    [
        ("diagonal", "dense", DenseOperator),
        ("softmax", "dense", DenseOperator),
        ("block", "dense", DenseOperator),
        ("diagonal", "sparse", SparseOperator),
        ("softmax", "sparse", EffectiveJacobianOperator),
        ("diagonal", "matrix-free", EffectiveJacobianOperator),
    ],
)
def test_fast_paths_store_the_product_where_it_stays_cheap(factor_kind, jacobian_kind, expected, generator):
    factor = _factor(factor_kind, generator)
    J, _ = _jacobian(jacobian_kind, factor.numel, generator)
    Jt = effective_jacobian(J, factor)
    assert type(Jt) is expected
    assert Jt.is_matrix_free == J.is_matrix_free
    if isinstance(Jt, SparseOperator):
        assert Jt.pattern is J.pattern  # scaled values on the same pattern: no sort


def test_identity_factor_returns_the_jacobian_itself(generator):
    J, A = _jacobian("dense", 6, generator)
    assert effective_jacobian(J, None) is J
    assert effective_jacobian_matrix(A, None) is A


@pytest.mark.parametrize("factor_kind", FACTORS)
def test_effective_jacobian_matrix_matches_the_operator(factor_kind, generator):
    factor = _factor(factor_kind, generator)
    J, A = _jacobian("dense", factor.numel, generator)
    torch.testing.assert_close(effective_jacobian_matrix(A, factor), factor.to_dense() @ A, rtol=RTOL, atol=1e-14)


@pytest.mark.parametrize("factor_kind", FACTORS)
def test_rmatvec_is_the_transpose(factor_kind, generator):
    factor = _factor(factor_kind, generator)
    m = factor.numel
    eye = torch.eye(m, dtype=F64).reshape(*factor.shape, m)
    St = factor.rmatvec(eye).reshape(m, m)
    torch.testing.assert_close(St, factor.to_dense().T, rtol=RTOL, atol=1e-15)


def test_block_factor_from_hessians(generator):
    A = torch.randn(3, 4, 4, generator=generator, dtype=F64)
    psd = A @ A.mT
    S = BlockFactor.from_hessians(psd).blocks
    torch.testing.assert_close(S.mT @ S, psd, rtol=1e-12, atol=1e-12)
    indefinite = torch.diag(torch.tensor([2.0, -1.0], dtype=F64)).expand(1, 2, 2)
    S = BlockFactor.from_hessians(indefinite).blocks
    torch.testing.assert_close(S.mT @ S, torch.diag(torch.tensor([2.0, 0.0], dtype=F64)).expand(1, 2, 2))


def test_float32_smoke(generator):
    p = torch.softmax(torch.randn(4, 3, generator=generator), 1)
    factor = SoftmaxFactor(p.sqrt(), p, dim=1)
    J = DenseOperator(torch.randn(12, 5, generator=generator))
    Jt = effective_jacobian(J, factor)
    assert Jt.dtype == torch.float32
    torch.testing.assert_close(Jt.to_dense(), factor.to_dense() @ J.matrix, rtol=1e-5, atol=1e-6)


ERRORS = [
    (lambda: effective_jacobian(DenseOperator(torch.ones(5, 2)), DiagonalFactor(torch.ones(2, 3))), ValueError,
     "jacobian must have as many rows as the factor has outputs (6, shape (2, 3)), got 5"),
    (lambda: effective_jacobian(torch.ones(6, 2), DiagonalFactor(torch.ones(6))), TypeError,
     "jacobian must be a LinearOperator, got Tensor"),
    (lambda: effective_jacobian(DenseOperator(torch.ones(6, 2)), torch.ones(6)), TypeError,
     "factor must be an OutputFactor or None, got Tensor"),
    (lambda: effective_jacobian_matrix(torch.ones(5, 2), DiagonalFactor(torch.ones(6))), ValueError,
     "jacobian must have as many rows as the factor has outputs (6, shape (6,)), got 5"),
    (lambda: DiagonalFactor(torch.ones(2, dtype=torch.int64)), TypeError,
     "diagonal must be a floating torch.Tensor, got dtype torch.int64"),
    (lambda: SoftmaxFactor(torch.ones(2, 3), torch.ones(3, 2), 1), ValueError,
     "scale and probabilities must have the same shape, got (2, 3) and (3, 2)"),
    (lambda: BlockFactor(torch.ones(2, 3, 4)), ValueError,
     "blocks must be a tensor of shape (*batch, K, K), got (2, 3, 4)"),
]


@pytest.mark.parametrize("call, error, message", ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_errors(call, error, message):
    with pytest.raises(error, match=re.escape(message) + "$"):
        call()
