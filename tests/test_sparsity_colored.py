"""`trustls.sparsity.colored` and `check`: the colored Jacobian equals the dense one.

Residual functions in the styles users write (Python loops, ``torch.stack`` of
scalar expressions, ``torch.where``, index gathers, banded slices, in-place
writes, ``.item()`` control flow, block-structured bundle adjustment) must give
``torch.func.jacrev``'s Jacobian on their pattern, through ``vmap(jvp)``;
residuals that vmap cannot run (random draws, ``.numpy()``, an
``autograd.Function`` without ``setup_context``, sparse ops) must warn once
and give the same J through the double-backward loop.
"""

import warnings

import numpy as np
import pytest
import torch
from autograd_functions import OldStyleSquare, OnceSquare

from trustls.operators import SparseOperator
from trustls.problems.bal import BundleAdjustmentProblem
from trustls.sparsity.check import check_sparsity
from trustls.sparsity.colored import ColoredJacobian, VmapDecision, colored_jacobian
from trustls.sparsity.coloring import ColumnColoring

N = 12
RTOL = 1e-12


def _pattern(rows, cols, shape):
    rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(rows.numel(), dtype=torch.bool), shape,
                                   check_invariants=True)


def _band(m, n, offsets):
    rows = torch.arange(m).repeat_interleave(len(offsets))
    cols = rows + torch.tensor(offsets).repeat(m)
    keep = (cols >= 0) & (cols < n)
    return _pattern(rows[keep], cols[keep], (m, n))


def chain_loop():
    def fun(x):
        out = []
        for i in range(x.shape[0] - 1):
            out.append(x[i] * x[i + 1] - 1.0)
        return torch.stack(out)

    return fun, _band(N - 1, N, [0, 1])


def broyden_stack():
    def fun(x):
        n = x.shape[0]
        terms = []
        for i in range(n):
            left = x[i - 1] if i > 0 else 0.0
            right = x[i + 1] if i < n - 1 else 0.0
            terms.append((3.0 - 2.0 * x[i]) * x[i] - left - 2.0 * right + 1.0)
        return torch.stack(terms)

    return fun, _band(N, N, [-1, 0, 1])


def where_piecewise():
    def fun(x):
        return torch.where(x[:-1] > 0, x[:-1] ** 2 * x[1:], torch.sin(x[1:]) - x[:-1])

    return fun, _band(N - 1, N, [0, 1])


def index_gather():
    generator = torch.Generator().manual_seed(3)
    a, b = torch.randint(0, N, (20,), generator=generator), torch.randint(0, N, (20,), generator=generator)
    target = torch.randn(20, generator=generator, dtype=torch.float64)

    def fun(x):
        return x[a] * torch.exp(0.3 * x[b]) - target

    rows = torch.arange(20)
    return fun, _pattern(torch.cat([rows, rows]), torch.cat([a, b]), (20, N))


def banded_slices():
    def fun(x):
        return x[2:] - 2.0 * x[1:-1] + x[:-2] + 0.1 * x[1:-1] ** 3

    return fun, _band(N - 2, N, [0, 1, 2])


def inplace_writes():
    def fun(x):
        out = torch.zeros(N, dtype=x.dtype)
        for i in range(N):
            out[i] = x[i] ** 2 - x[(i + 3) % N]
        return out

    rows = torch.arange(N)
    return fun, _pattern(torch.cat([rows, rows]), torch.cat([rows, (rows + 3) % N]), (N, N))


def item_control_flow():
    def fun(x):
        scale = 2.0 if x[0].item() > 0 else -1.0
        return torch.stack([scale * x[i] * x[i + 1] for i in range(N - 1)])

    return fun, _band(N - 1, N, [0, 1])


