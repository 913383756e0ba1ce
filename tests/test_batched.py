"""TrustRegion.solve_batch against TrustRegion.solve problem by problem, its options and its input errors."""

import doctest
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from trustls import (
    BatchedJacobianWarning,
    BatchResult,
    BlockJacobi,
    GaussNewtonModel,
    Status,
    TrustRegion,
)
from trustls.batched import (
    factorization,
    jacobian,
    lstsq,
    objective,
    result,
    scale,
)

SOLVERS = ["lstsq", "cg"]
T = torch.linspace(0.0, 3.0, 20, dtype=torch.float64)


def decay(x):
    """a·exp(−√b·t) + c per row: NaN where b < 0, the region some problems run into."""
    return x[:, 0:1] * torch.exp(-torch.sqrt(x[:, 1:2]) * T.to(x)) + x[:, 2:3]


def mixed_batch():
    """Problems that converge, run into NaN regions, need many evaluations, or start at the solution."""
    generator = torch.Generator().manual_seed(1)
    truth = torch.tensor([[2.0, 1.0, 0.5], [3.0, 4.0, -0.5], [1.5, 0.25, 0.0], [2.0, 1.0, 0.5], [1.0, 9.0, 1.0]])
    truth = truth.double()
    data = decay(truth) + 0.02 * torch.randn(5, T.numel(), generator=generator, dtype=torch.float64)
    data[3] = 1 + 0.4 * T  # increasing: the fit wants √b < 0, and its steps meet NaN
    data[4] = decay(truth[4:5])[0]  # exact data, started at the solution
    x0 = torch.tensor([[1.0, 1.0, 0.0], [40.0, 0.01, 5.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 9.0, 1.0]]).double()
    return data, x0


def one(fun_of_batch, data, b):
    """Problem b alone, as TrustRegion.solve takes it."""
    row = data[b : b + 1]
    return lambda x: fun_of_batch(x[None], row)[0]


def assert_same_as_single(batch: BatchResult, controller_, fun_of_batch, data, x0, rtol=1e-10):
    for b in range(x0.shape[0]):
        single = controller_.solve(one(fun_of_batch, data, b), x0[b])
        assert (int(batch.status[b]), int(batch.nfev[b]), int(batch.njev[b]), int(batch.nit[b])) == (
            int(single.status),
            single.nfev,
            single.njev,
            single.nit,
        ), f"problem {b}"
        scale_ = float(single.x.abs().max())
        torch.testing.assert_close(batch.x[b], single.x, rtol=rtol, atol=rtol * scale_)
        assert float(batch.cost[b]) == pytest.approx(single.cost, rel=rtol, abs=1e-300)
        # The gradient, near √b's singularity for some, to a looser tolerance.
        torch.testing.assert_close(batch.grad[b], single.grad, rtol=1e-4, atol=1e-8 * (1 + single.optimality))


@pytest.mark.parametrize("max_nfev", [60, 12])
@pytest.mark.parametrize("solver", SOLVERS)
def test_mixed_batch_matches_single_solves(solver, max_nfev):
    data, x0 = mixed_batch()
    controller_ = TrustRegion(GaussNewtonModel(), solver=solver, max_nfev=max_nfev)
    batch = controller_.solve_batch(lambda x: decay(x) - data, x0)
    statuses = set(batch.status.tolist())
    assert Status.GTOL.value in statuses  # the problem that starts at its solution
    assert Status.MAX_NFEV.value in statuses and (batch.nfev <= max_nfev).all()
    assert statuses & {Status.FTOL.value, Status.XTOL.value, Status.FTOL_XTOL.value}
    assert_same_as_single(batch, controller_, lambda x, rows: decay(x) - rows, data, x0)
    torch.testing.assert_close(x0, mixed_batch()[1])  # not modified


@pytest.mark.parametrize("solver", SOLVERS)
def test_float32_smoke(solver):
    data, x0 = mixed_batch()
    data, x0 = data[[0, 2]], x0[[0, 2]]
    reference = TrustRegion(GaussNewtonModel(), solver=solver).solve_batch(lambda x: decay(x) - data, x0)
    data32, x32 = data.float(), x0.float()
    batch = TrustRegion(GaussNewtonModel(), solver=solver).solve_batch(lambda x: decay(x) - data32, x32)
    assert batch.x.dtype == torch.float32 and batch.success.all()
    torch.testing.assert_close(batch.cost, reference.cost, rtol=1e-3, atol=0)


