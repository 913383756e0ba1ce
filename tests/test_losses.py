"""Losses against torch, autograd and scipy (`trustls.losses`).

Oracles, all independent of the code under test:

* the values of ``torch.nn.functional``'s losses, and their gradient and
  Hessian with respect to the outputs by ``torch.func`` (float64: the
  factor's SᵀS must equal the autograd Hessian to 1e-10);
* scipy's ``construct_loss_function`` and ``scale_for_robust_loss_function``
  for the robust losses (`tests/scipy_oracle.py`): the same cost, ρ′f, and
  the same scaled J and f.
"""

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy_oracle import scipy_robust_loss

from trustls.losses import (
    LOSSES,
    Arctan,
    BinaryCrossEntropyWithLogits,
    CallableRobustLoss,
    Cauchy,
    CrossEntropy,
    GaussianNLL,
    Huber,
    Loss,
    LossLinearization,
    PoissonNLL,
    SoftL1,
    SquaredError,
    resolve_loss,
)
from trustls.operators import DenseOperator, SoftmaxFactor, effective_jacobian

F64 = torch.float64


def _randn(generator, *shape, scale=1.0):
    return scale * torch.randn(*shape, generator=generator, dtype=F64)


# --- the negative log-likelihoods against torch ------------------------------------------------------------

# name -> (loss, outputs(generator), targets(generator, outputs), torch reference(outputs, targets))
def _nll_cases():
    def ce_indices(shape, reduction):
        def targets(g, z):
            dim = 1 if z.ndim >= 2 else 0
            batch = z.shape[:dim] + z.shape[dim + 1 :]
            return torch.randint(0, z.shape[dim], batch, generator=g)

        return (CrossEntropy(reduction=reduction), lambda g: _randn(g, *shape, scale=3.0), targets,
                lambda z, t: F.cross_entropy(z, t, reduction=reduction))

    def ce_probabilities(shape, reduction, mass=1.0):
        def targets(g, z):
            return mass * torch.softmax(_randn(g, *z.shape), dim=1 if z.ndim >= 2 else 0)

        return (CrossEntropy(reduction=reduction), lambda g: _randn(g, *shape, scale=3.0), targets,
                lambda z, t: F.cross_entropy(z, t, reduction=reduction))

    def bce(reduction):
        return (BinaryCrossEntropyWithLogits(reduction=reduction), lambda g: _randn(g, 5, 3, scale=4.0),
                lambda g, z: torch.rand(z.shape, generator=g, dtype=F64),
                lambda z, t: F.binary_cross_entropy_with_logits(z, t, reduction=reduction))

    def gaussian(variance, full, reduction):
        var = variance if isinstance(variance, float) else variance.clone()
        return (GaussianNLL(var, full, reduction=reduction), lambda g: _randn(g, 4, 3),
                lambda g, z: _randn(g, *z.shape),
                lambda z, t: F.gaussian_nll_loss(z, t, torch.as_tensor(var, dtype=F64).expand_as(z), full=full,
                                                 reduction=reduction))

    def poisson(full, reduction):
        return (PoissonNLL(full=full, reduction=reduction), lambda g: _randn(g, 4, 3),
                lambda g, z: torch.randint(0, 6, z.shape, generator=g).to(F64),
                lambda z, t: F.poisson_nll_loss(z, t, log_input=True, full=full, reduction=reduction))

    variance = torch.linspace(0.5, 2.0, 4, dtype=F64)[:, None]
    return {
        "ce-indices-NK-mean": ce_indices((6, 4), "mean"),
        "ce-indices-NK-sum": ce_indices((6, 4), "sum"),
        "ce-indices-K": ce_indices((5,), "mean"),
        "ce-indices-NKd-mean": ce_indices((3, 4, 2), "mean"),
        "ce-probabilities-mean": ce_probabilities((6, 4), "mean"),
        "ce-probabilities-NKd-sum": ce_probabilities((3, 4, 2), "sum"),
        "ce-probabilities-mass-2": ce_probabilities((5, 3), "mean", mass=2.0),
        "bce-mean": bce("mean"),
        "bce-sum": bce("sum"),
        "gaussian-mean": gaussian(0.7, False, "mean"),
        "gaussian-per-sample-full": gaussian(variance, True, "sum"),
        "poisson-mean": poisson(False, "mean"),
        "poisson-full-sum": poisson(True, "sum"),
    }


