r"""Bundle Adjustment in the Large (BAL): a large sparse least-squares test problem.

The BAL data set (Agarwal, Snavely, Seitz & Szeliski, "Bundle Adjustment in the
Large", ECCV 2010) poses bundle adjustment as nonlinear least squares
:math:`\min_x \tfrac12 \|r(x)\|^2` over cameras and 3-D points.

Model. Camera :math:`c` has nine parameters: a Rodrigues (axis-angle) rotation
vector :math:`w \in \mathbb{R}^3`, a translation :math:`t \in \mathbb{R}^3`, a focal
length :math:`f` and two radial distortion coefficients :math:`k_1, k_2`. Point
:math:`j` has three coordinates :math:`X`. An observation :math:`(c, j, u, v)`
contributes two residuals::

    P = R(w) X + t                       (world -> camera frame)
    p = -P[:2] / P[2]                    (perspective division; BAL cameras look down -z)
    d = 1 + k1 ||p||^2 + k2 ||p||^4      (radial distortion)
    r = f d p - (u, v)

where :math:`R(w) = \exp([w]_\times)` is applied with Rodrigues' formula

.. math::
    R(w) X = X + \frac{\sin\theta}{\theta}\, w \times X
             + \frac{1 - \cos\theta}{\theta^2}\, w \times (w \times X),
    \qquad \theta = \|w\|,

whose two coefficients are evaluated by their Taylor series near :math:`\theta = 0`
(see :func:`rodrigues_rotate`).

Layout. The flat parameter vector holds all cameras first, then all points::

    x = [camera_0 (9), ..., camera_{C-1} (9), point_0 (3), ..., point_{N-1} (3)]

and residual ``2 i`` / ``2 i + 1`` is the u / v residual of observation ``i``. Each
observation touches 12 parameters (its camera's 9 and its point's 3), so the
Jacobian has exactly ``24 * n_observations`` structural nonzeros.

File format (text). Line 1: ``n_cameras n_points n_observations``; then one line
``camera point u v`` per observation; then 9 numbers per camera and 3 per point,
whitespace-separated.
"""

from __future__ import annotations

import bz2
import os
import pathlib
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "BundleAdjustmentProblem",
    "default_bal_path",
    "load_bal",
    "projection_jacobian",
    "rodrigues_rotate",
]

BAL_PATH_ENV = "TRUSTLS_BAL_PATH"
# The 49-camera Ladybug problem ships with the package, compressed with bzip2
# as the BAL data set distributes its files.
BUNDLED_BAL_PATH = pathlib.Path(__file__).with_name("bal_data") / "problem-49-7776-pre.txt.bz2"

CAMERA_SIZE = 9
POINT_SIZE = 3


def default_bal_path() -> pathlib.Path:
    """The BAL problem file that `load_bal` reads when given no path.

    The environment variable ``TRUSTLS_BAL_PATH``, when set, names the file
    (and a missing file there is reported, not silently replaced); otherwise
    the package's own copy of ``problem-49-7776-pre`` (bzip2-compressed).

    Raises:
        FileNotFoundError: if the file does not exist; the message says where it looked.

    Examples:
        >>> default_bal_path().name
        'problem-49-7776-pre.txt.bz2'
    """
    env = os.environ.get(BAL_PATH_ENV)
    candidate = pathlib.Path(env) if env else BUNDLED_BAL_PATH
    if candidate.is_file():
        return candidate
    source = f"from ${BAL_PATH_ENV}" if env else "the package's bundled copy; reinstall trustls"
    raise FileNotFoundError(f"BAL problem file not found; tried: {candidate} ({source})")


def _cross(a: Tensor, b: Tensor, dim: int = -1) -> Tensor:
    """Cross products of the 3-vectors along ``dim`` (-2: component-major)."""
    # Written out rather than torch.linalg.cross so that broadcasting works the
    # same under vmap/jacfwd/jacrev on every torch version.
    a0, a1, a2 = a.unbind(dim)
    b0, b1, b2 = b.unbind(dim)
    return torch.stack((a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0), dim=dim)