def exponential_fits(count=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    truth = torch.stack(
        [
            torch.rand(count, generator=generator, dtype=torch.float64) * 4 + 1,
            torch.rand(count, generator=generator, dtype=torch.float64) * 2.5 + 0.5,
            torch.rand(count, generator=generator, dtype=torch.float64) * 2 - 1,
        ],
        1,
    )
    data = truth[:, :1] * torch.exp(-truth[:, 1:2] * T) + truth[:, 2:]
    data = data + 0.05 * torch.randn(data.shape, generator=generator, dtype=torch.float64)
    return data, torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64).expand(count, 3).clone()


def exponential(x, data):
    return x[:, :1] * torch.exp(-x[:, 1:2] * T) + x[:, 2:] - data


def stacked(x, data):
    """A Python loop over the points, each residual a torch.stack of scalar expressions' columns, with gather."""
    a, b, c = (x.gather(1, torch.full((x.shape[0], 1), j)).squeeze(1) for j in range(3))
    return torch.stack([a * torch.exp(-b * float(t)) + c - data[:, i] for i, t in enumerate(T)], dim=1)


@pytest.mark.parametrize("solver", SOLVERS)
def test_python_loop_function_and_compaction(solver):
    data, x0 = exponential_fits(8)
    controller_ = TrustRegion(GaussNewtonModel(), solver=solver)
    seen = []

    def compact(x, rows):
        seen.append(rows.numel())
        return stacked(x, data[rows])

    full = controller_.solve_batch(lambda x: stacked(x, data), x0)
    packed = controller_.solve_batch(compact, x0, compact=True)
    assert_same_as_single(full, controller_, stacked, data, x0)
    for name in ("x", "cost", "nfev", "njev", "nit", "status"):
        torch.testing.assert_close(packed[name], full[name], rtol=1e-12, atol=0)
    # Finished problems leave the calls: the batch shrinks to the slowest problem.
    assert seen[0] == x0.shape[0] and seen[-1] < seen[0] and seen == sorted(seen, reverse=True)
    assert packed.calls == len(seen) and int(full.nfev.max()) == full.calls


