"""Tests for trustls.problems.bal: loading, Rodrigues rotation, residual and sparse Jacobian."""


import pytest
import torch

from trustls.problems import bal as bal_module
from trustls.problems.bal import (
    BundleAdjustmentProblem,
    default_bal_path,
    load_bal,
    projection_jacobian,
    rodrigues_rotate,
)

INITIAL_COST = 850_912.46  # data/README.md


@pytest.fixture(scope="module")
def problem() -> BundleAdjustmentProblem:
    return load_bal()


@pytest.fixture(scope="module")
def small_problem(problem) -> BundleAdjustmentProblem:
    """The first 12 observations of cameras 0-2 in the real file, reindexed."""
    keep = torch.nonzero(problem.camera_indices < 3).squeeze(1)[:12]
    cameras_all, points_all = problem.split(problem.x0)
    point_ids, point_indices = torch.unique(problem.point_indices[keep], return_inverse=True)
    x0 = torch.cat((cameras_all[:3].reshape(-1), points_all[point_ids].reshape(-1)))
    return BundleAdjustmentProblem(
        n_cameras=3,
        n_points=len(point_ids),
        n_observations=len(keep),
        camera_indices=problem.camera_indices[keep].clone(),
        point_indices=point_indices,
        observations=problem.observations[keep].clone(),
        x0=x0,
    )