NLL_CASES = _nll_cases()


@pytest.fixture(params=sorted(NLL_CASES))
def nll_case(request, generator):
    loss, outputs, targets, reference = NLL_CASES[request.param]
    z = outputs(generator)
    return loss, z, targets(generator, z), reference


def test_value_matches_torch(nll_case):
    loss, z, t, reference = nll_case
    expected = reference(z, t)
    assert loss.value(z, t).dtype == F64
    torch.testing.assert_close(loss.value(z, t), expected, rtol=1e-13, atol=0)
    torch.testing.assert_close(loss.linearize(z, t).value, expected, rtol=1e-13, atol=0)


def test_gradient_matches_autograd(nll_case):
    loss, z, t, reference = nll_case
    expected = torch.func.grad(lambda z: reference(z, t))(z)
    torch.testing.assert_close(loss.linearize(z, t).gradient, expected, rtol=1e-12, atol=1e-15)


def test_curvature_factor_gives_the_autograd_hessian(nll_case):
    """SᵀS = ∂²L/∂z² for the convex losses, to 1e-10 in float64."""
    loss, z, t, reference = nll_case
    m = z.numel()
    hessian = torch.func.hessian(lambda z: reference(z, t))(z).reshape(m, m)
    S = loss.linearize(z, t).factor.to_dense()
    torch.testing.assert_close(S.T @ S, hessian, rtol=0, atol=1e-10 * float(hessian.abs().max()))


def test_residual_is_consistent_with_the_factor(nll_case):
    """Where a loss returns f̃ (GaussianNLL only), Sᵀf̃ = ∂L/∂z."""
    loss, z, t, _ = nll_case
    lin = loss.linearize(z, t)
    assert (lin.residual is not None) == isinstance(loss, GaussianNLL)
    if lin.residual is None:
        return
    torch.testing.assert_close(lin.factor.rmatvec(lin.residual), lin.gradient, rtol=1e-14, atol=1e-15)


def test_gaussian_nll_with_unit_variance_and_sum_is_least_squares(generator):
    z, t = _randn(generator, 7), _randn(generator, 7)
    gaussian = GaussianNLL(1.0, reduction="sum").linearize(z, t)
    squared = SquaredError().linearize(z, t)
    torch.testing.assert_close(gaussian.value, squared.value, rtol=1e-15, atol=0)
    torch.testing.assert_close(gaussian.gradient, squared.gradient, rtol=0, atol=0)
    torch.testing.assert_close(gaussian.residual, squared.residual, rtol=0, atol=0)
    assert torch.equal(gaussian.factor.diagonal, torch.ones(7, dtype=F64))


def test_squared_error_is_half_the_squared_norm_with_identity_factor(generator):
    z = _randn(generator, 3, 2)
    lin = SquaredError().linearize(z)
    assert lin.factor is None and lin.gradient is lin.residual
    torch.testing.assert_close(lin.value, 0.5 * (z**2).sum(), rtol=1e-15, atol=0)
    assert torch.equal(lin.gradient, z)
    assert SquaredError().value(z, torch.zeros_like(z)) == lin.value


def test_cross_entropy_ignores_probability_zero_times_masked_logit():
    """A logit of −inf (a masked class) with target 0 contributes 0, not NaN."""
    z = torch.tensor([[0.0, -math.inf, 1.0]], dtype=F64)
    t = torch.tensor([[0.5, 0.0, 0.5]], dtype=F64)
    lin = CrossEntropy().linearize(z, t)
    torch.testing.assert_close(lin.value, F.cross_entropy(z[:, [0, 2]], t[:, [0, 2]]), rtol=1e-15, atol=0)
    assert torch.isfinite(lin.gradient).all() and torch.isfinite(lin.factor.to_dense()).all()
    assert lin.gradient[0, 1] == 0


