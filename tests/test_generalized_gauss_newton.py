"""The loss layer end to end: GGN products on small networks, and subproblem steps.

1. On small networks x ↦ z = net(x) (data drawn inside ``fun`` from a seeded
   generator; ``fun`` returns ``(outputs, targets)``), J̃ᵀJ̃v with J̃ = S J
   built from matrix-free products equals the dense Jᵀ H_L J v, where
   J = ``torch.func.jacrev`` and H_L = ``torch.func.hessian`` of the torch
   loss in the outputs (float64, 1e-10); for a robust loss H_L is scipy's
   clipped diagonal. The gradient Jᵀ∇L equals autograd's gradient in x.
2. A `Linearization` built by hand from these pieces (what the model will
   do) goes through `SteihaugCG` and `DenseLstsq` unchanged, and their steps
   are the exact minimizer of the GGN model in the ball, computed from a
   dense eigendecomposition of B = J̃ᵀJ̃ and a bisection on the secular
   equation.
3. Where g has a component outside the range of J̃ᵀ (a parameter seen only
   by a logit whose probability is e⁻¹⁰⁰), today's `DenseLstsq`, which reads
   g's coordinates from a residual, misses it; an SVD step that appends that
   component as a zero singular value (the change recommended for the
   integration) is exact.
"""

import pytest
import torch
import torch.nn.functional as F

from trustls.losses import (
    BinaryCrossEntropyWithLogits,
    Cauchy,
    CrossEntropy,
    GaussianNLL,
    PoissonNLL,
    SquaredError,
)
from trustls.function import split_outputs
from trustls.models import GaussNewtonModel
from trustls.models import Linearization
from trustls.operators import (
    DenseOperator,
    NormalOperator,
)
from trustls.subproblem import DenseLstsq, SteihaugCG, secular_step

F64 = torch.float64
EPS = torch.finfo(F64).eps
SAMPLES, INPUTS, HIDDEN, CLASSES = 12, 3, 2, 3
LAYERS = [(HIDDEN, INPUTS), (CLASSES, HIDDEN)]
N_PARAMETERS = sum(w_out * w_in + w_out for w_out, w_in in LAYERS)  # 17
VARIANCE = torch.tensor([0.5, 1.0, 2.0], dtype=F64)


def _targets(name: str, generator: torch.Generator) -> torch.Tensor:
    shape = (SAMPLES, CLASSES)
    if name == "cross_entropy":
        return torch.randint(0, CLASSES, (SAMPLES,), generator=generator)
    if name == "cross_entropy_probabilities":
        return torch.softmax(torch.randn(*shape, generator=generator, dtype=F64), 1)
    if name == "bce":
        return torch.rand(*shape, generator=generator, dtype=F64)
    if name == "poisson":
        return torch.randint(0, 5, shape, generator=generator).to(F64)
    t = 0.3 * torch.randn(*shape, generator=generator, dtype=F64)
    if name == "cauchy":  # three outliers, in the region where scipy clips ℓ″
        t = t + torch.where(torch.arange(SAMPLES * CLASSES).reshape(shape) % 13 == 0, 10.0, 0.0)
    return t


def make_fun(name: str, style: str = "loop"):
    """A tanh network of the 17 parameters x; fun(x) returns (outputs (12, 3), targets)."""

    def fun(x):
        generator = torch.Generator().manual_seed(7)
        h = torch.randn(SAMPLES, INPUTS, generator=generator, dtype=F64)
        offset = 0
        for layer, (w_out, w_in) in enumerate(LAYERS):
            W = x[offset : offset + w_out * w_in].reshape(w_out, w_in)
            offset += w_out * w_in
            b = x[offset : offset + w_out]
            offset += w_out
            h = h @ W.T + b
            if layer == 0:
                h = torch.tanh(h)
        if style == "stack":  # the same outputs, one scalar expression per entry
            h = torch.stack([torch.stack([h[i, k] for k in range(CLASSES)]) for i in range(SAMPLES)])
        return h, _targets(name, generator)

    return fun