def rodrigues_rotate(points: Tensor, rotation_vectors: Tensor) -> Tensor:
    r"""Rotate ``points`` by the axis-angle vectors ``rotation_vectors``.

    Computes :math:`R(w) X = X + A\, w \times X + B\, w \times (w \times X)` with
    :math:`A = \sin\theta/\theta` and :math:`B = (1-\cos\theta)/\theta^2`, broadcasting
    over leading dimensions. :math:`B` is evaluated as
    :math:`\tfrac12 (\sin(\theta/2) / (\theta/2))^2`, which has no cancellation.

    For :math:`\theta^2` below ``eps ** (1/3)`` of the dtype both coefficients use
    their Taylor series in :math:`\theta^2` (truncation error
    :math:`O(\theta^6) = O(\mathrm{eps})`). The division branch is fed a dummy
    :math:`\theta^2 = 1` there (the "double where"), so neither its value nor its
    gradient can be NaN at :math:`w = 0`; ``torch.where`` alone would still
    backpropagate ``0 * inf = NaN`` through the unused branch.

    Args:
        points: ``(..., 3)`` points.
        rotation_vectors: ``(..., 3)`` Rodrigues vectors, broadcastable with ``points``.

    Returns:
        The rotated points, shape of the broadcast inputs.

    Examples:
        >>> w = torch.tensor([0.0, 0.0, torch.pi / 2])
        >>> y = rodrigues_rotate(torch.tensor([1.0, 0.0, 0.0]), w)
        >>> torch.allclose(y, torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
        True
    """
    w = rotation_vectors
    a, b = _rotation_coefficients((w * w).sum(dim=-1, keepdim=True))
    w_cross_x = _cross(w, points)
    return points + a * w_cross_x + b * _cross(w, w_cross_x)


def _rotation_coefficients(s: Tensor, *, derivatives: bool = False) -> tuple[Tensor, ...]:
    """A(s) = sin θ/θ and B(s) = (1 − cos θ)/s at s = θ², and with ``derivatives`` A'(s), B'(s).

    Below ``eps ** (1/3)`` every coefficient is its Taylor series in s, and the
    closed forms are fed s = 1 (see `rodrigues_rotate`). The derivatives are
    A' = (cos θ − A)/(2s) and B' = (A/2 − B)/s (see `projection_jacobian`).
    """
    small = s < torch.finfo(s.dtype).eps ** (1.0 / 3.0)
    s_safe = torch.where(small, torch.ones_like(s), s)
    theta = s_safe.sqrt()
    a_closed = torch.sin(theta) / theta
    half_sinc = torch.sin(0.5 * theta) / (0.5 * theta)
    b_closed = 0.5 * half_sinc * half_sinc
    a = torch.where(small, 1.0 - s / 6.0 + s * s / 120.0, a_closed)
    b = torch.where(small, 0.5 - s / 24.0 + s * s / 720.0, b_closed)
    if not derivatives:
        return a, b
    da = torch.where(small, -1.0 / 6.0 + s / 60.0 - s * s / 1680.0, (torch.cos(theta) - a_closed) / (2.0 * s_safe))
    db = torch.where(small, -1.0 / 24.0 + s / 360.0 - s * s / 13440.0, (0.5 * a_closed - b_closed) / s_safe)
    return a, b, da, db


def _project(cameras: Tensor, points: Tensor) -> Tensor:
    """Predicted image coordinates ``(..., 2)`` of ``points (..., 3)`` seen by ``cameras (..., 9)``."""
    rotated = rodrigues_rotate(points, cameras[..., 0:3]) + cameras[..., 3:6]
    p = -rotated[..., 0:2] / rotated[..., 2:3]
    focal, k1, k2 = cameras[..., 6:7], cameras[..., 7:8], cameras[..., 8:9]
    r2 = (p * p).sum(dim=-1, keepdim=True)
    distortion = 1.0 + r2 * (k1 + k2 * r2)
    return focal * distortion * p