# --- numerics: large logits, underflow, half precision ------------------------------------------------------------


def test_cross_entropy_with_huge_logits_is_finite():
    z = torch.tensor([[1e30, -1e30, 0.0], [5e3, 0.0, -5e3]], dtype=torch.float32)
    t = torch.tensor([1, 0])
    lin = CrossEntropy(reduction="sum").linearize(z, t)
    torch.testing.assert_close(lin.value, torch.tensor(2e30 + 5e3, dtype=F64), rtol=1e-7, atol=0)
    assert torch.isfinite(lin.gradient).all()
    assert torch.equal(lin.gradient, torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]]))
    assert torch.isfinite(lin.factor.to_dense()).all()


def test_softmax_factor_keeps_probabilities_below_float64_underflow():
    """p = e⁻⁸⁰⁰ underflows to 0 but √p = e⁻⁴⁰⁰ does not, and SᵀS = H still."""
    z = torch.tensor([[800.0, 0.0, 790.0]], dtype=F64)
    lin = CrossEntropy().linearize(z, torch.tensor([0]))
    scale = lin.factor.scale
    assert float(torch.exp(torch.log_softmax(z, 1))[0, 1]) == 0.0
    assert float(scale[0, 1]) == pytest.approx(math.exp(-400.0), rel=1e-12)
    hessian = torch.func.hessian(lambda z: F.cross_entropy(z, torch.tensor([0])))(z).reshape(3, 3)
    S = lin.factor.to_dense()
    torch.testing.assert_close(S.T @ S, hessian, rtol=0, atol=1e-15)


