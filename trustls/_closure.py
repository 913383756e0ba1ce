"""Jacobian products of a torch.optim closure with respect to a parameter list.

A `torch.optim` closure takes no argument: it reads the parameters of a module
directly, so ``torch.func`` (which differentiates a function of ``x``) does not
apply. The products are built instead with classic autograd on the parameter
list, from one evaluation of the closure with its graph:

* ``Jᵀu``: ``torch.autograd.grad(z, params, u)``, the graph kept for reuse;
* ``Jv``: the map u ↦ Jᵀu is linear, so ``J v`` is its VJP with cotangent v.
  One backward pass with ``create_graph=True`` at a cotangent u₀ records the
  graph of Jᵀu₀ as a function of u₀; each ``J v`` is then a backward pass
  through that graph (the "double-backward trick", Townsend 2017; the
  ``"vjp+double-backward"`` method of `trustls.operators.implicit`).
  `ClosureProducts` records it at u₀ = ∇L, the loss's gradient in the
  outputs, so that the gradient Jᵀ∇L comes out of that same pass.

A Gauss-Newton product JᵀJv thus costs two backward passes over graphs built
once per step; J itself is never formed, and memory grows with the
activations and the parameters, never with their product. The vectors are
flat, the layout that of `flatten` over the parameter list.

Half precision: for float16 or bfloat16 parameters the products run in the
parameters' dtype and their results are cast to the working dtype float32,
where the trust-region iteration runs (`trustls.trust_region`).

Memory. The recorded graph of u ↦ Jᵀu saves, beside the forward pass's own
tensors, the intermediate cotangents of the backward pass (one per layer,
activation-sized), which only a derivative with respect to the forward
activations would read: Jᵀu is linear in u, so every operation of the
backward pass is linear in its u-dependent input, and the derivative with
respect to that input needs only the other, u-independent, inputs. The
derivative ``J v`` is taken with respect to u₀ alone, and autograd computes
only the derivatives on paths to u₀. `ClosureProducts` therefore records the
graph with saved-tensor hooks (``torch.autograd.graph.saved_tensors_hooks``)
that keep a saved tensor only when it does not depend on u₀ and store
nothing for one that does (a NaN placeholder of its shape is handed back if
it is ever unpacked, so that a use would show rather than pass silently).
On an MLP 784-1024-256-10 at batch 2,560 that drops 17.7 MiB of the 19.2 MiB
that the recorded graph adds. `lean_products_agree` checks the recorded
graph against the closure's own graph once (an adjoint test), and the
optimizer falls back to saving everything if it ever fails.
`ClosureProducts.release` drops both graphs once no product will be asked
for, so that a trial evaluation (a forward pass of its own) does not run
while the linearization's activations are still held.

What a closure may not do, each refused with a message that names the
closure (`closure_outputs`, `watch_backward`, `check_closure_outputs`,
`check_fresh_outputs`): return a reduced (0-d) loss, a list of
non-scalar tensors, outputs kept from an earlier call, or call
``backward()`` itself. Sparse gradients (``torch.nn.Embedding(sparse=True)``)
are made dense where they are gathered into a flat vector: x is dense
anyway. A module compiled by ``torch.compile`` with an AOT-autograd backend
(the default ``"inductor"``, ``"aot_eager"``) has a backward pass that
cannot itself be differentiated, and ``J v`` is exactly that derivative:
`ClosureProducts` re-raises torch's error with what to do instead.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from trustls.function import split_outputs
from trustls.losses import SquaredError
from trustls.operators.implicit import JacobianProducts

__all__ = [
    "ClosureProducts",
    "check_closure_output",
    "check_closure_outputs",
    "check_fresh_outputs",
    "closure_outputs",
    "flatten",
    "lean_products_agree",
    "parameter_products",
    "unflatten",
    "watch_backward",
]

DOCS = "see the closure section of TrustRegionOptimizer's docstring and docs/training.md"

# The words of torch's RuntimeError when a backward pass recorded by torch.compile's AOT autograd
# is differentiated (read in torch 2.13: "torch.compile with aot_autograd does not currently
# support double backward").
_COMPILED_DOUBLE_BACKWARD = "does not currently support double backward"
# torch's RuntimeError for an operation whose backward has no derivative (read in torch 2.13:
# "derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not implemented").
_MISSING_DERIVATIVE = re.compile(r"derivative for (\S+) is not implemented")


def _dense(t: Tensor) -> Tensor:
    # A sparse gradient (torch.nn.Embedding(sparse=True)) in a flat vector: x is dense anyway.
    return t if t.layout == torch.strided else t.to_dense()


def flatten(tensors: Sequence[Tensor], dtype: torch.dtype | None = None) -> Tensor:
    """One detached dense vector holding ``tensors`` one after another (in ``dtype``, default theirs)."""
    flat = torch.cat([_dense(t.detach()).reshape(-1) for t in tensors])
    return flat if dtype is None or flat.dtype == dtype else flat.to(dtype)


def unflatten(vector: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Views of ``vector`` shaped like each tensor of ``like`` (no copy)."""
    views, offset = [], 0
    for t in like:
        views.append(vector[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return views


def check_closure_output(residual: object, like: Tensor) -> Tensor:
    """Check what a closure returned: the 1-D residual vector on the parameters' dtype and device."""
    if not isinstance(residual, Tensor):
        raise TypeError(f"closure must return the residual vector as a torch.Tensor, got {type(residual).__name__}")
    if residual.ndim == 0:
        raise ValueError(
            "closure must return the 1-D residual vector r whose cost ½‖r‖² is minimized, got a 0-d tensor: "
            f"return e.g. (net(X) - Y).reshape(-1) rather than a loss, or (logits, targets) with "
            f"GaussNewtonModel(loss='cross_entropy'); {DOCS}"
        )
    if residual.ndim != 1 or residual.shape[0] == 0:
        raise ValueError(
            f"closure must return a non-empty 1-D residual vector, got shape {tuple(residual.shape)} "
            f"(flatten it with .reshape(-1)); {DOCS}"
        )
    if residual.dtype != like.dtype:
        raise TypeError(f"closure must return a tensor of the parameters' dtype {like.dtype}, got {residual.dtype}")
    if residual.device != like.device:
        raise ValueError(f"closure must return a tensor on the parameters' device {like.device}, got {residual.device}")
    return residual


def check_closure_outputs(outputs: Tensor, targets: Tensor | None, like: Tensor, model) -> None:
    """Check what a closure returned at the linearization, for ``model`` (a `GaussNewtonModel`): least
    squares without targets takes the 1-D residual vector (`check_closure_output`), any other loss
    floating outputs of at least one dimension (never a reduced loss) on the parameters' dtype and device."""
    if targets is None and isinstance(model.loss, SquaredError):
        check_closure_output(outputs, like)
    elif outputs.ndim == 0:
        what, example = ("the residual vector r", "(net(X) - Y).reshape(-1)") if targets is None else (
            "the outputs", "(net(X), y)")
        raise ValueError(
            f"closure must return {what} that the loss {model.loss!r} reduces (one entry per sample or element), "
            f"got a 0-d tensor: return them before any reduction to a scalar loss, e.g. {example}, and reshape a "
            f"single output to shape (1,); {DOCS}"
        )
    elif not outputs.is_floating_point():
        raise TypeError(f"closure must return floating outputs, got dtype {outputs.dtype}")
    elif outputs.dtype != like.dtype:
        raise TypeError(f"closure must return outputs of the parameters' dtype {like.dtype}, got {outputs.dtype}")
    elif outputs.device != like.device:
        raise ValueError(f"closure must return outputs on the parameters' device {like.device}, got {outputs.device}")
    if not outputs.requires_grad:
        raise ValueError(
            "closure must return outputs that depend on the parameters through autograd; got outputs without "
            "a graph (computed under torch.no_grad() or detached?)"
        )
    if not bool(torch.isfinite(outputs).all()):
        raise ValueError("closure must return finite outputs at the current parameters, got NaN or inf")


def closure_outputs(value: object) -> tuple[Tensor, Tensor | None]:
    """``(outputs, targets)`` from what a closure returned: a tensor, a pair ``(outputs, targets)``, or a
    list of one-element tensors, stacked into the residual vector as `trustls.function.split_outputs`
    does for ``fun``; a list of other tensors is refused (how to join them is the closure's choice)."""
    if isinstance(value, list) and value and all(isinstance(v, Tensor) for v in value):
        if any(v.numel() != 1 for v in value):
            shapes = ", ".join(str(tuple(v.shape)) for v in value[:4]) + (", ..." if len(value) > 4 else "")
            raise TypeError(
                f"closure must return one tensor (the residual vector) or a pair (outputs, targets), got a list of "
                f"{len(value)} tensors of shapes [{shapes}]: join them into one vector, e.g. "
                f"torch.cat([r.reshape(-1) for r in parts]); {DOCS}"
            )
    return split_outputs(value, "closure")


@contextlib.contextmanager
def watch_backward(params: Sequence[Tensor]) -> Iterator[None]:
    """Raise ``ValueError`` after the block if a backward pass accumulated into ``.grad`` of ``params``.

    The torch.optim habit ``loss.backward()`` inside a closure frees the
    closure's graph (which the products need) and writes ``.grad``; without
    this check the step would fail later in autograd ("Trying to backward
    through the graph a second time"). ``torch.autograd.grad``, which the
    optimizer uses, accumulates into no ``.grad`` and runs no such hook.
    """
    called: list[bool] = []

    def hook(_: Tensor) -> None:
        called.append(True)

    handles = [p.register_post_accumulate_grad_hook(hook) for p in params]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
    if called:
        raise ValueError(
            "closure must return its outputs (or residual vector) without calling backward(): it ran a backward "
            "pass into the parameters' .grad, which also frees the graph the optimizer differentiates; remove "
            f"loss.backward() (and zero_grad()) from the closure, the optimizer neither reads nor writes .grad; {DOCS}"
        )


def check_fresh_outputs(outputs: Tensor, previous: Tensor) -> None:
    """Refuse trial outputs held in the storage of the linearization's outputs ``previous`` (kept alive by
    the caller, so that its address cannot have been reused): outputs cached across calls, or written
    into one buffer, do not depend on the trial parameters. No host read."""
    if outputs.untyped_storage().data_ptr() == previous.untyped_storage().data_ptr():
        raise ValueError(
            "closure must compute its outputs anew at every call, got at the trial point the tensor (or a view of "
            "the storage) it returned at the current parameters: outputs cached from an earlier call, or written "
            f"into one buffer, do not depend on the parameters being tried; {DOCS}"
        )


def _differentiate(outputs, inputs, grad_outputs, **options) -> tuple[Tensor | None, ...]:
    """``torch.autograd.grad`` for the recording pass and J v, with torch.compile's refusal explained."""
    try:
        return torch.autograd.grad(outputs, inputs, grad_outputs, **options)
    except RuntimeError as error:
        missing = _MISSING_DERIVATIVE.search(str(error))
        if missing is not None:
            attention = "attention" in missing.group(1)
            raise ValueError(
                "closure must run operations whose backward pass can be differentiated again: J v, the product CG "
                f"needs, is the derivative of a backward pass (double backward), and torch has no derivative for "
                f"{missing.group(1)}"
                + (
                    "; scaled_dot_product_attention's fused kernels lack it (nn.MultiheadAttention, "
                    "nn.TransformerEncoderLayer): run the step under torch.nn.attention.sdpa_kernel(SDPBackend.MATH)"
                    if attention else ""
                )
                + "; see docs/training.md"
            ) from error
        if _COMPILED_DOUBLE_BACKWARD not in str(error):
            raise
        raise ValueError(
            "closure must run a model whose backward pass can be differentiated again: J v, the product CG needs, "
            "is the derivative of a backward pass (double backward), which a module compiled by torch.compile with "
            "an AOT-autograd backend (the default 'inductor', 'aot_eager') does not support; run the model "
            "uncompiled where the closure computes with a graph (torch.is_grad_enabled(); the trial evaluations run "
            "without one and may use the compiled module), or compile with backend='eager'; see docs/training.md"
        ) from error


def _grad(outputs, inputs, grad_outputs, **options) -> tuple[Tensor, ...]:
    # A parameter the outputs do not use has a zero Jacobian block.
    return torch.autograd.grad(outputs, inputs, grad_outputs, allow_unused=True, materialize_grads=True, **options)


class _DropCotangents:
    """Saved-tensor hooks that keep only what does not depend on ``dummy`` (module docstring)."""

    def __init__(self, dummy: Tensor):
        self.dummy = dummy
        self.memo: dict[object, bool] = {}  # autograd node -> whether it reaches dummy

    def _depends(self, node) -> bool:
        memo, stack = self.memo, [node]
        while stack:  # depth-first, without recursion (deep networks)
            current = stack.pop()
            if current in memo:
                continue
            if getattr(current, "variable", None) is self.dummy:  # dummy's AccumulateGrad
                memo[current] = True
                continue
            parents = [parent for parent, _ in current.next_functions if parent is not None]
            pending = [parent for parent in parents if parent not in memo]
            if pending:
                stack.append(current)
                stack.extend(pending)
            else:
                memo[current] = any(memo[parent] for parent in parents)
        return memo[node]

    def release(self) -> None:
        self.dummy, self.memo = None, {}

    def pack(self, tensor: Tensor):
        if tensor.layout != torch.strided:
            # A sparse gradient's backward (to_dense's) reads its sparsity pattern: keep it (nnz-sized).
            return tensor
        if tensor is self.dummy or (tensor.grad_fn is not None and self._depends(tensor.grad_fn)):
            return (tensor.shape, tensor.dtype, tensor.device)
        return tensor

    @staticmethod
    def unpack(packed) -> Tensor:
        if isinstance(packed, Tensor):
            return packed
        shape, dtype, device = packed
        return torch.full((), float("nan"), dtype=dtype, device=device).expand(shape)


class ClosureProducts:
    """``Jv`` and ``Jᵀu`` for the closure's outputs z (with their graph) and the parameters.

    Args:
        outputs: the outputs, computed with their graph (any shape; flattened).
        params: the parameters, all of one dtype.
        at: u₀, the cotangent at which the double-backward graph is recorded
            (in the working dtype, z's number of entries); ``gradient`` is Jᵀu₀.
        dtype: the working dtype of the vectors (float32 for half-precision
            parameters, else theirs).
        lean: record the graph of u ↦ Jᵀu without the cotangents it never
            needs (module docstring).

    Raises:
        ValueError: when no parameter reaches the outputs through autograd.

    Examples:
        >>> import torch
        >>> w = torch.tensor([1.0, 3.0], requires_grad=True)
        >>> products = ClosureProducts(w**2, [w], at=torch.ones(2))
        >>> products.jvp(torch.tensor([1.0, 1.0])), products.gradient
        (tensor([2., 6.]), tensor([2., 6.]))
    """

    def __init__(
        self, outputs: Tensor, params: Sequence[Tensor], *, at: Tensor, dtype: torch.dtype | None = None,
        lean: bool = True,
    ):
        self._params = list(params)
        self.param_dtype = self._params[0].dtype
        self.dtype = self.param_dtype if dtype is None else dtype
        with torch.enable_grad():
            self._outputs = outputs.reshape(-1)
            self.residual = self._outputs.detach().to(self.dtype)
            dummy = at.detach().reshape(-1).to(self.param_dtype).clone().requires_grad_()
            if lean:
                hooks = _DropCotangents(dummy)
                with torch.autograd.graph.saved_tensors_hooks(hooks.pack, hooks.unpack):
                    pulled = _differentiate(self._outputs, self._params, dummy, create_graph=True, allow_unused=True)
                # Every saved tensor keeps the hooks: dropping their references to
                # the graph breaks a cycle that Python's collector cannot see.
                hooks.release()
            else:
                pulled = _differentiate(self._outputs, self._params, dummy, create_graph=True, allow_unused=True)
            if all(t is None for t in pulled):
                raise ValueError(
                    "closure must return outputs that depend on the optimizer's parameters, got outputs that none "
                    f"of its {len(self._params)} parameter tensor(s) reaches through autograd; {DOCS}"
                )
            # cat saves no input for its backward: the per-parameter tensors are
            # freed and one flat vector remains, Jᵀu₀ and the graph's root.
            root = torch.cat([
                (_dense(t) if t is not None else torch.zeros_like(p)).reshape(-1) for t, p in zip(pulled, self._params)
            ])
        del pulled
        self._dummy, self._root = dummy, root
        # Jᵀu₀ shares the root's storage (the graph needs only the root's grad_fn).
        self.gradient = root.detach() if self.dtype == self.param_dtype else root.detach().to(self.dtype)

    @property
    def released(self) -> bool:
        """Whether `release` has dropped the graphs."""
        return self._root is None

    def release(self) -> None:
        """Drop both graphs (the closure's and the recorded one); later products raise."""
        self._outputs = self._dummy = self._root = None

    def _check(self) -> None:
        if self._root is None:
            raise RuntimeError("the products of this step were released: no product may follow the trial evaluation")

    def jvp(self, v: Tensor) -> Tensor:
        """J v, in the working dtype."""
        self._check()
        if not self._root.requires_grad:  # only unused parameters: J = 0
            return torch.zeros_like(self.residual)
        with torch.enable_grad():
            Jv = _differentiate(self._root, self._dummy, v.to(self.param_dtype), retain_graph=True)[0]
        return Jv.to(self.dtype)

    def vjp(self, u: Tensor) -> Tensor:
        """Jᵀu as a new flat vector in the working dtype (its owner may scale it in place)."""
        self._check()
        grads = _grad(self._outputs, self._params, u.reshape(-1).to(self.param_dtype), retain_graph=True)
        return flatten(grads, self.dtype)


def lean_products_agree(products: ClosureProducts, generator: torch.Generator) -> bool:
    """The adjoint test wᵀ(Jv) = (Jᵀw)ᵀv on random v, w: Jv from the recorded graph, Jᵀw from the closure's.

    The tolerance, √eps of the parameters' dtype relative to
    ‖w‖‖Jv‖ + ‖Jᵀw‖‖v‖, passes rounding and fails a placeholder that was
    read (NaN) or a structural error beyond it: in float32 and float64 any
    visible one, in half precision (√eps = 0.03 to 0.09 of a bound that
    random w, v rarely approach) only gross ones. One host read. A non-finite Jᵀw
    (the closure's own derivative is NaN) passes: it is not the recording's
    fault, and the optimizer refuses the gradient.
    """
    residual = products.residual
    v = torch.randn(products.gradient.shape, generator=generator, dtype=residual.dtype).to(residual.device)
    w = torch.randn(residual.shape, generator=generator, dtype=residual.dtype).to(residual.device)
    Jv = products.jvp(v)
    left = torch.dot(w, Jv)
    size = torch.linalg.vector_norm(w) * torch.linalg.vector_norm(Jv)
    del Jv
    Jtw = products.vjp(w)
    right = torch.dot(Jtw, v)
    size = size + torch.linalg.vector_norm(Jtw) * torch.linalg.vector_norm(v)
    tolerance = torch.finfo(products.param_dtype).eps ** 0.5
    # A Jacobian that is not finite by itself (the closure's own graph says so) is not the recording's fault.
    return bool(~torch.isfinite(right) | (torch.isfinite(left) & ((left - right).abs() <= tolerance * size)))


def parameter_products(
    residual: Tensor, params: Sequence[Tensor], *, eager: bool | Tensor = False
) -> JacobianProducts:
    """JVP and VJP of ``residual`` (computed with its graph) with respect to ``params``.

    The double-backward graph is recorded at u₀ = r with ``eager=True``, at
    u₀ = ``eager`` when it is a vector, and at u₀ = 0 on the first JVP
    otherwise; the first ``vjp(u₀)`` is answered from the recording pass.

    Examples:
        >>> import torch
        >>> w = torch.tensor([1.0, 3.0], requires_grad=True)
        >>> products = parameter_products(w**2, [w])
        >>> products.jvp(torch.tensor([1.0, 1.0]))
        tensor([2., 6.])
    """
    params = list(params)
    detached = residual.detach()
    at = detached if eager is True else eager
    recorded: list[ClosureProducts] = []
    pending: list[Tensor] = []
    if isinstance(at, Tensor):
        recorded.append(ClosureProducts(residual, params, at=at))
        pending.append(recorded[0].gradient)

    def vjp(u: Tensor) -> Tensor:
        if pending and u.shape == at.shape and u.data_ptr() == at.data_ptr():
            return pending.pop()  # Jᵀu₀, computed while recording; asked for once
        return flatten(_grad(residual, params, u, retain_graph=True))

    def jvp(v: Tensor) -> Tensor:
        if not recorded:
            recorded.append(ClosureProducts(residual, params, at=torch.zeros_like(detached)))
        return recorded[0].jvp(v)

    return JacobianProducts(detached, jvp, vjp)
