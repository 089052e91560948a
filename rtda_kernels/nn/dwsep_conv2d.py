"""``DepthwiseSeparableConv2d``: depthwise k x k conv, pointwise 1x1 conv, optional LeakyReLU,
as one fused op; and ``fuse_modules``, which swaps that pattern into an existing model."""

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


def _is_fusable_depthwise(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d
        and m.groups == m.in_channels == m.out_channels
        and m.kernel_size[0] == m.kernel_size[1]
        and m.stride[0] == m.stride[1]
        and isinstance(m.padding, tuple)
        and m.padding[0] == m.padding[1] < m.kernel_size[0]
        and m.dilation == (1, 1)
        and m.padding_mode == "zeros"
    )


def _is_fusable_pointwise(m: nn.Module, channels: int) -> bool:
    return (
        type(m) is nn.Conv2d
        and m.in_channels == channels
        and m.kernel_size == (1, 1)
        and m.stride == (1, 1)
        and m.padding in ((0, 0), "valid")
        and m.dilation == (1, 1)
        and m.groups == 1
    )


def _slope_of(m: nn.Module) -> float | None:
    """The slope of an activation the op can absorb (ReLU is slope 0), else None."""
    if type(m) is nn.LeakyReLU and m.negative_slope >= 0:
        return float(m.negative_slope)
    if type(m) is nn.ReLU:
        return 0.0
    return None


def _fuse_sequential(seq: nn.Sequential) -> None:
    """Replace each [depthwise, 1x1, activation?] run by one fused module at the run's first index
    and ``nn.Identity`` at the others, so that the indices of later layers do not move."""
    children = list(seq.children())
    i = 0
    while i + 1 < len(children):
        dw, pw = children[i], children[i + 1]
        if not (_is_fusable_depthwise(dw) and _is_fusable_pointwise(pw, dw.out_channels)):
            i += 1
            continue
        slope = _slope_of(children[i + 2]) if i + 2 < len(children) else None
        run = 3 if slope is not None else 2
        seq[i] = DepthwiseSeparableConv2d.from_convs(dw, pw, slope)
        for j in range(i + 1, i + run):
            seq[j] = nn.Identity()
        i += run


def fuse_modules(model: nn.Module) -> nn.Module:
    """Switch ``model`` (in place) to the fused op wherever it computes a depthwise-separable conv.

    Unfused ``DepthwiseSeparableConv2d`` modules are switched to ``fused=True`` (state_dict
    unchanged); in every ``nn.Sequential``, a run of a depthwise ``Conv2d`` (groups == channels,
    square kernel, zero padding < kernel), a 1x1 ``Conv2d`` and an optional ``LeakyReLU`` (slope
    >= 0) or ``ReLU`` becomes one ``DepthwiseSeparableConv2d`` holding the same parameter objects:
    outputs are unchanged, the run's state_dict keys become ``<i>.depthwise.*``/``<i>.pointwise.*``.
    Returns ``model``.
    """
    for module in list(model.modules()):
        if isinstance(module, DepthwiseSeparableConv2d):
            module.fused = True
        elif isinstance(module, nn.Sequential):
            _fuse_sequential(module)
    return model