def test_binary_cross_entropy_with_huge_logits_is_finite():
    z = torch.tensor([1e4, -1e4, 1e4, 0.0], dtype=torch.float32)
    t = torch.tensor([1.0, 0.0, 0.0, 0.5])
    lin = BinaryCrossEntropyWithLogits(reduction="sum").linearize(z, t)
    torch.testing.assert_close(lin.value, torch.tensor(1e4 + math.log(2), dtype=F64), rtol=1e-12, atol=0)
    assert torch.equal(lin.gradient, torch.tensor([0.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(lin.factor.diagonal, torch.tensor([0.0, 0.0, 0.0, 0.5]), rtol=1e-7, atol=0)


def test_binary_cross_entropy_of_infinite_logits_is_its_limit_not_nan():
    """Like CrossEntropy's masked logits: a logit of ±inf costs 0 where the target agrees, inf where not."""
    z = torch.tensor([-math.inf, -math.inf, math.inf, math.inf, -math.inf, 0.0], dtype=F64)
    t = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.5, 0.0], dtype=F64)
    loss = BinaryCrossEntropyWithLogits(reduction="sum")
    agree = loss.linearize(z[[0, 2, 5]], t[[0, 2, 5]])
    assert agree.value == math.log(2)
    assert torch.equal(agree.gradient, torch.tensor([0.0, 0.0, 0.5], dtype=F64))
    assert torch.equal(agree.factor.diagonal, torch.tensor([0.0, 0.0, 0.5], dtype=F64))
    assert loss.value(z, t) == math.inf
    for i in (1, 3, 4):
        assert loss.value(z[i : i + 1], t[i : i + 1]) == math.inf


def test_binary_cross_entropy_keeps_the_cost_of_a_good_fit_without_cancellation():
    z, t = torch.tensor([40.0, -40.0], dtype=F64), torch.tensor([1.0, 0.0], dtype=F64)
    value = BinaryCrossEntropyWithLogits(reduction="sum").value(z, t)
    torch.testing.assert_close(value, 2 * torch.log1p(torch.exp(torch.tensor(-40.0, dtype=F64))), rtol=1e-15, atol=0)
    assert value > 0  # softplus(z) − tz rounds to 0 in float64


def test_poisson_counts_may_be_integers_and_a_zero_rate_for_a_zero_count_costs_nothing():
    z = torch.tensor([0.3, -1.0, 2.0, -math.inf], dtype=F64)
    counts = torch.tensor([1, 0, 7, 0])
    for full in (False, True):
        loss = PoissonNLL(full=full, reduction="sum")
        integer, floating = loss.linearize(z[:3], counts[:3]), loss.linearize(z[:3], counts[:3].to(F64))
        assert integer.value == floating.value and torch.equal(integer.gradient, floating.gradient)
        torch.testing.assert_close(
            integer.value, F.poisson_nll_loss(z[:3], counts[:3].to(F64), full=full, reduction="sum"), rtol=1e-15,
            atol=0,
        )
        lin = loss.linearize(z, counts)
        assert lin.value == integer.value and lin.gradient[3] == 0 and lin.factor.diagonal[3] == 0
    assert PoissonNLL().value(z[3:], torch.tensor([1])) == math.inf


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["ce", "bce", "gaussian", "poisson", "cauchy", "linear"])
def test_half_precision_outputs(name, dtype, generator):
    """Computed in float64 from the half-precision outputs; gradient and S come back in their dtype."""
    z = (3 * torch.randn(6, 4, generator=generator)).to(dtype)
    z[0, 0] = 300.0  # a large logit: exp overflows float16, not the float64 computation
    targets = {
        "ce": torch.randint(0, 4, (6,), generator=generator),
        "bce": torch.rand(6, 4, generator=generator).to(dtype),
        "gaussian": torch.randn(6, 4, generator=generator).to(dtype),
        "poisson": torch.randint(0, 5, (6, 4), generator=generator).to(dtype),
        "cauchy": torch.randn(6, 4, generator=generator).to(dtype),
        "linear": torch.randn(6, 4, generator=generator).to(dtype),
    }[name]
    loss = {"ce": CrossEntropy(), "bce": BinaryCrossEntropyWithLogits(), "gaussian": GaussianNLL(2.0),
            "poisson": PoissonNLL(reduction="sum"), "cauchy": Cauchy(f_scale=2.0), "linear": SquaredError()}[name]
    if name == "poisson":
        z[0, 0] = 10.0  # e³⁰⁰ overflows float64: keep the rate finite
    lin = loss.linearize(z, targets)
    exact = loss.linearize(z.to(F64), targets if name == "ce" else targets.to(F64))
    assert lin.value.dtype == F64 and torch.isfinite(lin.value)
    torch.testing.assert_close(lin.value, exact.value, rtol=1e-15, atol=0)
    assert lin.gradient.dtype == dtype and torch.isfinite(lin.gradient).all()
    torch.testing.assert_close(lin.gradient, exact.gradient.to(dtype), rtol=0, atol=0)
    if lin.factor is not None:
        assert lin.factor.dtype == dtype
        assert torch.isfinite(lin.factor.to_dense()).all()


def test_float32_gradient_matches_torch_float32(generator):
    z = torch.randn(8, 5, generator=generator) * 4
    t = torch.randint(0, 5, (8,), generator=generator)
    expected = torch.func.grad(lambda z: F.cross_entropy(z, t))(z)
    torch.testing.assert_close(CrossEntropy().linearize(z, t).gradient, expected, rtol=1e-5, atol=1e-7)


# --- scipy's robust losses ---------------------------------------------------------------------------------------


def _numpy_cauchy(z):
    """A callable ρ written for scipy: numpy on a 1-D array (asarray: trustls passes a CPU tensor)."""
    z = np.asarray(z)
    t = 1 + z
    return np.vstack([np.log1p(z), 1 / t, -1 / t**2])


def _soft_l1_list(z):
    """A callable ρ returning a list, in operations numpy arrays and torch tensors share."""
    t = 1 + z
    return [2 * (t**0.5 - 1), t**-0.5, -0.5 * t**-1.5]