# name -> (loss, torch reference L(z, t), whether H_L is scipy's clipped diagonal)
LOSSES = {
    "cross_entropy": (CrossEntropy(), lambda z, t: F.cross_entropy(z, t), False),
    "cross_entropy_probabilities": (CrossEntropy(reduction="sum"),
                                    lambda z, t: F.cross_entropy(z, t, reduction="sum"), False),
    "bce": (BinaryCrossEntropyWithLogits(), F.binary_cross_entropy_with_logits, False),
    "gaussian": (GaussianNLL(VARIANCE), lambda z, t: F.gaussian_nll_loss(z, t, VARIANCE.expand_as(z)), False),
    "poisson": (PoissonNLL(), lambda z, t: F.poisson_nll_loss(z, t, log_input=True), False),
    "squared": (SquaredError(), lambda z, t: 0.5 * ((z - t) ** 2).sum(), False),
    "cauchy": (Cauchy(f_scale=2.0), lambda z, t: 0.5 * 4.0 * torch.log1p(((z - t) / 2.0) ** 2).sum(), True),
}


@pytest.fixture
def x(generator):
    return 0.8 * torch.randn(N_PARAMETERS, generator=generator, dtype=F64)


def output_curvature(name: str, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """H_L in the flattened outputs: autograd's Hessian, clipped on the diagonal for robust losses (scipy)."""
    _, reference, clipped = LOSSES[name]
    m = z.numel()
    H = torch.func.hessian(lambda z: reference(z, t))(z).reshape(m, m)
    return torch.diag(torch.diagonal(H).clamp(min=EPS)) if clipped else H


def linearize(fun, x: torch.Tensor, loss, *, dense: bool) -> Linearization:
    """The model's GGN linearization: J̃ = S J, g = Jᵀ∇L, B = J̃ᵀJ̃."""
    return GaussNewtonModel(loss=loss).linearize(fun, x, dense=dense)


def exact_step(B: torch.Tensor, g: torch.Tensor, radius: float) -> torch.Tensor:
    """argmin gᵀp + ½pᵀBp over ‖p‖ ≤ Δ for B ⪰ 0 (eigendecomposition, bisection on the secular equation).

    Eigenvalues below 1e-13·λ_max are zero. Where g has no component along
    them (softmax's shift invariance: g ∈ range(B)) they are dropped and the
    minimizer is the one of least norm, as `DenseLstsq` and CG from p = 0
    give; where it has one, the step is on the sphere (the easy case).
    """
    lam, Q = torch.linalg.eigh(B)
    gh = Q.T @ g
    flat = lam <= 1e-13 * lam[-1]
    if bool((gh[flat].abs() <= 1e-9 * torch.linalg.vector_norm(g)).all()):
        lam, Q, gh = lam[~flat], Q[:, ~flat], gh[~flat]
        if torch.linalg.vector_norm(gh / lam) <= radius:
            return -Q @ (gh / lam)
    lam = lam.clamp(min=0.0)
    low, high = 0.0, float(torch.linalg.vector_norm(g)) / radius
    for _ in range(200):
        middle = 0.5 * (low + high)
        if torch.linalg.vector_norm(gh / (lam + middle)) > radius:
            low = middle
        else:
            high = middle
    return -Q @ (gh / (lam + high))


def newton_norm(B: torch.Tensor, g: torch.Tensor) -> float:
    """‖B⁺g‖, the length of the (least-norm) Gauss-Newton step."""
    return float(torch.linalg.vector_norm(torch.linalg.pinv(B, hermitian=True) @ g))


def model(g: torch.Tensor, B: torch.Tensor, p: torch.Tensor) -> float:
    return float(g @ p + 0.5 * p @ B @ p)


# --- 1. products and gradients --------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["loop", "stack"])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_ggn_product_equals_dense_jacobian_hessian_jacobian(name, style, x, generator):
    fun = make_fun(name, style)
    lin = linearize(fun, x, LOSSES[name][0], dense=False)
    z, t = fun(x)
    J = torch.func.jacrev(lambda x: fun(x)[0].reshape(-1))(x)
    ggn = J.T @ output_curvature(name, z, t) @ J
    V = torch.randn(N_PARAMETERS, 4, generator=generator, dtype=F64)
    scale = float(torch.linalg.matrix_norm(ggn, 2))
    torch.testing.assert_close(lin.operator @ V, ggn @ V, rtol=1e-10, atol=1e-10 * scale)
    # The gradient and the cost are the torch loss's.
    reference = LOSSES[name][1]
    expected = torch.func.grad(lambda x: reference(*fun(x)))(x)
    torch.testing.assert_close(lin.gradient, expected, rtol=1e-10, atol=1e-12)
    assert lin.cost == pytest.approx(float(reference(z, t)), rel=1e-13)


def test_vjp_with_has_aux_splits_outputs_and_targets(x):
    """The integration's reverse-mode route: one call of fun gives z, the pullback and the targets."""
    fun = make_fun("cross_entropy")
    outputs, pullback, targets = torch.func.vjp(lambda x: split_outputs(fun(x)), x, has_aux=True)
    assert targets.dtype == torch.int64 and outputs.shape == (SAMPLES, CLASSES)
    lin = CrossEntropy().linearize(outputs, targets)
    (gradient,) = pullback(lin.gradient)
    expected = torch.func.grad(lambda x: F.cross_entropy(*fun(x)))(x)
    torch.testing.assert_close(gradient, expected, rtol=1e-12, atol=1e-14)


# --- 2. the subproblem solvers on the GGN linearization ----------------------------------------------------------


@pytest.mark.parametrize("where", ["interior", "boundary"])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_dense_lstsq_step_is_the_exact_ggn_trust_region_step(name, where, x):
    lin = linearize(make_fun(name), x, LOSSES[name][0], dense=True)
    B, g = lin.jacobian_matrix.T @ lin.jacobian_matrix, lin.gradient
    length = newton_norm(B, g)
    radius = 2.0 * length if where == "interior" else 0.3 * length
    solver = DenseLstsq(rtol=1e-12, max_iter=100)
    step = solver.solve(solver.prepare(lin), radius)
    expected = exact_step(B, g, radius)
    torch.testing.assert_close(step.step, expected, rtol=1e-8, atol=1e-8 * float(expected.norm()))
    assert step.hits_boundary == (where == "boundary")
    assert float(step.predicted_reduction) == pytest.approx(-model(g, B, step.step), rel=1e-9)
    assert float(lin.predicted_reduction(step.step)) == pytest.approx(float(step.predicted_reduction), rel=1e-9)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_steihaug_cg_interior_step_is_the_exact_ggn_step(name, x):
    lin = linearize(make_fun(name), x, LOSSES[name][0], dense=False)
    J = lin.jacobian.to_dense()
    B, g = J.T @ J, lin.gradient
    expected = exact_step(B, g, float("inf"))
    solver = SteihaugCG()
    step = solver.solve(solver.prepare(lin), 2.0 * float(expected.norm()))
    assert step.reason == "converged"
    # CG stops at ‖Bp + g‖ ≤ η‖g‖ with η = eps^(3/4) (n ≤ 32): the step is exact up to cond(B)·η.
    condition = float(torch.linalg.cond(B))
    tolerance = max(1e-10, 10 * condition * EPS**0.75)
    torch.testing.assert_close(step.step, expected, rtol=tolerance, atol=tolerance * float(expected.norm()))
    assert float(step.predicted_reduction) == pytest.approx(-model(g, B, step.step), rel=1e-9)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_steihaug_cg_boundary_step_on_the_effective_jacobian(name, x):
    """On the sphere CG's step is Steihaug's, not the exact minimizer: ‖p‖ = Δ, and its decrease lies between
    the Cauchy point's and the exact step's. Its first iterations are those of CG on the dense J̃ (later ones
    differ by rounding amplified by cond(B), as between any two product implementations)."""
    lin = linearize(make_fun(name), x, LOSSES[name][0], dense=False)
    J = lin.jacobian.to_dense()
    B, g = J.T @ J, lin.gradient
    radius = 0.3 * newton_norm(B, g)
    solver = SteihaugCG()
    step = solver.solve(solver.prepare(lin), radius)
    dense = Linearization(x, lin.residual, lin.cost, g, NormalOperator(J), DenseOperator(J))
    few = SteihaugCG(max_iter=3)
    torch.testing.assert_close(few.solve(few.prepare(lin), radius).step, few.solve(few.prepare(dense), radius).step,
                               rtol=1e-10, atol=1e-10 * radius)
    assert step.hits_boundary and float(step.norm) == pytest.approx(radius, rel=1e-10)
    cauchy = -g * min(radius / float(g.norm()), float(g @ g) / float(g @ B @ g))
    assert model(g, B, exact_step(B, g, radius)) <= model(g, B, step.step) + 1e-12 * abs(model(g, B, cauchy))
    assert model(g, B, step.step) <= model(g, B, cauchy)


def test_jacobi_scaled_linearization_solves_the_scaled_problem(x):
    """Linearization.scaled (x_scale="jac") works on J̃: the step solves the problem in the scaled variables."""
    lin = linearize(make_fun("cross_entropy"), x, CrossEntropy(), dense=True)
    scale = 1 / torch.linalg.vector_norm(lin.jacobian_matrix, dim=0)
    scaled = lin.scaled(scale)
    Jz = lin.jacobian_matrix * scale
    radius = 0.5
    for solver in (DenseLstsq(rtol=1e-12, max_iter=100), SteihaugCG()):
        step = solver.solve(solver.prepare(scaled), radius)
        if isinstance(solver, DenseLstsq):
            torch.testing.assert_close(step.step, exact_step(Jz.T @ Jz, scale * lin.gradient, radius),
                                       rtol=1e-8, atol=1e-8 * radius)
        assert float(step.norm) == pytest.approx(radius, rel=1e-10) or step.norm < radius


# --- 3. a gradient outside the range of J̃ᵀ ------------------------------------------------------------------------


def _confidently_wrong():
    """Logits A x + b; x[0] moves only sample 0's class-0 logit, whose target is class 0 at p ≈ e⁻¹⁰⁰."""
    generator = torch.Generator().manual_seed(3)
    samples, classes, n = 4, 3, 6
    A = torch.randn(samples * classes, n, generator=generator, dtype=F64)
    A[0, :] = 0.0
    A[:, 0] = 0.0
    A[0, 0] = 1.0
    b = torch.zeros(samples * classes, dtype=F64)
    b[0] = -100.0
    targets = torch.tensor([0, 1, 2, 0])

    def fun(x):
        return (A @ x + b).reshape(samples, classes), targets

    return fun, torch.zeros(n, dtype=F64)


def svd_step_with_null_component(J: torch.Tensor, g: torch.Tensor, radius: float) -> torch.Tensor:
    """The SVD trust-region step from Vᵀg, with g's part outside range(J̃ᵀ) as a zero singular value.

    The change recommended for `DenseLstsq` when the loss has no residual:
    c(α) = −sf/(s² + α) over the kept singular values and −‖g⊥‖/α along
    g⊥/‖g⊥‖; `secular_step` (with ``full_rank=False``) finds α unchanged.
    """
    m, n = J.shape
    _, s, Vh = torch.linalg.svd(J, full_matrices=False)
    keep = s > max(m, n) * EPS * s[0]
    s, V = s[keep], Vh[keep].T
    sf = V.T @ g
    outside = g - V @ sf
    if torch.linalg.vector_norm(outside) > EPS**0.5 * torch.linalg.vector_norm(g):
        s = torch.cat([s, s.new_zeros(1)])
        sf = torch.cat([sf, torch.linalg.vector_norm(outside).reshape(1)])
        V = torch.cat([V, (outside / torch.linalg.vector_norm(outside))[:, None]], dim=1)
    alpha, _ = secular_step(s, sf, radius, full_rank=False, rtol=1e-12, max_iter=100)
    return V @ (-sf / (s * s + alpha))


def test_gradient_outside_the_range_of_the_effective_jacobian_is_exact_with_a_zero_singular_value():
    fun, x = _confidently_wrong()
    lin = linearize(fun, x, CrossEntropy(), dense=True)
    J, g = lin.jacobian_matrix, lin.gradient
    assert float(torch.linalg.vector_norm(J[:, 0])) < 1e-20 and float(g[0]) == pytest.approx(-0.25)
    expected = exact_step(J.T @ J, g, 1.0)
    torch.testing.assert_close(svd_step_with_null_component(J, g, 1.0), expected, rtol=1e-9, atol=1e-9)
    solver = SteihaugCG()  # CG sees the flat direction in g itself
    step = solver.solve(solver.prepare(lin), 1.0)
    assert float(step.step[0]) > 0.5 * float(expected[0]) > 0


def test_dense_lstsq_takes_a_gradient_outside_the_range_of_the_effective_jacobian():
    fun, x = _confidently_wrong()
    lin = linearize(fun, x, CrossEntropy(), dense=True)
    J, g = lin.jacobian_matrix, lin.gradient
    solver = DenseLstsq(rtol=1e-12, max_iter=100)
    step = solver.solve(solver.prepare(lin), 1.0)
    torch.testing.assert_close(step.step, exact_step(J.T @ J, g, 1.0), rtol=1e-6, atol=1e-6)
