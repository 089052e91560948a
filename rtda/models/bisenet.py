"""BiSeNet (Yu et al., ECCV 2018) as used by the paper: a spatial path at stride 8, a context path
on a ResNet with two attention refinement modules, a feature fusion module and a 1x1 classifier.

Where the authors' code and the BiSeNet paper leave a choice, this module follows the authors'
code (ARMs keep the channel count, the fusion module outputs ``num_classes`` channels), with one
change of cost but not of result: the 1x1 classifier runs at stride 8, *before* the bilinear
upsampling to the input size (both are linear and bilinear weights sum to 1, so the order does not
change the output; it is 64x cheaper). The auxiliary heads likewise run at the resolution of their
features (stride 16 and 32) and are then upsampled to the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rtda.models.resnet import ResNet

# Input sides must be multiples of the backbone's output stride.
OUTPUT_STRIDE = 32


class ConvBNReLU(nn.Sequential):
    """k x k conv (no bias), BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SpatialPath(nn.Sequential):
    """Three 3x3 stride-2 conv-BN-ReLU blocks, 3 -> 64 -> 128 -> 256: detail at stride 8."""

    def __init__(self) -> None:
        super().__init__(ConvBNReLU(3, 64, stride=2), ConvBNReLU(64, 128, stride=2),
                         ConvBNReLU(128, 256, stride=2))


class AttentionRefinementModule(nn.Module):
    """Channel attention: ``x * sigmoid(BN(conv1x1(global_avg_pool(x))))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = torch.sigmoid(self.bn(self.conv(x.mean((2, 3), keepdim=True))))
        return x * attention


class FeatureFusionModule(nn.Module):
    """Concatenate spatial and context features, conv-BN-ReLU to ``out_channels``, then channel
    attention with a residual: ``f * att + f``, att = sigmoid(conv(relu(conv(pool(f)))))."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = ConvBNReLU(in_channels, out_channels)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 1)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        features = self.block(torch.cat((spatial, context), dim=1))
        pooled = features.mean((2, 3), keepdim=True)
        attention = torch.sigmoid(self.conv2(F.relu(self.conv1(pooled))))
        return features * attention + features


def resize_bilinear(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """``x`` resized to ``size`` as every BiSeNet output is: bilinear, align_corners=False."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class BiSeNet(nn.Module):
    """BiSeNet on a ResNet backbone (``resnet18`` or ``resnet101``).

    ``forward(x)`` takes N x 3 x H x W (H, W multiples of 32) and returns logits N x num_classes x
    H x W; in training mode it returns ``(main, aux16, aux32)``, the auxiliary heads' logits on
    the stride-16 and stride-32 context features, all at the input size (``resize=False``: at
    their own resolution).
    """

    def __init__(self, backbone: str = "resnet101", num_classes: int = 19) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.num_classes = num_classes
        self.spatial_path = SpatialPath()
        self.context_path = ResNet(backbone)
        c16, c32 = self.context_path.channels
        self.arm16 = AttentionRefinementModule(c16)
        self.arm32 = AttentionRefinementModule(c32)
        self.ffm = FeatureFusionModule(256 + c16 + c32, num_classes)
        self.classifier = nn.Conv2d(num_classes, num_classes, 1)
        self.aux16 = nn.Conv2d(c16, num_classes, 1)
        self.aux32 = nn.Conv2d(c32, num_classes, 1)

    @property
    def backbone(self) -> str:
        return self.context_path.name

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be an N x 3 x H x W image batch, got {shape}")
        if x.shape[1] != 3:
            raise ValueError(f"x must have 3 (RGB) channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        if self.training and x.shape[0] < 2:
            raise ValueError(
                "BiSeNet in training mode needs a batch of at least 2 images: its attention "
                "refinement modules batch-normalise globally pooled (1x1) features; got batch "
                f"{x.shape[0]} (call model.eval() for inference)"
            )
        height, width = x.shape[2:]
        if height % OUTPUT_STRIDE or width % OUTPUT_STRIDE or height == 0 or width == 0:
            raise ValueError(
                f"x's height and width must be positive multiples of {OUTPUT_STRIDE}, got "
                f"{height}x{width} (e.g. resize to 512x1024)"
            )

    def forward(self, x: torch.Tensor, resize: bool = True
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``resize=False`` returns each output at its head's resolution (main: 1/8 of the input,
        aux16 1/16, aux32 1/32), for losses that upsample on the fly."""
        self._check_input(x)
        size = x.shape[2:]
        spatial = self.spatial_path(x)
        stride16, stride32 = self.context_path(x)
        tail = stride32.mean((2, 3), keepdim=True)
        context16 = self.arm16(stride16)
        context32 = self.arm32(stride32) * tail
        grid = spatial.shape[2:]
        context = torch.cat((resize_bilinear(context16, grid), resize_bilinear(context32, grid)),
                            dim=1)
        outputs = [self.classifier(self.ffm(spatial, context))]
        if self.training:
            outputs += [self.aux16(context16), self.aux32(context32)]
        if resize:
            outputs = [resize_bilinear(o, size) for o in outputs]
        return tuple(outputs) if self.training else outputs[0]