ROBUST = {
    "linear": None,
    "soft_l1": None,
    "huber": None,
    "cauchy": None,
    "arctan": None,
    "numpy-callable": _numpy_cauchy,
    "list-callable": _soft_l1_list,
}


@pytest.mark.parametrize("f_scale", [1.0, 0.3])
@pytest.mark.parametrize("name", sorted(ROBUST))
def test_robust_loss_matches_scipy(name, f_scale, generator):
    """Cost, ∇L = ρ′f, S J and f̃ equal scipy's, including where ρ′ + 2ρ″z < EPS is clipped.

    S J agrees to 1e-11 only: scipy's ρ′ + 2ρ″z cancels by about z·eps
    (z = 2.8e4 for the outlier f = 50 with C = 0.3), trustls' closed forms do not.
    """
    f = torch.cat([_randn(generator, 12, scale=2.0), torch.tensor([0.0, f_scale, -f_scale, 50.0], dtype=F64)])
    J = _randn(generator, f.numel(), 3)
    scipy_loss = ROBUST[name] or name
    cost, rho, J_scipy, f_scipy = scipy_robust_loss(f.numpy(), J.numpy(), scipy_loss, f_scale)
    loss = resolve_loss(scipy_loss, f_scale)
    lin = loss.linearize(f)

    torch.testing.assert_close(lin.value, torch.tensor(cost, dtype=F64), rtol=1e-14, atol=0)
    torch.testing.assert_close(loss.value(f), lin.value, rtol=0, atol=0)
    if name == "linear":
        assert lin.factor is None and torch.equal(lin.gradient, f)
        return
    torch.testing.assert_close(lin.gradient, torch.from_numpy(rho[1]) * f, rtol=1e-14, atol=0)
    Jt = effective_jacobian(DenseOperator(J), lin.factor).to_dense()
    torch.testing.assert_close(Jt, torch.from_numpy(J_scipy), rtol=1e-11, atol=0)
    # scipy's scaled f is an f̃ with Sᵀf̃ = ∇L (trustls does not return it: see trustls.losses.robust).
    assert lin.residual is None
    torch.testing.assert_close(lin.factor.rmatvec(torch.from_numpy(f_scipy)), lin.gradient, rtol=1e-11, atol=0)
    # The model's curvature J̃ᵀJ̃ and gradient Jᵀρ′f are scipy's J_sᵀJ_s and J_sᵀf_s.
    torch.testing.assert_close(Jt.T @ Jt, torch.from_numpy(J_scipy.T @ J_scipy), rtol=1e-11, atol=0)
    torch.testing.assert_close(J.T @ lin.gradient, torch.from_numpy(J_scipy.T @ f_scipy), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["huber", "cauchy", "arctan"])
def test_robust_curvature_is_clipped_where_concave(name):
    """ℓ″ = ρ′ + 2ρ″z: clipped to EPS for Huber beyond C, Cauchy beyond z = 1, arctan beyond z = 1/√3."""
    f = torch.tensor([0.1, 10.0], dtype=F64)
    diagonal = resolve_loss(name).linearize(f).factor.diagonal
    assert float(diagonal[0]) > 0.5
    assert float(diagonal[1]) == math.sqrt(torch.finfo(F64).eps)


@pytest.mark.parametrize("loss", [SoftL1(), Huber(), Cauchy(), Arctan()], ids=repr)
def test_closed_form_curvature_is_rho1_plus_2_rho2_z(loss):
    z = torch.tensor([0.0, 0.01, 0.3, 0.5, 0.99, 1.0, 1.5, 3.0, 10.0], dtype=F64)
    _, rho1, rho2 = loss.rho(z)
    # atol: the generic form leaves a rounding error (1e-16) where Huber's ℓ″ is exactly 0.
    torch.testing.assert_close(loss.curvature(z, rho1, rho2), rho1 + 2 * rho2 * z, rtol=1e-14, atol=1e-15)


def test_soft_l1_curvature_does_not_cancel_for_large_z():
    z = torch.tensor([1e8], dtype=F64)
    loss = SoftL1()
    assert float(loss.curvature(z, *loss.rho(z)[1:])) == pytest.approx((1 + 1e8) ** -1.5, rel=1e-15)


def test_soft_l1_is_accurate_for_tiny_residuals():
    """2(√(1+z) − 1) cancels for small z (scipy's form is off by 9e-5 relative at z = 1e-12);
    2z/(√(1+z) + 1) does not."""
    f = torch.tensor([1e-6], dtype=F64)
    z = 1e-12
    exact = 2 * z / (math.sqrt(1 + z) + 1)  # ρ(z) = z − z²/4 + ...
    assert float(SoftL1().value(f)) == pytest.approx(0.5 * exact, rel=1e-15)
    assert float(SoftL1().value(f)) == pytest.approx(0.5 * (z - z * z / 4), rel=1e-15)


def test_robust_loss_with_targets_uses_the_difference(generator):
    z, t = _randn(generator, 5), _randn(generator, 5)
    with_targets = Cauchy(f_scale=0.5).linearize(z, t)
    difference = Cauchy(f_scale=0.5).linearize(z - t)
    torch.testing.assert_close(with_targets.value, difference.value, rtol=0, atol=0)
    torch.testing.assert_close(with_targets.gradient, difference.gradient, rtol=0, atol=0)


# --- resolve_loss ------------------------------------------------------------------------------


def test_resolve_loss_maps_every_name():
    assert resolve_loss(None) == SquaredError()
    assert resolve_loss("linear", f_scale=3.0) == SquaredError()  # scipy ignores f_scale for "linear"
    assert resolve_loss("soft_l1", 2.0) == SoftL1(f_scale=2.0)
    assert resolve_loss("huber") == Huber() and resolve_loss("arctan", 0.5) == Arctan(f_scale=0.5)
    assert resolve_loss("cross_entropy") == CrossEntropy()
    assert resolve_loss("bce_with_logits") == BinaryCrossEntropyWithLogits()
    assert resolve_loss("gaussian_nll") == GaussianNLL() and resolve_loss("poisson_nll") == PoissonNLL()
    assert sorted(LOSSES) == sorted(["linear", "soft_l1", "huber", "cauchy", "arctan", "cross_entropy",
                                     "bce_with_logits", "gaussian_nll", "poisson_nll"])
    loss = CrossEntropy(reduction="sum")
    assert resolve_loss(loss) is loss
    assert resolve_loss(_numpy_cauchy, 2.0) == CallableRobustLoss(_numpy_cauchy, f_scale=2.0)


# --- errors ------------------------------------------------------------------------------------------------------