def small_bundle_adjustment():
    generator = torch.Generator().manual_seed(5)
    cameras, points, observations = 3, 6, 14
    camera_indices = torch.randint(0, cameras, (observations,), generator=generator)
    point_indices = torch.randint(0, points, (observations,), generator=generator)
    x0 = torch.cat([
        (0.1 * torch.randn(cameras, 9, generator=generator, dtype=torch.float64)
         + torch.tensor([0, 0, 0, 0, 0, -5.0, 1.0, 0, 0], dtype=torch.float64)).reshape(-1),
        torch.randn(points * 3, generator=generator, dtype=torch.float64),
    ])
    problem = BundleAdjustmentProblem(
        cameras, points, observations, camera_indices, point_indices,
        torch.randn(observations, 2, generator=generator, dtype=torch.float64), x0)
    return problem.residual, problem.jacobian_sparsity(), x0


STYLES = {f.__name__: f for f in (chain_loop, broyden_stack, where_piecewise, index_gather, banded_slices,
                                   inplace_writes, item_control_flow)}


def _point(generator, n=N, dtype=torch.float64):
    return torch.randn(n, generator=generator, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("style", sorted(STYLES))
def test_colored_jacobian_equals_jacrev(style, generator):
    fun, pattern = STYLES[style]()
    x = _point(generator)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="jac_sparsity")  # vmap(jvp) must run these without a fallback
        result = colored_jacobian(fun, x, pattern)
    expected = torch.func.jacrev(fun)(x)
    assert result.batched and result.calls == 1
    assert isinstance(result.jacobian, SparseOperator)
    torch.testing.assert_close(result.jacobian.to_dense(), expected, rtol=RTOL, atol=RTOL)
    torch.testing.assert_close(result.residual, fun(x), rtol=0, atol=0)


def test_block_structured_bundle_adjustment_equals_jacrev():
    fun, pattern, x = small_bundle_adjustment()
    result = colored_jacobian(fun, x, pattern)
    assert result.batched
    torch.testing.assert_close(result.jacobian.to_dense(), torch.func.jacrev(fun)(x), rtol=RTOL, atol=1e-10)


def test_a_pattern_wider_than_j_gives_zeros_there(generator):
    fun, _ = where_piecewise()  # bidiagonal J, pattern tridiagonal-plus
    x = _point(generator)
    result = colored_jacobian(fun, x, _band(N - 1, N, [-1, 0, 1, 2]))
    torch.testing.assert_close(result.jacobian.to_dense(), torch.func.jacrev(fun)(x), rtol=RTOL, atol=RTOL)


def test_float32_smoke(generator):
    fun, pattern = broyden_stack()
    x = _point(generator, dtype=torch.float32)
    result = colored_jacobian(fun, x, pattern)
    assert result.jacobian.dtype == torch.float32
    torch.testing.assert_close(result.jacobian.to_dense(), torch.func.jacrev(fun)(x), rtol=1e-5, atol=1e-5)


def seeded_random():
    def fun(x):
        generator = torch.Generator().manual_seed(11)  # the same draws at every call
        weights = torch.rand(N - 1, generator=generator, dtype=x.dtype)
        return weights * x[:-1] + x[1:] ** 2

    return fun, _band(N - 1, N, [0, 1]), r"random operation"


def numpy_inside():
    def fun(x):
        shift = float(np.sum(x.detach().numpy()))  # a constant for differentiation
        return x[:-1] * x[1:] + shift

    return fun, _band(N - 1, N, [0, 1]), r"data pointer"


def custom_function():
    def fun(x):
        return OldStyleSquare.apply(x[:-1]) + x[1:]

    return fun, _band(N - 1, N, [0, 1]), r"autograd\.Function"


def sparse_operation():
    matrix = torch.eye(N, dtype=torch.float64).roll(1, 1).to_sparse()

    def fun(x):
        return torch.sparse.mm(matrix, x.unsqueeze(1)).squeeze(1) * x

    rows = torch.arange(N)
    return fun, _pattern(torch.cat([rows, rows]), torch.cat([rows, (rows + 1) % N]), (N, N)), r"forward AD"


FALLBACKS = {f.__name__: f for f in (seeded_random, numpy_inside, custom_function, sparse_operation)}


