"""autograd.Functions with unusual backwards, shared by the tests of the Jacobian routes."""

import torch


class OldStyleSquare(torch.autograd.Function):
    """x², with forward(ctx, x) and no setup_context: usable by autograd, by no torch.func transform."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


class OnceSquare(torch.autograd.Function):
    """x², with a backward marked ``once_differentiable``: no double backward, so no J v through it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad
