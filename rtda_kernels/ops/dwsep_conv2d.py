"""Registration of ``dwsep_conv2d`` with torch.library.

The compiled ops (``rtda_kernels::dwsep_conv2d`` and its backward, schemas in
csrc/registration.cpp) get fake kernels and autograd here. The Triton kernels become the custom
ops ``rtda_kernels::dwsep_conv2d_triton`` and ``..._triton_backward`` with the same schemas. Both
pairs share one autograd formula: save x, y and the weights, recompute the depthwise output in
the backward op, read the activation mask from the sign of y.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from rtda_kernels import _extension


def _output_shape(x: Tensor, dw_weight: Tensor, pw_weight: Tensor, stride: int, padding: int):
    n, _, height, width = x.shape
    k = dw_weight.shape[-1]
    return (
        n,
        pw_weight.shape[0],
        (height + 2 * padding - k) // stride + 1,
        (width + 2 * padding - k) // stride + 1,
    )


def _fake_forward(x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, negative_slope):
    return x.new_empty(_output_shape(x, dw_weight, pw_weight, stride, padding))


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


def _register(forward: str, backward: str, backward_op: Callable) -> None:
    torch.library.register_fake(forward)(_fake_forward)
    torch.library.register_fake(backward)(_fake_backward)
    torch.library.register_autograd(
        forward, _autograd_backward(backward_op), setup_context=_setup_context
    )


compiled_forward: Callable | None = None
if _extension.COMPILED_ERROR is None:
    compiled_forward = torch.ops.rtda_kernels.dwsep_conv2d
    _register(
        "rtda_kernels::dwsep_conv2d",
        "rtda_kernels::dwsep_conv2d_backward",
        torch.ops.rtda_kernels.dwsep_conv2d_backward,
    )


@torch.library.custom_op("rtda_kernels::dwsep_conv2d_triton", mutates_args=())
def triton_forward(
    x: Tensor,
    dw_weight: Tensor,
    dw_bias: Tensor | None,
    pw_weight: Tensor,
    pw_bias: Tensor | None,
    stride: int,
    padding: int,
    negative_slope: float | None,
) -> Tensor:
    """Triton forward (imported at first use, so that TRITON_INTERPRET is read then)."""
    from rtda_kernels.triton import dwsep_conv2d as kernels

    return kernels.forward(x, dw_weight, dw_bias, pw_weight, pw_bias, stride, padding, negative_slope)


@torch.library.custom_op("rtda_kernels::dwsep_conv2d_triton_backward", mutates_args=())
def triton_backward(
    grad_y: Tensor,
    x: Tensor,
    y: Tensor,
    dw_weight: Tensor,
    dw_bias: Tensor | None,
    pw_weight: Tensor,
    stride: int,
    padding: int,
    negative_slope: float | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Triton backward: gradients for (x, dw_weight, dw_bias, pw_weight, pw_bias)."""
    from rtda_kernels.triton import dwsep_conv2d as kernels

    return tuple(
        kernels.backward(grad_y, x, y, dw_weight, dw_bias, pw_weight, stride, padding, negative_slope)
    )


_register(
    "rtda_kernels::dwsep_conv2d_triton", "rtda_kernels::dwsep_conv2d_triton_backward", triton_backward
)