@pytest.mark.parametrize("loss", ["soft_l1", "cauchy"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_robust_loss_matches_single_solves(solver, loss):
    data, x0 = exponential_fits(3, seed=3)
    data[:, ::5] += 3.0  # outliers
    controller_ = TrustRegion(GaussNewtonModel(loss=loss, f_scale=0.1), solver=solver)
    batch = controller_.solve_batch(lambda x: exponential(x, data), x0)
    assert batch.success.all()
    assert_same_as_single(batch, controller_, exponential, data, x0, rtol=1e-9)


def test_targets_and_explicit_jacobian():
    data, x0 = exponential_fits(5, seed=4)

    def outputs(x):
        return x[:, :1] * torch.exp(-x[:, 1:2] * T) + x[:, 2:]

    def jac(x):
        e = torch.exp(-x[:, 1:2] * T)
        return torch.stack([e, -x[:, :1] * T * e, torch.ones_like(e)], dim=2)

    reference = TrustRegion(GaussNewtonModel(), solver="lstsq").solve_batch(lambda x: outputs(x) - data, x0)
    with_targets = TrustRegion(GaussNewtonModel(), solver="lstsq").solve_batch(lambda x: (outputs(x), data), x0)
    explicit = TrustRegion(GaussNewtonModel(jacobian=jac), solver="lstsq").solve_batch(lambda x: outputs(x) - data, x0)
    compact = TrustRegion(GaussNewtonModel(jacobian=lambda x, rows: jac(x)), solver="lstsq").solve_batch(
        lambda x, rows: (outputs(x), data[rows]), x0, compact=True
    )
    for batch in (with_targets, explicit, compact):
        torch.testing.assert_close(batch.x, reference.x, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(batch.nfev, reference.nfev)
    torch.testing.assert_close(with_targets.fun, reference.fun)  # the residual, outputs − targets


@pytest.mark.parametrize("solver", SOLVERS)
def test_reverse_mode_for_more_variables_than_residuals(solver):
    generator = torch.Generator().manual_seed(5)
    A = torch.randn(4, 2, 5, generator=generator, dtype=torch.float64)
    data = torch.randn(4, 2, generator=generator, dtype=torch.float64)

    def fun(x, A=A, data=data):
        return torch.einsum("bmn,bn->bm", A, x) + 0.1 * (x**2).sum(1, keepdim=True) - data

    x0 = torch.zeros(4, 5, dtype=torch.float64)
    controller_ = TrustRegion(GaussNewtonModel(), solver=solver)
    batch = controller_.solve_batch(fun, x0)
    assert batch.jac.shape == (4, 2, 5)
    for b in range(4):
        single = controller_.solve(lambda x, b=b: fun(x[None], A[b : b + 1], data[b : b + 1])[0], x0[b])
        torch.testing.assert_close(batch.x[b], single.x, rtol=1e-10, atol=1e-12)
        assert int(batch.nfev[b]) == single.nfev


def test_random_draws_and_item_inside_fun_need_no_vmap():
    data, x0 = exponential_fits(4, seed=6)
    noise = torch.randn(data.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def noisy(x):  # data drawn inside fun from a seeded generator, and a host read: torch.func.vmap refuses both
        drawn = torch.randn(data.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        shift = 0.0 if float(x.abs().max().item()) < 1e300 else 1.0
        return x[:, :1] * torch.exp(-x[:, 1:2] * T) + x[:, 2:] - data - 0.01 * drawn + shift

    reference = TrustRegion(GaussNewtonModel()).solve_batch(
        lambda x: x[:, :1] * torch.exp(-x[:, 1:2] * T) + x[:, 2:] - data - 0.01 * noise, x0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batch = TrustRegion(GaussNewtonModel()).solve_batch(noisy, x0)
    torch.testing.assert_close(batch.x, reference.x, rtol=0, atol=0)
    assert batch.calls == reference.calls


class _OnceDifferentiableExp(torch.autograd.Function):
    """exp with a backward that autograd cannot differentiate again."""

    @staticmethod
    def forward(ctx, x):
        y = torch.exp(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * y


def test_backward_without_double_backward_falls_back_to_reverse_mode():
    data, x0 = exponential_fits(4, seed=6)
    reference = TrustRegion(GaussNewtonModel()).solve_batch(lambda x: decay(x) - data, x0)

    def fun(x):
        return x[:, :1] * _OnceDifferentiableExp.apply(-torch.sqrt(x[:, 1:2]) * T) + x[:, 2:] - data

    with pytest.warns(BatchedJacobianWarning, match="could not use forward mode .*from 20 backward passes"):
        batch = TrustRegion(GaussNewtonModel()).solve_batch(fun, x0)
    torch.testing.assert_close(batch.x, reference.x, rtol=1e-12, atol=1e-14)


def test_a_backward_without_second_derivative_found_in_the_passes_falls_back_to_reverse_mode():
    # cdist's backward (this compute mode) has no derivative and is not marked: forward mode fails
    # only inside its passes.
    anchors = torch.linspace(0, 5, 20, dtype=torch.float64).reshape(20, 1)

    def fun(x):  # (K, 3) → (K, 20): a x_2 · distance of each anchor to x_1, plus x_3
        d = torch.cdist(anchors.expand(x.shape[0], 20, 1), x[:, None, 1:2],
                        compute_mode="donot_use_mm_for_euclid_dist")[..., 0]
        return x[:, :1] * d + x[:, 2:] - 1.0

    x0 = torch.tensor([[1.0, 7.0, 0.5], [2.0, 8.0, 0.1]], dtype=torch.float64)
    with pytest.warns(BatchedJacobianWarning, match="could not use forward mode .*from 20 backward passes"):
        batch = TrustRegion(GaussNewtonModel(), solver="lstsq").solve_batch(fun, x0)
    for b in range(2):
        single = TrustRegion(GaussNewtonModel(), solver="lstsq").solve(lambda x: fun(x[None])[0], x0[b])
        torch.testing.assert_close(batch.x[b], single.x, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("solver", SOLVERS)
def test_x_scale_per_problem_and_jacobi(solver):
    data, x0 = exponential_fits(4, seed=7)
    rows = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5], [2.0, 1.0, 1.0], [1.0, 1.0, 4.0]], dtype=torch.float64)
    batch = TrustRegion(GaussNewtonModel(), solver=solver).solve_batch(lambda x: stacked(x, data), x0, x_scale=rows)
    jacobi = TrustRegion(GaussNewtonModel(), solver=solver, x_scale="jac").solve_batch(lambda x: stacked(x, data), x0)
    for b in range(4):
        fun = one(stacked, data, b)
        single = TrustRegion(GaussNewtonModel(), solver=solver, x_scale=rows[b]).solve(fun, x0[b])
        torch.testing.assert_close(batch.x[b], single.x, rtol=1e-10, atol=1e-12)
        single = TrustRegion(GaussNewtonModel(), solver=solver, x_scale="jac").solve(fun, x0[b])
        torch.testing.assert_close(jacobi.x[b], single.x, rtol=1e-10, atol=1e-12)
        assert int(jacobi.nfev[b]) == single.nfev


def test_result_record():
    data, x0 = mixed_batch()
    batch = TrustRegion(GaussNewtonModel(), solver="lstsq", max_nfev=12).solve_batch(lambda x: decay(x) - data, x0)
    assert batch["x"] is batch.x and "success" in batch and "calls" in list(batch.keys())
    assert batch.statuses[4] is Status.GTOL and batch.messages[4] == Status.GTOL.message
    torch.testing.assert_close(batch.success, batch.status > 0)
    single = batch.problem(0)
    assert single.status == batch.statuses[0] and single.x is not None and single.cost == float(batch.cost[0])
    assert single.nfev == int(batch.nfev[0]) and single.jac.shape == (T.numel(), 3)
    torch.testing.assert_close(batch.optimality, batch.grad.abs().amax(1))
    assert repr(batch).startswith("BatchResult(problems=5, succeeded=")
    with pytest.raises(IndexError, match="index must be an int"):
        batch.problem(5)
    with pytest.raises(dataclasses_error()):
        batch.x = None


def dataclasses_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_vmap_over_solve_does_not_work():
    """The documented limitation: the controller's control flow reads values from the device."""
    x0 = torch.ones(3, 2, dtype=torch.float64)
    solver = TrustRegion(GaussNewtonModel())
    with pytest.raises(RuntimeError, match="data-dependent control flow"):
        torch.func.vmap(lambda start: solver.solve(lambda x: x[0] * torch.exp(-x[1] * T) - 1, start).x)(x0)


def _badly_scaled_rows(x, big):
    """Row b: zero residual at (1, 2, 3, 4) with the columns of x₀ and x₃ in J equal to ``big[b]``."""
    b = big[:, None]
    return torch.cat(
        [b * (x[:, :1] - 1), x[:, 1:2] * x[:, 2:3] - 6, x[:, 2:3] - 3, b * (x[:, 3:] - 4)], dim=1
    )


@pytest.mark.parametrize(("dtype", "big"), [(torch.float64, 1e100), (torch.float32, 1e12)])
def test_cg_unscaled_badly_scaled_rows_reach_the_minimizer(dtype, big):
    # x_scale=1.0: sᵀBs overflows float64/float32 in the rows with `big` columns (before:
    # RADIUS_COLLAPSED or a false XTOL at x0); the well-scaled row alongside is unaffected.
    scales = torch.tensor([big, 1.0], dtype=dtype)
    x0 = torch.tensor([[1.5, 1.0, 1.0, 3.0]] * 2, dtype=dtype)
    fit = TrustRegion(GaussNewtonModel(), solver="cg", x_scale=1.0).solve_batch(
        lambda x: _badly_scaled_rows(x, scales), x0
    )
    assert fit.success.tolist() == [True, True], fit.status.tolist()
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(fit.x, torch.tensor([[1.0, 2.0, 3.0, 4.0]] * 2, dtype=dtype), rtol=tol, atol=tol)


def test_cg_curvature_beyond_every_factor_is_a_radius_collapse_not_a_false_xtol():
    # J = diag(10¹⁶⁰, 1) in float64 (and 10¹⁵ in float32) with x_scale=1.0: no factor fits CG's
    # curvature. Each row used to end with XTOL (success) at x0; it fails honestly now.
    for dtype, big, x0 in [(torch.float64, 1e160, [1e-170, 5.0]), (torch.float32, 1e15, [1.5, 0.0])]:
        start = torch.tensor([x0, x0], dtype=dtype)
        fit = TrustRegion(GaussNewtonModel(), solver="cg", x_scale=1.0).solve_batch(
            lambda x, big=big: torch.stack([big * (x[:, 0] - (0 if big > 1e100 else 1)), x[:, 1] - 2], 1), start
        )
        assert fit.status.tolist() == [Status.RADIUS_COLLAPSED.code] * 2 and not bool(fit.success.any())
        assert torch.equal(fit.x, start)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize(
    "x0",
    [
        torch.tensor([[1, 1], [2, 1], [1, 2]]),
        torch.tensor([[1, 1], [2, 1], [1, 2]], dtype=torch.int32),
        [[1, 1], [2, 1], [1, 2]],
        ((1, 1), (2, 1), (1, 2)),
        np.array([[1, 1], [2, 1], [1, 2]]),
        np.array([[1.0, 1.0], [2.0, 1.0], [1.0, 2.0]], dtype=np.float32),
    ],
    ids=["int64 tensor", "int32 tensor", "nested list", "nested tuple", "numpy int", "numpy float32"],
)
def test_integer_and_non_tensor_x0_read_as_solve_reads_them(x0, solver):
    # As `solve` (`as_tensor_x0`): numbers, sequences and numpy arrays become float64, as
    # scipy reads them, and so does an integer tensor (solve_batch refused the tensor, TypeError).
    truth = torch.tensor([[2.0, 1.0], [3.0, 0.5], [1.5, 2.0]], dtype=torch.float64)
    data = truth[:, :1] * torch.exp(-truth[:, 1:] * T)
    method = TrustRegion(GaussNewtonModel(), solver=solver)
    fit = method.solve_batch(lambda x: x[:, :1] * torch.exp(-x[:, 1:] * T) - data, x0)
    assert fit.x.dtype == torch.float64 and fit.success.all()
    torch.testing.assert_close(fit.x, truth, rtol=1e-8, atol=1e-10)
    for b in range(3):
        single = method.solve(lambda x, b=b: x[:1] * torch.exp(-x[1:] * T) - data[b], x0[b])
        assert single.x.dtype == fit.x.dtype
        torch.testing.assert_close(fit.x[b], single.x, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(
    ("x0", "error", "message"),
    [
        (None, TypeError, "x0 must be a tensor, a number or a sequence of numbers, got NoneType"),
        ("1", TypeError, "x0 must be a tensor, a number or a sequence of numbers, got str"),
        (torch.ones(2, 2, dtype=torch.bool), TypeError, "x0 must have a real dtype, got torch.bool"),
        (torch.ones(2, 2, dtype=torch.complex128), TypeError, "x0 must have a real dtype, got torch.complex128"),
        ([[1, 2], [3]], TypeError, "x0 must be a tensor, a number or a sequence of numbers, got list"),
        (torch.ones(2, 2, device="meta"), ValueError, r"x0 must be on a device that holds data \(cpu, cuda, ...\)"),
    ],
)
def test_x0_errors_are_solves(x0, error, message):
    # The same errors as `solve` for the same inputs.
    method = TrustRegion(GaussNewtonModel())
    with pytest.raises(error, match=message):
        method.solve(lambda x: x, x0 if not isinstance(x0, Tensor) or x0.ndim < 2 else x0[0])
    with pytest.raises(error, match=message):
        method.solve_batch(lambda x: x, x0)


def test_input_errors():
    data, x0 = exponential_fits(3)

    def fun(x):
        return stacked(x, data)

    model = GaussNewtonModel()
    with pytest.raises(ValueError, match="callback is not supported by solve_batch"):
        TrustRegion(model, callback=print).solve_batch(fun, x0)
    with pytest.raises(TypeError, match="x_scale=BlockJacobi is not supported by solve_batch"):
        TrustRegion(model, x_scale=BlockJacobi(((1, 3),))).solve_batch(fun, x0)
    with pytest.raises(TypeError, match="solve_batch supports least squares and scipy's robust losses"):
        TrustRegion(GaussNewtonModel(loss="poisson_nll")).solve_batch(fun, x0)
    with pytest.raises(TypeError, match="x0 must have dtype float32 or float64 for solve_batch, got torch.float16"):
        TrustRegion(model).solve_batch(fun, x0.half())
    with pytest.raises(
        ValueError, match=r"x0 must be a non-empty 2-D tensor \(B problems, n variables\), got shape \(3,\)"
    ):
        TrustRegion(model).solve_batch(fun, x0[0])
    bad = x0.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"x0 must be finite, got NaN or inf entries in problems \[1\]"):
        TrustRegion(model).solve_batch(fun, bad)
    with pytest.raises(ValueError, match=r"fun\(x0\) must be finite, got NaN or inf residuals in problems \[0, 2\]"):
        TrustRegion(model).solve_batch(lambda x: fun(x) / torch.tensor([0.0, 1.0, 0.0])[:, None] * 0, x0)
    with pytest.raises(
        ValueError, match=r"fun must return one row of outputs per problem, shape \(3, m\), got shape \(60,\)"
    ):
        TrustRegion(model).solve_batch(lambda x: fun(x).reshape(-1), x0)
    with pytest.raises(ValueError, match=r"x_scale must be 'jac', .* got a tensor of shape \(2, 3\)"):
        TrustRegion(model).solve_batch(fun, x0, x_scale=torch.ones(2, 3))
    with pytest.raises(TypeError, match="compact must be a bool, got int"):
        TrustRegion(model).solve_batch(fun, x0, compact=1)
    with pytest.raises(ValueError, match="fun must not modify its argument in place"):
        TrustRegion(model).solve_batch(lambda x: fun(x.detach().mul_(1)), x0)


def test_factorization_against_torch_svd(generator):
    for m, n in [(30, 3), (4, 6), (5, 5), (2, 1)]:
        J = torch.randn(7, m, n, generator=generator, dtype=torch.float64)
        if n > 1:
            J[:, :, -1] = J[:, :, 0] + 1e-9 * J[:, :, -1]  # nearly rank deficient
        f = torch.randn(7, m, generator=generator, dtype=torch.float64)
        R, h = factorization.triangular_factor(J.transpose(1, 2), f)
        sigma, V, W = factorization.jacobi_svd(R)
        U, s, _ = torch.linalg.svd(J, full_matrices=False)
        k = min(m, n)
        torch.testing.assert_close(sigma[:k].T, s, rtol=0, atol=1e-14 * float(s.max()))
        torch.testing.assert_close(
            V.permute(2, 1, 0) @ V.permute(2, 0, 1), torch.eye(n, dtype=J.dtype).expand(7, n, n), rtol=0, atol=1e-14
        )
        torch.testing.assert_close(
            torch.einsum("bmn,bnj->bmj", J, V.permute(2, 0, 1)).norm(dim=1), sigma.T, rtol=0, atol=1e-13
        )
        coordinates = (W * h[:, None, :]).sum(0)[:k].T  # s_i u_iᵀf, up to the sign of u_i
        torch.testing.assert_close(
            coordinates.abs(), (s * (U.transpose(1, 2) @ f[..., None])[..., 0]).abs(), rtol=0, atol=1e-12
        )


@pytest.mark.parametrize(
    # controller has no examples of its own: TrustRegion.solve_batch's runs below.
    "module", [factorization, jacobian, lstsq, objective, result, scale], ids=lambda module: module.__name__
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_trust_region_solve_batch_example():
    import trustls.trust_region

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        finder = doctest.DocTestFinder()
        runner = doctest.DocTestRunner()
        for test in finder.find(trustls.trust_region.TrustRegion.solve_batch, globs={"TrustRegion": TrustRegion}):
            runner.run(test)
    assert runner.failures == 0


@pytest.mark.cuda
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    data, x0 = mixed_batch()
    gpu_data = data.cuda()
    for solver in SOLVERS:
        controller_ = TrustRegion(GaussNewtonModel(), solver=solver, max_nfev=12)
        cpu = controller_.solve_batch(lambda x: decay(x) - data, x0)
        gpu = controller_.solve_batch(lambda x: decay(x) - gpu_data, x0.cuda())
        assert gpu.x.device.type == "cuda"
        torch.testing.assert_close(gpu.status.cpu(), cpu.status)
        torch.testing.assert_close(gpu.x.cpu(), cpu.x, rtol=1e-8, atol=1e-10)


@settings(derandomize=True, max_examples=10, deadline=None)
@given(
    batch=st.integers(1, 6),
    shape=st.sampled_from([(8, 3), (5, 5), (3, 6), (12, 1)]),
    solver=st.sampled_from(SOLVERS),
    seed=st.integers(0, 2**16),
)
def test_linear_problems_reach_each_least_squares_solution(batch, shape, solver, seed):
    """fun(x)[b] = A_b x_b − y_b: every problem converges to its own minimum-norm solution, whatever its neighbours."""
    m, n = shape
    generator = torch.Generator().manual_seed(seed)
    A = torch.randn(batch, m, n, generator=generator, dtype=torch.float64)
    y = torch.randn(batch, m, generator=generator, dtype=torch.float64)
    fit = TrustRegion(GaussNewtonModel(), solver=solver).solve_batch(
        lambda x: torch.einsum("bmn,bn->bm", A, x) - y, torch.zeros(batch, n, dtype=torch.float64)
    )
    expected = torch.linalg.lstsq(A, y[..., None], driver="gelsd").solution[..., 0]
    assert fit.success.all()
    torch.testing.assert_close(fit.x, expected, rtol=1e-6, atol=1e-6 * float(expected.abs().max()))


@pytest.mark.parametrize("solver", SOLVERS)
def test_noise_floor_stop_as_single_solves(solver):
    """Tolerances below the rounding level: each problem stops at the noise floor as `solve` does.

    Near the floor the sign of a cost change of 1e-17 decides, and the batch sums each
    problem's squares in another order than a single solve: the stop may come some
    evaluations apart and by another of the tests that detect working precision (ftol
    and xtol at eps, the noise floor), at the same cost to rounding.
    """
    working_precision = {Status.FTOL, Status.XTOL, Status.FTOL_XTOL, Status.NOISE_FLOOR}
    data, x0 = exponential_fits(6, seed=11)
    controller_ = TrustRegion(GaussNewtonModel(), solver=solver, ftol=1e-300, xtol=1e-300, gtol=1e-300)
    batch = controller_.solve_batch(lambda x: stacked(x, data), x0)
    assert (batch.status == Status.NOISE_FLOOR.value).sum() >= 3
    for b in range(x0.shape[0]):
        single = controller_.solve(one(stacked, data, b), x0[b])
        assert batch.statuses[b] in working_precision and single.status in working_precision, f"problem {b}"
        torch.testing.assert_close(batch.x[b], single.x, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(batch.cost[b], torch.tensor(single.cost, dtype=torch.float64), rtol=1e-14, atol=0)


@pytest.mark.parametrize("solver", ["cg", "lstsq"])
def test_gradient_nan_everywhere_but_x0_collapses_the_radius(solver):
    # As `TrustRegion.solve` (tests/test_trust_region.py): trial points whose gradient is NaN are failed
    # trials, and the radius that collapses after them is no convergence (it was "xtol", success, at x0).
    def fun(x):
        b = torch.where(x == 0.0, 1.0 + x, x - x.detach())
        return (x - 1.0) + 0.0 * torch.sqrt(b)

    x0 = torch.zeros(2, 1, dtype=torch.float64)
    batch = TrustRegion(GaussNewtonModel(), solver=solver, x_scale=1.0).solve_batch(fun, x0)
    assert batch.status.tolist() == [Status.RADIUS_COLLAPSED.value] * 2 and not batch.success.any()
    assert torch.equal(batch.x, x0)


def test_nit_of_a_problem_the_budget_stops_at_x0_is_zero_as_in_solve():
    def rosenbrock(x):
        return torch.stack([10 * (x[:, 1] - x[:, 0] ** 2), 1 - x[:, 0]], dim=1)

    x0 = torch.tensor([[-1.2, 1.0]], dtype=torch.float64)
    method = TrustRegion(GaussNewtonModel(), solver="lstsq", max_nfev=1)
    fit = method.solve_batch(rosenbrock, x0)
    single = method.solve(lambda x: rosenbrock(x[None])[0], x0[0])
    assert int(fit.status[0]) == single.status == Status.MAX_NFEV
    assert int(fit.nit[0]) == single.nit == 0


def test_a_jacobian_that_differentiates_fun_row_by_row_works_in_solve_batch():
    """Found in review: solve_batch called a user's jacobian under no_grad (solve had been fixed)."""
    t = torch.linspace(0, 1, 8, dtype=torch.float64)

    def fun(X):
        return X[:, :1] * torch.exp(-X[:, 1:2] * t) - 2 * torch.exp(-1.5 * t)

    def jacobian(X):  # differentiates fun itself: one torch.autograd.grad per residual
        X = X.detach().requires_grad_()
        r = fun(X).sum(0)  # rows are independent: the sum's gradient is each problem's row
        return torch.stack([torch.autograd.grad(r[i], X, retain_graph=True)[0] for i in range(t.numel())], 1)

    result = TrustRegion(GaussNewtonModel(jacobian=jacobian), "lstsq").solve_batch(fun, torch.ones(3, 2, dtype=torch.float64))
    assert result.success.all()
    torch.testing.assert_close(result.x, torch.tensor([[2.0, 1.5]] * 3, dtype=torch.float64), rtol=0, atol=1e-8)


# -- found by a bug hunt of solve_batch -------------------------------------------------------------


@pytest.mark.parametrize("dtype, size", [(torch.float64, 1e200), (torch.float64, 1e-200), (torch.float32, 1e25)])
def test_jacobi_svd_of_matrices_whose_squares_leave_the_range(dtype, size, generator):
    """‖a‖² overflowed (or underflowed): every pair tested orthogonal, no rotation ran, and the column
    norms came back as singular values ([1.414, 1.414] for [1.732, 1.0]). Each matrix is now factored
    in units of its largest entry (a power of two), beside a neighbour of moderate size."""
    A = torch.randn(3, 3, 2, generator=generator, dtype=torch.float64)
    A[:, :, 0] *= size
    sigma, V, W = factorization.jacobi_svd(A.to(dtype))
    for b in range(2):
        expected = torch.linalg.svdvals(A[:, :, b])
        torch.testing.assert_close(sigma[:, b].double(), expected, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    for b in range(2):  # W = A V, to rounding relative to A's size
        AV = A[:, :, b].to(dtype).double() @ V[:, :, b].double()
        torch.testing.assert_close(W[:, :, b].double(), AV, rtol=0, atol=rtol * float(A[:, :, b].abs().max()))


@pytest.mark.parametrize("name", ["misra1a_start1", "kirby2_start1"])
def test_float32_lstsq_rank_is_decided_in_unit_columns_as_in_solve(name):
    """The batched cutoff lacked DenseLstsq's unit-column rank: float32 Misra1a stopped with xtol
    success at cost 9.76 (solve: 0.0623), Kirby2 at 15.2 (solve: 1.95)."""
    from trustls.problems import registry

    problem = registry.get(name)
    x0 = torch.stack([problem.x0, problem.x0 * 1.1]).float()
    fun = lambda X: torch.stack([problem.residual(x) for x in X])  # noqa: E731
    result = TrustRegion(GaussNewtonModel(), "lstsq").solve_batch(fun, x0)
    for cost in result.cost.tolist():
        assert cost == pytest.approx(problem.reference_cost, rel=1e-4)


def test_solve_batch_refuses_what_it_cannot_honour():
    model = GaussNewtonModel()
    x0 = torch.ones(2, 2, dtype=torch.float64)
    fun = lambda X: X - 2.0  # noqa: E731
    with pytest.raises(ValueError, match=r"bounds are not supported by solve_batch"):
        TrustRegion(model, "lstsq", bounds=([0.0, 0.0], [1.0, 1.0])).solve_batch(fun, x0)
    with pytest.raises(ValueError, match=r"gtol_test='cosine' is not supported by solve_batch"):
        TrustRegion(model, "lstsq", gtol_test="cosine").solve_batch(fun, x0)
    with pytest.raises(ValueError, match=r"fun must compute its outputs from x with torch operations that autograd "
                                         r"can differentiate, got outputs with no autograd path to x"):
        TrustRegion(model, "lstsq").solve_batch(lambda X: X.detach() ** 2 - 2.0, x0)


def test_a_tiny_initial_radius_and_integer_problem_indices_as_in_solve():
    fun = lambda X: torch.stack([X[:, 0] - 1.0, 10 * (X[:, 1] - X[:, 0] ** 2)], 1)  # noqa: E731
    x0 = torch.tensor([[-1.2, 1.0], [0.5, 0.5]], dtype=torch.float64)
    method = TrustRegion(GaussNewtonModel(), "lstsq", initial_radius=1e-300)
    batch = method.solve_batch(fun, x0)
    for b in range(2):
        single = method.solve(lambda x: fun(x[None])[0], x0[b])
        assert batch.statuses[b] == single.status and int(batch.nfev[b]) == single.nfev
        torch.testing.assert_close(batch.x[b], single.x, rtol=0, atol=1e-12)
    for index in (np.int64(1), torch.tensor(1), batch.cost.argmax()):
        assert batch.problem(index).cost == float(batch.cost[int(index)])
    with pytest.raises(IndexError, match=r"index must be an int in \[-2, 2\), got 1.0"):
        batch.problem(1.0)


def test_jacobi_svd_at_the_top_of_the_range_and_for_underdetermined_batches():
    """Review: a unit of 2^1024 (inf) made σ NaN for entries ≥ 2^1023; an m < n batch ran the unit-column
    SVD at every linearization (its n − m zero singular values are zero by shape, not by rank)."""
    A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    sigma, _, _ = factorization.jacobi_svd(torch.stack([A * 4e307, A], -1))  # largest entry 1.2e308 ≥ 2^1023
    torch.testing.assert_close(sigma[:, 0], torch.linalg.svdvals(A) * 4e307, rtol=1e-14, atol=0)
    calls = []
    original = lstsq._unit_rank
    try:
        lstsq._unit_rank = lambda *args: calls.append(1) or original(*args)
        fun = lambda X: torch.stack([X[:, 0] + X[:, 1] + X[:, 2] - 1.0, X[:, 0] * X[:, 1] - 0.5], 1)  # noqa: E731
        TrustRegion(GaussNewtonModel(), "lstsq").solve_batch(fun, torch.ones(3, 3, dtype=torch.float64))
    finally:
        lstsq._unit_rank = original
    assert calls == []


def test_solve_tests_gtol_at_a_boundary_step_whose_step_test_was_cleared():
    """Found by a differential hunt: `solve` skipped the gradient test where ftol held at a sound
    boundary step and was then cleared, and went on to FTOL two evaluations later; `solve_batch`
    and scipy stop with GTOL there."""
    data = torch.tensor([[-0.21728834056001284, -0.928739742152174, -2.293874411451727, -0.5276491141599126]],
                        dtype=torch.float64)
    x0 = torch.tensor([[-0.8387709132554562, -2.2348210751576416]], dtype=torch.float64)
    k = torch.arange(4, dtype=torch.float64)

    def residuals(x):
        u = x[:, 0:1] + k * x[:, 1:2]
        return torch.where(u > 0, u, torch.exp(u) - 1) - data

    method = TrustRegion(GaussNewtonModel(), solver="lstsq", ftol=1e-3, xtol=1e-3, gtol=1e-3, x_scale=[1.0, 2.0])
    batch = method.solve_batch(residuals, x0)
    single = method.solve(lambda x: residuals(x[None])[0], x0[0])
    assert single.status is Status.GTOL and batch.status.tolist() == [Status.GTOL.code]
    assert single.nfev == int(batch.nfev[0]) == 6 and single.optimality < 1e-3


def test_a_batch_without_residuals_is_refused_clearly():
    with pytest.raises(ValueError, match=r"outputs must be non-empty for each problem, got shape \(3, 0\)"):
        TrustRegion(GaussNewtonModel(), solver="lstsq").solve_batch(lambda x: x[:, :0], torch.ones(3, 2, dtype=torch.float64))
