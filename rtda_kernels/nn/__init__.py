"""Drop-in modules built on the fused ops, with the state_dict of the modules they replace."""

from rtda_kernels.nn.dwsep_conv2d import DepthwiseSeparableConv2d
from rtda_kernels.nn.fusion import (
    FusedSeparableConv2d,
    FusionEntry,
    FusionReport,
    fuse_dwsep,
    fuse_modules,
)
from rtda_kernels.nn.winograd_conv3x3 import WinogradConv2d

__all__ = [
    "DepthwiseSeparableConv2d",
    "FusedSeparableConv2d",
    "FusionEntry",
    "FusionReport",
    "WinogradConv2d",
    "fuse_dwsep",
    "fuse_modules",
]
