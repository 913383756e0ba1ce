"""Jacobian products from one evaluation of r with its autograd graph kept.

Classic (tape-based) reverse mode records the operations of one call
r = fun(x) with x a leaf that requires grad; the recorded graph then gives,
with no further call of ``fun`` (Griewank & Walther 2008, ch. 3-4):

* the VJP  u -> Jᵀu, one backward pass (``torch.autograd.grad``);
* the JVP  v -> J v, by the "double-backward" trick: the map u -> Jᵀu is
  linear in u, so its own VJP with cotangent v is (Jᵀ)ᵀ v = J v. Its graph is
  recorded once, by a backward pass with ``create_graph=True`` from a leaf u
  (any u: the map is linear; u = 1, not 0, so that a backward with a shortcut
  for zero cotangents still records its general path), and each J v is then
  one backward pass through that graph (Pearlmutter 1994; the "R-op from two
  L-ops" of Theano);
* k of either at once, by ``torch.func.vmap`` of that backward pass over
  the k cotangents.

Only the *backward* of ``fun`` is ever vmapped, never ``fun`` itself, so data
drawn inside ``fun`` from a generator, ``.item()`` and data-dependent Python
control flow are harmless; an autograd.Function needs a backward and, for the
JVP, a differentiable one, but no vmap or jvp rule. A batched product can
still fail where a backward formula has no batching rule (sparse matrix
products, some autograd.Functions): callers fall back to single products
(`trustls.models.dense_jacobian`, `trustls.operators.implicit`).

Classic autograd has less fixed cost per call than ``torch.func.vjp``, which
wraps every tensor of the call at a functorch level; see
``benchmarks/products.py`` and ``docs/jacobians.md``.

References:
    A. Griewank, A. Walther, "Evaluating Derivatives", 2nd ed., SIAM 2008.
    B. A. Pearlmutter, "Fast exact multiplication by the Hessian", Neural
    Computation 6(1), 1994.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from trustls.operators.backward import backward, backward_batched

__all__ = ["ResidualGraph"]


class ResidualGraph:
    """r(x) with its autograd graph kept: J products without another call of ``fun``.

    Build it with `evaluate` (one call of ``fun``). Every product retains the
    graph, so any number of them may follow; the graph lives as long as this
    object.

    Examples:
        >>> import torch
        >>> graph = ResidualGraph.evaluate(lambda x: x**2, torch.tensor([1.0, 3.0]))
        >>> graph.vjp(torch.tensor([1.0, 1.0])), graph.jvp(torch.tensor([1.0, 0.0]))
        (tensor([2., 6.]), tensor([2., 0.]))
    """

    def __init__(
        self, x: Tensor, residual: Tensor, saved_elements: int | None = None, saved_tensors: int | None = None
    ):
        self.x = x
        self.residual = residual
        self.saved_elements = saved_elements  # the graph's saved tensors' elements, when measured
        self.saved_tensors = saved_tensors  # and their number
        self._tangent: Tensor | None = None  # the leaf u of the double-backward graph
        self._pullback: Tensor | None = None  # Jᵀu, recorded with create_graph=True

    @classmethod
    def evaluate(cls, fun: Callable[[Tensor], Tensor], x: Tensor, *, measure: bool = False) -> ResidualGraph:
        """Call ``fun`` once at a detached copy of ``x`` that requires grad (x is not modified).

        With ``measure=True`` the elements of the tensors the graph saves for
        its backward are counted (`saved_elements`, and the tensors, `saved_tensors`): a batched pass through the
        graph holds one copy of them per product, so they bound what a batch
        may cost (`trustls.models.dense_jacobian`). They are counted by
        ``torch.autograd.graph.saved_tensors_hooks``. The pack hook keeps the
        tensor detached (autograd restores its history on unpacking, so double
        backward is unchanged) with its version, and the unpack hook raises
        autograd's own error when ``fun`` modified it in place afterwards: with
        hooks, autograd leaves that check to them. Where hooks of the caller's
        are active (``save_on_cpu``, say) or hooks are disabled, nothing is
        measured (`saved_elements` stays ``None``), so that theirs apply. A
        ``fun`` that refuses saved-tensor hooks (one that calls
        ``torch.func.grad``, ``vjp``, ``jacrev`` or ``hessian`` inside: torch
        raises under hooks) is called again without them, and nothing is
        measured either.
        """
        leaf = x.detach().requires_grad_()
        with torch.enable_grad():
            if not (measure and _hooks_free()):
                return cls(leaf, fun(leaf))
            count = [0, 0]

            def pack(tensor: Tensor) -> tuple[Tensor, int]:
                count[0] += tensor.numel()
                count[1] += 1
                return tensor.detach(), tensor._version

            def unpack(packed: tuple[Tensor, int]) -> Tensor:
                tensor, version = packed
                if tensor._version != version:  # the detached tensor shares the version counter
                    raise RuntimeError(
                        "one of the variables needed for gradient computation has been modified by an inplace "
                        f"operation: a tensor of shape {list(tensor.shape)} saved for backward is at version "
                        f"{tensor._version}; expected version {version} instead"
                    )
                return tensor

            try:
                with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
                    residual = fun(leaf)
            except RuntimeError as error:
                if _REFUSES_HOOKS not in str(error):
                    raise
                return cls(leaf, fun(leaf))
        return cls(leaf, residual, count[0], count[1])

    @property
    def shape(self) -> tuple[int, int]:
        """``(m, n)``, the shape of J."""
        return self.residual.shape[0], self.x.shape[0]

    @property
    def depends_on_x(self) -> bool:
        """Whether the graph reaches x at all (else J = 0)."""
        return self.residual.requires_grad

    @staticmethod
    def _backward(outputs: Tensor, inputs: Tensor, cotangents: Tensor, batched: bool) -> Tensor:
        # vmap over the backward rather than is_grads_batched=True: measured 1.2 to 5
        # times faster on vectorized residuals (m = 50 to 100), 20 % slower on Python
        # loops of scalar expressions (docs/jacobians.md).
        return backward_batched(outputs, inputs, cotangents) if batched else backward(outputs, inputs, cotangents)

    def vjp(self, u: Tensor) -> Tensor:
        """Jᵀu, one backward pass."""
        if not self.depends_on_x:
            return torch.zeros_like(self.x).detach()
        return self._backward(self.residual, self.x, u, batched=False)

    def vjp_batched(self, U: Tensor) -> Tensor:
        """Rows ``U @ J`` for ``U`` of shape ``(k, m)``: one backward pass vmapped over k cotangents."""
        if not self.depends_on_x:
            return torch.zeros(U.shape[0], self.x.shape[0], dtype=self.x.dtype, device=self.x.device)
        return self._backward(self.residual, self.x, U, batched=True)

    def prepare_jvp(self) -> None:
        """Record the graph of u -> Jᵀu (one backward pass with ``create_graph=True``).

        Raises:
            RuntimeError: if the backward of ``fun`` is not differentiable (then no
                J v can come from this graph; use VJPs). Detected: a backward
                without a graph, and one marked ``once_differentiable``; a backward
                that computes part of its result outside autograd (numpy) is not
                detectable, and its part of J v is lost (as in any double backward).
        """
        if self._pullback is not None or not self.depends_on_x:
            return
        with torch.enable_grad():
            # Any u₀ would do for a map linear in u, but a backward that takes a
            # shortcut for a zero cotangent would record a graph without u: ones.
            tangent = torch.ones_like(self.residual).detach().requires_grad_()
            pullback = torch.autograd.grad(
                self.residual, self.x, tangent, create_graph=True, allow_unused=True, materialize_grads=True
            )[0]
        if not pullback.requires_grad or _marked_once_differentiable(pullback):
            raise RuntimeError(
                "the backward of fun is not differentiable (an autograd.Function with a backward marked "
                "once_differentiable or computed outside autograd): J v needs a differentiable backward"
            )
        self._tangent, self._pullback = tangent, pullback

    def jvp(self, v: Tensor) -> Tensor:
        """J v by double backward (the graph of u -> Jᵀu is recorded on first use)."""
        self.prepare_jvp()
        if not self.depends_on_x:
            return torch.zeros_like(self.residual).detach()
        return self._backward(self._pullback, self._tangent, v, batched=False)

    def jvp_batched(self, V: Tensor) -> Tensor:
        """``(J Vᵀ)ᵀ`` for ``V`` of shape ``(k, n)``: k JVPs as one vmapped backward pass."""
        self.prepare_jvp()
        if not self.depends_on_x:
            return torch.zeros(V.shape[0], self.residual.shape[0], dtype=self.x.dtype, device=self.x.device)
        return self._backward(self._pullback, self._tangent, V, batched=True)


# torch.func's error under saved-tensor hooks: "torch.func.{grad, vjp, jacrev, hessian} don't yet support
# saved tensor hooks. Please open an issue with your use case."
_REFUSES_HOOKS = "support saved tensor hooks"


def _hooks_free() -> bool:
    """Whether saved-tensor hooks are enabled and none are active (False when torch cannot say)."""
    autograd = torch._C._autograd
    enabled = getattr(autograd, "_saved_tensors_hooks_is_enabled", None)
    top = getattr(autograd, "_top_saved_tensors_default_hooks", None)
    if enabled is None or top is None:  # pragma: no cover - torch versions without these queries
        return False
    try:
        return bool(enabled()) and top(False) is None
    except (RuntimeError, TypeError):  # pragma: no cover - another signature
        return False


def _marked_once_differentiable(tensor: Tensor) -> bool:
    """Whether the graph of ``tensor`` holds a node that forbids differentiating it.

    ``@once_differentiable`` hands the backward's outputs to a ``DelayedError``
    node (``torch::autograd::Error`` in the graph) whose inputs are fresh leaves: a backward pass towards u never visits
    it, so instead of raising it would silently drop that path from J v.
    """
    stack, seen = [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node.name().rsplit("::", 1)[-1] in ("Error", "DelayedError"):
            return True
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False
