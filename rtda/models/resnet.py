"""ResNet-18 and ResNet-101 backbones with torchvision's state-dict key names.

Defined here so that RTDA needs no torchvision; the key names (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer1.0.downsample.0`` ...) are torchvision's, so a locally stored
torchvision ImageNet checkpoint loads with :func:`load_pretrained`. The classifier (``avgpool``,
``fc``) is not built: segmentation uses the feature maps of stages 3 and 4 only. Nothing is ever
downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

# The keys of a torchvision ImageNet checkpoint that belong to its classifier, not the backbone.
CLASSIFIER_KEYS = ("fc.weight", "fc.bias")


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)


def _conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, channels, stride)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(channels, channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, as torchvision's "ResNet v1.5"), 1x1 expand x4."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(in_channels, channels)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = _conv3x3(channels, channels, stride)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = _conv1x1(channels, channels * self.expansion)
        self.bn3 = nn.BatchNorm2d(channels * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# name -> (block, blocks per stage)
ARCHITECTURES: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
    """The convolutional part of a ResNet: stem, then four stages at strides 4, 8, 16 and 32.

    ``forward`` returns the outputs of stage 3 (stride 16) and stage 4 (stride 32), what BiSeNet's
    context path needs. ``channels`` gives their channel counts.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        if name not in ARCHITECTURES:
            raise ValueError(f"backbone must be one of {sorted(ARCHITECTURES)}, got {name!r}")
        block, layers = ARCHITECTURES[name]
        self.name = name
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self._in = 64
        self.layer1 = self._stage(block, 64, layers[0], 1)
        self.layer2 = self._stage(block, 128, layers[1], 2)
        self.layer3 = self._stage(block, 256, layers[2], 2)
        self.layer4 = self._stage(block, 512, layers[3], 2)
        self.channels = (256 * block.expansion, 512 * block.expansion)
        self._init_weights()

    def _stage(self, block: type[nn.Module], channels: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        out_channels = channels * block.expansion
        if stride != 1 or self._in != out_channels:
            downsample = nn.Sequential(_conv1x1(self._in, out_channels, stride),
                                       nn.BatchNorm2d(out_channels))
        modules = [block(self._in, channels, stride, downsample)]
        self._in = out_channels
        modules += [block(self._in, channels) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def _init_weights(self) -> None:
        """torchvision's initialisation: Kaiming-normal convs (fan out), unit BatchNorms."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        stride16 = self.layer3(x)
        return stride16, self.layer4(stride16)


def load_pretrained(backbone: ResNet, path: str | os.PathLike) -> None:
    """Load a locally stored torchvision ImageNet checkpoint (a state_dict saved with
    ``torch.save``) into ``backbone``, strictly.

    The classifier keys (``fc.weight``, ``fc.bias``) are dropped: the backbone has no classifier.
    Any other missing or unexpected key, or a shape mismatch, raises ``ValueError`` listing them.
    """
    if not os.path.isfile(path):
        raise ValueError(f"pretrained checkpoint not found: {os.fspath(path)!r} (--pretrained "
                         f"takes a local torchvision ImageNet state_dict; nothing is downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which file, in one line
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot read pretrained checkpoint {os.fspath(path)!r}: "
                         f"{reason}") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{os.fspath(path)!r} does not hold a state_dict (got {type(state).__name__})")
    load_backbone_state(backbone, state, source=os.fspath(path))


def load_backbone_state(backbone: ResNet, state: Mapping[str, torch.Tensor],
                        source: str = "state_dict") -> None:
    """Strictly load a torchvision-layout state_dict (classifier keys allowed and ignored)."""
    state = {k: v for k, v in state.items() if k not in CLASSIFIER_KEYS}
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)
    )
    if missing or unexpected or wrong:
        lines = [f"{source} does not match a torchvision {backbone.name}"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("shape mismatches", wrong)):
            if keys:
                shown = ", ".join(keys[:10]) + (f" ... (+{len(keys) - 10} more)" if len(keys) > 10 else "")
                lines.append(f"{title} ({len(keys)}): {shown}")
        raise ValueError("; ".join(lines))
    backbone.load_state_dict(state, strict=True)
