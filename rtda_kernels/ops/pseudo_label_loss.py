"""The self-training loss's kernels (reference, cpu, cuda, triton) and their registration with
torch.library.

The op ``rtda_kernels::pseudo_label_loss`` (schema in rtda_kernels/schemas.py) gets a fake
kernel and autograd here; the Triton kernel becomes ``pseudo_label_loss_triton``. Like the
adversarial loss, the forward also returns the gradient w.r.t. the student's logits when asked
(``compute_grad``), so backward only scales it; called without it, backward recomputes it. The
teacher's logits and the per-image weights get no gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rtda_kernels import reference
from rtda_kernels.backends import TRITON_DTYPES, Kernel, compiled_kernel, register
from rtda_kernels.schemas import triton_op


def _fake(student, teacher, labels, threshold, output_size, compute_grad):
    grad = student.new_empty(student.shape) if compute_grad else student.new_empty((0,))
    return student.new_empty(()), student.new_empty((student.shape[0],)), grad


def _setup(ctx, inputs, output) -> None:
    student, teacher, labels, threshold, output_size, compute_grad = inputs
    _, weight, grad = output
    ctx.mark_non_differentiable(weight, grad)
    ctx.params = (threshold, output_size)
    ctx.precomputed = compute_grad
    ctx.save_for_backward(*((grad,) if compute_grad else (student, teacher, labels)))


def _backward(loss_op):
    def backward(ctx, grad_loss: Tensor, _unused_weight: Tensor, _unused_grad: Tensor):
        if ctx.precomputed:
            (grad,) = ctx.saved_tensors
        else:
            _, _, grad = loss_op(*ctx.saved_tensors, *ctx.params, True)
        return grad * grad_loss, None, None, None, None, None

    return backward


def _register(name: str, loss_op) -> None:
    torch.library.register_fake(name)(_fake)
    torch.library.register_autograd(name, _backward(loss_op), setup_context=_setup)


_register("rtda_kernels::pseudo_label_loss", torch.ops.rtda_kernels.pseudo_label_loss)


@triton_op("pseudo_label_loss")
def triton_loss(student, teacher, labels, threshold, output_size, compute_grad):
    from rtda_kernels.triton import pseudo_label_loss as kernels

    return kernels.loss(student, teacher, labels, threshold, list(output_size), compute_grad)


_register("rtda_kernels::pseudo_label_loss_triton", triton_loss)


def _reference(student, teacher, labels, threshold, output_size, compute_grad):
    loss, weight = reference.pseudo_label_loss(student, teacher, labels, threshold=threshold,
                                               output_size=output_size)
    return loss, weight, student.new_empty((0,))


register("pseudo_label_loss", {
    "reference": Kernel(_reference),
    "cpu": compiled_kernel("pseudo_label_loss", "CPU"),
    "cuda": compiled_kernel("pseudo_label_loss", "CUDA"),
    "triton": Kernel(triton_loss, TRITON_DTYPES),
})
