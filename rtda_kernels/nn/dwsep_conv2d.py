"""``DepthwiseSeparableConv2d``: depthwise k x k conv, pointwise 1x1 conv, optional LeakyReLU,
as one fused op (``rtda_kernels.nn.fusion.fuse_dwsep`` swaps that pattern into an existing model)."""

from __future__ import annotations

import torch
from torch import nn

from rtda_kernels import _checks
from rtda_kernels.functional import dwsep_conv2d


def _square(name: str, value: int | tuple[int, int]) -> int:
    """Accept ``k`` or ``(k, k)``: the fused op handles square kernels, strides and paddings."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"{name} must be an int or a square pair (k, k), got {value}")
        value = value[0]
    return _checks.integer(name, value, minimum=0)


class DepthwiseSeparableConv2d(nn.Module):
    """``LeakyReLU(pointwise(depthwise(x)))`` with the parameters of two ``nn.Conv2d``.

    The state_dict keys are ``depthwise.weight``, ``depthwise.bias``, ``pointwise.weight`` and
    ``pointwise.bias`` in both modes, so a checkpoint saved with ``fused=True`` loads with
    ``fused=False`` and back. ``negative_slope=None`` means no activation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        bias: bool = True,
        negative_slope: float | None = None,
        fused: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        kernel, step, pad = _square("kernel_size", kernel_size), _square("stride", stride), _square(
            "padding", padding
        )
        if kernel < 1 or step < 1:
            raise ValueError(f"kernel_size and stride must be >= 1, got {kernel_size}, {stride}")
        factory = {"device": device, "dtype": dtype}
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, kernel, step, pad, groups=in_channels, bias=bias, **factory
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias, **factory)
        self.negative_slope = _checks.slope("negative_slope", negative_slope)
        self.fused = fused

    @classmethod
    def from_convs(
        cls, depthwise: nn.Conv2d, pointwise: nn.Conv2d, negative_slope: float | None, fused: bool = True
    ) -> DepthwiseSeparableConv2d:
        """Wrap existing convolutions, sharing their parameters (optimizers keep working)."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.depthwise, module.pointwise = depthwise, pointwise
        module.negative_slope = _checks.slope("negative_slope", negative_slope)
        module.fused = fused
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dw, pw = self.depthwise, self.pointwise
        if self.fused:
            return dwsep_conv2d(
                x, dw.weight, dw.bias, pw.weight, pw.bias,
                stride=dw.stride[0], padding=dw.padding[0], negative_slope=self.negative_slope,
            )
        y = pw(dw(x))
        return y if self.negative_slope is None else nn.functional.leaky_relu(y, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}, fused={self.fused}"
