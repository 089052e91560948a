"""``winograd_conv3x3``'s kernels (reference, cpu) and its fake kernel and FLOP formula.

The op (schema in rtda_kernels/schemas.py, CPU kernel in csrc/cpu/winograd_conv3x3_cpu.cpp) is for
inference only, so it has no autograd formula: ``rtda_kernels.winograd_conv3x3`` refuses inputs
that require grad.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

from rtda_kernels import reference
from rtda_kernels.backends import Kernel, compiled_kernel, register


def _fake(x, weight, weight_winograd, bias, residual, relu):
    # The kernel returns channels_last; the fake must promise the same strides.
    shape = (x.shape[0], weight_winograd.shape[2], x.shape[2], x.shape[3])
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)


def _flops(x_shape, weight_shape, weight_winograd_shape, bias_shape, residual_shape, relu, *args,
           **kwargs) -> int:
    """The FLOPs of the 3x3 convolution it replaces (2 x multiply-adds, as
    torch.utils.flop_counter counts convolutions), not the fewer the Winograd form performs, so
    that complexity figures do not depend on the algorithm."""
    n, c_in, height, width = x_shape
    return 2 * n * height * width * c_in * weight_shape[0] * 9


torch.library.register_fake("rtda_kernels::winograd_conv3x3")(_fake)
register_flop_formula(torch.ops.rtda_kernels.winograd_conv3x3)(_flops)

register("winograd_conv3x3", {
    "reference": Kernel(reference.winograd_conv3x3),
    "cpu": compiled_kernel("winograd_conv3x3", "CPU", (torch.float32,)),
})
