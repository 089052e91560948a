"""``DeployedBiSeNet``: a folded BiSeNet rearranged for inference, same function, less work.

BiSeNet upsamples the context features (256 channels at stride 16, 512 at stride 32 for R18) to
stride 8, concatenates them with the spatial path and runs a 3x3 conv down to ``num_classes``
channels. Channel mixing commutes with per-channel bilinear upsampling, so each of the conv's 9
taps can mix the context channels *before* upsampling, at 1/4 and 1/16 of the pixels: a 1x1 conv
to ``9 * num_classes`` "tap" channels, bilinear upsampling of those few channels, then a fixed
grouped 3x3 conv that adds each tap at its offset (zero padding, as the original conv). The
result equals the original up to float rounding; it skips most of the fusion conv's multiply-adds
on the context part and the upsampled 768-channel concatenation. Everything is a standard op, so
``torch.compile`` and ONNX export see plain convolutions and resizes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rtda.models.bisenet import BiSeNet, resize_bilinear
from rtda.models.resnet import BasicBlock
from rtda_kernels.nn import WinogradConv2d


class DeployedBiSeNet(nn.Module):
    """BiSeNet's eval-mode ``forward`` from a BatchNorm-folded BiSeNet (see module docstring).

    Built with :meth:`from_folded`; holds the original spatial and context paths, attention
    modules and classifier, and the fusion conv split into its spatial part and its tap form.
    """

    def __init__(self, model: BiSeNet) -> None:
        super().__init__()
        conv = model.ffm.block[0]
        geometry = (conv.kernel_size, conv.stride, conv.padding, conv.groups)
        if geometry != ((3, 3), (1, 1), (1, 1), 1):
            raise ValueError("DeployedBiSeNet expects the fusion block's 3x3 stride-1 conv")
        if not isinstance(model.ffm.block[1], nn.Identity):
            raise ValueError("DeployedBiSeNet needs a folded model (rtda.runtime.fold_batchnorm)")
        self.num_classes = model.num_classes
        self.backbone = model.backbone
        self.spatial_path = model.spatial_path
        self.context_path = model.context_path
        self.arm16, self.arm32 = model.arm16, model.arm32
        self.attention1, self.attention2 = model.ffm.conv1, model.ffm.conv2
        self.classifier = model.classifier
        c16, c32 = self.context_path.channels
        spatial = conv.in_channels - c16 - c32
        weight, classes = conv.weight.detach(), conv.out_channels
        self.fusion_spatial = nn.Conv2d(spatial, classes, 3, padding=1, bias=conv.bias is not None)
        self.fusion_spatial.weight.data.copy_(weight[:, :spatial])
        if conv.bias is not None:
            self.fusion_spatial.bias.data.copy_(conv.bias.detach())
        self.taps16 = self._taps(weight[:, spatial:spatial + c16])
        self.taps32 = self._taps(weight[:, spatial + c16:])
        # out[o] = sum over taps k = 3 * dy + dx of in[9 * o + k] shifted by (dy - 1, dx - 1)
        self.tap_sum = nn.Conv2d(9 * classes, classes, 3, padding=1, groups=classes, bias=False)
        one_hot = torch.eye(9, dtype=weight.dtype).view(1, 9, 3, 3).repeat(classes, 1, 1, 1)
        self.tap_sum.weight.data.copy_(one_hot)

    @staticmethod
    def _taps(weight: torch.Tensor) -> nn.Conv2d:
        """1x1 conv whose output channel 9 * o + k is tap k of the 3x3 conv's output o."""
        classes, channels = weight.shape[:2]
        taps = nn.Conv2d(channels, 9 * classes, 1, bias=False)
        taps.weight.data.copy_(weight.permute(0, 2, 3, 1).reshape(9 * classes, channels, 1, 1))
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError("DeployedBiSeNet is BiSeNet prepared for inference (BatchNorm "
                               "folded, auxiliary heads dropped): it cannot be trained")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be an N x 3 x H x W image batch, got {tuple(x.shape)}")
        size = x.shape[2:]
        spatial = self.spatial_path(x)
        stride16, stride32 = self.context_path(x)
        context16 = self.arm16(stride16)
        context32 = self.arm32(stride32) * stride32.mean((2, 3), keepdim=True)
        grid = spatial.shape[2:]
        taps = (resize_bilinear(self.taps16(context16), grid)
                + resize_bilinear(self.taps32(context32), grid))
        features = F.relu(self.fusion_spatial(spatial) + self.tap_sum(taps))
        pooled = features.mean((2, 3), keepdim=True)
        attention = torch.sigmoid(self.attention2(F.relu(self.attention1(pooled))))
        return resize_bilinear(self.classifier(features * attention + features), size)


class WinogradBasicBlock(nn.Module):
    """A folded ResNet ``BasicBlock`` on Winograd convolutions: ``relu(conv2(relu(conv1(x))) +
    identity)`` with each ReLU, and the residual add, done while the conv writes its output.
    ``conv1`` stays a plain conv where it has stride 2 (the first block of a stage)."""

    def __init__(self, block: BasicBlock) -> None:
        super().__init__()
        if not (isinstance(block.bn1, nn.Identity) and isinstance(block.bn2, nn.Identity)):
            raise ValueError("WinogradBasicBlock needs a folded block "
                             "(rtda.runtime.fold_batchnorm)")
        self.winograd_conv1 = WinogradConv2d.supports(block.conv1)
        self.conv1 = (WinogradConv2d.from_conv(block.conv1, relu=True) if self.winograd_conv1
                      else block.conv1)
        self.conv2 = WinogradConv2d.from_conv(block.conv2, relu=True)
        self.downsample = block.downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv1(x) if self.winograd_conv1 else F.relu(self.conv1(x))
        return self.conv2(out, identity)


def use_winograd(model: nn.Module) -> int:
    """Swap, in place, every 3x3 stride-1 conv of a folded model for ``WinogradConv2d``, whole
    ``BasicBlock``s for :class:`WinogradBasicBlock`; returns how many convs now run Winograd.
    For float32 CPU inference: the kernel is faster than the direct convolution there and rounds
    slightly differently (see ``rtda_kernels.winograd_conv3x3``)."""
    swapped = 0
    for name, child in model.named_children():
        if type(child) is BasicBlock:
            block = WinogradBasicBlock(child)
            swapped += 1 + block.winograd_conv1
            setattr(model, name, block)
        elif WinogradConv2d.supports(child):
            setattr(model, name, WinogradConv2d.from_conv(child))
            swapped += 1
        else:
            swapped += use_winograd(child)
    return swapped