def skew(w: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros_like(w[..., 0])
    return torch.stack((
        torch.stack((zero, -w[..., 2], w[..., 1]), dim=-1),
        torch.stack((w[..., 2], zero, -w[..., 0]), dim=-1),
        torch.stack((-w[..., 1], w[..., 0], zero), dim=-1),
    ), dim=-2)


def dense_from_coo(rows, cols, values, shape):
    dense = torch.zeros(shape, dtype=values.dtype)
    dense.index_put_((rows, cols), values, accumulate=True)
    return dense


# --- loading -----------------------------------------------------------------


def test_load_counts_and_initial_cost(problem):
    assert (problem.n_cameras, problem.n_points, problem.n_observations) == (49, 7776, 31843)
    assert problem.x0.shape == (23_769,) and problem.x0.dtype == torch.float64
    assert problem.n_parameters == 23_769
    r = problem.residual(problem.x0)
    assert r.shape == (63_686,) and problem.n_residuals == 63_686
    assert 0.5 * r.square().sum().item() == pytest.approx(INITIAL_COST, rel=1e-6)


def test_split_layout(problem):
    cameras, points = problem.split(problem.x0)
    assert cameras.shape == (49, 9) and points.shape == (7776, 3)
    torch.testing.assert_close(torch.cat((cameras.reshape(-1), points.reshape(-1))), problem.x0)


def test_missing_file_raises():
    with pytest.raises(FileNotFoundError, match="BAL problem file not found.*no-such-file.txt"):
        load_bal("/nonexistent/no-such-file.txt")


def test_default_path_names_env_var(monkeypatch, tmp_path):
    missing = tmp_path / "absent.txt"
    monkeypatch.setenv("TRUSTLS_BAL_PATH", str(missing))
    with pytest.raises(FileNotFoundError, match=r"tried: .*absent.txt \(from \$TRUSTLS_BAL_PATH\)"):
        default_bal_path()


def test_default_path_is_the_bundled_file(monkeypatch):
    monkeypatch.delenv("TRUSTLS_BAL_PATH", raising=False)
    path = default_bal_path()
    assert path.name == "problem-49-7776-pre.txt.bz2" and path.is_file()
    assert "shared" not in path.parts


def test_plain_and_bz2_files_load_alike(tmp_path):
    import bz2

    text = "1 1 1\n0 0 1.0 2.0\n" + "0\n" * 6 + "1\n0\n0\n" + "0\n0\n-1\n"
    plain, packed = tmp_path / "tiny.txt", tmp_path / "tiny.txt.bz2"
    plain.write_text(text)
    packed.write_bytes(bz2.compress(text.encode()))
    torch.testing.assert_close(load_bal(plain).x0, load_bal(packed).x0)


def test_default_path_uses_env_var(monkeypatch, tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("1 1 1\n0 0 1.0 2.0\n" + "0\n" * 6 + "1\n0\n0\n" + "0\n0\n-1\n")
    monkeypatch.setenv("TRUSTLS_BAL_PATH", str(path))
    assert default_bal_path() == path
    tiny = load_bal()
    # Point (0, 0, -1) in front of an identity camera with f=1 projects to the origin.
    torch.testing.assert_close(tiny.residual(tiny.x0), torch.tensor([-1.0, -2.0], dtype=torch.float64))


def test_truncated_file_raises(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("1 1 1\n0 0 1.0 2.0\n1 2 3\n")
    with pytest.raises(ValueError, match="must hold 19 numbers .* got 10"):
        load_bal(path)


def test_wrong_x_shape_raises(small_problem):
    with pytest.raises(ValueError, match=r"`x` must have shape \(45,\); got \(44,\)"):
        small_problem.residual(small_problem.x0[:-1])


# --- Rodrigues rotation --------------------------------------------------------


@pytest.mark.parametrize("scale", [1e-9, 1e-4, 1e-2, 1.0, 3.0])
def test_rodrigues_matches_matrix_exp(scale):
    generator = torch.Generator().manual_seed(0)
    w = scale * torch.randn(16, 3, generator=generator, dtype=torch.float64)
    points = torch.randn(16, 3, generator=generator, dtype=torch.float64)
    expected = (torch.linalg.matrix_exp(skew(w)) @ points.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(rodrigues_rotate(points, w), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scale", [1e-9, 1e-4, 1e-2, 1.0])
def test_rodrigues_jacobian_matches_matrix_exp(scale):
    generator = torch.Generator().manual_seed(1)
    w = scale * torch.randn(3, generator=generator, dtype=torch.float64)
    point = torch.randn(3, generator=generator, dtype=torch.float64)
    jac = torch.func.jacrev(rodrigues_rotate, argnums=1)(point, w)
    expected = torch.func.jacrev(lambda v: torch.linalg.matrix_exp(skew(v)) @ point)(w)
    torch.testing.assert_close(jac, expected, rtol=1e-9, atol=1e-9)


def test_rodrigues_identity_and_finite_gradient_at_zero():
    point = torch.tensor([0.3, -1.2, 2.5], dtype=torch.float64)
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    rotated = rodrigues_rotate(point, w)
    assert torch.equal(rotated.detach(), point)
    (grad,) = torch.autograd.grad(rotated.sum(), w)
    assert torch.isfinite(grad).all()
    # d(R(w) X)/dw at w = 0 is -[X]_x, so the gradient of the sum is X x (1, 1, 1).
    torch.testing.assert_close(grad, torch.linalg.cross(point, torch.ones(3, dtype=torch.float64)))
    jac = torch.func.jacfwd(rodrigues_rotate, argnums=1)(point, w.detach())
    torch.testing.assert_close(jac, -skew(point))


# --- residual and Jacobian -------------------------------------------------------


# Camera 0's rotation: as loaded, zero, and of squared angle just below and
# above the switch to the Taylor series (eps^(1/3) ≈ 6.1e-6 in float64).
@pytest.mark.parametrize("theta2", [None, 0.0, 5e-6, 8e-6, 1e-3], ids=["x0", "w=0", "below", "above", "1e-3"])
def test_jacobian_coo_matches_dense_jacrev(small_problem, theta2):
    x = small_problem.x0.clone()
    if theta2 is not None:
        x[0:3] = torch.tensor([1.0, -2.0, 2.0], dtype=x.dtype) * (theta2 / 9.0) ** 0.5
    rows, cols, values = small_problem.jacobian_coo(x)
    assert rows.shape == cols.shape == values.shape == (24 * small_problem.n_observations,)
    shape = (small_problem.n_residuals, small_problem.n_parameters)
    dense = dense_from_coo(rows, cols, values, shape)
    expected = torch.func.jacrev(small_problem.residual)(x)
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(dense, expected, rtol=1e-10, atol=1e-10)


def test_jacobian_coo_matches_jvp_on_full_problem(problem):
    rows, cols, values = problem.jacobian_coo(problem.x0)
    assert values.shape == (24 * 31_843,)
    assert int(rows.max()) == problem.n_residuals - 1 and int(cols.max()) < problem.n_parameters
    generator = torch.Generator().manual_seed(2)
    v = torch.randn(problem.n_parameters, generator=generator, dtype=torch.float64)
    _, jv = torch.func.jvp(problem.residual, (problem.x0,), (v,))
    sparse_jv = torch.zeros(problem.n_residuals, dtype=torch.float64).index_add_(0, rows, values * v[cols])
    torch.testing.assert_close(sparse_jv, jv, rtol=1e-10, atol=1e-8)


def test_float32_smoke(problem):
    r32 = problem.residual(problem.x0.float())
    assert r32.dtype == torch.float32
    assert 0.5 * r32.double().square().sum().item() == pytest.approx(INITIAL_COST, rel=1e-4)


@pytest.mark.parametrize("theta2", [1e-3, 4e-3, 6e-3, 0.1])  # float32 switches to the series at 4.9e-3
def test_projection_jacobian_float32_matches_autograd(small_problem, theta2):
    cameras, points = small_problem._gathered(small_problem.x0)
    cameras, points = cameras.float().clone(), points.float()
    cameras[:, 0:3] = torch.tensor([1.0, -2.0, 2.0]) * (theta2 / 9.0) ** 0.5

    def project(q):
        return bal_module._project(q[:, :9], q[:, 9:])

    q = torch.cat((cameras, points), dim=1)
    _, pullback = torch.func.vjp(project, q)
    selectors = torch.eye(2).unsqueeze(1).expand(2, q.shape[0], 2)
    expected = torch.func.vmap(pullback)(selectors)[0].transpose(0, 1)
    actual = projection_jacobian(cameras, points)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected, rtol=2e-4, atol=2e-4 * float(expected.abs().max()))


def test_projection_jacobian_checks_shapes():
    with pytest.raises(ValueError, match=r"cameras must have shape \(M, 9\), got \(4, 8\)"):
        projection_jacobian(torch.zeros(4, 8), torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"points must have shape \(4, 3\), got \(5, 3\)"):
        projection_jacobian(torch.zeros(4, 9), torch.zeros(5, 3))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu(small_problem):
    x = small_problem.x0.cuda()
    torch.testing.assert_close(small_problem.residual(x).cpu(), small_problem.residual(small_problem.x0))
    rows, cols, values = small_problem.jacobian_coo(x)
    assert rows.device == x.device
    torch.testing.assert_close(values.cpu(), small_problem.jacobian_coo(small_problem.x0)[2])