@pytest.mark.parametrize("style", sorted(FALLBACKS))
def test_fallback_warns_once_and_gives_the_exact_jacobian(style, generator):
    fun, pattern, reason = FALLBACKS[style]()
    x = _point(generator)
    colored, decision = ColoredJacobian(pattern), VmapDecision()
    with pytest.warns(UserWarning, match=r"jac_sparsity: torch\.func\.vmap over torch\.func\.jvp failed .*" + reason):
        first = colored(fun, x, decision=decision)
    assert not first.batched and first.calls == 2 and decision.failure is not None
    expected = torch.autograd.functional.jacobian(fun, x)
    torch.testing.assert_close(first.jacobian.to_dense(), expected, rtol=RTOL, atol=RTOL)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="jac_sparsity")  # the decision is kept: no second warning
        second = colored(fun, x + 0.5, decision=decision)
    assert not second.batched and second.calls == 1
    torch.testing.assert_close(second.jacobian.to_dense(), torch.autograd.functional.jacobian(fun, x + 0.5),
                               rtol=RTOL, atol=RTOL)


class _ShortcutSquare(torch.autograd.Function):
    """x², whose backward returns a constant zero for a zero cotangent (a legitimate shortcut)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2.0 * x * grad if bool(grad.abs().sum() > 0) else torch.zeros_like(x)


def shortcut_function(x):
    return _ShortcutSquare.apply(x[:-1]) + x[1:]


def test_the_loop_records_the_backward_at_a_nonzero_cotangent(generator):
    # Recorded at u = 0, the shortcut's graph would hold no u: its part of every J v
    # (the diagonal here) silently missing from the colored J and from check_sparsity.
    x = _point(generator)
    with pytest.warns(UserWarning, match=r"autograd\.Function"):
        result = colored_jacobian(shortcut_function, x, _band(N - 1, N, [0, 1]))
    expected = torch.autograd.functional.jacobian(shortcut_function, x)
    assert not result.batched
    torch.testing.assert_close(result.jacobian.to_dense(), expected, rtol=RTOL, atol=RTOL)
    with pytest.warns(UserWarning, match=r"autograd\.Function"):
        with pytest.raises(ValueError, match=r"row 0 depends on columns \[0\], which jac_sparsity omits"):
            check_sparsity(shortcut_function, x, _band(N - 1, N, [1]))


def test_a_backward_that_cannot_be_differentiated_raises_rather_than_dropping_its_part(generator):
    def fun(x):
        return OnceSquare.apply(x[:-1]) + x[1:]

    x = _point(generator)
    with pytest.warns(UserWarning, match=r"autograd\.Function"):
        with pytest.raises(RuntimeError, match=r"the backward of fun is not differentiable"):
            colored_jacobian(fun, x, _band(N - 1, N, [0, 1]))


def test_the_sparse_structure_is_built_once(generator):
    fun, pattern = broyden_stack()
    colored = ColoredJacobian(pattern)
    first, second = colored(fun, _point(generator)), colored(fun, _point(generator))
    assert second.jacobian.pattern is first.jacobian.pattern
    assert not torch.equal(second.jacobian.values, first.jacobian.values)


def test_the_callers_residual_is_returned_and_grad_mode_does_not_matter(generator):
    fun, pattern = chain_loop()
    x = _point(generator)
    given = fun(x)
    with torch.no_grad():
        result = colored_jacobian(fun, x, pattern, residual=given)
        looped = colored_jacobian(fun, x, pattern, decision=VmapDecision(failure="forced"))
    assert result.residual is given or torch.equal(result.residual, given)
    torch.testing.assert_close(looped.jacobian.to_dense(), result.jacobian.to_dense(), rtol=RTOL, atol=RTOL)


def test_an_empty_pattern_needs_no_product():
    def fun(x):
        return torch.ones(3, dtype=x.dtype)

    colored = ColoredJacobian(torch.zeros(3, 2, dtype=torch.bool))
    x = torch.zeros(2, dtype=torch.float64)
    assert colored(fun, x).calls == 1 and colored(fun, x, residual=fun(x)).calls == 0
    assert torch.equal(colored(fun, x).jacobian.to_dense(), torch.zeros(3, 2, dtype=torch.float64))


def test_bad_calls_name_the_rule(generator):
    fun, pattern = chain_loop()  # (11, 12)
    colored = ColoredJacobian(pattern)
    with pytest.raises(ValueError, match=r"x must be a tensor of shape \(12,\), the columns of jac_sparsity"):
        colored(fun, torch.zeros(5))
    with pytest.raises(ValueError, match=r"jac_sparsity must have shape \(m, n\) = \(len\(fun\(x\)\), len\(x\)\) "
                                         r"= \(13, 12\), got \(11, 12\)"):
        colored(lambda x: torch.cat([x, x[:1]]), _point(generator))
    with pytest.raises(ValueError, match=r"fun must return a 1-D residual vector, got shape \(11, 1\)"):
        colored(lambda x: fun(x).unsqueeze(1), _point(generator))
    with pytest.raises(ValueError, match="fun must return a 1-D residual vector"):
        colored(lambda x: fun(x).unsqueeze(1), _point(generator), decision=VmapDecision(failure="forced"))
    with pytest.raises(ValueError, match=r"coloring must color the 12 columns of jac_sparsity"):
        ColoredJacobian(pattern, ColumnColoring(torch.zeros(12, dtype=torch.int64), 1, 0, "natural"))
    with pytest.raises(TypeError, match="coloring must be a ColumnColoring or an ordering name, got int"):
        ColoredJacobian(pattern, 3)
    # Found by a hunt: torch's own errors, after a vmap warning or from inside a product.
    with pytest.raises(TypeError, match=r"x must be a floating tensor \(J is differentiated at it\), got dtype torch\.int64"):
        colored(fun, torch.ones(12, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"fun must return a tensor of x's dtype torch\.float64, got torch\.float32"):
        check_sparsity(lambda x: fun(x).float(), _point(generator), pattern, jacobian=colored(fun, _point(generator)).jacobian)


def test_check_sparsity_accepts_a_correct_pattern(generator):
    for style in ("broyden_stack", "index_gather"):
        fun, pattern = STYLES[style]()
        check_sparsity(fun, _point(generator), pattern)
    fun, pattern, reason = seeded_random()
    with pytest.warns(UserWarning, match=reason):  # computing the colored J falls back to the loop
        check_sparsity(fun, _point(generator), pattern)


def test_check_sparsity_names_the_missing_columns(generator):
    fun, _ = broyden_stack()  # tridiagonal J
    x = _point(generator)
    bidiagonal = _band(N, N, [0, 1])
    with pytest.raises(ValueError, match=r"jac_sparsity misses nonzeros of the Jacobian at x: J v differs in "
                                         r"\d+ of 12 rows; row 1 depends on columns \[0\], which jac_sparsity omits"):
        check_sparsity(fun, x, bidiagonal)
    colored = ColoredJacobian(bidiagonal)
    with pytest.raises(ValueError, match=r"row 1 depends on columns \[0\]"):
        check_sparsity(fun, x, colored, jacobian=colored(fun, x).jacobian)
    empty_row = _pattern([0, 1], [0, 1], (N, N))
    with pytest.raises(ValueError, match=r"differs in 12 of 12 rows; row 0 depends on columns \[1\]"):
        check_sparsity(fun, x, empty_row)


@pytest.mark.parametrize("batched", [True, False], ids=["vmap", "double-backward"])
def test_colored_jacobian_on_every_device(device, batched, generator):
    fun, pattern = banded_slices()
    colored = ColoredJacobian(pattern.to(device))  # the pattern itself is kept on the CPU
    assert colored.pattern.rows.device.type == "cpu"
    x = _point(generator).to(device)
    decision = None if batched else VmapDecision(failure="forced")
    result = colored(fun, x, decision=decision)
    assert result.jacobian.device == x.device and result.batched == batched
    torch.testing.assert_close(result.jacobian.to_dense(), torch.func.jacrev(fun)(x), rtol=RTOL, atol=RTOL)
    again = colored(fun, x + 1, decision=decision)  # the structure on this device is reused
    assert again.jacobian.pattern is result.jacobian.pattern
