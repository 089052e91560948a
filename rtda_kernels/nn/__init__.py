"""Drop-in modules built on the fused ops, with the state_dict of the modules they replace."""

from rtda_kernels.nn.dwsep_conv2d import DepthwiseSeparableConv2d, fuse_modules
from rtda_kernels.nn.winograd_conv2d import WinogradConv2d

__all__ = ["DepthwiseSeparableConv2d", "WinogradConv2d", "fuse_modules"]
