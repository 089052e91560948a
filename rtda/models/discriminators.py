"""The paper's fully convolutional domain discriminators (Table III).

Every layer is a 4x4 stride-2 convolution with padding 1, followed by LeakyReLU(0.2) except the
last; no sigmoid (the losses take logits). The output is a map of per-pixel domain logits:

* ``fcd``: plain convs 19 -> 64 -> 128 -> 256 -> 512 -> 1 (AdaptSegNet's discriminator), 1/32.
* ``fcd_light``: the same five stages as depthwise-separable convs (depthwise k4 s2 with bias,
  pointwise 1x1 with bias, nothing in between), 1/32.
* ``fcd_light_thin``: three depthwise-separable stages 19 -> 64 -> 128 -> 1, 1/8.

The light variants are built from ``rtda_kernels.nn.DepthwiseSeparableConv2d``: ``fused=True``
runs the fused kernel, ``fused=False`` plain ``nn.Conv2d``s, with the same state_dict keys, so a
checkpoint trained one way loads the other. Upsampling the map to the input size (as the
authors' code does for ``fcd`` and ``fcd_light``) is left to the loss,
``rtda_kernels.adversarial_loss(..., output_size=...)``, which never materialises it.
"""

from __future__ import annotations

import torch
from torch import nn

from rtda_kernels.nn import DepthwiseSeparableConv2d

KERNEL, STRIDE, PADDING, NEGATIVE_SLOPE = 4, 2, 1, 0.2

# name -> output channels of each stage (the last is the 1-channel logit map)
WIDTHS: dict[str, tuple[int, ...]] = {
    "fcd": (64, 128, 256, 512, 1),
    "fcd_light": (64, 128, 256, 512, 1),
    "fcd_light_thin": (64, 128, 1),
}
SEPARABLE = {"fcd": False, "fcd_light": True, "fcd_light_thin": True}
DISCRIMINATORS = tuple(WIDTHS)


class Discriminator(nn.Sequential):
    """A stack of stride-2 stages: ``len(widths)`` halvings of the input size.

    ``output_stride`` is the ratio of input to output size (32 or 8); the map's size is
    ``floor(size / 2)`` per stage, i.e. ``size / output_stride`` for sizes divisible by it.
    """

    def __init__(self, name: str, in_channels: int, separable: bool, widths: tuple[int, ...],
                 fused: bool) -> None:
        layers: list[nn.Module] = []
        channels = in_channels
        for index, width in enumerate(widths):
            last = index == len(widths) - 1
            slope = None if last else NEGATIVE_SLOPE
            if separable:
                layers.append(DepthwiseSeparableConv2d(
                    channels, width, KERNEL, STRIDE, PADDING, negative_slope=slope, fused=fused))
            else:
                layers.append(nn.Conv2d(channels, width, KERNEL, STRIDE, PADDING))
                if not last:
                    layers.append(nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True))
            channels = width
        super().__init__(*layers)
        self.name = name
        self.in_channels = in_channels
        self.output_stride = 2 ** len(widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"{self.name} expects N x {self.in_channels} x H x W (softmax of a segmentation), "
                f"got {shape}"
            )
        return super().forward(x)


def build_discriminator(name: str, in_channels: int = 19, fused: bool = False) -> Discriminator:
    """``fcd``, ``fcd_light`` or ``fcd_light_thin`` for ``in_channels`` classes.

    ``fused=True`` runs the light variants' layers on the fused ``rtda_kernels`` op (``fcd`` has no
    depthwise-separable layer, so it is the same either way)."""
    if name not in WIDTHS:
        raise ValueError(f"discriminator must be one of {list(DISCRIMINATORS)}, got {name!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be an int >= 1, got {in_channels!r}")
    return Discriminator(name, in_channels, SEPARABLE[name], WIDTHS[name], fused)
