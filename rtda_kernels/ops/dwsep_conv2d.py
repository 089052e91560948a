"""``dwsep_conv2d``'s kernels (reference, cpu, cuda, triton) and its registration with
torch.library.

The compiled ops (``rtda_kernels::dwsep_conv2d`` and its backward, schemas in
rtda_kernels/schemas.py) get fake kernels and autograd here. The Triton kernels become the ops
``dwsep_conv2d_triton`` and ``dwsep_conv2d_backward_triton`` with the same schemas. Both pairs
share one autograd formula: save x, y and the weights, recompute the depthwise output in
the backward op, read the activation mask from the sign of y.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from rtda_kernels import reference
from rtda_kernels.backends import TRITON_DTYPES, Kernel, compiled_kernel, register
from rtda_kernels.schemas import triton_op


def _output_shape(x_shape, dw_shape, pw_shape, stride: int, padding: int) -> tuple[int, ...]:
    n, _, height, width = x_shape
    k = dw_shape[-1]
    return (
        n,
        pw_shape[0],
        (height + 2 * padding - k) // stride + 1,
        (width + 2 * padding - k) // stride + 1,
    )


def _fake_forward(x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, negative_slope):
    return x.new_empty(_output_shape(x.shape, dw_weight.shape, pw_weight.shape, stride, padding))


def _fake_backward(grad_y, x, y, dw_weight, dw_bias, pw_weight, stride, padding, negative_slope):
    return (
        x.new_empty(x.shape),
        dw_weight.new_empty(dw_weight.shape),
        dw_weight.new_empty((dw_weight.shape[0],)),
        pw_weight.new_empty(pw_weight.shape),
        pw_weight.new_empty((pw_weight.shape[0],)),
    )


def _setup_context(ctx, inputs, output) -> None:
    x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, negative_slope = inputs
    # Only what backward needs: the depthwise output is recomputed, the mask comes from y.
    ctx.save_for_backward(x, output, dw_weight, dw_bias, pw_weight)
    ctx.conv = (stride, padding, negative_slope)
    ctx.has_bias = (dw_bias is not None, pw_bias is not None)


def _autograd_backward(backward_op: Callable) -> Callable:
    def backward(ctx, grad_y: Tensor):
        x, y, dw_weight, dw_bias, pw_weight = ctx.saved_tensors
        gx, gdw, gdw_b, gpw, gpw_b = backward_op(grad_y, x, y, dw_weight, dw_bias, pw_weight, *ctx.conv)
        has_dw_bias, has_pw_bias = ctx.has_bias
        return (
            gx, gdw, gdw_b if has_dw_bias else None,
            gpw, gpw_b if has_pw_bias else None,
            None, None, None,
        )

    return backward


def _forward_flops(x_shape, dw_shape, pw_shape, stride: int, padding: int) -> int:
    """FLOPs (2 x multiply-adds, biases and activation not counted, as torch.utils.flop_counter
    counts convolutions) of the depthwise and the pointwise conv."""
    n, c_out, height, width = _output_shape(x_shape, dw_shape, pw_shape, stride, padding)
    c_in, k = x_shape[1], dw_shape[-1]
    return 2 * n * height * width * c_in * (k * k + c_out)


def _flop_formula_forward(x_shape, dw_shape, dw_bias_shape, pw_shape, pw_bias_shape, stride,
                          padding, negative_slope, *args, **kwargs) -> int:
    return _forward_flops(x_shape, dw_shape, pw_shape, stride, padding)


def _flop_formula_backward(grad_shape, x_shape, y_shape, dw_shape, dw_bias_shape, pw_shape,
                           stride, padding, negative_slope, *args, **kwargs) -> int:
    """Input and weight gradients of both convs (2x the forward, as flop_counter counts a conv's
    backward) plus the depthwise output that the kernel recomputes instead of saving."""
    depthwise = 2 * math.prod(grad_shape[:1] + grad_shape[2:]) * x_shape[1] * dw_shape[-1] ** 2
    return 2 * _forward_flops(x_shape, dw_shape, pw_shape, stride, padding) + depthwise


def _register(forward: str, backward: str, backward_op: Callable) -> None:
    torch.library.register_fake(forward)(_fake_forward)
    torch.library.register_fake(backward)(_fake_backward)
    torch.library.register_autograd(
        forward, _autograd_backward(backward_op), setup_context=_setup_context
    )
    # So that torch.utils.flop_counter.FlopCounterMode counts models built from the fused layers.
    namespace, name = forward.split("::")
    register_flop_formula(getattr(getattr(torch.ops, namespace), name))(_flop_formula_forward)
    namespace, name = backward.split("::")
    register_flop_formula(getattr(getattr(torch.ops, namespace), name))(_flop_formula_backward)


_register(
    "rtda_kernels::dwsep_conv2d",
    "rtda_kernels::dwsep_conv2d_backward",
    torch.ops.rtda_kernels.dwsep_conv2d_backward,
)


@triton_op("dwsep_conv2d")
def triton_forward(x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, negative_slope):
    """Triton forward (imported at first use, so that TRITON_INTERPRET is read then)."""
    from rtda_kernels.triton import dwsep_conv2d as kernels

    return kernels.forward(x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, negative_slope)


@triton_op("dwsep_conv2d_backward")
def triton_backward(grad_y, x, y, dw_weight, dw_bias, pw_weight, stride, padding, negative_slope):
    """Triton backward: gradients for (x, dw_weight, dw_bias, pw_weight, pw_bias)."""
    from rtda_kernels.triton import dwsep_conv2d as kernels

    return tuple(
        kernels.backward(grad_y, x, y, dw_weight, dw_bias, pw_weight, stride, padding, negative_slope)
    )


_register("rtda_kernels::dwsep_conv2d_triton", "rtda_kernels::dwsep_conv2d_backward_triton",
          triton_backward)


def _reference(x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, negative_slope):
    return reference.dwsep_conv2d(x, dw_weight, dw_bias, pw_weight, pw_bias, stride=stride,
                                  padding=padding, negative_slope=negative_slope)


register("dwsep_conv2d", {
    "reference": Kernel(_reference),
    "cpu": compiled_kernel("dwsep_conv2d", "CPU"),
    "cuda": compiled_kernel("dwsep_conv2d", "CUDA"),
    "triton": Kernel(triton_forward, TRITON_DTYPES),
})
