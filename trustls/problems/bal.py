r"""Bundle Adjustment in the Large (BAL): a large sparse least-squares test problem.

The BAL data set (Agarwal, Snavely, Seitz & Szeliski, "Bundle Adjustment in the
Large", ECCV 2010) poses bundle adjustment as nonlinear least squares
:math:`\min_x \tfrac12 \|r(x)\|^2` over cameras and 3-D points.

Model (`trustls.problems.bal_camera`). Camera :math:`c` has nine parameters
(a Rodrigues rotation vector, a translation, a focal length and two radial
distortion coefficients) and point :math:`j` three coordinates; an
observation :math:`(c, j, u, v)` contributes the two residuals
:math:`r = f d p - (u, v)` of the camera's projection :math:`p` of the point,
distorted by :math:`d`.

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

# rodrigues_rotate and projection_jacobian (and _project) stay importable from here.
from trustls.problems.bal_camera import (
    CAMERA_SIZE,
    POINT_SIZE,
    _project,
    projection_jacobian,
    rodrigues_rotate,
)

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