ERRORS = [
    (lambda: resolve_loss("l2"), ValueError,
     "loss must be one of ['linear', 'soft_l1', 'huber', 'cauchy', 'arctan', 'cross_entropy', 'bce_with_logits', "
     "'gaussian_nll', 'poisson_nll'], a callable or a Loss, got 'l2'"),
    (lambda: resolve_loss(3), TypeError, "loss must be a string, a callable or a Loss, got int"),
    (lambda: resolve_loss("huber", f_scale=0.0), ValueError, "f_scale must be a positive finite number, got 0.0"),
    (lambda: resolve_loss("huber", f_scale=True), TypeError, "f_scale must be a positive number, got bool"),
    (lambda: resolve_loss("cross_entropy", f_scale=2.0), ValueError,
     "f_scale applies to scipy's robust losses and callables only, got f_scale=2.0 with loss='cross_entropy'"),
    (lambda: resolve_loss(Huber(), f_scale=2.0), ValueError,
     "f_scale applies to scipy's robust losses and callables only, got f_scale=2.0 with a Huber object"),
    (lambda: Cauchy(f_scale=-1.0), ValueError, "f_scale must be a positive finite number, got -1.0"),
    (lambda: CallableRobustLoss(3), TypeError, "function must be callable, got int"),
    (lambda: CallableRobustLoss(lambda z: np.empty((3, z.size))).value(torch.ones(4, dtype=F64)), TypeError,
     "loss callable failed on its torch.Tensor argument z ('builtin_function_or_method' object cannot be interpreted "
     "as an integer); a loss written for scipy with numpy starts with z = np.asarray(z), or compute with torch "
     "operations (docs/losses.md)"),
    (lambda: CallableRobustLoss(lambda z: np.vstack([z, z])).value(torch.ones(4, dtype=F64)), ValueError,
     "loss callable must return an array of shape (3, 4) (ρ, ρ′, ρ″), got (2, 4)"),
    (lambda: CrossEntropy(reduction="none"), ValueError, "reduction must be one of ['mean', 'sum'], got 'none'"),
    (lambda: CrossEntropy().value(torch.zeros(2, 3)), ValueError,
     "CrossEntropy needs targets: pass them, or make fun return (outputs, targets)"),
    (lambda: CrossEntropy().value([1.0], torch.tensor(0)), TypeError, "outputs must be a torch.Tensor, got list"),
    (lambda: CrossEntropy().value(torch.zeros(2, 3, dtype=torch.int64), torch.tensor([0, 1])), TypeError,
     "outputs must be a floating tensor, got dtype torch.int64"),
    (lambda: SquaredError().value(torch.zeros(0)), ValueError, "outputs must be non-empty, got shape (0,)"),
    (lambda: CrossEntropy().value(torch.zeros(2, 3), torch.tensor([0, 3])), ValueError,
     "targets of CrossEntropy must be class indices in [0, 3), got values from 0 to 3"),
    (lambda: CrossEntropy().value(torch.zeros(2, 3), torch.tensor([-1, 2])), ValueError,
     "targets of CrossEntropy must be class indices in [0, 3), got values from -1 to 2"),
    (lambda: CrossEntropy().value(torch.zeros(2, 3), torch.tensor([0, 1, 2])), ValueError,
     "targets of CrossEntropy with class indices must have shape (2,) (the outputs' shape (2, 3) without class "
     "dimension 1), got (3,)"),
    (lambda: CrossEntropy().value(torch.zeros(2, 3), torch.zeros(2, 2)), ValueError,
     "targets of CrossEntropy must have the outputs' shape (2, 3), got (2, 2)"),
    (lambda: CrossEntropy().value(torch.zeros(2, 3), torch.tensor([True, False])), TypeError,
     "targets of CrossEntropy must be integer class indices or floating probabilities, got torch.bool"),
    (lambda: CrossEntropy().value(torch.zeros(1, 2), torch.tensor([[1.5, -0.5]])), ValueError,
     "targets of CrossEntropy with class probabilities must be non-negative, got a minimum of -0.5"),
    (lambda: CrossEntropy().value(torch.zeros(1, 2), [0]), TypeError, "targets must be a torch.Tensor, got list"),
    (lambda: BinaryCrossEntropyWithLogits().value(torch.zeros(3), torch.tensor([0, 1, 1])), TypeError,
     "targets of BinaryCrossEntropyWithLogits must be a floating tensor, got dtype torch.int64"),
    (lambda: PoissonNLL().value(torch.zeros(3)), ValueError,
     "PoissonNLL needs targets: pass them, or make fun return (outputs, targets)"),
    (lambda: BinaryCrossEntropyWithLogits().value(torch.zeros(3), torch.tensor([0.0, 1.0, 2.0])), ValueError,
     "targets of BinaryCrossEntropyWithLogits must lie in [0, 1] (probabilities), got values from 0.0 to 2.0 "
     "(1 outside)"),
    (lambda: BinaryCrossEntropyWithLogits().linearize(torch.zeros(3), torch.tensor([-0.5, 1.0, 1.5])), ValueError,
     "targets of BinaryCrossEntropyWithLogits must lie in [0, 1] (probabilities), got values from -0.5 to 1.5 "
     "(2 outside)"),
    (lambda: PoissonNLL().value(torch.zeros(3), torch.tensor([0.0, 1.0, -1.0])), ValueError,
     "targets of PoissonNLL must be non-negative counts, got a minimum of -1.0 (1 entries below 0 or NaN)"),
    (lambda: PoissonNLL().linearize(torch.zeros(2), torch.tensor([2, -3])), ValueError,
     "targets of PoissonNLL must be non-negative counts, got a minimum of -3.0 (1 entries below 0 or NaN)"),
    (lambda: PoissonNLL().value(torch.zeros(2), torch.tensor([1.0, math.nan])), ValueError,
     "targets of PoissonNLL must be non-negative counts, got a minimum of nan (1 entries below 0 or NaN)"),
    (lambda: PoissonNLL().value(torch.zeros(2), torch.tensor([True, False])), TypeError,
     "targets of PoissonNLL must be a floating tensor, got dtype torch.bool"),
    (lambda: PoissonNLL().value(torch.zeros(2), torch.tensor([1, 2, 3])), ValueError,
     "targets of PoissonNLL must have the outputs' shape (2,), got (3,)"),
    (lambda: SquaredError().value(torch.zeros(3), torch.zeros(3, 1)), ValueError,
     "targets of SquaredError must have the outputs' shape (3,), got (3, 1)"),
    (lambda: GaussianNLL(0.0), ValueError, "variance must be a positive finite number, got 0.0"),
    (lambda: GaussianNLL(torch.tensor([1.0, -1.0])), ValueError, "variance must be positive and finite everywhere"),
    (lambda: GaussianNLL(torch.tensor([1, 2])), TypeError, "variance must be a floating tensor, got dtype torch.int64"),
    (lambda: GaussianNLL(torch.ones(2)).value(torch.zeros(3)), ValueError,
     "variance of shape (2,) must broadcast to the outputs' shape (3,)"),
]


