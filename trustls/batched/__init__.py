"""Thousands of small least-squares problems solved at once: `TrustRegion.solve_batch`.

Fitting a model per pixel, per voxel, per spectrum or per frame means many
independent problems of the same shape. ``TrustRegion(...).solve_batch(fun,
x0)`` takes ``x0`` of shape (B, n) and a ``fun`` mapping (B, n) to (B, m),
row b depending on x0[b] only, and runs `TrustRegion`'s iteration for every
problem at once: the Jacobians of all problems from one vectorized call
(`trustls.batched.jacobian`), the subproblems vectorized over the batch
(`trustls.batched.lstsq`, `trustls.batched.cg`, on the factors of
`trustls.batched.factorization`), and the controller's own elementwise
decision functions on (B,) tensors (`trustls.batched.decision`). The
result is a `BatchResult` with a leading batch dimension.

``torch.func.vmap`` over `TrustRegion.solve` does not work: the controller
decides with Python control flow on values it reads from the device
(``while state.status is None``, ``if accepted``, the subproblem solvers'
exits), and ``vmap`` cannot batch a read of a batched value into a Python
bool (it raises on ``.item()`` and ``bool()`` of a batched tensor). Each
problem also needs its own number of iterations. `solve_batch` is the
vectorized equivalent.
"""

from trustls.batched.controller import solve_batch
from trustls.batched.jacobian import BatchedJacobianWarning
from trustls.batched.result import BatchResult

__all__ = ["BatchResult", "BatchedJacobianWarning", "solve_batch"]
