"""The pixel-wise adversarial losses' kernels (reference, cpu, cuda, triton) and their
registration with torch.library.

The compiled ops ``rtda_kernels::adversarial_loss``, ``::adversarial_loss_backward`` and
``::discriminator_loss`` (schemas in rtda_kernels/schemas.py) get fake kernels and autograd
here; the Triton kernels become the ops ``<op>_triton`` with the same schemas.

For the mean and sum reductions the forward op also returns the gradient of the (0-dim) loss
w.r.t. the logits when asked (``compute_grad``): the kernel has every term it needs at hand
(sigmoid(u) reuses the exp of the loss), so backward is only ``saved_grad * grad_output`` on the
small low-resolution map. The per-pixel reduction ("none") has a backward op of its own; an op
called directly without compute_grad recomputes the gradient in backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rtda_kernels import reference
from rtda_kernels.backends import TRITON_DTYPES, Kernel, compiled_kernel, register
from rtda_kernels.schemas import REDUCE_NONE, REDUCTIONS, triton_op


def _fake_loss(logits, target, target_value, output_size, reduction, compute_grad):
    n, c = logits.shape[:2]
    if reduction == REDUCE_NONE:
        return logits.new_empty((n, c, *output_size)), logits.new_empty((0,))
    grad = logits.new_empty(logits.shape) if compute_grad else logits.new_empty((0,))
    return logits.new_empty(()), grad


def _fake_loss_backward(grad_loss, logits, target, target_value, output_size):
    return logits.new_empty(logits.shape)


def _fake_discriminator(d_source, d_target, source_label, target_label, output_size, compute_grad):
    if compute_grad:
        return d_source.new_empty(()), d_source.new_empty(d_source.shape), d_target.new_empty(d_target.shape)
    return d_source.new_empty(()), d_source.new_empty((0,)), d_target.new_empty((0,))


def _setup_loss(ctx, inputs, output) -> None:
    logits, target, target_value, output_size, reduction, compute_grad = inputs
    loss, grad = output
    ctx.mark_non_differentiable(grad)
    ctx.params = (target_value, output_size, reduction)
    ctx.precomputed = compute_grad and reduction != REDUCE_NONE
    # The per-pixel loss (or an op called without compute_grad) recomputes in backward.
    ctx.save_for_backward(*((grad,) if ctx.precomputed else (logits, target)))


def _loss_backward(loss_op: Callable, backward_op: Callable) -> Callable:
    def backward(ctx, grad_loss: Tensor, _unused: Tensor):
        target_value, output_size, reduction = ctx.params
        if ctx.precomputed:
            (grad,) = ctx.saved_tensors
        elif reduction == REDUCE_NONE:
            logits, target = ctx.saved_tensors
            return (
                backward_op(grad_loss.contiguous(), logits, target, target_value, output_size),
                None, None, None, None, None,
            )
        else:
            logits, target = ctx.saved_tensors
            _, grad = loss_op(logits, target, target_value, output_size, reduction, True)
        return grad * grad_loss, None, None, None, None, None

    return backward


def _setup_discriminator(ctx, inputs, output) -> None:
    d_source, d_target, source_label, target_label, output_size, compute_grad = inputs
    _, grad_source, grad_target = output
    ctx.mark_non_differentiable(grad_source, grad_target)
    ctx.precomputed = compute_grad
    ctx.params = (source_label, target_label, output_size)
    ctx.save_for_backward(*((grad_source, grad_target) if compute_grad else (d_source, d_target)))


def _discriminator_backward(discriminator_op: Callable) -> Callable:
    def backward(ctx, grad_loss: Tensor, _unused_s: Tensor, _unused_t: Tensor):
        if ctx.precomputed:
            grad_source, grad_target = ctx.saved_tensors
        else:
            _, grad_source, grad_target = discriminator_op(*ctx.saved_tensors, *ctx.params, True)
        return grad_source * grad_loss, grad_target * grad_loss, None, None, None, None

    return backward


def _register(
    loss: str, loss_backward: str, discriminator: str, ops: tuple[Callable, Callable, Callable]
) -> None:
    """Fake kernels and autograd for one backend's ops."""
    loss_op, backward_op, discriminator_op = ops
    torch.library.register_fake(loss)(_fake_loss)
    torch.library.register_fake(loss_backward)(_fake_loss_backward)
    torch.library.register_fake(discriminator)(_fake_discriminator)
    loss_grad = _loss_backward(loss_op, backward_op)
    discriminator_grad = _discriminator_backward(discriminator_op)
    torch.library.register_autograd(loss, loss_grad, setup_context=_setup_loss)
    torch.library.register_autograd(
        discriminator, discriminator_grad, setup_context=_setup_discriminator
    )


_register(
    "rtda_kernels::adversarial_loss",
    "rtda_kernels::adversarial_loss_backward",
    "rtda_kernels::discriminator_loss",
    (torch.ops.rtda_kernels.adversarial_loss, torch.ops.rtda_kernels.adversarial_loss_backward,
     torch.ops.rtda_kernels.discriminator_loss),
)


# Triton kernels (rtda_kernels/triton/adversarial_loss.py, imported at first use so that
# TRITON_INTERPRET is read then), as ops with the same schemas.
@triton_op("adversarial_loss")
def triton_loss(logits, target, target_value, output_size, reduction, compute_grad):
    from rtda_kernels.triton import adversarial_loss as kernels

    return kernels.loss(logits, target, target_value, list(output_size), reduction, compute_grad)


@triton_op("adversarial_loss_backward")
def triton_loss_backward(grad_loss, logits, target, target_value, output_size):
    from rtda_kernels.triton import adversarial_loss as kernels

    return kernels.loss_backward(grad_loss, logits, target, target_value, list(output_size))


@triton_op("discriminator_loss")
def triton_discriminator(d_source, d_target, source_label, target_label, output_size,
                         compute_grad):
    from rtda_kernels.triton import adversarial_loss as kernels

    return kernels.discriminator(
        d_source, d_target, source_label, target_label, list(output_size), compute_grad
    )


_register(
    "rtda_kernels::adversarial_loss_triton",
    "rtda_kernels::adversarial_loss_backward_triton",
    "rtda_kernels::discriminator_loss_triton",
    (triton_loss, triton_loss_backward, triton_discriminator),
)


def _reference_loss(logits, target, target_value, output_size, reduction, compute_grad):
    name = next(name for name, code in REDUCTIONS.items() if code == reduction)
    loss = reference.adversarial_loss(logits, target_value if target is None else target,
                                      output_size=output_size, reduction=name)
    return loss, logits.new_empty((0,))


def _reference_discriminator(d_source, d_target, source_label, target_label, output_size,
                             compute_grad):
    loss = reference.discriminator_loss(d_source, d_target, source_label=source_label,
                                        target_label=target_label, output_size=output_size)
    return loss, d_source.new_empty((0,)), d_target.new_empty((0,))


register("adversarial_loss", {
    "reference": Kernel(_reference_loss),
    "cpu": compiled_kernel("adversarial_loss", "CPU"),
    "cuda": compiled_kernel("adversarial_loss", "CUDA"),
    "triton": Kernel(triton_loss, TRITON_DTYPES),
})
register("discriminator_loss", {
    "reference": Kernel(_reference_discriminator),
    "cpu": compiled_kernel("discriminator_loss", "CPU"),
    "cuda": compiled_kernel("discriminator_loss", "CUDA"),
    "triton": Kernel(triton_discriminator, TRITON_DTYPES),
})