@dataclass(frozen=True, eq=False)
class BundleAdjustmentProblem:
    """A BAL bundle adjustment problem; see the module docstring for the model.

    Attributes:
        n_cameras: number of cameras ``C``.
        n_points: number of 3-D points ``N``.
        n_observations: number of observations ``M``.
        camera_indices: ``(M,)`` int64 camera of each observation.
        point_indices: ``(M,)`` int64 point of each observation.
        observations: ``(M, 2)`` float64 observed image coordinates ``(u, v)``.
        x0: ``(9 C + 3 N,)`` float64 initial parameters, cameras first then points.

    Examples:
        >>> problem = load_bal()  # doctest: +SKIP
        >>> r = problem.residual(problem.x0)  # doctest: +SKIP
        >>> float(0.5 * r.square().sum())  # doctest: +SKIP
        850912.46...
    """

    n_cameras: int
    n_points: int
    n_observations: int
    camera_indices: Tensor
    point_indices: Tensor
    observations: Tensor
    x0: Tensor

    def __post_init__(self) -> None:
        m = self.n_observations
        for name in ("camera_indices", "point_indices"):
            value = getattr(self, name)
            if not isinstance(value, Tensor) or value.dtype != torch.int64 or value.shape != (m,):
                raise ValueError(f"`{name}` must be an int64 tensor of shape ({m},); "
                                 f"got {_describe(value)}")
        if not isinstance(self.observations, Tensor) or self.observations.shape != (m, 2):
            raise ValueError(f"`observations` must be a tensor of shape ({m}, 2); "
                             f"got {_describe(self.observations)}")
        if not isinstance(self.x0, Tensor) or self.x0.shape != (self.n_parameters,):
            raise ValueError(f"`x0` must be a tensor of shape ({self.n_parameters},); "
                             f"got {_describe(self.x0)}")
        if m and not (0 <= int(self.camera_indices.min()) and int(self.camera_indices.max()) < self.n_cameras):
            raise ValueError(f"`camera_indices` must lie in [0, {self.n_cameras}); "
                             f"got range [{int(self.camera_indices.min())}, {int(self.camera_indices.max())}]")
        if m and not (0 <= int(self.point_indices.min()) and int(self.point_indices.max()) < self.n_points):
            raise ValueError(f"`point_indices` must lie in [0, {self.n_points}); "
                             f"got range [{int(self.point_indices.min())}, {int(self.point_indices.max())}]")

    @property
    def n_parameters(self) -> int:
        """Length of the parameter vector, ``9 n_cameras + 3 n_points``."""
        return CAMERA_SIZE * self.n_cameras + POINT_SIZE * self.n_points

    @property
    def n_residuals(self) -> int:
        """Length of the residual vector, ``2 n_observations``."""
        return 2 * self.n_observations

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Views of ``x`` as ``cameras (n_cameras, 9)`` and ``points (n_points, 3)``."""
        if x.shape != (self.n_parameters,):
            raise ValueError(f"`x` must have shape ({self.n_parameters},); got {tuple(x.shape)}")
        n_camera_params = CAMERA_SIZE * self.n_cameras
        cameras = x[:n_camera_params].reshape(self.n_cameras, CAMERA_SIZE)
        points = x[n_camera_params:].reshape(self.n_points, POINT_SIZE)
        return cameras, points

    def _gathered(self, x: Tensor) -> tuple[Tensor, Tensor]:
        cameras, points = self.split(x)
        return (cameras[self.camera_indices.to(x.device)],
                points[self.point_indices.to(x.device)])

    def residual(self, x: Tensor) -> Tensor:
        """Reprojection residuals ``(2 n_observations,)``, ``(u, v)`` interleaved.

        Vectorized over observations and differentiable with autograd and
        ``torch.func`` (``jvp``, ``vjp``, ``jacrev``); dtype and device follow ``x``.
        """
        cameras, points = self._gathered(x)
        observed = self.observations.to(device=x.device, dtype=x.dtype)
        return (_project(cameras, points) - observed).reshape(-1)

    def jacobian_coo(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Exact sparse Jacobian of :meth:`residual` at ``x`` in COO form.

        Each observation's two residuals depend only on its own 12 parameters,
        so J is made of one 2x12 block per observation, computed in closed form
        for all observations at once by :func:`projection_jacobian` (about 3x
        faster here than two batched vector-Jacobian products through
        autograd). Entries are ordered observation-major, then residual (u, v),
        then the 12 block columns (9 camera, 3 point).

        Returns:
            ``(rows, cols, values)``, each of length ``24 n_observations``; indices
            int64 and values ``x.dtype``, all on ``x.device``.
        """
        cameras, points = self._gathered(x)
        blocks = projection_jacobian(cameras, points)  # (M, 2, 12)
        m = self.n_observations
        device = x.device
        camera_cols = (CAMERA_SIZE * self.camera_indices.to(device)).unsqueeze(1) \
            + torch.arange(CAMERA_SIZE, device=device)
        point_cols = (CAMERA_SIZE * self.n_cameras + POINT_SIZE * self.point_indices.to(device)).unsqueeze(1) \
            + torch.arange(POINT_SIZE, device=device)
        cols = torch.cat((camera_cols, point_cols), dim=1).unsqueeze(1).expand(m, 2, 12)
        rows = (2 * torch.arange(m, device=device).unsqueeze(1) + torch.arange(2, device=device))
        rows = rows.unsqueeze(2).expand(m, 2, 12)
        return rows.reshape(-1), cols.reshape(-1), blocks.reshape(-1)


    def jacobian_sparsity(self) -> Tensor:
        """The ``(2 M, 9 C + 3 N)`` sparsity pattern of :meth:`residual`'s Jacobian, for ``jac_sparsity``.

        Built from the camera and point indices alone, as a user would (the
        scipy cookbook's "Large-scale bundle adjustment"): both rows of each
        observation touch its camera's 9 columns and its point's 3.

        Returns:
            A coalesced torch sparse COO bool tensor with ``24 n_observations`` entries.

        Examples:
            >>> load_bal().jacobian_sparsity().shape  # doctest: +SKIP
            torch.Size([63686, 23769])
        """
        observation = torch.arange(self.n_observations)
        first_point_column = CAMERA_SIZE * self.n_cameras
        rows, cols = [], []
        for residual in range(2):
            for s in range(CAMERA_SIZE):
                rows.append(2 * observation + residual)
                cols.append(CAMERA_SIZE * self.camera_indices + s)
            for s in range(POINT_SIZE):
                rows.append(2 * observation + residual)
                cols.append(first_point_column + POINT_SIZE * self.point_indices + s)
        # Observation-major, each row's columns ascending (cameras come first in
        # x): the entries are sorted row-major, i.e. already coalesced.
        indices = torch.stack((torch.stack(rows, 1).reshape(-1), torch.stack(cols, 1).reshape(-1)))
        values = torch.ones(indices.shape[1], dtype=torch.bool)
        shape = (self.n_residuals, self.n_parameters)
        return torch.sparse_coo_tensor(indices, values, shape, check_invariants=False, is_coalesced=True)


def _dot3(a: Tensor, b: Tensor) -> Tensor:
    """Dot products of 3-vectors stored along dim -2 (component-major)."""
    return (a * b).sum(dim=-2, keepdim=True)


def projection_jacobian(cameras: Tensor, points: Tensor) -> Tensor:
    r"""The 2x12 Jacobian of each observation's projection, in closed form.

    For ``cameras (M, 9)`` and ``points (M, 3)`` returns ``(M, 2, 12)``: the
    derivatives of the predicted ``(u, v)`` (the residual minus the constant
    observation) with respect to ``(w, t, f, k1, k2, X)``, the model of the
    module docstring differentiated by the chain rule.

    Projection. With :math:`e = 2 (k_1 + 2 k_2 \|p\|^2)`, the derivative of
    :math:`f d p` in :math:`p` is :math:`f (d I_2 + e\, p p^T)` and that of
    :math:`p = -P_{xy}/P_z` in :math:`P` is :math:`-[I_2 \,|\, p] / P_z`, so the
    row :math:`k` of :math:`G = \partial (u, v) / \partial P` is

    .. math::
        g_k = -\frac{f}{P_z} \big(d\, \delta_{k1} + e\, p_k p_1,\;
              d\, \delta_{k2} + e\, p_k p_2,\; (d + e \|p\|^2)\, p_k\big).

    Rotation. With :math:`s = \theta^2`, :math:`u_1 = w \times X`,
    :math:`u_2 = w \times u_1 = w (w \cdot X) - s X` and the coefficients
    :math:`a(s) = \sin\theta/\theta`, :math:`b(s) = (1 - \cos\theta)/s` of
    :math:`R X = X + a u_1 + b u_2`,

    .. math::
        \partial_w (R X) = -a [X]_\times + b\,((w \cdot X) I + w X^T - 2 X w^T) + c\, w^T,
        \qquad c = 2 (a' u_1 + b' u_2),

    and :math:`\partial_X (R X) = R = I + a [w]_\times + b [w]_\times^2`. Since
    :math:`g^T [v]_\times = (g \times v)^T`, each row needs only dot and cross
    products of 3-vectors, no 3x3 matrix:

    .. math::
        g_k^T \partial_w (R X) &= -a\, g_k \times X
            + b\,((w \cdot X)\, g_k + (g_k \cdot w)\, X - 2 (g_k \cdot X)\, w) + (g_k \cdot c)\, w, \\
        g_k^T R &= g_k + a\, g_k \times w + b\,((g_k \cdot w)\, w - s\, g_k),

    while :math:`\partial_t = G` and :math:`(f, k_1, k_2)` give
    :math:`(d\, p,\; f \|p\|^2 p,\; f \|p\|^4 p)`. The coefficient derivatives
    are :math:`a' = (\cos\theta - a)/(2s)` and :math:`b' = (a/2 - b)/s`, replaced
    by their Taylor series :math:`-\tfrac16 + \tfrac{s}{60} - \tfrac{s^2}{1680}`
    and :math:`-\tfrac1{24} + \tfrac{s}{360} - \tfrac{s^2}{13440}` below the
    threshold of :func:`rodrigues_rotate`, where the closed forms cancel.
    The arithmetic runs component-major (each component of every observation
    contiguous), about 2x faster on a CPU than observation-major 3-vectors,
    whose length-3 reductions and strided cross products dominate otherwise.
    ``tests/test_bal_problem.py`` checks the result against autograd.
    """
    if cameras.ndim != 2 or cameras.shape[1] != CAMERA_SIZE:
        raise ValueError(f"cameras must have shape (M, {CAMERA_SIZE}), got {tuple(cameras.shape)}")
    if points.shape != (cameras.shape[0], POINT_SIZE):
        raise ValueError(f"points must have shape ({cameras.shape[0]}, {POINT_SIZE}), got {tuple(points.shape)}")
    # Component-major: a vector of every observation is (3, M), a scalar (1, M),
    # and G's rows are (2, 3, M).
    cameras, X = cameras.T.contiguous(), points.T.contiguous()
    w, t = cameras[0:3], cameras[3:6]
    focal, k1, k2 = cameras[6:7], cameras[7:8], cameras[8:9]
    s = _dot3(w, w)
    a, b, da, db = _rotation_coefficients(s, derivatives=True)
    u1 = _cross(w, X, dim=-2)
    u2 = _cross(w, u1, dim=-2)
    P = X + a * u1 + b * u2 + t

    p = -P[0:2] / P[2:3]
    r2 = _dot3(p, p)
    d = 1.0 + r2 * (k1 + k2 * r2)
    e = 2.0 * (k1 + 2.0 * k2 * r2)
    G = (e * p).unsqueeze(1) * torch.cat((p, r2)).unsqueeze(0)  # e p_k (p_1, p_2, |p|^2)
    G[0, 0] += d[0]
    G[1, 1] += d[0]
    G[:, 2] += d * p
    G *= -focal / P[2:3]

    c = 2.0 * (da * u1 + db * u2)
    Gw, GX = _dot3(G, w), _dot3(G, X)
    d_rotation = -a * _cross(G, X, dim=-2) + b * (_dot3(w, X) * G + Gw * X - 2.0 * GX * w) + _dot3(G, c) * w
    d_point = G + a * _cross(G, w, dim=-2) + b * (Gw * w - s * G)
    r2p = (focal * r2 * p).unsqueeze(1)
    blocks = torch.cat((d_rotation, G, (d * p).unsqueeze(1), r2p, r2p * r2, d_point), dim=1)  # (2, 12, M)
    return blocks.permute(2, 0, 1)


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def load_bal(path: str | os.PathLike | None = None) -> BundleAdjustmentProblem:
    """Read a BAL text file into a :class:`BundleAdjustmentProblem` (float64, CPU).

    Args:
        path: the file, plain text or bzip2-compressed (``.bz2``, as the BAL
            set distributes them); ``None`` uses :func:`default_bal_path`.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file does not hold the counts its header announces.

    Examples:
        >>> problem = load_bal()
        >>> problem.n_cameras, problem.n_points, problem.n_observations
        (49, 7776, 31843)
    """
    path = default_bal_path() if path is None else pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"BAL problem file not found: {path}")
    data = path.read_bytes()
    if path.suffix == ".bz2":
        data = bz2.decompress(data)
    # One bytes.split over the whole file and a single float conversion pass,
    # rather than a per-line parser.
    tokens = data.split()
    if len(tokens) < 3:
        raise ValueError(f"BAL file {path} must start with three counts; got {len(tokens)} tokens")
    n_cameras, n_points, n_observations = (int(t) for t in tokens[:3])
    expected = 3 + 4 * n_observations + CAMERA_SIZE * n_cameras + POINT_SIZE * n_points
    if len(tokens) != expected:
        raise ValueError(f"BAL file {path} must hold {expected} numbers for {n_cameras} cameras, "
                         f"{n_points} points and {n_observations} observations; got {len(tokens)}")
    obs_end = 3 + 4 * n_observations
    camera_indices = torch.tensor([int(t) for t in tokens[3:obs_end:4]], dtype=torch.int64)
    point_indices = torch.tensor([int(t) for t in tokens[4:obs_end:4]], dtype=torch.int64)
    uv = [float(t) for t in tokens[3:obs_end]]
    observations = torch.tensor(uv, dtype=torch.float64).reshape(n_observations, 4)[:, 2:].clone()
    x0 = torch.tensor([float(t) for t in tokens[obs_end:]], dtype=torch.float64)
    return BundleAdjustmentProblem(
        n_cameras=n_cameras,
        n_points=n_points,
        n_observations=n_observations,
        camera_indices=camera_indices,
        point_indices=point_indices,
        observations=observations,
        x0=x0,
    )