@pytest.mark.parametrize("call, error, message", ERRORS, ids=[str(i) for i in range(len(ERRORS))])
def test_errors(call, error, message):
    with pytest.raises(error, match=re.escape(message) + "$"):
        call()


# --- subclassing -------------------------------------------------------------------------------------------------


class LogCosh(Loss):
    """Σ log cosh(z − t): a user-defined convex loss with a diagonal curvature."""

    def linearize(self, outputs, targets=None):
        from trustls.operators import DiagonalFactor

        r = (outputs - targets).detach().double()
        value = (r.abs() + torch.log1p(torch.exp(-2 * r.abs())) - math.log(2)).sum()
        curvature = 1 - torch.tanh(r) ** 2
        return LossLinearization(value, torch.tanh(r).to(outputs.dtype), DiagonalFactor(curvature.sqrt()))


def test_a_user_loss_subclass_composes_with_the_effective_jacobian(generator):
    z, t = _randn(generator, 4), _randn(generator, 4)
    loss = LogCosh()
    reference = lambda z: torch.log(torch.cosh(z - t)).sum()  # noqa: E731
    lin = loss.linearize(z, t)
    torch.testing.assert_close(loss.value(z, t), reference(z), rtol=1e-14, atol=0)
    torch.testing.assert_close(lin.gradient, torch.func.grad(reference)(z), rtol=1e-14, atol=0)
    J = _randn(generator, 4, 2)
    Jt = effective_jacobian(DenseOperator(J), lin.factor).to_dense()
    torch.testing.assert_close(Jt.T @ Jt, J.T @ torch.func.hessian(reference)(z) @ J, rtol=1e-13, atol=0)


def test_softmax_factor_products_with_columns_match_the_dense_factor(generator):
    p = torch.softmax(_randn(generator, 3, 4), 1)
    factor = SoftmaxFactor(p.sqrt(), p, dim=1)
    S = factor.to_dense()
    V = _randn(generator, 3, 4, 5)
    torch.testing.assert_close(factor.matvec(V).reshape(12, 5), S @ V.reshape(12, 5), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(factor.rmatvec(V).reshape(12, 5), S.T @ V.reshape(12, 5), rtol=1e-14, atol=1e-15)
