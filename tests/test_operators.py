"""Operators against their dense matrices (lineax style).

The same matrix is built in every operator form (a dense J, JᵀJ applied as
Jᵀ(Jv), the matrix-free Jacobian and Gauss-Newton operators for every product
method, and the scaled forms D A D and A D) and each is compared to the dense
ground truth ``torch.func.jacrev(fun)(x)``: ``matvec``, ``rmatvec``, ``@`` with
vectors and matrices, ``to_dense`` and the adjoint identity ⟨Av, u⟩ = ⟨v, Aᵀu⟩.
Residual functions are linear, elementwise, and small tanh networks, with
m > n and m < n. All products are exact, so float64 agreement is to rounding:
a few ulps of ‖A‖‖v‖.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from trustls.operators import (
    DEFAULT_PRODUCT_METHOD,
    PRODUCT_METHODS,
    DenseOperator,
    JacobianOperator,
    LinearOperator,
    NormalOperator,
    PowerOfTwoBalanced,
    ScaledOperator,
    SparseOperator,
    jacobian_products,
)

METHODS = sorted(PRODUCT_METHODS)
# float64 products by AD and by a dense matmul differ by rounding only.
RTOL = 1e-12


# --- residual functions --------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    fun: Callable[[Tensor], Tensor]
    x: Tensor
    J: Tensor  # jacrev ground truth at x
    scale: Tensor  # a positive scaling of length n


def _tanh_net(inputs: Tensor, targets: Tensor, widths: tuple[int, ...]) -> Callable[[Tensor], Tensor]:
    """Residuals net(inputs) - targets of a tanh MLP whose flattened parameters are x."""
    shapes = [(w_out, w_in) for w_in, w_out in zip(widths, widths[1:])]

    def fun(x: Tensor) -> Tensor:
        h, offset = inputs, 0
        for layer, (w_out, w_in) in enumerate(shapes):
            W = x[offset : offset + w_out * w_in].reshape(w_out, w_in)
            offset += w_out * w_in
            b = x[offset : offset + w_out]
            offset += w_out
            h = h @ W.T + b
            if layer < len(shapes) - 1:
                h = torch.tanh(h)
        return (h - targets).reshape(-1)

    return fun


def _net_size(widths: tuple[int, ...]) -> int:
    return sum(w_out * w_in + w_out for w_in, w_out in zip(widths, widths[1:]))


WIDTHS = (2, 3, 2, 1)  # two tanh layers, 20 parameters


def make_problem(name: str, generator: torch.Generator, dtype=torch.float64, device="cpu") -> Problem:
    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)

    if name in ("linear_tall", "linear_wide"):
        m, n = (7, 4) if name == "linear_tall" else (3, 6)
        A, b = randn(m, n), randn(m)

        def fun(x):
            return A @ x - b

        x = randn(n)
    elif name == "elementwise":
        # r = (x² - 1, x₀ sin x): m = 2n, coupled through x₀.
        def fun(x):
            return torch.cat([x**2 - 1, x[0] * torch.sin(x)])

        x = randn(3)
    elif name in ("tanh_net_tall", "tanh_net_wide"):
        batch = 40 if name == "tanh_net_tall" else 8
        fun = _tanh_net(randn(batch, WIDTHS[0]), randn(batch, WIDTHS[-1]), WIDTHS)
        x = 0.5 * randn(_net_size(WIDTHS))
    else:
        raise AssertionError(name)
    J = torch.func.jacrev(fun)(x)
    scale = 0.5 + torch.rand(x.shape[0], generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)
    return Problem(fun, x, J, scale)


PROBLEMS = ["linear_tall", "linear_wide", "elementwise", "tanh_net_tall", "tanh_net_wide"]


def test_problem_shapes(generator):
    shapes = {name: tuple(make_problem(name, generator).J.shape) for name in PROBLEMS}
    assert shapes == {
        "linear_tall": (7, 4),
        "linear_wide": (3, 6),
        "elementwise": (6, 3),
        "tanh_net_tall": (40, 20),
        "tanh_net_wide": (8, 20),
    }


# --- the same matrix in every operator form --------------------------------------------


def _dense_forms(problem: Problem, generator: torch.Generator):
    J, d = problem.J, problem.scale
    D = torch.diag(d)
    n = J.shape[1]
    square = torch.randn(n, n, generator=generator, dtype=torch.float64).to(J)  # not symmetric
    return {
        "dense": (DenseOperator(J), J),
        "normal": (NormalOperator(J), J.T @ J),
        "dense_scaled_right": (ScaledOperator(DenseOperator(J), d, left=False), J @ D),
        "normal_scaled": (ScaledOperator(NormalOperator(J), d), D @ J.T @ J @ D),
        "square_scaled": (ScaledOperator(DenseOperator(square), d), D @ square @ D),
    }


def _implicit_form(problem: Problem, form: str, method: str):
    J, d = problem.J, problem.scale
    D = torch.diag(d)
    n = J.shape[1]
    products = jacobian_products(problem.fun, problem.x, method)
    if form == "jacobian":
        return JacobianOperator(products, n), J
    if form == "gauss_newton":
        return NormalOperator(JacobianOperator(products, n)), J.T @ J
    if form == "jacobian_scaled_right":
        return ScaledOperator(JacobianOperator(products, n), d, left=False), J @ D
    if form == "gauss_newton_scaled":
        return ScaledOperator(NormalOperator(JacobianOperator(products, n)), d), D @ J.T @ J @ D
    raise AssertionError(form)


DENSE_FORMS = ["dense", "normal", "dense_scaled_right", "normal_scaled", "square_scaled"]
IMPLICIT_FORMS = ["jacobian", "gauss_newton", "jacobian_scaled_right", "gauss_newton_scaled"]
FORMS = [(form, None) for form in DENSE_FORMS] + [(form, m) for form in IMPLICIT_FORMS for m in METHODS]
FORM_IDS = [form if method is None else f"{form}[{method}]" for form, method in FORMS]


def build(problem: Problem, form: str, method: str | None, generator: torch.Generator):
    if method is None:
        return _dense_forms(problem, generator)[form]
    return _implicit_form(problem, form, method)


def _assert_close(actual: Tensor, expected: Tensor, scale: float) -> None:
    """Agreement to rounding: RTOL relative, and RTOL·scale absolute for cancelled entries."""
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=RTOL * scale)


def _norm(t: Tensor) -> float:
    return float(torch.linalg.matrix_norm(t) if t.ndim == 2 else torch.linalg.vector_norm(t))


@pytest.mark.parametrize(("form", "method"), FORMS, ids=FORM_IDS)
@pytest.mark.parametrize("name", PROBLEMS)
def test_operator_matches_dense_matrix_and_adjoint_identity(name, form, method, generator, device):
    problem = make_problem(name, generator, device=device)
    operator, A = build(problem, form, method, generator)
    m, n = A.shape
    v = torch.randn(n, generator=generator, dtype=torch.float64).to(device)
    u = torch.randn(m, generator=generator, dtype=torch.float64).to(device)
    V = torch.randn(n, 3, generator=generator, dtype=torch.float64).to(device)
    v_copy, u_copy, V_copy = v.clone(), u.clone(), V.clone()
    size = _norm(A)

    assert operator.shape == (m, n)
    assert operator.dtype == torch.float64 and operator.device.type == torch.device(device).type  # "cuda:0" != "cuda"
    _assert_close(operator.matvec(v), A @ v, size * _norm(v))
    _assert_close(operator.rmatvec(u), A.T @ u, size * _norm(u))
    _assert_close(operator @ v, A @ v, size * _norm(v))
    _assert_close(operator @ V, A @ V, size * _norm(V))
    _assert_close(operator @ V[:, :1], A @ V[:, :1], size * _norm(V))
    _assert_close(operator.to_dense(), A, size)
    # Products never write into their operands.
    assert torch.equal(v, v_copy) and torch.equal(u, u_copy) and torch.equal(V, V_copy)
    # The adjoint identity ⟨Av, u⟩ = ⟨v, Aᵀu⟩, from the operator's own products.
    for _ in range(3):
        v = torch.randn(n, generator=generator, dtype=torch.float64).to(device)
        u = torch.randn(m, generator=generator, dtype=torch.float64).to(device)
        left = float(torch.dot(operator.matvec(v), u))
        right = float(torch.dot(v, operator.rmatvec(u)))
        assert abs(left - right) <= 10 * RTOL * size * _norm(v) * _norm(u)


@pytest.mark.parametrize("name", PROBLEMS)
def test_symmetric_forms_are_symmetric_and_positive_semidefinite(name, generator):
    problem = make_problem(name, generator)
    forms = _dense_forms(problem, generator) | {
        form: _implicit_form(problem, form, DEFAULT_PRODUCT_METHOD) for form in IMPLICIT_FORMS
    }
    for form in ("normal", "normal_scaled", "gauss_newton", "gauss_newton_scaled"):
        operator, A = forms[form]
        assert operator.is_symmetric and operator.is_positive_semidefinite, form
        dense = operator.to_dense()
        _assert_close(dense, dense.T, _norm(A))
        assert float(torch.linalg.eigvalsh(dense).min()) >= -1e-12 * _norm(A)
    for form in ("dense", "dense_scaled_right", "square_scaled", "jacobian", "jacobian_scaled_right"):
        operator, _ = forms[form]
        assert not operator.is_symmetric and not operator.is_positive_semidefinite, form
    # Stored matrices, also scaled, read their products from entries; autodiff computes them.
    for form, (operator, _) in forms.items():
        assert operator.is_matrix_free == (form in IMPLICIT_FORMS), form


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", PROBLEMS)
def test_products_residual_is_fun_at_x(name, method, generator):
    problem = make_problem(name, generator)
    x_copy = problem.x.clone()
    products = jacobian_products(problem.fun, problem.x, method)
    torch.testing.assert_close(products.residual, problem.fun(problem.x), rtol=RTOL, atol=0)
    assert torch.equal(problem.x, x_copy)


@pytest.mark.parametrize("build_under_no_grad", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_products_under_no_grad(method, build_under_no_grad, generator):
    # The optimizer adapter runs its step under no_grad (torch.optim's convention).
    problem = make_problem("tanh_net_tall", generator)
    if build_under_no_grad:
        with torch.no_grad():
            products = jacobian_products(problem.fun, problem.x, method)
    else:
        products = jacobian_products(problem.fun, problem.x, method)
    n = problem.x.shape[0]
    v = torch.randn(n, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        Jv = JacobianOperator(products, n).matvec(v)
        JtJv = NormalOperator(JacobianOperator(products, n)).matvec(v)
    J = problem.J
    _assert_close(Jv, J @ v, _norm(J) * _norm(v))
    _assert_close(JtJv, J.T @ (J @ v), _norm(J) ** 2 * _norm(v))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["linear_wide", "tanh_net_tall"])
def test_float32_products(name, method, generator):
    problem32 = make_problem(name, torch.Generator().manual_seed(1), dtype=torch.float32)
    problem64 = make_problem(name, torch.Generator().manual_seed(1))
    n = problem32.x.shape[0]
    products = jacobian_products(problem32.fun, problem32.x, method)
    for operator, A in ((JacobianOperator(products, n), problem64.J),
                        (NormalOperator(JacobianOperator(products, n)), problem64.J.T @ problem64.J)):
        dense = operator.to_dense()
        assert dense.dtype == torch.float32 and operator.dtype == torch.float32
        torch.testing.assert_close(dense.double(), A, rtol=1e-4, atol=1e-5 * _norm(A))


# --- argument checks --------------------------------------------------------------------


@pytest.mark.parametrize("cls, name", [(DenseOperator, "matrix"), (NormalOperator, "jacobian")])
def test_dense_constructors_reject_bad_matrices(cls, name):
    with pytest.raises(TypeError, match=f"^{name} must be a torch.Tensor, got list$"):
        cls([[1.0, 2.0]])
    rule = f"{name} must be a 2-D floating tensor, got"
    with pytest.raises(ValueError, match=re.escape(f"{rule} 1-D tensor of dtype torch.float64")):
        cls(torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=re.escape(f"{rule} 3-D tensor of dtype torch.float32")):
        cls(torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match=re.escape(f"{rule} 2-D tensor of dtype torch.int64")):
        cls(torch.ones(2, 2, dtype=torch.int64))


def test_scaled_operator_rejects_mismatched_shapes():
    tall = DenseOperator(torch.ones(3, 2))
    message = "operator must be square to be scaled on both sides, got shape (3, 2)"
    with pytest.raises(ValueError, match=re.escape(message)):
        ScaledOperator(tall, torch.ones(2))
    with pytest.raises(ValueError, match=re.escape("scale must have shape (2,), got (3,)")):
        ScaledOperator(tall, torch.ones(3), left=False)
    with pytest.raises(ValueError, match=re.escape("scale must have shape (3,), got (3, 1)")):
        ScaledOperator(DenseOperator(torch.ones(3, 3)), torch.ones(3, 1))


def test_scaled_operator_rejects_non_tensor_scale():
    with pytest.raises(TypeError, match="^scale must be a torch.Tensor or a LinearOperator, got list$"):
        ScaledOperator(DenseOperator(torch.ones(2, 2)), [1.0, 2.0])


def test_unknown_product_method():
    expected = f"method must be one of {sorted(PRODUCT_METHODS)}, got 'backward'"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        jacobian_products(torch.sin, torch.ones(2), method="backward")
    assert METHODS == ["autograd", "fresh", "linearize", "vjp+double-backward", "vjp+jvp"]
    assert DEFAULT_PRODUCT_METHOD in PRODUCT_METHODS


def test_matmul_rejects_3d_operand():
    with pytest.raises(ValueError, match=re.escape("operand of @ must be 1-D or 2-D, got a tensor with 3 dimensions")):
        DenseOperator(torch.eye(2)) @ torch.ones(2, 2, 1)


class _ForwardOnly(LinearOperator):
    def matvec(self, v):
        return 2 * v


def test_rmatvec_of_non_symmetric_subclass_without_it():
    operator = _ForwardOnly((2, 2), torch.float64, "cpu")
    ones = torch.ones(2, dtype=torch.float64)
    torch.testing.assert_close(operator @ ones, 2 * ones)
    with pytest.raises(NotImplementedError, match="^_ForwardOnly does not implement rmatvec$"):
        operator.rmatvec(torch.ones(2, dtype=torch.float64))
    assert repr(operator) == "_ForwardOnly(shape=(2, 2), dtype=torch.float64, device=cpu)"


def test_linear_operator_is_abstract():
    with pytest.raises(TypeError, match="abstract"):
        LinearOperator((1, 1), torch.float64, "cpu")


@pytest.mark.parametrize("largest", [3.0, 1000.0, 40000.0, 65504.0, 2.0**-20])
def test_power_of_two_balanced_products_in_float16(largest, generator):
    # The scaling is exact, so the balanced products equal the plain ones where those do not overflow;
    # for entries from 2^15 up to float16's largest, 65504, a scale of 2^16 would itself overflow to inf.
    A = torch.tensor([[0.5, 0.25], [0.125, 1.0], [1.0, 0.0]], dtype=torch.float16)
    v = torch.tensor([largest, largest / 4], dtype=torch.float16)
    u = torch.tensor([largest / 8, largest / 16, largest / 2], dtype=torch.float16)
    balanced = PowerOfTwoBalanced(DenseOperator(A))
    expected_v = (A.double() @ v.double()).to(torch.float16)
    expected_u = (A.double().T @ u.double()).to(torch.float16)
    torch.testing.assert_close(balanced.matvec(v), expected_v, rtol=2e-3, atol=0)
    torch.testing.assert_close(balanced.rmatvec(u), expected_u, rtol=2e-3, atol=0)
    zero = torch.zeros(2, dtype=torch.float16)
    assert torch.equal(balanced.matvec(zero), torch.zeros(3, dtype=torch.float16))


def test_operator_docstring_examples():
    import doctest

    from trustls.operators import base, dense, implicit

    for module in (base, dense, implicit):
        failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert tried > 0 and failures == 0, module.__name__


def test_sparse_scale_columns_matches_dense(generator):
    A = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    A[A.abs() < 0.5] = 0.0
    sparse = SparseOperator.from_tensor(A.to_sparse())
    scale = 0.1 + torch.rand(4, generator=generator, dtype=torch.float64)
    scaled = sparse.scale_columns(scale)
    torch.testing.assert_close(scaled.to_dense(), A * scale, rtol=1e-15, atol=0)
    u = torch.randn(5, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(scaled.rmatvec(u), scale * (A.T @ u), rtol=1e-14, atol=1e-15)
    with pytest.raises(ValueError, match=r"scale must be a tensor of shape \(4,\), got \(5,\)"):
        sparse.scale_columns(torch.ones(5, dtype=torch.float64))


def test_sparse_with_a_given_column_order_matches_the_plain_constructor(generator):
    # The column order a JacobianPattern holds (row-major entries sorted by column, stable).
    from trustls.sparsity.pattern import jacobian_pattern

    A = torch.randn(30, 20, generator=generator, dtype=torch.float64)
    A[A.abs() < 1.0] = 0.0
    pattern = jacobian_pattern(A != 0)
    values = A[pattern.rows, pattern.cols]
    plain = SparseOperator(pattern.rows, pattern.cols, values, (30, 20))
    sorted_ = SparseOperator(pattern.rows, pattern.cols, values, (30, 20), column_order=pattern.column_order)
    assert sorted_.pattern.col_order is not None and torch.equal(sorted_.pattern.col_order, plain.pattern.col_order)
    u, v = torch.randn(30, generator=generator, dtype=torch.float64), torch.randn(20, generator=generator, dtype=torch.float64)
    assert torch.equal(sorted_.rmatvec(u), plain.rmatvec(u)) and torch.equal(sorted_.matvec(v), plain.matvec(v))
    cols = torch.tensor([0, 2, 1])
    rule = r"column_order must be the stable int64 permutation of the 3 entries that sorts cols, "
    with pytest.raises(ValueError, match=rule + r"got shape \(2,\) torch.int64"):
        SparseOperator(torch.arange(3), cols, torch.ones(3), (3, 3), column_order=torch.arange(2))
    with pytest.raises(ValueError, match=rule + r"got shape \(3,\) torch.int32"):
        SparseOperator(torch.arange(3), cols, torch.ones(3), (3, 3), column_order=torch.tensor([0, 2, 1], dtype=torch.int32))
    for wrong in ([2, 1, 0], [0, 0, 1]):  # not sorting; not a permutation
        with pytest.raises(ValueError, match=rule + r"got one that is not"):
            SparseOperator(torch.arange(3), cols, torch.ones(3), (3, 3), column_order=torch.tensor(wrong))
    with pytest.raises(ValueError, match=rule + r"got one that is not"):  # sorting, but not stable
        SparseOperator(torch.arange(3), torch.tensor([1, 0, 0]), torch.ones(3), (3, 3),
                       column_order=torch.tensor([2, 1, 0]))
